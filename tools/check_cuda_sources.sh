#!/usr/bin/env bash
# Compile-check every CUDA source without a GPU or a CUDA build of torch:
#   * each csrc/**/*.cu with `nvcc -c` (they include no torch headers, by design), with the build's own nvcc
#     flags from csrc/cuda_flags.txt (also read by CMakeLists.txt) plus -Werror;
#   * each csrc/**/*_cuda.cpp (torch glue) with `g++ -fsyntax-only` against torch's headers and the CUDA
#     runtime headers. A CPU-only torch lacks one CMake-generated header of c10/cuda, which holds only
#     build-time macros; an empty stand-in is supplied from a temporary folder for this check alone.
# Usage: tools/check_cuda_sources.sh [python]   (python: the interpreter whose torch headers to use)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=${NVCC:-$(command -v nvcc || echo "$CUDA_HOME/bin/nvcc")}
ARCH=${CUDA_CHECK_ARCH:-sm_90a}
if [ ! -x "$NVCC" ]; then
  echo "check-cuda: nvcc not found (set NVCC or CUDA_HOME); cannot compile-check CUDA sources" >&2
  exit 1
fi
CUDA_INC="$CUDA_HOME/include"  # nvcc on PATH may be a wrapper script, so not derived from it
[ -f "$CUDA_INC/cuda_runtime.h" ] || { echo "check-cuda: no cuda_runtime.h under $CUDA_INC (set CUDA_HOME)" >&2; exit 1; }
TORCH_INC=$("$PY" -c "import torch.utils.cpp_extension as c; print(' '.join(c.include_paths()))")
STUB=$(mktemp -d)
trap 'rm -rf "$STUB"' EXIT
mkdir -p "$STUB/c10/cuda/impl" && echo '#pragma once' >"$STUB/c10/cuda/impl/cuda_cmake_macros.h"
# The flags CMakeLists.txt compiles with: one per line, '#' lines are comments.
mapfile -t NVCC_FLAGS < <(grep -E '^-' csrc/cuda_flags.txt)
OBJ=$(mktemp -d)
status=0
for cu in $(find csrc -name '*.cu' | sort); do
  echo "nvcc -c $cu ($ARCH)"
  "$NVCC" -c "${NVCC_FLAGS[@]}" -arch="$ARCH" -Werror all-warnings -I csrc "$cu" \
    -o "$OBJ/$(basename "$cu").o" || status=1
done
for glue in $(find csrc -name '*_cuda.cpp' | sort); do
  echo "g++ -fsyntax-only $glue"
  g++ -std=c++20 -fsyntax-only -Wall -Wextra -Wno-unused-parameter -DSYMKERNELS_WITH_CUDA -I csrc \
    $(for d in $TORCH_INC; do printf -- '-isystem %s ' "$d"; done) -isystem "$CUDA_INC" -isystem "$STUB" "$glue" || status=1
done
rm -rf "$OBJ"
[ $status -eq 0 ] && echo "check-cuda: all CUDA sources compile" || echo "check-cuda: FAILED" >&2
exit $status
