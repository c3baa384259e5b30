// Torch glue for the CUDA hadamard_transform_k kernel (hadamard_transform_k_cuda.cu): checks, device guard, stream.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: it needs cuBLAS/cuSPARSE headers
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/checks.h"
#include "hadamard/hadamard_transform_k_cuda.h"

namespace symkernels::hadamard {
namespace {

at::Tensor hadamard_transform_k_cuda(const at::Tensor& x, const at::Tensor& hk, double scale) {
  constexpr const char* op = "hadamard_transform_k";
  check_floating(x, op, "x");
  check_min_dim(x, 1, op, "x");
  TORCH_CHECK_VALUE(hk.dim() == 2 && hk.size(0) == hk.size(1) && hk.size(0) >= 1, op,
                    ": hk must be a square K×K matrix, got shape ", hk.sizes());
  TORCH_CHECK_VALUE(hk.device() == x.device(), op, ": hk must be on x's device (", x.device(), "), got ", hk.device());
  const int64_t k = hk.size(0), n = x.size(-1);
  TORCH_CHECK_VALUE(n % k == 0 && is_power_of_two(n / k), op, ": x.shape[-1] must be K·2^m for K = ", k, ", got ", n);
  const bool f64 = x.scalar_type() == at::kDouble;
  TORCH_CHECK_VALUE(n * (f64 ? 8 : 4) <= kKronMaxSmemBytes, op, ": x.shape[-1] = ", n,
                    " is too large for the CUDA kernel (one row must fit in ", kKronMaxSmemBytes, " bytes)");
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor input = x.contiguous();
  const at::Tensor h = hk.to(f64 ? at::kDouble : at::kFloat).contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  const int dtype = x.scalar_type() == at::kFloat ? 0 : x.scalar_type() == at::kHalf ? 1
                    : x.scalar_type() == at::kBFloat16 ? 2 : 3;
  const cudaError_t err = launch_hadamard_k(input.const_data_ptr(), h.const_data_ptr(), out.mutable_data_ptr(),
                                            input.numel() / n, k, n / k, scale, dtype,
                                            c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CUDA, m) { m.impl("hadamard_transform_k", &hadamard_transform_k_cuda); }

}  // namespace symkernels::hadamard
