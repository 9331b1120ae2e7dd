#!/usr/bin/env bash
# Build the llama-cpp-python wheel once per CPU profile, into a cached wheelhouse.
#
#   scripts/build-wheelhouse.sh [PROFILE] [OUTDIR]
#
# PROFILE fixes the CPU features compiled in, so a wheel never carries instructions
# a target lacks (a "native" build on a newer CPU dies with SIGILL on an older one):
#   x86-64-v3   AVX2/FMA/F16C, no AVX-512/AMX        (CI, laptops, x86 servers)
#   pi4         aarch64, -march=armv8-a, tuned for Cortex-A72 (Raspberry Pi 4; runs on a Pi 5)
#   pi5         aarch64, -march=armv8.2-a+dotprod+fp16, tuned for Cortex-A76
#               (Raspberry Pi 5; will NOT run on a Pi 4)
# Default: x86-64-v3 on x86_64, pi4 on aarch64.
#
# On an x86_64 machine the pi4/pi5 wheels are cross-compiled with Debian's aarch64 cross
# compilers (apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu) and the CMake
# toolchain file scripts/aarch64-linux-gnu.cmake; the wheel is tagged linux_aarch64 and its
# libraries are checked to be aarch64 code. On a Pi (or any aarch64 machine) they build natively.
#
# OUTDIR defaults to ${EDGEAGENT_WHEELHOUSE:-~/.cache/edgeagent/wheelhouse}/PROFILE and then
# holds exactly one llama_cpp_python-VERSION-*.whl, BUILD-FLAGS.txt and BUILD-KEY. The key
# covers the version, the profile's flags, the compilers and the toolchain file: a wheel
# whose key differs is deleted and rebuilt, an equal one is reused. Delete OUTDIR to rebuild.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
host_arch="$(uname -m)"
case "${1:-}" in
  "") if [ "$host_arch" = aarch64 ]; then profile=pi4; else profile=x86-64-v3; fi ;;
  *) profile="$1" ;;
esac
log() { echo "wheelhouse[$profile]: $*" >&2; }

# Common: no multimodal (mtmd) library, no llama.cpp tools, tests or examples.
flags="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=OFF"
# Keep in sync with ansible/roles/edgeagent/vars/main.yml (edgeagent_profiles: the
# on-device fallback build uses the same flags).
case "$profile" in
  x86-64-v3)
    target_arch=x86_64
    flags="$flags -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    ;;
  pi4)
    target_arch=aarch64
    flags="$flags -DGGML_CPU_ARM_ARCH=armv8-a -DCMAKE_C_FLAGS=-mtune=cortex-a72 -DCMAKE_CXX_FLAGS=-mtune=cortex-a72"
    ;;
  pi5)
    target_arch=aarch64
    flags="$flags -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16 -DCMAKE_C_FLAGS=-mtune=cortex-a76 -DCMAKE_CXX_FLAGS=-mtune=cortex-a76"
    ;;
  *) echo "unknown profile: $profile (x86-64-v3, pi4 or pi5)" >&2; exit 2 ;;
esac
out="${2:-${EDGEAGENT_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeagent/wheelhouse}/$profile}"

# What the wheel depends on besides the sources: the compilers (and for a cross build the
# toolchain file). Everything that goes into BUILD-KEY.
cmake_args="$flags"
build_env=()
if [ "$target_arch" = "$host_arch" ]; then
  cc="${CC:-cc}" cxx="${CXX:-c++}"
  toolchain_id="native"
else
  if [ "$host_arch-$target_arch" != x86_64-aarch64 ]; then
    log "cannot build for $target_arch on $host_arch (only x86_64 -> aarch64 cross builds are set up)"
    exit 2
  fi
  cc=aarch64-linux-gnu-gcc cxx=aarch64-linux-gnu-g++
  for tool in "$cc" "$cxx"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      log "$tool is missing: apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu (scripts/install-system-deps.sh does it)"
      exit 1
    fi
  done
  toolchain="$here/aarch64-linux-gnu.cmake"
  toolchain_id="cross $(sha256sum <"$toolchain" | cut -c1-16)"
  cmake_args="$cmake_args -DCMAKE_TOOLCHAIN_FILE=$toolchain"
  # scikit-build-core tags the wheel from the interpreter's platform; this makes it
  # linux_aarch64 (the libraries inside are checked below).
  build_env=(_PYTHON_HOST_PLATFORM="linux-$target_arch")
fi
compilers="$("$cc" --version | head -n 1); $("$cxx" --version | head -n 1)"
key="$(printf 'llama-cpp-python %s\nprofile %s\ntarget %s\nflags %s\ntoolchain %s\ncompilers %s\nformat 1\n' \
  "$LLAMA_CPP_PYTHON_VERSION" "$profile" "$target_arch" "$flags" "$toolchain_id" "$compilers" | sha256sum | cut -c1-32)"

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9 # one build per OUTDIR at a time (make venv and a test session may both ask)

wheel="$(ls "$out"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*"_$target_arch.whl" 2>/dev/null | head -n 1 || true)"
if [ -n "$wheel" ] && [ ! -f "$out/BUILD-KEY" ] && [ "$target_arch" = "$host_arch" ] &&
  [ "$(cat "$out/BUILD-FLAGS.txt" 2>/dev/null)" = "$profile: $flags" ]; then
  # A native wheel cached before BUILD-KEY existed, with exactly these flags: adopt it.
  echo "$key" >"$out/BUILD-KEY"
fi
if [ -n "$wheel" ] && [ "$(cat "$out/BUILD-KEY" 2>/dev/null)" = "$key" ]; then
  log "reusing $wheel"
  exit 0
fi
if ls "$out"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  log "the cached wheel does not match (version, flags, compilers or toolchain changed): rebuilding"
  rm -f "$out"/llama_cpp_python-*.whl "$out/BUILD-KEY" "$out/BUILD-FLAGS.txt"
fi

python="${PYTHON:-python3}"
log "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION for $target_arch with ${cxx} (takes minutes)"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
started="$(date +%s)"
# llama-cpp-python forces llama.cpp's `common` library on (a cache variable set with FORCE
# before llama.cpp is added), though with LLAVA_BUILD=OFF nothing in the wheel uses it (the
# Python package loads libllama and libggml*). This project include switches it off again
# right after llama.cpp's project(): about a third less to compile, and no unused
# lib/libllama-common.so in the wheel. Not part of BUILD-KEY: the code the wheel runs is the same.
cat >"$tmp/no-common.cmake" <<'CMAKE'
set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama.cpp common library: unused by the wheel" FORCE)
CMAKE
cmake_args="$cmake_args -DCMAKE_PROJECT_llama.cpp_INCLUDE=$tmp/no-common.cmake"
env "${build_env[@]}" CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  "$python" -m pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
  "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -w "$tmp"
built="$(ls "$tmp"/llama_cpp_python-*.whl)"
case "$(basename "$built")" in
  *"_$target_arch.whl") ;;
  *) log "$(basename "$built") is not tagged for $target_arch"; exit 1 ;;
esac
# Every shared library in the wheel must be code for the target (ELF e_machine).
"$python" - "$built" "$target_arch" <<'PY'
import sys, zipfile
machines = {"x86_64": 0x3E, "aarch64": 0xB7}
wheel, arch = sys.argv[1], sys.argv[2]
libs = 0
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if ".so" not in name.rsplit("/", 1)[-1]:
            continue
        head = zf.read(name)[:20]
        if head[:4] != b"\x7fELF":
            continue
        libs += 1
        machine = int.from_bytes(head[18:20], "little")
        if machine != machines[arch]:
            sys.exit(f"{name} in {wheel} is ELF machine {machine:#x}, not {arch}")
if libs == 0:
    sys.exit(f"{wheel} contains no shared library")
print(f"wheelhouse: {libs} shared libraries, all {arch}", file=sys.stderr)
PY
echo "$profile: $flags" >"$tmp/BUILD-FLAGS.txt"
echo "$key" >"$tmp/BUILD-KEY"
mv "$built" "$tmp/BUILD-FLAGS.txt" "$out"/
mv "$tmp/BUILD-KEY" "$out/BUILD-KEY" # last: a key is only there when its wheel is
log "built $(ls "$out"/llama_cpp_python-*.whl) in $(($(date +%s) - started)) s"
