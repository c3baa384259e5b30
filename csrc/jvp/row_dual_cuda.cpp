// Torch glue of the CUDA row-dual kernel (row_dual_cuda.cu) for layer_norm_dual, rms_norm_dual and
// softmax_dual. As for linear_dual (see linear_dual_cuda.cpp), the kernel is the ops' CUDA kernel but runs
// for the public functions only with SYMKERNELS_JVP_NATIVE_CUDA=1 at call time: it was compile-checked but
// never run (no GPU), while the Triton row kernel is tested. Once measured it is the natural default —
// bandwidth-bound, no tensor-core gap to Triton, and no row-length limit (Triton's holds a row in
// registers, N <= 65536).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: it needs cuBLAS/cuSPARSE headers
#include <torch/library.h>

#include "common/cuda_dispatch.h"
#include "jvp/jvp_args.h"
#include "jvp/jvp_cuda.h"

namespace symkernels::jvp {
namespace {

template <typename In, typename TorchIn>
void launch(const RowArgs& a, at::Tensor& y, at::Tensor& y_t) {
  const auto in = [](const at::Tensor& t) { return data_or_null<In, TorchIn>(t); };
  const RowDualParams<In> p{in(a.x), in(a.x_t), in(a.weight), in(a.weight_t), in(a.bias), in(a.bias_t),
                            reinterpret_cast<In*>(y.mutable_data_ptr<TorchIn>()),
                            reinterpret_cast<In*>(y_t.mutable_data_ptr<TorchIn>()), a.R, a.N, a.T,
                            tangent_stride(a.Tx, a.R * a.N), tangent_stride(a.Tw, a.N), tangent_stride(a.Tb, a.N),
                            a.eps, int(a.kind)};
  const cudaError_t err = launch_row_dual<In>(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, row_op_name(a.kind), " (CUDA): ", cudaGetErrorString(err));
}

void row_dual_cuda(const RowArgs& a, at::Tensor& y, at::Tensor& y_t) {
  const c10::cuda::CUDAGuard guard(a.x.device());
  dispatch_cuda_floating(a.x.scalar_type(), row_op_name(a.kind),
                         [&]<typename In, typename TorchIn>() { launch<In, TorchIn>(a, y, y_t); });
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CUDA, m) { register_row_duals<row_dual_cuda>(m); }

}  // namespace symkernels::jvp
