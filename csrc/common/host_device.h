// SYMKERNELS_HD marks small math helpers shared by a pillar's CPU and CUDA kernels: device-callable
// and force-inlined under nvcc, plain inline functions in the C++ compiler.
#pragma once

#if defined(__CUDACC__)
#define SYMKERNELS_HD __host__ __device__ __forceinline__
#else
#define SYMKERNELS_HD inline __attribute__((always_inline))
#endif
