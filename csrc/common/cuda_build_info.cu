#include "common/cuda_build_info.h"

// __CUDA_ARCH_LIST__ is defined in nvcc's host pass too, as a comma-separated list: stringified as a whole.
#define SYMKERNELS_STRINGIFY_(...) #__VA_ARGS__
#define SYMKERNELS_STRINGIFY(...) SYMKERNELS_STRINGIFY_(__VA_ARGS__)

namespace symkernels {

const char* compiled_cuda_arches() { return SYMKERNELS_STRINGIFY(__CUDA_ARCH_LIST__); }

}  // namespace symkernels
