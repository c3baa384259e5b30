// CPU Jacobi iteration for Elman (tanh/ReLU), GRU and LSTM recurrences.
//
// Exactness rests on one rule: every row (timestep t, batch b) is computed by the same code (`eval_rows`)
// with the same operation order, whether the call evaluates one timestep (sequential sweep) or all of them
// (Jacobi). The recurrent mat-vec is a sum of axpys over k into vector accumulators of gate values seeded
// with b_hh — a fixed order, independent of the number of rows — so a row's bits never depend on how many
// rows are evaluated together, and the Jacobi fixed point is bitwise the sequential result.
//
// One call runs up to `iters` iterations; convergence is tested after each one here on the host for free
// (CPU), so the Python driver only needs a call per `check_every` iterations.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/simd.h"
#include "jacobi/jacobi_rnn.h"

namespace symkernels::jacobi {
namespace {

constexpr const char* kOp = "jacobi_rnn_iterate";
// Rows per parallel task: at least this many multiply-adds (~0.25 ms). An iteration is a few hundred µs
// for T·B ~ 1k rows, and a thread barrier per iteration costs more than that on a loaded machine, so only
// large iterations are split across threads.
constexpr int64_t kFmasPerTask = 1 << 20;
// Register tile of the recurrent mat-mat: kRowBlock rows × kColVecs vectors of gate values, one accumulator
// each (8 independent FMA chains: enough to cover the FMA latency on two ports). Rows left over at the end
// of a range go through the 1-row instantiation of the same tile code.
constexpr int kRowBlock = 4;
constexpr int kColVecs = 2;

// Internal layout (all row-major, padded with zeros so that every loop runs over whole vectors):
//   state S  [(T+1)·B, Sp]: rows 0..B−1 hold s0 and row B + (t·B + b) holds s_t[b], so the previous state of
//            row r is simply row r of S (no t = 0 branch). A state row is h (Sp = Hp), or [h | c] for the
//            LSTM (Sp = 2·Hp, c at offset Hp); the mat-vec reads the first H values, h;
//   u        [T·B, Gp] and W_hh^T [H, Gp], b_hh [Gp], with Gp = gates·Hp: gate g's values of hidden unit j
//            sit at g·Hp + j, so the cell reads gate g of a vector of units at a vector-aligned offset.
// Hp = H rounded up to whole vectors. The padding lanes stay zero through every cell (tanh(0) = relu(0) = 0,
// GRU: ½·tanh(0) + ½·0 = 0; LSTM: c = ½·0 + ½·tanh(0) = 0, h = ½·tanh(0) = 0), so they never register as
// changed and never add to a residual.
struct Problem {
  int64_t T, B, H, Hp, Gp, Sp;
  int cell;
};

template <typename T>
using VecT = typename simd::Vec<T>::type;
template <typename T>
using IVecT = typename simd::Vec<T>::index;

template <typename V, typename S>
SYMKERNELS_INLINE V splat(S s) {
  return V{} + s;
}

// float exp/tanh/sigmoid on whole vectors, branch-free (glibc's scalar tanhf was more than half the iteration
// time). Accuracy: exp within ~2 ulp (Cody–Waite reduction, degree-7 Taylor on |r| <= ln2/2, remainder < 1e-8
// relative); tanh within ~1e-7 absolute. They need only be deterministic for exactness (the Jacobi and the
// sequential sweep run this same code); against torch.tanh they agree to the float32 tolerance.
using VF = VecT<float>;
using VI = IVecT<float>;

SYMKERNELS_INLINE VF exp_fast(VF x) {
  x = x < -87.0f ? splat<VF>(-87.0f) : x;  // NaN fails both tests and stays NaN
  x = x > 88.0f ? splat<VF>(88.0f) : x;
  const float shifter = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer
  const VF n = (x * 1.44269504f + shifter) - shifter;
  const VF r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  // ln2 split so n·hi is exact
  VF p = splat<VF>(1.0f / 5040);
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  return p * __builtin_bit_cast(VF, bits);
}

SYMKERNELS_INLINE VF tanh_fast(VF x) {
  const VI sign_mask = splat<VI>(int(0x80000000u));
  const VI xb = __builtin_bit_cast(VI, x);
  const VI ab = xb & ~sign_mask;
  const VF a = __builtin_bit_cast(VF, ab), x2 = x * x;
  // Small |x|: odd Taylor series (next term 62/2835·x^9, < 1e-11 relative below 1/16), avoiding 1 − e^{−2a}
  // cancellation; else (1 − e^{−2a}) / (1 + e^{−2a}) with x's sign.
  const VF small = x * (1.0f + x2 * (-1.0f / 3 + x2 * (2.0f / 15 + x2 * (-17.0f / 315))));
  const VF e = exp_fast(-2.0f * a);
  const VF big_abs = (1.0f - e) / (1.0f + e);
  const VI big_bits = __builtin_bit_cast(VI, big_abs) | (xb & sign_mask);
  return a < 0.0625f ? small : __builtin_bit_cast(VF, big_bits);
}

SYMKERNELS_INLINE VF act_tanh(VF x) { return tanh_fast(x); }
SYMKERNELS_INLINE VF act_sigmoid(VF x) { return 1.0f / (1.0f + exp_fast(-x)); }

// float64 keeps libm's tanh/exp, lane by lane (the float64 path is for accuracy, not speed).
using VD = VecT<double>;
SYMKERNELS_INLINE VD act_tanh(VD x) {
  for (int i = 0; i < simd::Vec<double>::width; ++i) x[i] = std::tanh(x[i]);
  return x;
}
SYMKERNELS_INLINE VD act_sigmoid(VD x) {
  for (int i = 0; i < simd::Vec<double>::width; ++i) x[i] = 1.0 / (1.0 + std::exp(-x[i]));
  return x;
}

// gh[i] = b_hh + W_hh h_prev[i] for `Rows` rows, `Cols` vectors of gate values starting at j0. Every gate value
// is one accumulator seeded with b_hh, then += W^T[k] · h_prev[k] for k = 0..H−1 in order: the arithmetic of
// a value never depends on Rows, Cols or which rows share the tile, so the Jacobi fixed point is bitwise the
// sequential sweep.
template <typename T, int Rows, int Cols>
SYMKERNELS_INLINE void gate_tile(const Problem& p, const T* wt, const T* b_hh, const T* const* hp, T* gh,
                                 int64_t j0) {
  using V = VecT<T>;
  constexpr int64_t W = simd::Vec<T>::width;
  V acc[Rows][Cols];
  for (int c = 0; c < Cols; ++c) {
    const V b = simd::load<V>(b_hh + j0 + c * W);
    for (int i = 0; i < Rows; ++i) acc[i][c] = b;
  }
  const T* w = wt + j0;
  for (int64_t k = 0; k < p.H; ++k, w += p.Gp) {
    V wv[Cols];
    for (int c = 0; c < Cols; ++c) wv[c] = simd::load<V>(w + c * W);
    for (int i = 0; i < Rows; ++i) {
      const T h = hp[i][k];
      for (int c = 0; c < Cols; ++c) acc[i][c] += wv[c] * h;
    }
  }
  for (int i = 0; i < Rows; ++i)
    for (int c = 0; c < Cols; ++c) simd::store(gh + i * p.Gp + j0 + c * W, acc[i][c]);
}

template <typename T, int Rows>
SYMKERNELS_INLINE void gate_rows(const Problem& p, const T* wt, const T* b_hh, const T* const* hp, T* gh) {
  constexpr int64_t W = simd::Vec<T>::width;
  int64_t j0 = 0;
  for (; j0 + kColVecs * W <= p.Gp; j0 += kColVecs * W) gate_tile<T, Rows, kColVecs>(p, wt, b_hh, hp, gh, j0);
  for (; j0 < p.Gp; j0 += W) gate_tile<T, Rows, 1>(p, wt, b_hh, hp, gh, j0);
}

// Convergence test of one vector of new state values against the old ones, fused into the cell: accumulates
// max|o − prev| over the lanes whose bits changed (+inf if such a lane is non-finite: NaN must not look
// converged) and which lanes changed at all.
template <typename T>
struct RowChange {
  using V = VecT<T>;
  using I = IVecT<T>;
  V rmax{};
  I diff_any{};

  SYMKERNELS_INLINE void track(V o, V prev) {
    const I differ = __builtin_bit_cast(I, o) != __builtin_bit_cast(I, prev);
    V d = o - prev;
    d = d < T(0) ? -d : d;
    d = d == d ? d : splat<V>(std::numeric_limits<T>::infinity());  // inf − inf, NaN: moved non-finite
    d = differ ? d : V{};
    rmax = d > rmax ? d : rmax;
    diff_any |= differ;
  }

  SYMKERNELS_INLINE double finish(bool& changed) const {
    T r = 0;
    bool any = false;
    for (int i = 0; i < simd::Vec<T>::width; ++i) {
      r = std::max(r, rmax[i]);
      any |= diff_any[i] != 0;
    }
    changed = any;
    return double(r);
  }
};

// The cell on one row (whole vectors), fused with the row's convergence test against `old`: writes the new
// state row to `out` (which may alias `old`), returns the row's residual and sets `changed` (RowChange).
template <typename T>
SYMKERNELS_INLINE double cell_row(const Problem& p, const T* u, const T* gh, const T* h_prev, const T* old, T* out,
                                  bool& changed) {
  using V = VecT<T>;
  constexpr int64_t W = simd::Vec<T>::width;
  const int64_t Hp = p.Hp;
  RowChange<T> change;
  for (int64_t j = 0; j < Hp; j += W) {
    V o;
    if (p.cell == kElmanTanh) {
      o = act_tanh(simd::load<V>(u + j) + simd::load<V>(gh + j));
    } else if (p.cell == kElmanRelu) {
      const V a = simd::load<V>(u + j) + simd::load<V>(gh + j);
      o = a > T(0) ? a : (a != a ? a : V{});  // NaN propagates, like torch.relu
    } else if (p.cell == kGru) {  // gates r, z, n as in torch.nn.GRU
      const V r = act_sigmoid(simd::load<V>(u + j) + simd::load<V>(gh + j));
      const V z = act_sigmoid(simd::load<V>(u + Hp + j) + simd::load<V>(gh + Hp + j));
      const V n = act_tanh(simd::load<V>(u + 2 * Hp + j) + r * simd::load<V>(gh + 2 * Hp + j));
      o = (T(1) - z) * n + z * simd::load<V>(h_prev + j);
    } else {  // LSTM, gates i, f, g, o as in torch.nn.LSTM; the cell state c sits at offset Hp of the row
      const V i = act_sigmoid(simd::load<V>(u + j) + simd::load<V>(gh + j));
      const V f = act_sigmoid(simd::load<V>(u + Hp + j) + simd::load<V>(gh + Hp + j));
      const V g = act_tanh(simd::load<V>(u + 2 * Hp + j) + simd::load<V>(gh + 2 * Hp + j));
      const V og = act_sigmoid(simd::load<V>(u + 3 * Hp + j) + simd::load<V>(gh + 3 * Hp + j));
      const V c = f * simd::load<V>(h_prev + Hp + j) + i * g;
      o = og * act_tanh(c);
      change.track(c, simd::load<V>(old + Hp + j));
      simd::store(out + Hp + j, c);
    }
    change.track(o, simd::load<V>(old + j));
    simd::store(out + j, o);
  }
  return change.finish(changed);
}

// Rows [row_begin, row_end) (row = t·B + b) from the state `prev_state` (layout above) into `out_state`,
// recording each row's residual and changed flag against `old_state`.
template <typename T>
SYMKERNELS_INLINE void eval_rows(const Problem& p, const T* u, const T* wt, const T* b_hh, const T* prev_state,
                                 const T* old_state, T* out_state, double* resid, uint8_t* changed,
                                 int64_t row_begin, int64_t row_end, T* gh) {
  const int64_t Sp = p.Sp;
  int64_t row = row_begin;
  while (row < row_end) {
    const int rows = row + kRowBlock <= row_end ? kRowBlock : 1;
    const T* hp[kRowBlock];
    for (int i = 0; i < rows; ++i) hp[i] = prev_state + (row + i) * Sp;
    if (rows == kRowBlock) {
      gate_rows<T, kRowBlock>(p, wt, b_hh, hp, gh);
    } else {
      gate_rows<T, 1>(p, wt, b_hh, hp, gh);
    }
    for (int i = 0; i < rows; ++i) {
      const int64_t r = row + i, s = r + p.B;  // state row of timestep row r
      bool moved;
      resid[r] = cell_row(p, u + r * p.Gp, gh + i * p.Gp, hp[i], old_state + s * Sp, out_state + s * Sp, moved);
      changed[r] = moved;
    }
    row += rows;
  }
}

#define SYMKERNELS_EVAL_ROWS(T, name)                                                                           \
  SYMKERNELS_ISA_ENTRY_POINTS(name,                                                                            \
                              (const Problem& p, const T* u, const T* wt, const T* b_hh, const T* prev,         \
                               const T* old, T* out, double* resid, uint8_t* changed, int64_t rb, int64_t re,  \
                               T* gh),                                                                         \
                              (p, u, wt, b_hh, prev, old, out, resid, changed, rb, re, gh),                     \
                              eval_rows(p, u, wt, b_hh, prev, old, out, resid, changed, rb, re, gh))
SYMKERNELS_EVAL_ROWS(float, eval_rows_f32)
SYMKERNELS_EVAL_ROWS(double, eval_rows_f64)
#undef SYMKERNELS_EVAL_ROWS

template <typename T>
void eval_range(const Problem& p, const T* u, const T* wt, const T* b_hh, const T* prev, const T* old, T* out,
                double* resid, uint8_t* changed, int64_t rb, int64_t re) {
  const int64_t grain = std::max<int64_t>(kRowBlock, kFmasPerTask / std::max<int64_t>(1, p.H * p.Gp));
  at::parallel_for(rb, re, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> gh(kRowBlock * p.Gp);
    if constexpr (std::is_same_v<T, float>) {
      eval_rows_f32(p, u, wt, b_hh, prev, old, out, resid, changed, begin, end, gh.data());
    } else {
      eval_rows_f64(p, u, wt, b_hh, prev, old, out, resid, changed, begin, end, gh.data());
    }
  });
}

int parse_cell(const std::string& cell, const std::string& nonlinearity) {
  TORCH_CHECK_VALUE(cell == "elman" || cell == "gru" || cell == "lstm", kOp,
                    ": cell must be 'elman', 'gru' or 'lstm', got '", cell, "'");
  TORCH_CHECK_VALUE(nonlinearity == "tanh" || nonlinearity == "relu", kOp,
                    ": nonlinearity must be 'tanh' or 'relu', got '", nonlinearity, "'");
  TORCH_CHECK_VALUE(cell == "elman" || nonlinearity == "tanh", kOp, ": the ", cell, " cell has no nonlinearity "
                    "choice (tanh), got nonlinearity='", nonlinearity, "'");
  if (cell == "gru") return kGru;
  if (cell == "lstm") return kLstm;
  return nonlinearity == "tanh" ? kElmanTanh : kElmanRelu;
}

// `state` [(T+1)·B, Sp] is updated in place; `stats` receives one (residual, pointer) pair per iteration.
template <typename T>
void run(const Problem& p, const T* u, const T* wt, const T* b_hh, at::Tensor& state, double* st, int64_t start,
         int64_t iters, double tol, bool sequential) {
  const int64_t R = p.T * p.B, Sp = p.Sp;
  std::vector<double> resid(R);
  std::vector<uint8_t> changed(R);
  T* cur = state.mutable_data_ptr<T>();
  if (sequential) {
    // One Gauss–Seidel sweep in place: timestep t reads timestep t−1 of the same buffer, already updated.
    for (int64_t t = start; t < p.T; ++t) {
      eval_range<T>(p, u, wt, b_hh, cur, cur, cur, resid.data(), changed.data(), t * p.B, (t + 1) * p.B);
    }
    if (iters > 0) {
      st[0] = 0;
      st[1] = double(p.T);
    }
    return;
  }
  // Two state buffers, swapped each iteration (no copy of the live suffix): the iteration reads `cur` and
  // writes the rows >= the pointer of `nxt`. Below the pointer both buffers must agree, so the rows that
  // the iteration froze are copied back into the other buffer (one timestep per iteration, typically).
  at::Tensor other = state.clone();
  T* nxt = other.mutable_data_ptr<T>();
  int64_t ptr = start;
  for (int64_t it = 0; it < iters && ptr < p.T; ++it) {
    const int64_t rb = ptr * p.B;
    eval_range<T>(p, u, wt, b_hh, cur, cur, nxt, resid.data(), changed.data(), rb, R);
    double r = 0;
    int64_t first_changed_row = R;
    for (int64_t row = rb; row < R; ++row) {
      r = std::max(r, resid[row]);
      if (changed[row] && first_changed_row == R) first_changed_row = row;
    }
    // Timesteps before the first changed one satisfied their equations from an exact prefix, and the
    // first changed one was computed from them: all are exact (see symkernels/jacobi/solver.py).
    const int64_t q = first_changed_row / p.B;
    const int64_t new_ptr = std::min(p.T, std::max(ptr + 1, q + 1));
    std::swap(cur, nxt);
    std::memcpy(nxt + (rb + p.B) * Sp, cur + (rb + p.B) * Sp, sizeof(T) * (new_ptr - ptr) * p.B * Sp);
    ptr = new_ptr;
    st[2 * it] = r;
    st[2 * it + 1] = double(ptr);
    if (!std::isfinite(r)) break;    // the caller falls back to the exact sequential sweep
    if (tol > 0 && r <= tol) break;  // tolerance reached
  }
  if (cur != state.mutable_data_ptr<T>()) state = other;
}

std::tuple<at::Tensor, at::Tensor> jacobi_rnn_iterate_cpu(const at::Tensor& u, const at::Tensor& h0,
                                                          const at::Tensor& w_hh, const at::Tensor& b_hh,
                                                          const at::Tensor& h, int64_t start, int64_t iters,
                                                          double tol, c10::string_view cell_name,
                                                          c10::string_view nonlinearity, bool sequential) {
  const int cell = parse_cell(std::string(cell_name), std::string(nonlinearity));
  TORCH_CHECK_TYPE(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble, kOp,
                   ": u must be float32 or float64, got ", u.scalar_type());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"h0", h0}, {"w_hh", w_hh},
                                {"b_hh", b_hh}, {"h", h}}) {
    TORCH_CHECK_TYPE(t.scalar_type() == u.scalar_type(), kOp, ": ", name, " must have u's dtype ",
                     u.scalar_type(), ", got ", t.scalar_type());
  }
  TORCH_CHECK_VALUE(h.dim() == 3, kOp, ": h must be [T, B, S], got shape ", h.sizes());
  TORCH_CHECK_VALUE(w_hh.dim() == 2, kOp, ": w_hh must be [G, H], got shape ", w_hh.sizes());
  // S: the state width, H for Elman/GRU and 2H for the LSTM's [h | c].
  const int64_t T = h.size(0), B = h.size(1), S = h.size(2), H = w_hh.size(1), G = gates(cell) * H;
  const int64_t parts = state_parts(cell);
  TORCH_CHECK_VALUE(S == parts * H, kOp, ": h must be [T, B, ", parts == 2 ? "2*" : "", "H] with H = w_hh.size(1) = ",
                    H, ", got ", h.sizes());
  TORCH_CHECK_VALUE(u.dim() == 3 && u.size(0) == T && u.size(1) == B && u.size(2) == G, kOp, ": u must be [T, B, ",
                    gates(cell), "*H] = [", T, ", ", B, ", ", G, "], got ", u.sizes());
  TORCH_CHECK_VALUE(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == S, kOp, ": h0 must be [B, S] = [", B, ", ",
                    S, "], got ", h0.sizes());
  TORCH_CHECK_VALUE(w_hh.dim() == 2 && w_hh.size(0) == G && w_hh.size(1) == H, kOp, ": w_hh must be [", G, ", ",
                    H, "], got ", w_hh.sizes());
  TORCH_CHECK_VALUE(b_hh.dim() == 1 && b_hh.size(0) == G, kOp, ": b_hh must be [", G, "], got ", b_hh.sizes());
  TORCH_CHECK_VALUE(start >= 0 && start <= T, kOp, ": start must be in [0, T=", T, "], got ", start);
  TORCH_CHECK_VALUE(iters >= 0, kOp, ": iters must be >= 0, got ", iters);
  TORCH_CHECK_VALUE(std::isfinite(tol) && tol >= 0, kOp, ": tol must be finite and >= 0, got ", tol);

  at::Tensor stats = at::full({iters, 2}, -1.0, h.options().dtype(at::kDouble));
  if (T == 0 || B == 0 || H == 0 || start >= T) {  // nothing left to compute: report "converged at T"
    if (iters > 0) {
      auto s = stats.accessor<double, 2>();
      s[0][0] = 0;
      s[0][1] = double(T);
    }
    return {h.contiguous().clone(), stats};
  }
  // The padded internal layout (see Problem): one copy in and out per call, none per iteration.
  const int64_t width = u.scalar_type() == at::kFloat ? simd::Vec<float>::width : simd::Vec<double>::width;
  const int64_t gc = gates(cell), Hp = (H + width - 1) / width * width, R = T * B;
  const Problem p{T, B, H, Hp, gc * Hp, parts * Hp, cell};
  at::Tensor state = at::zeros({T + 1, B, parts, Hp}, u.options());
  state.select(0, 0).narrow(2, 0, H).copy_(h0.reshape({B, parts, H}));
  state.narrow(0, 1, T).narrow(3, 0, H).copy_(h.reshape({T, B, parts, H}));
  at::Tensor up = at::zeros({R, gc, Hp}, u.options());
  up.narrow(2, 0, H).copy_(u.reshape({R, gc, H}));
  at::Tensor wt = at::zeros({H, gc, Hp}, u.options());  // wt[k, g, j] = w_hh[g·H + j, k]
  wt.narrow(2, 0, H).copy_(w_hh.reshape({gc, H, H}).permute({2, 0, 1}));
  at::Tensor bp = at::zeros({gc, Hp}, u.options());
  bp.narrow(1, 0, H).copy_(b_hh.reshape({gc, H}));
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), kOp, [&] {
    run<scalar_t>(p, up.const_data_ptr<scalar_t>(), wt.const_data_ptr<scalar_t>(), bp.const_data_ptr<scalar_t>(),
                  state, stats.mutable_data_ptr<double>(), start, iters, tol, sequential);
  });
  return {state.narrow(0, 1, T).narrow(3, 0, H).reshape({T, B, S}).contiguous(), stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CPU, m) { m.impl("jacobi_rnn_iterate", &jacobi_rnn_iterate_cpu); }

}  // namespace symkernels::jacobi
