// Conversions between a CUDA kernel's element type and its accumulation type, for every .cu file:
// fp16/bf16 are widened to fp32 and rounded back to nearest-even once; fp32/fp64 pass through.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/accumulator.h"

namespace symkernels {

template <typename To, typename From>
__device__ __forceinline__ To convert(From v) { return static_cast<To>(v); }
template <>
__device__ __forceinline__ float convert<float, __half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float convert<float, __nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ __forceinline__ __half convert<__half, float>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 convert<__nv_bfloat16, float>(float v) { return __float2bfloat16_rn(v); }

}  // namespace symkernels
