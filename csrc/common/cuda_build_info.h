// Build facts that only nvcc knows, for build_info() (csrc/symkernels.cpp).
#pragma once

namespace symkernels {

// The architectures nvcc generated device code for, as nvcc itself lists them in __CUDA_ARCH_LIST__
// ("800,900"; the arch-specific 9.0a shows as 900). build_info() reports it beside the list that the build
// asked torch's CMake for, so an arch lost between tools/cuda_arches.py, CMake and nvcc is a visible
// mismatch rather than a "no kernel image is available" error on the GPU that lacked it.
const char* compiled_cuda_arches();

}  // namespace symkernels
