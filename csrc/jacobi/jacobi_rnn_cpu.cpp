// CPU Jacobi iteration for Elman (tanh/ReLU) and GRU recurrences.
//
// Exactness rests on one rule: every row (timestep t, batch b) is computed by the same code (`eval_rows`)
// with the same operation order, whether the call evaluates one timestep (sequential sweep) or all of them
// (Jacobi). The recurrent mat-vec is a sum of axpys over k into vector accumulators of gate values seeded
// with b_hh — a fixed order, independent of the number of rows — so a row's bits never depend on how many
// rows are evaluated together, and the Jacobi fixed point is bitwise the sequential result.
//
// One call runs up to `iters` iterations; convergence is tested after each one here on the host for free
// (CPU), so the Python driver only needs a call per `check_every` iterations.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
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
// Rows evaluated together by the mat-vec (register blocking; see eval_rows).
constexpr int kRowBlock = 4;

struct Problem {
  int64_t T, B, H, G, Gp;  // Gp: G rounded up to whole vectors (the padded W_hh^T and b_hh are zero there)
  int cell;
};

// float exp/tanh/sigmoid written branch-free so that the per-row loops over hidden units vectorize (glibc's
// scalar tanhf was more than half the iteration time). Accuracy: exp within ~2 ulp (Cody–Waite reduction,
// degree-7 Taylor on |r| <= ln2/2, remainder < 1e-8 relative); tanh within ~1e-7 absolute. They only
// need to be deterministic for exactness (the Jacobi/sequential comparison uses this same code); against
// torch.tanh they agree to the float32 tolerance. float64 keeps libm's tanh/exp.
SYMKERNELS_INLINE float exp_fast(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);  // NaN fails both tests and stays NaN
  const float shifter = 12582912.0f;                   // 1.5·2^23: adding it rounds to an integer
  const float n = (x * 1.44269504f + shifter) - shifter;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  // ln2 split so n·hi is exact
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

SYMKERNELS_INLINE float tanh_fast(float x) {
  const float a = std::fabs(x), x2 = x * x;
  // Small |x|: odd Taylor series (next term 62/2835·x^9, < 1e-11 relative below 1/16), avoiding 1 − e^{−2a}
  // cancellation; else (1 − e^{−2a}) / (1 + e^{−2a}).
  const float small = x * (1.0f + x2 * (-1.0f / 3 + x2 * (2.0f / 15 + x2 * (-17.0f / 315))));
  const float e = exp_fast(-2.0f * a);
  const float big = std::copysign((1.0f - e) / (1.0f + e), x);
  return a < 0.0625f ? small : big;
}

SYMKERNELS_INLINE float act_tanh(float x) { return tanh_fast(x); }
SYMKERNELS_INLINE double act_tanh(double x) { return std::tanh(x); }
SYMKERNELS_INLINE float act_sigmoid(float x) { return 1.0f / (1.0f + exp_fast(-x)); }
SYMKERNELS_INLINE double act_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Evaluate rows [row_begin, row_end) (row = t·B + b) from `prev_iterate` into `out`, recording per row
// max|out − old| (inf if non-finite and moved) and whether any bit changed versus `old`.
// gh = b_hh + W_hh h_prev runs over vectors of W gate values with two accumulators (even and odd k) to
// halve the FMA latency chain: a fixed order, identical for every row.
template <typename T>
SYMKERNELS_INLINE void eval_rows(const Problem& p, const T* u, const T* h0, const T* wt, const T* b_hh,
                                 const T* prev_iterate, const T* old, T* out, double* resid, uint8_t* changed,
                                 int64_t row_begin, int64_t row_end, T* gh) {
  using V = typename simd::Vec<T>::type;
  constexpr int64_t W = simd::Vec<T>::width;
  const int64_t H = p.H, Gp = p.Gp;
  for (int64_t group = row_begin; group < row_end; group += kRowBlock) {
    // kRowBlock rows share each load of W_hh^T. The tail group repeats its last row in the unused slots, so
    // every row — in any group, in the Jacobi or the sequential sweep — runs the very same instructions.
    const T* hp[kRowBlock];
    for (int i = 0; i < kRowBlock; ++i) {
      const int64_t row = std::min<int64_t>(group + i, row_end - 1);
      const int64_t t = row / p.B, b = row % p.B;
      hp[i] = t == 0 ? h0 + b * H : prev_iterate + (row - p.B) * H;
    }
    for (int64_t j0 = 0; j0 < Gp; j0 += W) {
      V a0[kRowBlock], a1[kRowBlock];
      for (int i = 0; i < kRowBlock; ++i) {
        a0[i] = simd::load<V>(b_hh + j0);
        a1[i] = V{};
      }
      int64_t k = 0;
      for (; k + 1 < H; k += 2) {
        const V w0 = simd::load<V>(wt + k * Gp + j0), w1 = simd::load<V>(wt + (k + 1) * Gp + j0);
        for (int i = 0; i < kRowBlock; ++i) {
          a0[i] += w0 * hp[i][k];
          a1[i] += w1 * hp[i][k + 1];
        }
      }
      if (k < H) {
        const V w0 = simd::load<V>(wt + k * Gp + j0);
        for (int i = 0; i < kRowBlock; ++i) a0[i] += w0 * hp[i][k];
      }
      for (int i = 0; i < kRowBlock; ++i) simd::store(gh + i * Gp + j0, a0[i] + a1[i]);
    }
    for (int i = 0; i < kRowBlock && group + i < row_end; ++i) {
      const int64_t row = group + i;
      const T* h_prev = hp[i];
      const T* gr = gh + i * Gp;
      const T* ur = u + row * p.G;
      T* o = out + row * H;
      if (p.cell == kElmanTanh) {
        for (int64_t j = 0; j < H; ++j) o[j] = act_tanh(ur[j] + gr[j]);
      } else if (p.cell == kElmanRelu) {
        for (int64_t j = 0; j < H; ++j) {
          const T a = ur[j] + gr[j];
          o[j] = a > T(0) ? a : (a != a ? a : T(0));  // NaN propagates, like torch.relu
        }
      } else {
        // GRU, gates r, z, n as in torch.nn.GRU.
        for (int64_t j = 0; j < H; ++j) {
          const T r = act_sigmoid(ur[j] + gr[j]);
          const T z = act_sigmoid(ur[H + j] + gr[H + j]);
          const T n = act_tanh(ur[2 * H + j] + r * gr[2 * H + j]);
          o[j] = (T(1) - z) * n + z * h_prev[j];
        }
      }
      const T* o_old = old + row * H;
      double r = 0;
      const bool moved = std::memcmp(o, o_old, sizeof(T) * H) != 0;
      if (moved) {
        for (int64_t j = 0; j < H; ++j) {
          const double d = std::fabs(double(o[j]) - double(o_old[j]));
          // A non-finite value that moved counts as infinite residual (NaN must not look converged).
          r = std::max(r, std::isfinite(d) ? d : std::numeric_limits<double>::infinity());
        }
      }
      resid[row] = r;
      changed[row] = moved;
    }
  }
}

SYMKERNELS_SIMD_CLONES void eval_rows_f32(const Problem& p, const float* u, const float* h0, const float* wt,
                                          const float* b_hh, const float* prev, const float* old, float* out,
                                          double* resid, uint8_t* changed, int64_t rb, int64_t re, float* gh) {
  eval_rows(p, u, h0, wt, b_hh, prev, old, out, resid, changed, rb, re, gh);
}

SYMKERNELS_SIMD_CLONES void eval_rows_f64(const Problem& p, const double* u, const double* h0, const double* wt,
                                          const double* b_hh, const double* prev, const double* old, double* out,
                                          double* resid, uint8_t* changed, int64_t rb, int64_t re, double* gh) {
  eval_rows(p, u, h0, wt, b_hh, prev, old, out, resid, changed, rb, re, gh);
}

template <typename T>
void eval_range(const Problem& p, const T* u, const T* h0, const T* wt, const T* b_hh, const T* prev, const T* old,
                T* out, double* resid, uint8_t* changed, int64_t rb, int64_t re) {
  const int64_t grain = std::max<int64_t>(1, kFmasPerTask / std::max<int64_t>(1, p.H * p.G));
  at::parallel_for(rb, re, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> gh(kRowBlock * p.Gp);
    if constexpr (std::is_same_v<T, float>) {
      eval_rows_f32(p, u, h0, wt, b_hh, prev, old, out, resid, changed, begin, end, gh.data());
    } else {
      eval_rows_f64(p, u, h0, wt, b_hh, prev, old, out, resid, changed, begin, end, gh.data());
    }
  });
}

int parse_cell(const std::string& cell, const std::string& nonlinearity) {
  TORCH_CHECK_VALUE(cell == "elman" || cell == "gru", kOp, ": cell must be 'elman' or 'gru', got '", cell, "'");
  TORCH_CHECK_VALUE(nonlinearity == "tanh" || nonlinearity == "relu", kOp,
                    ": nonlinearity must be 'tanh' or 'relu', got '", nonlinearity, "'");
  TORCH_CHECK_VALUE(cell == "elman" || nonlinearity == "tanh", kOp, ": the GRU cell has no nonlinearity choice "
                    "(its candidate uses tanh), got nonlinearity='", nonlinearity, "'");
  if (cell == "gru") return kGru;
  return nonlinearity == "tanh" ? kElmanTanh : kElmanRelu;
}

template <typename T>
void run(const Problem& p, const at::Tensor& u, const at::Tensor& h0, const at::Tensor& wt, const at::Tensor& b_hh,
         at::Tensor& cur, at::Tensor& stats, int64_t start, int64_t iters, double tol, bool sequential) {
  const int64_t R = p.T * p.B, H = p.H;
  at::Tensor nxt = at::empty_like(cur);
  std::vector<double> resid(R);
  std::vector<uint8_t> changed(R);
  const T *pu = u.const_data_ptr<T>(), *ph0 = h0.const_data_ptr<T>(), *pw = wt.const_data_ptr<T>(),
          *pb = b_hh.const_data_ptr<T>();
  T* pc = cur.mutable_data_ptr<T>();
  T* pn = nxt.mutable_data_ptr<T>();
  double* st = stats.mutable_data_ptr<double>();
  if (sequential) {
    // One Gauss–Seidel sweep: timestep t reads timestep t−1 of the same buffer, already updated.
    for (int64_t t = start; t < p.T; ++t) {
      eval_range<T>(p, pu, ph0, pw, pb, pc, pc, pn, resid.data(), changed.data(), t * p.B, (t + 1) * p.B);
      std::memcpy(pc + t * p.B * H, pn + t * p.B * H, sizeof(T) * p.B * H);
    }
    if (iters > 0) {
      st[0] = 0;
      st[1] = double(p.T);
    }
    return;
  }
  int64_t ptr = start;
  for (int64_t it = 0; it < iters && ptr < p.T; ++it) {
    const int64_t rb = ptr * p.B;
    eval_range<T>(p, pu, ph0, pw, pb, pc, pc, pn, resid.data(), changed.data(), rb, R);
    double r = 0;
    int64_t first_changed_row = R;
    for (int64_t row = rb; row < R; ++row) {
      r = std::max(r, resid[row]);
      if (changed[row] && first_changed_row == R) first_changed_row = row;
    }
    // Timesteps before the first changed one satisfied their equations from an exact prefix, and the
    // first changed one was computed from them: all are exact (see symkernels/jacobi/solver.py).
    const int64_t q = first_changed_row / p.B;
    ptr = std::min(p.T, std::max(ptr + 1, q + 1));
    std::memcpy(pc + rb * H, pn + rb * H, sizeof(T) * (R - rb) * H);
    st[2 * it] = r;
    st[2 * it + 1] = double(ptr);
    if (!std::isfinite(r)) break;           // the caller falls back to the exact sequential sweep
    if (tol > 0 && r <= tol) break;         // tolerance reached
  }
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
  TORCH_CHECK_VALUE(h.dim() == 3, kOp, ": h must be [T, B, H], got shape ", h.sizes());
  const int64_t T = h.size(0), B = h.size(1), H = h.size(2), G = gates(cell) * H;
  TORCH_CHECK_VALUE(u.dim() == 3 && u.size(0) == T && u.size(1) == B && u.size(2) == G, kOp, ": u must be [T, B, ",
                    gates(cell), "*H] = [", T, ", ", B, ", ", G, "], got ", u.sizes());
  TORCH_CHECK_VALUE(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == H, kOp, ": h0 must be [B, H] = [", B, ", ",
                    H, "], got ", h0.sizes());
  TORCH_CHECK_VALUE(w_hh.dim() == 2 && w_hh.size(0) == G && w_hh.size(1) == H, kOp, ": w_hh must be [", G, ", ",
                    H, "], got ", w_hh.sizes());
  TORCH_CHECK_VALUE(b_hh.dim() == 1 && b_hh.size(0) == G, kOp, ": b_hh must be [", G, "], got ", b_hh.sizes());
  TORCH_CHECK_VALUE(start >= 0 && start <= T, kOp, ": start must be in [0, T=", T, "], got ", start);
  TORCH_CHECK_VALUE(iters >= 0, kOp, ": iters must be >= 0, got ", iters);
  TORCH_CHECK_VALUE(std::isfinite(tol) && tol >= 0, kOp, ": tol must be finite and >= 0, got ", tol);

  at::Tensor cur = h.contiguous().clone();
  at::Tensor stats = at::full({iters, 2}, -1.0, h.options().dtype(at::kDouble));
  if (T == 0 || B == 0 || H == 0 || start >= T) {  // nothing left to compute: report "converged at T"
    if (iters > 0) {
      auto s = stats.accessor<double, 2>();
      s[0][0] = 0;
      s[0][1] = double(T);
    }
    return {cur, stats};
  }
  // W_hh^T and b_hh zero-padded to whole vectors of gate values: the row kernel reads W_hh^T row k as the
  // k-th axpy column (see the file comment), and the padding lanes compute zeros nobody reads.
  const int64_t width = u.scalar_type() == at::kFloat ? simd::Vec<float>::width : simd::Vec<double>::width;
  const int64_t Gp = (G + width - 1) / width * width;
  at::Tensor wt = at::zeros({H, Gp}, u.options());
  wt.narrow(1, 0, G).copy_(w_hh.t());
  at::Tensor bp = at::zeros({Gp}, u.options());
  bp.narrow(0, 0, G).copy_(b_hh);
  const Problem p{T, B, H, G, Gp, cell};
  if (u.scalar_type() == at::kFloat) {
    run<float>(p, u.contiguous(), h0.contiguous(), wt, bp, cur, stats, start, iters, tol, sequential);
  } else {
    run<double>(p, u.contiguous(), h0.contiguous(), wt, bp, cur, stats, start, iters, tol, sequential);
  }
  return {cur, stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CPU, m) { m.impl("jacobi_rnn_iterate", &jacobi_rnn_iterate_cpu); }

}  // namespace symkernels::jacobi
