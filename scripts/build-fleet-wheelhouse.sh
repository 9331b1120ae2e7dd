#!/usr/bin/env bash
# Build a complete, offline-installable wheelhouse for one CPU profile: everything
# `pip install --no-index --find-links DIR edgeagent` needs on a fleet host.
#
#   scripts/build-fleet-wheelhouse.sh PROFILE [OUTDIR]
#
# PROFILE is one of the CPU profiles of scripts/build-wheelhouse.sh:
#   x86-64-v3   x86_64 hosts with AVX2/FMA/F16C (CI, the test containers)
#   pi4         aarch64, armv8-a: runs on Raspberry Pi 4 AND Pi 5
#   pi5         aarch64, armv8.2-a+dotprod+fp16: Raspberry Pi 5 only (SIGILL on a Pi 4)
# OUTDIR defaults to ${EDGEAGENT_FLEET_WHEELHOUSE:-~/.cache/edgeagent/fleet-wheelhouse}/PROFILE,
# which is the layout the Ansible role expects: edgeagent_wheelhouse_dir/PROFILE/*.whl.
#
# Contents of OUTDIR (it is rebuilt from scratch; nothing else should live there):
#   llama_cpp_python-*.whl   built for the profile by scripts/build-wheelhouse.sh
#   edgeagent-*.whl          this checkout, `pip wheel --no-deps .`
#   every other dependency   binary wheels for CPython 3.11 on manylinux/ARCH (pip download)
#   requirements.lock        name==version of every wheel (what the hosts will run)
#   SHA256SUMS               sha256 of every wheel
#   BUILD-INFO.txt           profile, target platform, llama.cpp build flags
#
# The llama.cpp wheel is compiled by scripts/build-wheelhouse.sh PROFILE (cached there): natively
# on a machine of the target architecture, or cross-compiled for pi4/pi5 on an x86_64 machine
# with Debian's aarch64 cross compilers (gcc-aarch64-linux-gnu, g++-aarch64-linux-gnu). Without
# a compiler for the target, a wheel built elsewhere is used as it is from
#   ${EDGEAGENT_WHEELHOUSE:-~/.cache/edgeagent/wheelhouse}/PROFILE/llama_cpp_python-VERSION-*.whl
# or named with LLAMA_WHEEL=/path/to/llama_cpp_python-....whl.
#
# Environment: PYTHON (python3), TARGET_PYTHON_VERSION (3.11, the python3 of Debian/Raspberry
# Pi OS bookworm), TARGET_GLIBC_MINOR (36, bookworm's glibc 2.36), LLAMA_CPP_PYTHON_VERSION.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
profile="${1:-}"
case "$profile" in
  x86-64-v3) arch=x86_64 ;;
  pi4 | pi5) arch=aarch64 ;;
  *) echo "usage: $0 x86-64-v3|pi4|pi5 [OUTDIR]" >&2; exit 2 ;;
esac
out="${2:-${EDGEAGENT_FLEET_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeagent/fleet-wheelhouse}/$profile}"
python="${PYTHON:-python3}"
pyver="${TARGET_PYTHON_VERSION:-3.11}"
pytag="cp${pyver/./}"
glibc_minor="${TARGET_GLIBC_MINOR:-36}"
export LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
llama_cache="${EDGEAGENT_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeagent/wheelhouse}/$profile"

log() { echo "fleet-wheelhouse[$profile]: $*" >&2; }

mkdir -p "$(dirname "$out")"
work="$(mktemp -d "$(dirname "$out")/.build-$profile.XXXXXX")"
trap 'rm -rf "$work"' EXIT
wheels="$work/wheels"
mkdir -p "$wheels"

# 1. llama-cpp-python, compiled for the profile (cached by build-wheelhouse.sh).
if [ -n "${LLAMA_WHEEL:-}" ]; then
  llama="$LLAMA_WHEEL"
else
  if [ "$(uname -m)" = "$arch" ] || { [ "$arch" = aarch64 ] && command -v aarch64-linux-gnu-g++ >/dev/null 2>&1; }; then
    EDGEAGENT_WHEELHOUSE="$(dirname "$llama_cache")" PYTHON="$python" \
      "$here/build-wheelhouse.sh" "$profile" >&2
  else
    log "no $arch compiler here: using the wheel in $llama_cache as it is"
  fi
  llama="$(ls "$llama_cache"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
  if [ -z "$llama" ]; then
    log "no llama-cpp-python $LLAMA_CPP_PYTHON_VERSION wheel for $profile in $llama_cache"
    log "build it with scripts/build-wheelhouse.sh $profile (on a $arch machine, or on x86_64 with"
    log "gcc-aarch64-linux-gnu g++-aarch64-linux-gnu installed), or set LLAMA_WHEEL"
    exit 1
  fi
fi
case "$(basename "$llama")" in
  *"_$arch.whl") ;;
  *) log "$llama is not a $arch wheel"; exit 1 ;;
esac
cp "$llama" "$wheels/"
flags_file="$(dirname "$llama")/BUILD-FLAGS.txt"

# 2. edgeagent itself (pure Python).
log "building the edgeagent wheel from $repo"
# From a copy of the package files: setuptools writes build/ and *.egg-info next to them.
mkdir -p "$work/src"
for item in pyproject.toml setup.py setup.cfg MANIFEST.in README.md LICENSE edgeagent; do
  [ -e "$repo/$item" ] && cp -r "$repo/$item" "$work/src/"
done
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
"$python" -m pip wheel --quiet --no-deps --no-cache-dir -w "$work/edgeagent" "$work/src" >&2
cp "$work"/edgeagent/edgeagent-*.whl "$wheels/"

# 3. Every other dependency: binary wheels for the target interpreter and platform. The two
#    local wheels are pinned with a constraints file and found through --find-links.
platforms=(--platform "linux_$arch")
for minor in $(seq 17 "$glibc_minor"); do
  platforms+=(--platform "manylinux_2_${minor}_$arch")
done
platforms+=(--platform "manylinux2014_$arch")
[ "$arch" = x86_64 ] && platforms+=(--platform manylinux2010_x86_64 --platform manylinux1_x86_64)
edgeagent_whl="$(ls "$wheels"/edgeagent-*.whl)"
edgeagent_version="$(basename "$edgeagent_whl" | cut -d- -f2)"
printf 'edgeagent==%s\nllama-cpp-python==%s\n' "$edgeagent_version" "$LLAMA_CPP_PYTHON_VERSION" >"$work/constraints.txt"
log "downloading dependencies for $pytag on manylinux $arch (glibc <= 2.$glibc_minor)"
"$python" -m pip download --quiet --only-binary=:all: \
  --python-version "$pyver" --implementation cp --abi "$pytag" --abi abi3 --abi none \
  "${platforms[@]}" --find-links "$wheels" --constraint "$work/constraints.txt" \
  --dest "$wheels" "$edgeagent_whl" >&2

# 4. Lock, checksums, provenance.
(
  cd "$wheels"
  for whl in *.whl; do
    name="$(echo "$whl" | cut -d- -f1 | tr '_' '-' | tr '[:upper:]' '[:lower:]')"
    echo "$name==$(echo "$whl" | cut -d- -f2)"
  done | sort >requirements.lock
  sha256sum -- *.whl >SHA256SUMS
  {
    echo "profile: $profile"
    echo "target: CPython $pyver ($pytag), linux $arch, glibc 2.$glibc_minor"
    echo "llama-cpp-python: $(basename "$llama")"
    [ -f "$flags_file" ] && echo "llama.cpp flags: $(cat "$flags_file")"
    echo "edgeagent: $(basename "$edgeagent_whl")"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
  } >BUILD-INFO.txt
)

# 5. Replace OUTDIR in one step, so a half-built wheelhouse is never deployed.
rm -rf "$out.old"
[ -d "$out" ] && mv "$out" "$out.old"
mv "$wheels" "$out"
rm -rf "$out.old"
log "$(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1) in $out"
echo "$out"
