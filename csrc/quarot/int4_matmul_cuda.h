// Launcher of the CUDA W4A4 GEMM (int4_matmul_cuda.cu). No torch headers.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace symkernels::quarot {

// Which kernel computes the product: int8 tensor-core mma.sync (needs compute capability >= 8.0 and a
// build with sm_80+ code) or the SIMT __dp4a fallback (sm_61+). The caller picks; see the glue.
enum class Int4MatmulKernel : int { kDp4a = 0, kTensorCore = 1 };

// out_dtype codes: 0 fp32, 1 fp16, 2 bf16. bias may be null (fp32 [N] otherwise).
cudaError_t launch_int4_matmul(const uint8_t* a, const float* sa, const uint8_t* w, const float* sw, const float* bias,
                               void* out, int64_t m, int64_t n, int64_t kb, int out_dtype, Int4MatmulKernel kernel,
                               cudaStream_t stream);

}  // namespace symkernels::quarot
