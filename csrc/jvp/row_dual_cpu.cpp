// CPU row-wise duals over the last dim: layer norm, RMS norm and softmax, primal and T tangents.
//
// One templated row routine serves the three kinds (the kind is a template parameter, so each loop is
// specialised). Per row the primal statistics — mean and 1/σ, 1/rms, or max and Σe — and the normalised
// row x̂ (or s) are computed ONCE in the accumulation type and kept in an L1 scratch row; every tangent
// then costs one reduction pass over its own row (Σẋ and Σx̂ẋ together, or ⟨s, ẋ⟩) and one write pass:
//   layer norm: ẏ = γ (ẋ − mean ẋ − x̂·mean(x̂ẋ))/σ + γ̇ x̂ + β̇
//   rms norm:   ẏ = γ (ẋ − x̂·mean(x̂ẋ))/r + γ̇ x̂
//   softmax:    ṡ = s (ẋ − ⟨s, ẋ⟩)
// (fwdgrad.md §4; reference.row_dual is the spec). fp16/bf16 rows are widened to fp32 once and rounded
// once on store; fp64 accumulates in fp64. Rows are split across threads (at::parallel_for: OpenMP).
// The reductions run on register-wide vectors (common/simd.h) in the AVX-512 / AVX2 / baseline entry point
// this CPU runs; without -ffast-math the compiler would not reorder a scalar sum into lanes itself.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "common/accumulator.h"
#include "common/simd.h"
#include "jvp/jvp_args.h"

namespace symkernels::jvp {
namespace {

constexpr int64_t kRowGrain = 1 << 15;  // elements (rows × N × (T+1)) per parallel task

// Raw pointers of one call. Tangent strides are in elements; 0 means "shared by all T" (its count is 1).
template <typename In>
struct RowPointers {
  const In *x, *x_t, *w, *w_t, *b, *b_t;
  In *y, *y_t;
  int64_t x_t_stride, w_t_stride, b_t_stride, R, N, T;
  double eps;
  RowKind kind;
};

// Vectors of VB bytes: one register of the entry point (kRegisterBytes). 64-byte accumulators in the AVX2
// code were kept on the stack and moved through general registers 8 bytes per step (perf: most of
// layer_norm_dual's time on Zen 3).
template <typename A, int VB>
using RowVec = simd::RegVec<A, VB>;

template <typename A, int VB>
SYMKERNELS_INLINE A reduce_lanes(typename RowVec<A, VB>::type v) {
  A s = 0;
  for (int j = 0; j < RowVec<A, VB>::width; ++j) s += v[j];
  return s;
}

// (Σ a, Σ a·b) in one pass; b == nullptr gives (Σ a, 0). Lane-parallel partial sums.
template <typename A, int VB>
SYMKERNELS_INLINE void sum_and_dot(const A* __restrict__ a, const A* __restrict__ b, int64_t n, A& sum, A& dot) {
  using V = typename RowVec<A, VB>::type;
  constexpr int64_t W = RowVec<A, VB>::width;
  V vs{}, vd{};
  int64_t i = 0;
  if (b) {
    for (; i + W <= n; i += W) {
      const V va = simd::load<V>(a + i);
      vs += va;
      vd += va * simd::load<V>(b + i);
    }
  } else {
    for (; i + W <= n; i += W) vs += simd::load<V>(a + i);
  }
  sum = reduce_lanes<A, VB>(vs), dot = reduce_lanes<A, VB>(vd);
  for (; i < n; ++i) {
    sum += a[i];
    if (b) dot += a[i] * b[i];
  }
}

// e^x for x <= 0 (softmax's logits minus their max) on vectors — scalar std::exp does not vectorise
// and made the softmax primal ~6x slower than torch.softmax. x = n·ln2 + r with |r| <= ln2/2 (Cody–Waite
// split of ln2), e^r by its Taylor series up to the term below half an ulp (degree 7 in fp32: r^8/8! <
// 6e-9; degree 13 in fp64: r^14/14! < 5e-18), 2^n through the exponent bits. Below the log of the smallest
// normal the result is 0 (the true value is subnormal, negligible next to the row's largest term, 1);
// -inf gives 0 and NaN stays NaN.
template <typename A>
struct ExpConstants;
template <>
struct ExpConstants<float> {
  static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f, lowest = -87.0f, round = 12582912.0f;
  static constexpr int degree = 7, bias = 127, mantissa = 23;
};
template <>
struct ExpConstants<double> {
  static constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10, lowest = -708.0,
                          round = 6755399441055744.0;
  static constexpr int degree = 13, bias = 1023, mantissa = 52;
};

template <typename A, int VB>
SYMKERNELS_INLINE typename RowVec<A, VB>::type exp_nonpositive(typename RowVec<A, VB>::type x) {
  using V = typename RowVec<A, VB>::type;
  using I = typename RowVec<A, VB>::index;  // integer lanes of A's width
  using C = ExpConstants<A>;
  const V n = (x * A(1.4426950408889634) + C::round) - C::round;  // round to nearest (|n| < 2^22)
  const V r = (x - n * C::ln2_hi) - n * C::ln2_lo;
  V p = V{} + A(1);
#pragma GCC unroll 16
  for (int k = C::degree; k >= 1; --k) p = A(1) + r * p * (A(1) / A(k));  // 1 + r(1 + r/2(1 + r/3(...)))
  const I bits = (__builtin_convertvector(n, I) + C::bias) << C::mantissa;
  V scale;
  std::memcpy(&scale, &bits, sizeof(V));
  return x < C::lowest ? V{} : p * scale;  // NaN compares false: NaN·scale stays NaN
}

// s = softmax(x) of one row into s (accumulation type), vectorised; the tail runs as one padded vector so
// every element takes the same exp.
template <typename A, int VB>
SYMKERNELS_INLINE void softmax_row(const A* __restrict__ x, A* __restrict__ s, int64_t n) {
  using V = typename RowVec<A, VB>::type;
  constexpr int64_t W = RowVec<A, VB>::width;
  constexpr A kNegInf = -std::numeric_limits<A>::infinity();
  V vmax = V{} + kNegInf;
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const V v = simd::load<V>(x + i);
    vmax = vmax > v ? vmax : v;
  }
  A m = kNegInf;
  for (int j = 0; j < W; ++j) m = std::max(m, vmax[j]);
  for (int64_t j = i; j < n; ++j) m = std::max(m, x[j]);
  if (m == kNegInf) m = 0;  // all -inf: 0/0 = NaN below, as torch.softmax
  V vsum{};
  for (i = 0; i + W <= n; i += W) {
    const V e = exp_nonpositive<A, VB>(simd::load<V>(x + i) - m);
    simd::store(s + i, e);
    vsum += e;
  }
  if (i < n) {
    V tail = V{} + kNegInf;
    for (int64_t j = i; j < n; ++j) tail[j - i] = x[j];
    const V e = exp_nonpositive<A, VB>(tail - m);  // padding lanes give exactly 0
    for (int64_t j = i; j < n; ++j) s[j] = e[j - i];
    vsum += e;
  }
  const A scale = A(1) / reduce_lanes<A, VB>(vsum);
  for (int64_t j = 0; j < n; ++j) s[j] *= scale;
}

// The row in the accumulation type: the input itself when the types agree, else widened into buf.
template <typename A, typename In>
SYMKERNELS_INLINE const A* as_acc(const In* src, A* buf, int64_t n) {
  if constexpr (std::is_same_v<A, In>) {
    return src;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = A(src[i]);
    return buf;
  }
}

// Widen an optional [N] vector into dst, or fill it with `fallback` (so the row loops have no branches).
template <typename A, typename In>
SYMKERNELS_INLINE void widen_or_fill(const In* src, A* __restrict__ dst, int64_t n, A fallback) {
  if (src) {
    for (int64_t i = 0; i < n; ++i) dst[i] = A(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = fallback;
  }
}

// Every loop below is a plain branch-free loop over restrict pointers, which the compiler vectorises;
// optional terms are separate passes over L1-resident rows rather than per-element null checks.
template <RowKind kKind, int VB, typename In>
SYMKERNELS_INLINE void row_dual_rows(const RowPointers<In>& p, int64_t r0, int64_t r1) {
  using A = typename AccumulatorOf<In>::type;
  const int64_t N = p.N, T = p.T;
  std::vector<A> scratch(5 * N);
  A* __restrict__ xh = scratch.data();  // x̂ (norms) or s (softmax) of the current row
  A* __restrict__ buf = xh + N;         // widened input row (x, then each tangent row)
  A* __restrict__ acc = buf + N;        // the tangent row being built
  A* __restrict__ wv = acc + N;         // weight (or 1), widened once per task
  A* __restrict__ bv = wv + N;          // bias (or 0)
  widen_or_fill<A>(p.w, wv, N, A(1));
  widen_or_fill<A>(p.b, bv, N, A(0));
  const A inv_n = A(1) / A(N);
  for (int64_t r = r0; r < r1; ++r) {
    const A* __restrict__ xa = as_acc(p.x + r * N, buf, N);
    In* __restrict__ y = p.y + r * N;
    A inv = 0;  // 1/σ or 1/rms (norms)
    if constexpr (kKind == RowKind::kSoftmax) {
      softmax_row<A, VB>(xa, xh, N);
      for (int64_t n = 0; n < N; ++n) y[n] = In(xh[n]);
    } else {
      A sum = 0, unused = 0;
      if constexpr (kKind == RowKind::kLayerNorm) sum_and_dot<A, VB>(xa, nullptr, N, sum, unused);
      const A mean = sum * inv_n;
      for (int64_t n = 0; n < N; ++n) xh[n] = xa[n] - mean;
      A sq = 0;
      sum_and_dot<A, VB>(xh, xh, N, unused, sq);
      inv = A(1) / std::sqrt(sq * inv_n + A(p.eps));
      for (int64_t n = 0; n < N; ++n) xh[n] *= inv;
      for (int64_t n = 0; n < N; ++n) y[n] = In(xh[n] * wv[n] + bv[n]);
    }
    for (int64_t t = 0; t < T; ++t) {
      if (p.x_t) {
        const A* __restrict__ xt = as_acc(p.x_t + t * p.x_t_stride + r * N, buf, N);
        A sum_t, dot_t;
        sum_and_dot<A, VB>(xt, xh, N, sum_t, dot_t);
        if constexpr (kKind == RowKind::kSoftmax) {
          for (int64_t n = 0; n < N; ++n) acc[n] = xh[n] * (xt[n] - dot_t);
        } else {
          const A shift = kKind == RowKind::kLayerNorm ? sum_t * inv_n : A(0);
          const A coef = dot_t * inv_n;
          for (int64_t n = 0; n < N; ++n) acc[n] = (xt[n] - shift - xh[n] * coef) * inv * wv[n];
        }
      } else {
        for (int64_t n = 0; n < N; ++n) acc[n] = A(0);
      }
      if (p.w_t) {  // + γ̇ x̂
        const In* __restrict__ wt = p.w_t + t * p.w_t_stride;
        for (int64_t n = 0; n < N; ++n) acc[n] += xh[n] * A(wt[n]);
      }
      if (p.b_t) {  // + β̇
        const In* __restrict__ bt = p.b_t + t * p.b_t_stride;
        for (int64_t n = 0; n < N; ++n) acc[n] += A(bt[n]);
      }
      In* __restrict__ out = p.y_t + (t * p.R + r) * N;
      for (int64_t n = 0; n < N; ++n) out[n] = In(acc[n]);
    }
  }
}

template <int RegisterBytes, typename In>
SYMKERNELS_INLINE void row_dual_dispatch(const RowPointers<In>& p, int64_t r0, int64_t r1) {
  constexpr int VB = simd::register_vector_bytes(RegisterBytes);
  switch (p.kind) {
    case RowKind::kLayerNorm: return row_dual_rows<RowKind::kLayerNorm, VB>(p, r0, r1);
    case RowKind::kRmsNorm: return row_dual_rows<RowKind::kRmsNorm, VB>(p, r0, r1);
    case RowKind::kSoftmax: return row_dual_rows<RowKind::kSoftmax, VB>(p, r0, r1);
  }
}

// One set of per-ISA entry points per element type (overloads of row_dual_entry).
#define SYMKERNELS_ROW_DUAL_ENTRY(In)                                                                 \
  SYMKERNELS_ISA_ENTRY_POINTS(row_dual_entry, (const RowPointers<In>& p, int64_t r0, int64_t r1), (p, r0, r1), \
                              row_dual_dispatch<kRegisterBytes>(p, r0, r1))
SYMKERNELS_ROW_DUAL_ENTRY(float)
SYMKERNELS_ROW_DUAL_ENTRY(double)
SYMKERNELS_ROW_DUAL_ENTRY(c10::Half)
SYMKERNELS_ROW_DUAL_ENTRY(c10::BFloat16)
#undef SYMKERNELS_ROW_DUAL_ENTRY

void row_dual_cpu(const RowArgs& a, at::Tensor& y, at::Tensor& y_t) {
  // A tangent shared by all T (count 1) has T-stride 0.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "row_dual_cpu", [&] {
    const auto in = [](const at::Tensor& t) { return data_or_null<scalar_t, scalar_t>(t); };
    const RowPointers<scalar_t> p{in(a.x), in(a.x_t), in(a.weight), in(a.weight_t), in(a.bias), in(a.bias_t),
                                  y.mutable_data_ptr<scalar_t>(), y_t.mutable_data_ptr<scalar_t>(),
                                  tangent_stride(a.Tx, a.R * a.N), tangent_stride(a.Tw, a.N), tangent_stride(a.Tb, a.N),
                                  a.R, a.N, a.T, a.eps, a.kind};
    const int64_t grain = std::max<int64_t>(1, kRowGrain / (a.N * (a.T + 1)));
    at::parallel_for(0, a.R, grain, [&](int64_t r0, int64_t r1) { row_dual_entry(p, r0, r1); });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CPU, m) { register_row_duals<row_dual_cpu>(m); }

}  // namespace symkernels::jvp
