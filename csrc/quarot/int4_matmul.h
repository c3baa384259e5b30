// Launcher of the CUDA W4A4 GEMM (int4_matmul_cuda.cu). No torch headers.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace symkernels::quarot {

// out_dtype codes: 0 fp32, 1 fp16, 2 bf16. bias may be null (fp32 [N] otherwise).
cudaError_t launch_int4_matmul(const uint8_t* a, const float* sa, const uint8_t* w, const float* sw, const float* bias,
                               void* out, int64_t m, int64_t n, int64_t kb, int out_dtype, cudaStream_t stream);

}  // namespace symkernels::quarot
