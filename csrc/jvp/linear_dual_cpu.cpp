// CPU fused linear(+bias)+activation JVP: y = act(x W^T + b), y_t = act'(z) (x_t W^T + x W_t^T + b_t).
//
// Everything happens in the two output buffers; the only other memory is a seeded tangent's generation tile
// (and, for at most kStackedRows rows, the stacked input [x_t; x] and M·N trailing rows in y_t's storage):
//   * z = x W^T + b is one GEMM into y's buffer, activated in place at the end;
//   * the tangent pre-activations accumulate in y_t: the weight-tangent products are one batched GEMM
//     into y_t (a seeded W_t is generated tile by tile, kSeedTileElements values, and multiplied at once,
//     so the T·N·K tangent is never held), then ONE GEMM over all T stacked x tangents adds x_t W^T with
//     beta = 1 (W read once for every tangent; BLAS does the sum while it writes), then b_t is added.
//     With few rows the primal joins that x-tangent GEMM (W read once in all);
//   * the chain rule y_t ← act'(z) ⊙ y_t runs in place over all T tangents in one pass of ATen's vectorized
//     activation-backward kernel, which evaluates act'(z) per element and never stores it.
// Peak memory is therefore the outputs (1 + T)·M·N plus at most a quarter of one weight tangent; the seeded
// forward-gradient step's memory target depends on that (tests/jvp/test_jvp_forward_gradient.py).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/clone.h>
#include <ATen/ops/copy.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/silu_backward.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/tanh_backward.h>
#include <ATen/ops/threshold_backward.h>
#include <ATen/ops/zero.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "common/checks.h"
#include "common/simd.h"
#include "jvp/jvp_args.h"
#include "jvp/jvp.h"

namespace symkernels::jvp {
namespace {

constexpr const char* kOp = "linear_dual";
// A generated weight-tangent tile holds this many values (1 MiB fp32: stays in L2 while BLAS reads it).
constexpr int64_t kSeedTileElements = 1 << 18;
// Up to this many rows (primal plus x tangents) the primal and x-tangent GEMMs are stacked into one.
constexpr int64_t kStackedRows = 64;

// Gaussian tangent values for 8 consecutive indices, vectorised. Scalar logf/cosf do not vectorise: 1M
// values took 85 ms against 30 ms for this (interleaved microbenchmark, AVX-512, loaded 2-core machine). Same integers and the same
// fp32 u1, u2 and 2π·u2 as seeded_gaussian (jvp.h), then log and cos evaluated in fp64 by polynomials
// (|error| < 1e-15, far below the fp32 result's half ulp) and rounded to fp32 once: the values differ from
// the scalar / Triton / reference ones only by those backends' own last-ulp log/cos errors.
typedef uint32_t U8 __attribute__((vector_size(32)));
typedef float F8 __attribute__((vector_size(32)));
typedef double D8 __attribute__((vector_size(64)));
typedef long long L8 __attribute__((vector_size(64)));

// ln(u) for u in [2^-24, 1]: u = m·2^e, m in [√½, √2), ln m = 2 atanh(s) with s = (m−1)/(m+1), |s| < 0.172.
SYMKERNELS_INLINE D8 log_v(D8 u) {
  L8 bits;
  std::memcpy(&bits, &u, sizeof(D8));
  L8 e = ((bits >> 52) & 0x7ff) - 1023;
  const L8 mbits = (bits & 0xfffffffffffffLL) | 0x3ff0000000000000LL;
  D8 m;
  std::memcpy(&m, &mbits, sizeof(D8));
  const L8 big = m > 1.4142135623730951;
  m = big ? m * 0.5 : m;
  e = big ? e + 1 : e;
  const D8 s = (m - 1.0) / (m + 1.0), z = s * s;
  D8 p = D8{} + 1.0 / 23.0;  // Σ z^k/(2k+1), k <= 11: the next term is < 3e-19
#pragma GCC unroll 11
  for (int k = 10; k >= 0; --k) p = p * z + 1.0 / (2 * k + 1);
  return __builtin_convertvector(e, D8) * 0.6931471805599453 + 2.0 * s * p;
}

// cos(a) for a in [0, 2π]: a = kπ/2 + r, |r| <= π/4 (π/2 in two parts: k·hi is exact), then ±cos r or ±sin r
// by the quadrant, each a Taylor series to below 1e-17.
SYMKERNELS_INLINE D8 cos_v(D8 a) {
  const D8 kf = (a * 0.6366197723675814 + 6755399441055744.0) - 6755399441055744.0;  // round(a·2/π)
  const D8 r = (a - kf * 1.5707963267341256) - kf * 6.077100506506192e-11;
  const D8 z = r * r;
  D8 c = D8{} + 1.0, sn = D8{} + 1.0;
#pragma GCC unroll 9
  for (int k = 9; k >= 1; --k) {
    c = 1.0 - z * c * (1.0 / double((2 * k - 1) * (2 * k)));  // cos r = 1 − r²/2!(1 − r²/(3·4)(...))
    sn = 1.0 - z * sn * (1.0 / double((2 * k) * (2 * k + 1)));  // sin r / r (constant reciprocals: no divides)
  }
  sn *= r;
  const L8 q = __builtin_convertvector(kf, L8) & 3;
  return q == 0 ? c : (q == 1 ? -sn : (q == 2 ? -c : sn));
}

SYMKERNELS_INLINE void gaussian8(float* out, uint32_t first, int count, uint32_t key0, uint32_t key1) {
  U8 index;
  for (int l = 0; l < 8; ++l) index[l] = first + uint32_t(l);
  const U8 b0 = mix32<U8>(mix32<U8>(index + key0) ^ key0), b1 = mix32<U8>(mix32<U8>(index + key1) ^ key1);
  const F8 u1 = __builtin_convertvector((b0 >> 8) + 1u, F8) * 5.9604644775390625e-08f;  // 2^-24: (0, 1]
  const F8 u2 = __builtin_convertvector(b1 >> 8, F8) * 5.9604644775390625e-08f;
  const F8 angle = 6.283185307179586f * u2;  // the fp32 product, as in seeded_gaussian
  const D8 radius2 = -2.0 * log_v(__builtin_convertvector(u1, D8));  // >= 0
  const D8 c = cos_v(__builtin_convertvector(angle, D8));
  for (int l = 0; l < count; ++l) out[l] = float(__builtin_sqrt(radius2[l]) * c[l]);
}

// The distribution branch sits outside the loops: the Rademacher loop is pure 32-bit integer math and
// vectorizes (one lane per element); the Gaussian one works on 8-lane vectors (gaussian8).
// Without FMA: the Gaussian tangents must be bit-identical to reference.seeded_tangent (test_jvp_seeded), whose
// products and sums are each rounded.
SYMKERNELS_INLINE void generate_tile_impl(float* __restrict__ out, int64_t first_index, int64_t count,
                                          uint32_t key0, uint32_t key1, int dist) {
  const uint32_t first = uint32_t(first_index);
  if (Distribution(dist) == Distribution::kRademacher) {
    for (int64_t j = 0; j < count; ++j) out[j] = seeded_rademacher(first + uint32_t(j), key0);
  } else {
    for (int64_t j = 0; j < count; j += 8) {
      gaussian8(out + j, first + uint32_t(j), int(std::min<int64_t>(8, count - j)), key0, key1);
    }
  }
}
SYMKERNELS_ISA_ENTRY_POINTS_NO_FMA(generate_tile,
                                   (float* __restrict__ out, int64_t first_index, int64_t count, uint32_t key0,
                                    uint32_t key1, int dist),
                                   (out, first_index, count, key0, key1, dist),
                                   generate_tile_impl(out, first_index, count, key0, key1, dist))

// y_t[t] = x @ W_t(t)^T (accumulate: y_t[t] += ...) for the seeded W_t [T, N, K]. The tangent
// is generated tile by tile and each tile's GEMM writes its column block of y_t[t] in place (a [M, nr] view
// with row stride N, which BLAS takes as is), so neither W_t nor a [M, T*N] product buffer ever exists.
void seeded_weight_products(const at::Tensor& x, at::Tensor& y_t, int64_t T, int64_t N, int64_t K, int64_t seed,
                            Distribution dist, bool accumulate) {
  const uint32_t key0 = seed_key(seed, 0), key1 = seed_key(seed, 1);
  // A tile never spans two tangents (its product is one column block of one y_t[t]) and holds at most a
  // quarter of one tangent's rows: a small layer's seeded step must not allocate a whole weight's worth of
  // scratch (the forward-gradient memory bound is stated relative to inference; see
  // test_seeded_step_peak_memory_within_1_2x_inference). Large layers are limited by kSeedTileElements.
  const int64_t quarter = std::max<int64_t>(1, (N + 3) / 4);
  const int64_t tile_rows = std::clamp<int64_t>(kSeedTileElements / std::max<int64_t>(K, 1), 1, quarter);
  at::Tensor tile32 = at::empty({tile_rows, K}, x.options().dtype(at::kFloat));
  for (int64_t t = 0; t < T; ++t) {
    at::Tensor out_t = y_t.select(0, t);
    for (int64_t n0 = 0; n0 < N; n0 += tile_rows) {
      const int64_t nr = std::min(tile_rows, N - n0), first = (t * N + n0) * K;
      float* dst = tile32.mutable_data_ptr<float>();
      at::parallel_for(0, nr * K, 4096, [&](int64_t begin, int64_t end) {
        generate_tile(dst + begin, first + begin, end - begin, key0, key1, int(dist));
      });
      at::Tensor tile = tile32.narrow(0, 0, nr);
      if (x.scalar_type() != at::kFloat) tile = tile.to(x.scalar_type());
      at::Tensor out = out_t.narrow(1, n0, nr);
      if (accumulate) {
        out.addmm_(x, tile.t());
      } else {
        at::mm_out(out, x, tile.t());
      }
    }
  }
}

// y = act(z) in place on the pre-activation buffer z (ATen's vectorized kernels).
void activate_(at::Tensor& z, Activation act) {
  switch (act) {
    case Activation::kNone: return;
    case Activation::kRelu: z.relu_(); return;
    case Activation::kGelu: at::gelu_(z, "none"); return;
    case Activation::kGeluTanh: at::gelu_(z, "tanh"); return;
    case Activation::kSilu: at::silu_(z); return;
    case Activation::kTanh: z.tanh_(); return;
  }
  TORCH_CHECK(false, kOp, ": unknown activation");
}

// y_t ← act'(z) ⊙ y_t for all T tangents at once, in place, by ATen's activation-backward kernels with the
// tangent as the incoming "gradient": they compute act'(z)·g elementwise and never materialise act'(z) (an
// [M, N] tensor, plus the ones_like it would be a backward of). z (or y, for the activations whose
// derivative is a function of their output) is broadcast over T with a stride-0 view. `primal` is z for
// relu/gelu/silu (called before activate_) and y = tanh(z) for tanh (called after).
void tangent_chain_rule_(at::Tensor& y_t, const at::Tensor& primal, Activation act) {
  const at::Tensor p = primal.unsqueeze(0).expand_as(y_t);
  switch (act) {
    case Activation::kNone: return;
    // PyTorch's relu JVP convention: 0 where z <= 0, else the tangent (NaN passes it through).
    case Activation::kRelu: at::threshold_backward_out(y_t, y_t, p, 0); return;
    case Activation::kGelu: at::gelu_backward_out(y_t, y_t, p, "none"); return;
    case Activation::kGeluTanh: at::gelu_backward_out(y_t, y_t, p, "tanh"); return;
    case Activation::kSilu: at::silu_backward_out(y_t, y_t, p); return;
    case Activation::kTanh: at::tanh_backward_out(y_t, y_t, p); return;
  }
  TORCH_CHECK(false, kOp, ": unknown activation");
}

// y_t (+)= term, broadcast over y_t's shape: the first contribution overwrites (y_t starts uninitialised).
void accumulate_(at::Tensor& y_t, const at::Tensor& term, bool& written) {
  if (written) {
    y_t.add_(term);
  } else {
    y_t.copy_(term.expand_as(y_t));
  }
  written = true;
}

std::tuple<at::Tensor, at::Tensor> linear_dual_cpu(const at::Tensor& x, const std::optional<at::Tensor>& x_t,
                                                   const at::Tensor& weight, const std::optional<at::Tensor>& weight_t,
                                                   const std::optional<at::Tensor>& bias,
                                                   const std::optional<at::Tensor>& bias_t,
                                                   c10::string_view activation, int64_t num_tangents, int64_t seed,
                                                   c10::string_view distribution) {
  const LinearArgs a = prepare_linear_args(x, x_t, weight, weight_t, bias, bias_t, std::string(activation),
                                           num_tangents, seed, std::string(distribution));
  const int64_t M = a.M, K = a.K, N = a.N, T = a.T, Tx = a.Tx, Tw = a.Tw, Tb = a.Tb;
  const at::Tensor wT = a.weight.t();

  // Primal pre-activation z = x W^T + b, activated in place at the end, and the tangent pre-activations,
  // accumulated in y_t itself: each GEMM writes (beta = 0) or adds (beta = 1) its product there, so no
  // [M, T*N] product buffer exists.
  //
  // With few rows the GEMMs stream W at about the cost of reading it, so the primal and all x tangents
  // share ONE GEMM over the stacked rows [x_t; x] (W read once, not twice). Its output is y_t's storage with
  // M trailing rows for z: y is copied out of them (+ b) and y_t is the view before them. Those M·N bytes stay
  // allocated with y_t, which is why more rows (and the memory-bound forward-gradient steps) take two
  // GEMMs: z = addmm(b, x, W^T) straight into y's buffer (bias folded in, as F.linear does), then
  // y_t += x_t W^T over the stacked [T*M, K] tangent rows.
  const bool stacked = T > 0 && Tx == T && (1 + T) * M <= kStackedRows && M * N > 0;
  at::Tensor y, y_t;
  if (stacked) {
    // Tangent rows first, so y_t is the buffer's head (storage offset 0, as the fake kernel declares).
    at::Tensor buf = at::empty({T + 1, M, N}, x.options());
    at::Tensor buf2 = buf.view({(T + 1) * M, N});
    at::mm_out(buf2, at::cat({a.x_t.view({T * M, K}), a.x}, 0), wT);
    y = a.bias.defined() ? at::add(buf.select(0, T), a.bias) : buf.select(0, T).clone();
    y_t = buf.narrow(0, 0, T);
  } else {
    y = a.bias.defined() ? at::addmm(a.bias, a.x, wT) : at::mm(a.x, wT);
    y_t = at::empty({T, M, N}, x.options());
  }
  if (T == 0 || M * N == 0) {
    activate_(y, a.act);
    return {y, y_t};
  }

  // Then, in order: weight tangents y_t[t] (+)= x W_t(t)^T; x tangents (unless stacked) y_t += x_t W^T;
  // bias tangents y_t += b_t.
  at::Tensor y_t2 = y_t.view({T * M, N});
  bool written = stacked;  // whether y_t holds a product yet (else the next one overwrites: beta = 0)
  if (Tw && a.seed >= 0) {
    seeded_weight_products(a.x, y_t, T, N, K, a.seed, a.dist, written);
    written = true;
  } else if (Tw == T) {
    // All T products x W_t(t)^T straight into y_t by one batched GEMM over the stride-0 expanded x: the very
    // call (shapes, strides, BLAS path) vmap(jvp) makes for them, so these products cost what vmap's do.
    // The former single [M, K] x [K, T*N] GEMM needed an [M, T*N] product buffer, and in one profile of
    // the old kernel (M=64, N=K=1024, T=4, 2 threads, loaded machine) took 35 ms a call against 21 ms for
    // vmap(jvp)'s bmm.
    const at::Tensor xs = a.x.unsqueeze(0).expand({T, M, K}), wts = a.weight_t.transpose(1, 2);
    if (T == 1 && written) {
      y_t.select(0, 0).addmm_(a.x, a.weight_t.select(0, 0).t());
    } else if (T == 1) {
      at::Tensor out = y_t.select(0, 0);
      at::mm_out(out, a.x, a.weight_t.select(0, 0).t());
    } else if (written) {
      y_t.baddbmm_(xs, wts);
    } else {
      at::bmm_out(y_t, xs, wts);
    }
    written = true;
  } else if (Tw == 1) {  // one weight tangent shared by all T (vmap over x only): compute once, broadcast
    accumulate_(y_t, at::mm(a.x, a.weight_t.select(0, 0).t()).unsqueeze(0), written);
  }
  if (stacked) {
    // the x-tangent products came with the primal GEMM
  } else if (Tx == T) {
    const at::Tensor x_t2 = a.x_t.view({T * M, K});
    if (written) {
      y_t2.addmm_(x_t2, wT);
    } else {
      at::mm_out(y_t2, x_t2, wT);
    }
    written = true;
  } else if (Tx == 1) {  // one x tangent shared by all T
    accumulate_(y_t, at::mm(a.x_t.select(0, 0), wT).unsqueeze(0), written);
  }
  if (Tb) accumulate_(y_t, a.bias_t.view({Tb, 1, N}), written);
  if (!written) {
    y_t.zero_();
    activate_(y, a.act);
    return {y, y_t};
  }

  // Chain rule, then the activation, both in place: act' is evaluated inside the elementwise kernel from z
  // (or from y for tanh) and never stored.
  if (a.act == Activation::kTanh) {
    activate_(y, a.act);
    tangent_chain_rule_(y_t, y, a.act);
  } else {
    tangent_chain_rule_(y_t, y, a.act);
    activate_(y, a.act);
  }
  return {y, y_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CPU, m) { m.impl("linear_dual", &linear_dual_cpu); }

}  // namespace symkernels::jvp
