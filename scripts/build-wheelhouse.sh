#!/usr/bin/env bash
# Build the llama-cpp-python wheel once per CPU profile, into a cached wheelhouse.
#
#   scripts/build-wheelhouse.sh [PROFILE] [OUTDIR]
#
# PROFILE fixes the CPU features compiled in, so a wheel never carries instructions
# a target lacks (a "native" build on a newer CPU dies with SIGILL on an older one):
#   x86-64-v3   AVX2/FMA/F16C, no AVX-512/AMX   (CI, laptops, x86 servers)
#   pi4         armv8-a (Cortex-A72, Raspberry Pi 4)
#   pi5         armv8.2-a+dotprod+fp16 (Cortex-A76, Raspberry Pi 5; will NOT run on a Pi 4)
# Default: x86-64-v3 on x86_64, pi4 on aarch64 (runs on both Pi 4 and Pi 5).
# OUTDIR defaults to ${EDGEAGENT_WHEELHOUSE:-~/.cache/edgeagent/wheelhouse}/PROFILE.
# An existing wheel for the pinned version is reused; delete it to rebuild.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
arch="$(uname -m)"
case "${1:-}" in
  "") if [ "$arch" = aarch64 ]; then profile=pi4; else profile=x86-64-v3; fi ;;
  *) profile="$1" ;;
esac
# Common: no multimodal (mtmd) library, no llama.cpp tools, tests or examples.
flags="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=OFF"
case "$profile" in
  x86-64-v3) flags="$flags -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ;;
  pi4) flags="$flags -DGGML_CPU_ARM_ARCH=armv8-a" ;;
  pi5) flags="$flags -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16" ;;
  *) echo "unknown profile: $profile" >&2; exit 2 ;;
esac
out="${2:-${EDGEAGENT_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeagent/wheelhouse}/$profile}"
mkdir -p "$out"
if ls "$out"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl >/dev/null 2>&1; then
  echo "wheelhouse: reusing $(ls "$out"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl)"
  exit 0
fi
python="${PYTHON:-python3}"
echo "wheelhouse: building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION for $profile (takes minutes)"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  "$python" -m pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
  "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -w "$tmp"
echo "$profile: $flags" > "$tmp/BUILD-FLAGS.txt"
mv "$tmp"/*.whl "$tmp/BUILD-FLAGS.txt" "$out"/
echo "wheelhouse: $(ls "$out"/*.whl)"
