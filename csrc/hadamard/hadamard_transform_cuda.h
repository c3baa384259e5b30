// Launcher of the CUDA FWHT (csrc/hadamard/hadamard_transform_cuda.cu). Raw pointers only, so the .cu file
// needs no torch headers and compiles quickly and standalone (`nvcc -c`).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "hadamard/hadamard.h"

namespace symkernels::hadamard {

// out[r, :] = H_n in[r, :] * scale for r < rows, n = 2^log_n; in/out contiguous rows of `dtype`.
// Returns the launch error (cudaSuccess when fine); an unsupported (dtype, n) gives cudaErrorInvalidValue.
cudaError_t launch_fwht(const void* in, void* out, int64_t rows, int log_n, double scale, DType dtype,
                        cudaStream_t stream);

// Bytes of dynamic shared memory one block needs; callers check it against the device limit.
int64_t fwht_shared_memory_bytes(int log_n, DType dtype);

}  // namespace symkernels::hadamard
