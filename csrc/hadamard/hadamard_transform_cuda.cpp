// Torch glue for the CUDA FWHT: checks, stream, dispatch to the raw launcher in hadamard_transform_cuda.cu.
// Only c10/cuda headers (not ATen/cuda/CUDAContext.h, which drags in cuBLAS/cuSPARSE headers): the glue
// compiles wherever the CUDA runtime headers exist, so CI syntax-checks it without a CUDA build of torch.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "hadamard/hadamard_args.h"
#include "hadamard/hadamard_transform_cuda.h"

namespace symkernels::hadamard {
namespace {

DType to_dtype(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kFloat64;
    default: TORCH_CHECK_TYPE(false, "hadamard_transform: unsupported dtype ", s);
  }
}

// Writes the transform of x into out (contiguous, x's shape and dtype, checked by the callers).
void transform_into(const at::Tensor& x, double scale, int64_t n, at::Tensor& out) {
  constexpr const char* op = "hadamard_transform";
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor input = x.contiguous();
  check_no_overlap(out, input, "hadamard_transform");
  // The kernel moves 16-byte vectors; a contiguous view with an odd storage offset is copied first.
  if (reinterpret_cast<uintptr_t>(input.const_data_ptr()) % 16 != 0) input = input.clone();
  const int64_t rows = input.numel() / n;
  if (rows == 0) return;
  // Same for a caller's out= with an odd storage offset: the kernel writes an aligned buffer, copied back.
  const bool out_aligned = reinterpret_cast<uintptr_t>(out.const_data_ptr()) % 16 == 0;
  at::Tensor dst = out_aligned ? out : at::empty(out.sizes(), out.options());
  const int log_n = log2_exact(n);
  const DType dtype = to_dtype(x.scalar_type());
  const int64_t shared = fwht_shared_memory_bytes(log_n, dtype);
  int limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, x.device().index()));
  TORCH_CHECK_VALUE(shared <= limit, op, ": n = ", n, " in ", x.scalar_type(), " needs ", shared,
                    " bytes of shared memory per block, this GPU allows ", limit, " (use float32 or n <= ", n / 2, ")");
  const cudaError_t err = launch_fwht(input.const_data_ptr(), dst.mutable_data_ptr(), rows, log_n,
                                      scale, dtype, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
  if (!out_aligned) out.copy_(dst);
}

at::Tensor hadamard_transform_cuda(const at::Tensor& x, double scale) {
  const int64_t n = check_hadamard_args(x);
  at::Tensor out = at::empty(x.sizes(), x.options());
  transform_into(x, scale, n, out);
  return out;
}

void hadamard_transform_out_cuda(const at::Tensor& x, double scale, at::Tensor& out) {
  const int64_t n = check_hadamard_args(x);
  check_out(out, x, "hadamard_transform");
  transform_into(x, scale, n, out);
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CUDA, m) {
  m.impl("hadamard_transform", &hadamard_transform_cuda);
  m.impl("hadamard_transform.out", &hadamard_transform_out_cuda);
}

}  // namespace symkernels::hadamard
