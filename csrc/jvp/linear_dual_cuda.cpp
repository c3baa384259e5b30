// Torch glue of the CUDA linear_dual kernel (linear_dual_cuda.cu): checks, device guard, stream, dtypes.
//
// Registered as the op's CUDA kernel in every CUDA build, but opt-in for the public functions: they run it
// only with SYMKERNELS_JVP_NATIVE_CUDA=1 at call time, else the Triton kernel (symkernels/jvp/triton.py,
// tl.dot on tensor cores; the choice is symkernels.jvp.ops.resolve). The native kernel here is a SIMT
// (CUDA-core) tiled GEMM: a correct, compile-checked baseline with the seeded in-kernel tangent, but with
// no tensor cores it cannot beat tl.dot at the sizes the targets name, and no GPU was available to
// measure either. Benchmark both before flipping the default.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: it needs cuBLAS/cuSPARSE headers
#include <torch/library.h>

#include "common/cuda_dispatch.h"
#include "jvp/jvp_args.h"
#include "jvp/jvp_cuda.h"

namespace symkernels::jvp {
namespace {

template <typename In, typename TorchIn>
void launch(const LinearArgs& a, at::Tensor& y, at::Tensor& y_t) {
  const auto in = [](const at::Tensor& t) { return data_or_null<In, TorchIn>(t); };
  const LinearDualParams<In> p{in(a.x), in(a.x_t), in(a.weight), in(a.weight_t), in(a.bias), in(a.bias_t),
                               reinterpret_cast<In*>(y.mutable_data_ptr<TorchIn>()),
                               reinterpret_cast<In*>(y_t.mutable_data_ptr<TorchIn>()), a.M, a.N, a.K, a.T,
                               tangent_stride(a.Tx, a.M * a.K), tangent_stride(a.seed >= 0 ? 0 : a.Tw, a.N * a.K),
                               tangent_stride(a.Tb, a.N), int(a.act), a.seed, int(a.dist)};
  const cudaError_t err = launch_linear_dual<In>(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "linear_dual (CUDA): ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor> linear_dual_cuda(const at::Tensor& x, const std::optional<at::Tensor>& x_t,
                                                    const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& weight_t,
                                                    const std::optional<at::Tensor>& bias,
                                                    const std::optional<at::Tensor>& bias_t,
                                                    c10::string_view activation, int64_t num_tangents, int64_t seed,
                                                    c10::string_view distribution) {
  const c10::cuda::CUDAGuard guard(x.device());
  const LinearArgs a = prepare_linear_args(x, x_t, weight, weight_t, bias, bias_t, std::string(activation),
                                           num_tangents, seed, std::string(distribution));
  at::Tensor y = at::empty({a.M, a.N}, x.options());
  at::Tensor y_t = at::empty({a.T, a.M, a.N}, x.options());
  if (a.M == 0 || a.N == 0) return {y, y_t};
  dispatch_cuda_floating(x.scalar_type(), "linear_dual",
                         [&]<typename In, typename TorchIn>() { launch<In, TorchIn>(a, y, y_t); });
  return {y, y_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CUDA, m) { m.impl("linear_dual", TORCH_FN(linear_dual_cuda)); }

}  // namespace symkernels::jvp
