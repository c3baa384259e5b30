// Torch glue of the CUDA Gaunt kernel: checks, device guard, stream, dtype switch (kernel in gaunt_tensor_product_cuda.cu).
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: it needs cuBLAS/cuSPARSE headers
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda_dispatch.h"
#include "gaunt/gaunt_args.h"
#include "gaunt/gaunt_tensor_product_cuda.h"

namespace symkernels::gaunt {
namespace {

template <typename In, typename TorchIn>
void launch(const PreparedArgs& args, const at::Tensor& paths, const at::Tensor& coeffs) {
  using Acc = typename AccumulatorOf<In>::type;
  const cudaError_t err = launch_gaunt_sparse<In>(
      reinterpret_cast<const In*>(args.a.const_data_ptr<TorchIn>()),
      reinterpret_cast<const In*>(args.b.const_data_ptr<TorchIn>()),
      reinterpret_cast<In*>(args.out.mutable_data_ptr<TorchIn>()),
      reinterpret_cast<const PathEntry*>(paths.const_data_ptr<int32_t>()), coeffs.const_data_ptr<Acc>(),
      paths.size(0), args.rows, args.n1, args.n2, args.no, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "gaunt_tensor_product (CUDA): ", cudaGetErrorString(err),
              err == cudaErrorInvalidValue ? " (degrees too large for the shared-memory tile)" : "");
}

at::Tensor gaunt_tensor_product_cuda(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& paths,
                                     const at::Tensor& coeffs, int64_t lmax_out) {
  const c10::cuda::CUDAGuard guard(x1.device());
  const PreparedArgs args = prepare_rows(x1, x2, lmax_out, /*allow_half=*/true, /*materialize=*/true);
  const at::Tensor table = check_sparse_table(x1, paths, coeffs, args);
  if (args.out.numel() == 0) return args.out;
  const bool f64 = x1.scalar_type() == at::kDouble;
  const at::Tensor c = coeffs.to(f64 ? at::kDouble : at::kFloat).contiguous();
  dispatch_cuda_floating(x1.scalar_type(), "gaunt_tensor_product",
                         [&]<typename In, typename TorchIn>() { launch<In, TorchIn>(args, table, c); });
  return args.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CUDA, m) { m.impl("gaunt_tensor_product", &gaunt_tensor_product_cuda); }

}  // namespace symkernels::gaunt
