// Torch glue for the CUDA hadamard_transform_k kernel (hadamard_transform_k_cuda.cu): checks, device guard, stream.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: it needs cuBLAS/cuSPARSE headers
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "hadamard/hadamard_args.h"
#include "hadamard/hadamard_transform_k_cuda.h"

namespace symkernels::hadamard {
namespace {

// Writes the transform of x into out (contiguous, x's shape and dtype, checked by the callers).
void transform_into(const at::Tensor& x, const at::Tensor& hk, double scale, at::Tensor& out) {
  constexpr const char* op = "hadamard_transform_k";
  const int64_t k = hk.size(0), n = x.size(-1);
  const bool f64 = x.scalar_type() == at::kDouble;
  TORCH_CHECK_VALUE(n * (f64 ? 8 : 4) <= kKronMaxSmemBytes, op, ": x.shape[-1] = ", n,
                    " is too large for the CUDA kernel (one row must fit in ", kKronMaxSmemBytes, " bytes)");
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor input = x.contiguous();
  check_no_overlap(out, input, "hadamard_transform_k");
  const at::Tensor h = hk.to(f64 ? at::kDouble : at::kFloat).contiguous();
  const int dtype = x.scalar_type() == at::kFloat ? 0 : x.scalar_type() == at::kHalf ? 1
                    : x.scalar_type() == at::kBFloat16 ? 2 : 3;
  const cudaError_t err = launch_hadamard_k(input.const_data_ptr(), h.const_data_ptr(), out.mutable_data_ptr(),
                                            input.numel() / n, k, n / k, scale, dtype,
                                            c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

at::Tensor hadamard_transform_k_cuda(const at::Tensor& x, const at::Tensor& hk, double scale) {
  check_hadamard_k_args(x, hk);
  at::Tensor out = at::empty(x.sizes(), x.options());
  transform_into(x, hk, scale, out);
  return out;
}

void hadamard_transform_k_out_cuda(const at::Tensor& x, const at::Tensor& hk, double scale, at::Tensor& out) {
  check_hadamard_k_args(x, hk);
  check_out(out, x, "hadamard_transform_k");
  transform_into(x, hk, scale, out);
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CUDA, m) {
  m.impl("hadamard_transform_k", &hadamard_transform_k_cuda);
  m.impl("hadamard_transform_k.out", &hadamard_transform_k_out_cuda);
}

}  // namespace symkernels::hadamard
