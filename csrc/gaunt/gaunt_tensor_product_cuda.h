// Launcher of the CUDA Gaunt kernel, shared by gaunt_tensor_product_cuda.cu and the torch glue gaunt_tensor_product_cuda.cpp.
// CUDA runtime types only, no torch headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/accumulator.h"
#include "gaunt/gaunt.h"

namespace symkernels::gaunt {

// fp32 accumulation for fp32/fp16/bf16 inputs, fp64 for fp64 (common/cuda_convert.cuh).
using symkernels::AccumulatorOf;

// x1 [rows, n1], x2 [rows, n2], out [rows, no], all contiguous on the device; paths/coeffs [nnz] on the
// device with every index in range (the glue checks). Returns cudaErrorInvalidValue when one warp's
// shared-memory tile exceeds the device's opt-in limit (degrees beyond ~16 in fp32).
template <typename In>
cudaError_t launch_gaunt_sparse(const In* x1, const In* x2, In* out, const PathEntry* paths,
                                const typename AccumulatorOf<In>::type* coeffs, int64_t nnz, int64_t rows, int n1,
                                int n2, int no, cudaStream_t stream);

}  // namespace symkernels::gaunt
