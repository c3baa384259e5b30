// Launcher of the Kronecker Hadamard CUDA kernel and the facts its glue checks against. No torch headers.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace symkernels::hadamard {

// The CUDA kernel keeps one row in shared memory in the accumulation type; 192 KiB fits the Hopper
// opt-in limit (227 KiB) and Ampere's (163 KiB is less: the launcher reports the error from
// cudaFuncSetAttribute there). fp32: n ≤ 49152, covering 28672 = 28·2^10.
constexpr int64_t kKronMaxSmemBytes = 192 * 1024;

// dtype codes shared with hadamard.h's DType (0 fp32, 1 fp16, 2 bf16, 3 fp64).
cudaError_t launch_hadamard_k(const void* x, const void* hk, void* out, int64_t rows, int64_t k, int64_t p,
                              double scale, int dtype, cudaStream_t stream);

}  // namespace symkernels::hadamard
