// The floating dtypes the CUDA kernels take, as (kernel element type, ATen element type) pairs: one dtype
// switch for every torch glue file (*_cuda.cpp), host code only; the kernels see only the first type.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace symkernels {

// Calls f.template operator()<In, TorchIn>() for `dtype`; any other dtype is a TypeError naming `op`.
template <typename F>
void dispatch_cuda_floating(c10::ScalarType dtype, const char* op, F&& f) {
  switch (dtype) {
    case c10::kFloat: return f.template operator()<float, float>();
    case c10::kDouble: return f.template operator()<double, double>();
    case c10::kHalf: return f.template operator()<__half, c10::Half>();
    case c10::kBFloat16: return f.template operator()<__nv_bfloat16, c10::BFloat16>();
    default: TORCH_CHECK_TYPE(false, op, ": unsupported dtype ", dtype);
  }
}

}  // namespace symkernels
