// Torch glue for the CUDA int4_matmul kernels (int4_matmul_cuda.cu): checks, device guard, stream, and the
// choice of kernel: int8 tensor cores on compute capability >= 8.0, __dp4a below.
#include <cstdlib>
#include <cstring>

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: it needs cuBLAS/cuSPARSE headers
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "quarot/int4_matmul_cuda.h"

namespace symkernels::quarot {
namespace {

// Tensor cores from sm_80 (int8 mma.sync m16n8k32), queried at run time on the tensor's device.
// SYMKERNELS_INT4_MATMUL_KERNEL=dp4a|mma overrides the choice, so that a test on one GPU can run both
// kernels against the reference (mma on a device below 8.0 is refused with a clear error).
Int4MatmulKernel choose_kernel(c10::DeviceIndex device) {
  int major = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  TORCH_CHECK(err == cudaSuccess, "int4_matmul: cannot query the compute capability: ", cudaGetErrorString(err));
  const bool has_mma = major >= 8;
  const char* forced = std::getenv("SYMKERNELS_INT4_MATMUL_KERNEL");
  if (forced == nullptr || *forced == '\0') return has_mma ? Int4MatmulKernel::kTensorCore : Int4MatmulKernel::kDp4a;
  if (std::strcmp(forced, "dp4a") == 0) return Int4MatmulKernel::kDp4a;
  TORCH_CHECK_VALUE(std::strcmp(forced, "mma") == 0, "int4_matmul: SYMKERNELS_INT4_MATMUL_KERNEL must be 'dp4a' or ",
                    "'mma', got '", forced, "'");
  TORCH_CHECK(has_mma, "int4_matmul: SYMKERNELS_INT4_MATMUL_KERNEL=mma needs compute capability >= 8.0, device ",
              static_cast<int>(device), " has ", major, ".x");
  return Int4MatmulKernel::kTensorCore;
}

at::Tensor int4_matmul_cuda(const at::Tensor& a_packed, const at::Tensor& a_scale, const at::Tensor& w_packed,
                            const at::Tensor& w_scale, const std::optional<at::Tensor>& bias, at::ScalarType out_dtype) {
  constexpr const char* op = "int4_matmul";
  TORCH_CHECK_TYPE(a_packed.scalar_type() == at::kByte && w_packed.scalar_type() == at::kByte, op,
                   ": a_packed and w_packed must be uint8");
  TORCH_CHECK_TYPE(a_scale.scalar_type() == at::kFloat && w_scale.scalar_type() == at::kFloat, op,
                   ": a_scale and w_scale must be float32");
  TORCH_CHECK_VALUE(a_packed.dim() == 2 && w_packed.dim() == 2 && a_packed.size(1) == w_packed.size(1), op,
                    ": a_packed [M, K/2] and w_packed [N, K/2] must be 2-D with the same K/2, got ", a_packed.sizes(),
                    " and ", w_packed.sizes());
  const int64_t m = a_packed.size(0), n = w_packed.size(0), kb = a_packed.size(1);
  TORCH_CHECK_VALUE(a_scale.numel() == m && w_scale.numel() == n, op, ": scales must have M and N elements");
  TORCH_CHECK_TYPE(out_dtype == at::kFloat || out_dtype == at::kHalf || out_dtype == at::kBFloat16, op,
                   ": out_dtype must be float32, float16 or bfloat16");
  c10::cuda::CUDAGuard guard(a_packed.device());
  const at::Tensor a = a_packed.contiguous(), w = w_packed.contiguous();
  const at::Tensor sa = a_scale.contiguous(), sw = w_scale.contiguous();
  at::Tensor b;
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n, op, ": bias must have shape [", n, "]");
    b = bias->to(at::kFloat).contiguous();
  }
  at::Tensor out = at::empty({m, n}, a_packed.options().dtype(out_dtype));
  const int code = out_dtype == at::kFloat ? 0 : out_dtype == at::kHalf ? 1 : 2;
  const cudaError_t err = launch_int4_matmul(a.const_data_ptr<uint8_t>(), sa.const_data_ptr<float>(),
                                             w.const_data_ptr<uint8_t>(), sw.const_data_ptr<float>(),
                                             bias.has_value() ? b.const_data_ptr<float>() : nullptr,
                                             out.mutable_data_ptr(), m, n, kb, code, choose_kernel(a.get_device()),
                                             c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CUDA, m) { m.impl("int4_matmul", &int4_matmul_cuda); }

}  // namespace symkernels::quarot
