// Torch glue for the CUDA Jacobi RNN kernels: checks, buffers, the iteration loop queued without syncs.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#include <cmath>

#include <string>
#include <tuple>

#include "jacobi/jacobi_rnn.h"
#include "jacobi/jacobi_rnn_iterate_cuda.h"

namespace symkernels::jacobi {
namespace {

constexpr const char* kOp = "jacobi_rnn_iterate";

#define SYMKERNELS_CUDA_OK(expr)                                                      \
  do {                                                                                \
    const cudaError_t err_ = (expr);                                                  \
    TORCH_CHECK(err_ == cudaSuccess, kOp, ": CUDA error ", cudaGetErrorString(err_)); \
  } while (0)

template <typename T>
void run(const at::Tensor& u, const at::Tensor& h0, const at::Tensor& wt, const at::Tensor& b_hh, at::Tensor& cur,
         at::Tensor& stats, int64_t start, int64_t iters, double tol, int cell, bool sequential) {
  // `steps`, not `T`: T is the element type here.
  const int64_t steps = cur.size(0), B = cur.size(1), S = cur.size(2), H = wt.size(0), G = u.size(2), R = steps * B;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor nxt = at::empty_like(cur);
  at::Tensor resid = at::empty({R}, cur.options().dtype(at::kDouble));
  at::Tensor changed = at::empty({R}, cur.options().dtype(at::kInt));
  const T *pu = u.const_data_ptr<T>(), *ph0 = h0.const_data_ptr<T>(), *pw = wt.const_data_ptr<T>(),
          *pb = b_hh.const_data_ptr<T>();
  T *pc = cur.mutable_data_ptr<T>(), *pn = nxt.mutable_data_ptr<T>();
  if (sequential) {
    // Device copies of 0..T−1 serve as the per-timestep "pointer" of the same row kernel.
    const at::Tensor step_ids = at::arange(steps, cur.options().dtype(at::kLong));
    const int64_t* ps = step_ids.const_data_ptr<int64_t>();
    for (int64_t t = start; t < steps; ++t) {
      SYMKERNELS_CUDA_OK(cuda::launch_rnn_rows<T>(pu, ph0, pw, pb, pc, pn, resid.mutable_data_ptr<double>(),
                                                  changed.mutable_data_ptr<int>(), ps + t, (t + 1) * B, B, B, H, G,
                                                  S, cell, stream));
      SYMKERNELS_CUDA_OK(cuda::launch_commit_rows<T>(pc, pn, ps + t, (t + 1) * B, B, S, stream));
    }
    if (iters > 0) stats[0].copy_(at::tensor({0.0, double(steps)}, stats.options()));
    return;
  }
  at::Tensor ptr = at::full({1}, start, cur.options().dtype(at::kLong));
  at::Tensor kernel_ptr = ptr.clone();
  at::Tensor active = at::ones({1}, cur.options().dtype(at::kInt));
  for (int64_t it = 0; it < iters; ++it) {
    SYMKERNELS_CUDA_OK(cuda::launch_rnn_rows<T>(pu, ph0, pw, pb, pc, pn, resid.mutable_data_ptr<double>(),
                                                changed.mutable_data_ptr<int>(), kernel_ptr.const_data_ptr<int64_t>(),
                                                R, R - start * B, B, H, G, S, cell, stream));
    SYMKERNELS_CUDA_OK(cuda::launch_commit_rows<T>(pc, pn, kernel_ptr.const_data_ptr<int64_t>(), R, B, S, stream));
    SYMKERNELS_CUDA_OK(cuda::launch_advance(resid.const_data_ptr<double>(), changed.const_data_ptr<int>(),
                                            ptr.mutable_data_ptr<int64_t>(), kernel_ptr.mutable_data_ptr<int64_t>(),
                                            active.mutable_data_ptr<int>(), stats.mutable_data_ptr<double>() + 2 * it,
                                            steps, B, tol, stream));
  }
}

std::tuple<at::Tensor, at::Tensor> jacobi_rnn_iterate_cuda(const at::Tensor& u, const at::Tensor& h0,
                                                           const at::Tensor& w_hh, const at::Tensor& b_hh,
                                                           const at::Tensor& h, int64_t start, int64_t iters,
                                                           double tol, c10::string_view cell_name,
                                                           c10::string_view nonlinearity, bool sequential) {
  const std::string c(cell_name), nl(nonlinearity);
  TORCH_CHECK_VALUE((c == "elman" && (nl == "tanh" || nl == "relu")) || ((c == "gru" || c == "lstm") && nl == "tanh"),
                    kOp, ": cell/nonlinearity must be elman/tanh, elman/relu, gru/tanh or lstm/tanh, got ", c, "/", nl);
  const int cell = c == "gru" ? kGru : c == "lstm" ? kLstm : (nl == "tanh" ? kElmanTanh : kElmanRelu);
  TORCH_CHECK_TYPE(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble, kOp,
                   ": u must be float32 or float64, got ", u.scalar_type());
  TORCH_CHECK_VALUE(h.dim() == 3 && w_hh.dim() == 2, kOp, ": h must be [T, B, S] and w_hh [G, H], got ", h.sizes(),
                    " and ", w_hh.sizes());
  // S: the state width, H for Elman/GRU and 2H for the LSTM's [h | c].
  const int64_t T = h.size(0), B = h.size(1), S = h.size(2), H = w_hh.size(1), G = gates(cell) * H;
  TORCH_CHECK_VALUE(S == state_parts(cell) * H, kOp, ": h must be [T, B, ", state_parts(cell), "*H] with H = ",
                    "w_hh.size(1) = ", H, ", got ", h.sizes());
  TORCH_CHECK_VALUE(H <= cuda::kMaxHidden, kOp, ": CUDA kernel supports H <= ", cuda::kMaxHidden, ", got ", H);
  TORCH_CHECK_VALUE(u.dim() == 3 && u.size(0) == T && u.size(1) == B && u.size(2) == G, kOp, ": u must be [", T,
                    ", ", B, ", ", G, "], got ", u.sizes());
  TORCH_CHECK_VALUE(h0.sizes() == at::IntArrayRef({B, S}), kOp, ": h0 must be [", B, ", ", S, "], got ", h0.sizes());
  TORCH_CHECK_VALUE(w_hh.sizes() == at::IntArrayRef({G, H}), kOp, ": w_hh must be [", G, ", ", H, "], got ",
                    w_hh.sizes());
  TORCH_CHECK_VALUE(b_hh.sizes() == at::IntArrayRef({G}), kOp, ": b_hh must be [", G, "], got ", b_hh.sizes());
  TORCH_CHECK_VALUE(start >= 0 && start <= T && iters >= 0 && std::isfinite(tol) && tol >= 0, kOp,
                    ": need 0 <= start <= T, iters >= 0, finite tol >= 0");
  for (const at::Tensor* t : {&h0, &w_hh, &b_hh, &h}) {
    TORCH_CHECK_TYPE(t->scalar_type() == u.scalar_type(), kOp, ": all tensors must have u's dtype ",
                     u.scalar_type());
  }
  c10::cuda::CUDAGuard guard(h.device());
  at::Tensor cur = h.contiguous().clone();
  at::Tensor stats = at::full({iters, 2}, -1.0, h.options().dtype(at::kDouble));
  if (T == 0 || B == 0 || H == 0 || start >= T) {
    if (iters > 0) stats[0].copy_(at::tensor({0.0, double(T)}, stats.options()));
    return {cur, stats};
  }
  const at::Tensor wt = w_hh.t().contiguous();
  if (u.scalar_type() == at::kFloat) {
    run<float>(u.contiguous(), h0.contiguous(), wt, b_hh.contiguous(), cur, stats, start, iters, tol, cell, sequential);
  } else {
    run<double>(u.contiguous(), h0.contiguous(), wt, b_hh.contiguous(), cur, stats, start, iters, tol, cell,
                sequential);
  }
  return {cur, stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CUDA, m) { m.impl("jacobi_rnn_iterate", &jacobi_rnn_iterate_cuda); }

}  // namespace symkernels::jacobi
