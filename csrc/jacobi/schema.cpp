// Op schemas of the Jacobi pillar (see csrc/symkernels.cpp for why schemas live per pillar).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(symkernels, m) {
  // Up to `iters` Jacobi iterations of an RNN recurrence h_t = cell(u_t, h_{t-1}) (u = x W_ih^T + b_ih
  // precomputed), starting from the iterate h [T, B, H] whose first `start` timesteps are exact. Each
  // iteration evaluates every timestep >= the frozen pointer from the previous iterate, its residual and
  // the bitwise-unchanged prefix, and stops early when converged. With sequential=true, one ordinary
  // forward sweep from `start` instead (same per-row arithmetic: the bit-exact reference for Jacobi).
  // Returns the new iterate and stats [iters, 2] = (max residual, frozen pointer) per iteration done,
  // -1 for iterations not run.
  m.def("jacobi_rnn_iterate(Tensor u, Tensor h0, Tensor w_hh, Tensor b_hh, Tensor h, int start, int iters, "
        "float tol, str cell, str nonlinearity, bool sequential) -> (Tensor, Tensor)");
  // One iteration's convergence test and write-back for the general solver: compares the evaluated rows
  // `new` with the iterate's rows `old` (same shape, rows along dim 0) bitwise, then copies new into old.
  // Returns float64 [2] = (max |new − old| over moved values, inf if one is non-finite; index of the first
  // row that changed bitwise, or the row count).
  m.def("jacobi_commit(Tensor(a!) old, Tensor new) -> Tensor");
  // One Jacobi iteration's epilogue for the autoregressive samplers (MADE, PixelCNN), sampling and commit in one:
  // from the network output `out` ([B, D] logits for kind "bernoulli", [B, 2D] = (mean, log sigma) for
  // "gaussian") and the pre-drawn noise [B, D], the samples of columns start..stop−1 — (noise < sigmoid(out))
  // as 0/1, or mean + exp(log sigma) * noise — compared with rows start+1..stop of the iterate hist [D + 1, B]
  // and written into them. Returns what jacobi_commit returns for those rows.
  m.def("jacobi_sample_commit(Tensor(a!) hist, Tensor out, Tensor noise, int start, int stop, str kind) -> Tensor");
}
