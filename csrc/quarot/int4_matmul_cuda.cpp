// Torch glue for the CUDA int4_matmul kernel (int4_matmul_cuda.cu): checks, device guard, stream.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: it needs cuBLAS/cuSPARSE headers
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "quarot/int4_matmul.h"

namespace symkernels::quarot {
namespace {

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
                                             out.mutable_data_ptr(), m, n, kb, code, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CUDA, m) { m.impl("int4_matmul", &int4_matmul_cuda); }

}  // namespace symkernels::quarot
