// CPU fused linear(+bias)+activation JVP: y = act(x W^T + b), y_t = act'(z) (x_t W^T + x W_t^T + b_t).
//
// The GEMMs go to ATen's BLAS, arranged so each weight matrix is read once:
//   * [x; x_t] stacked along rows times W^T gives z and every x-tangent product in ONE GEMM (W read once,
//     which is what matters at small M where the GEMM is bound by reading W);
//   * x times [W_t(0); ...; W_t(T-1)]^T gives every weight-tangent product in one GEMM;
//   * seeded W_t is generated tile by tile (kSeedTileElements values) and multiplied at once, so the
//     T·N·K tangent is never held in memory.
// The epilogue computes act(z) and act'(z) ONCE (ATen's vectorized kernels, opmath precision) and then
// one fused pass writes all T tangents y_t = act'(z) ⊙ (x_t W^T + x W_t^T + b_t) without materialising
// the summed pre-activation tangent.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/silu_backward.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/tanh_backward.h>
#include <ATen/ops/threshold_backward.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "common/checks.h"
#include "common/simd.h"
#include "jvp/dual_args.h"
#include "jvp/jvp.h"

namespace symkernels::jvp {
namespace {

constexpr const char* kOp = "linear_dual";
// A generated weight-tangent tile holds this many values (1 MiB fp32: stays in L2 while BLAS reads it).
constexpr int64_t kSeedTileElements = 1 << 18;
constexpr int64_t kEpilogueGrain = 1 << 14;  // elements per parallel task in the epilogue

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
SYMKERNELS_SIMD_CLONES void generate_tile(float* __restrict__ out, int64_t first_index, int64_t count,
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

// x [M,K] @ W_t^T for the seeded W_t [T*N, K], written into zw [M, T*N].
void seeded_weight_products(const at::Tensor& x, at::Tensor& zw, int64_t rows, int64_t K, int64_t seed,
                            Distribution dist) {
  const uint32_t key0 = seed_key(seed, 0), key1 = seed_key(seed, 1);
  // Never larger than the weight itself: a small layer's seeded step must not allocate more than its own
  // weight would take (the forward-gradient memory bound is stated relative to inference).
  const int64_t tile_rows = std::clamp<int64_t>(kSeedTileElements / std::max<int64_t>(K, 1), 1, std::max<int64_t>(rows, 1));
  at::Tensor tile32 = at::empty({tile_rows, K}, x.options().dtype(at::kFloat));
  for (int64_t r0 = 0; r0 < rows; r0 += tile_rows) {
    const int64_t nr = std::min(tile_rows, rows - r0);
    float* dst = tile32.mutable_data_ptr<float>();
    at::parallel_for(0, nr * K, 4096, [&](int64_t begin, int64_t end) {
      generate_tile(dst + begin, r0 * K + begin, end - begin, key0, key1, int(dist));
    });
    at::Tensor tile = tile32.narrow(0, 0, nr);
    if (x.scalar_type() != at::kFloat) tile = tile.to(x.scalar_type());
    at::Tensor out = zw.narrow(1, r0, nr);
    at::mm_out(out, x, tile.t());
  }
}

// y = act(z) and d = act'(z) for the whole [M, N] primal, in opmath precision, by ATen's vectorized
// (SLEEF) elementwise kernels: d is computed once and shared by all T tangents.
at::Tensor apply_activation(const at::Tensor& z, Activation act) {
  switch (act) {
    case Activation::kNone: return z;
    case Activation::kRelu: return at::relu(z);
    case Activation::kGelu: return at::gelu(z);
    case Activation::kGeluTanh: return at::gelu(z, "tanh");
    case Activation::kSilu: return at::silu(z);
    case Activation::kTanh: return at::tanh(z);
  }
  TORCH_CHECK(false, kOp, ": unknown activation");
}

// act'(z), given y = act(z); undefined for the identity (d = 1: the tangent loop skips the multiply).
at::Tensor activation_derivative(const at::Tensor& z, const at::Tensor& y, Activation act) {
  switch (act) {
    case Activation::kNone: return at::Tensor();
    // PyTorch's relu JVP convention: 0 where relu(z) <= 0, else 1 (so NaN passes the tangent through).
    case Activation::kRelu: return at::threshold_backward(at::ones_like(z), y, 0);
    case Activation::kGelu: return at::gelu_backward(at::ones_like(z), z, "none");
    case Activation::kGeluTanh: return at::gelu_backward(at::ones_like(z), z, "tanh");
    case Activation::kSilu: return at::silu_backward(at::ones_like(z), z);
    case Activation::kTanh: return at::tanh_backward(at::ones_like(z), y);
  }
  TORCH_CHECK(false, kOp, ": unknown activation");
}

// The fused tangent pass: y_t[t] = d ⊙ (x-tangent product + weight-tangent product + bias tangent), one
// read of each input row and one write per tangent; rows split across threads.
template <typename scalar_t, typename acc_t>
void tangent_epilogue(const scalar_t* za, int64_t Tx, const scalar_t* zw, int64_t Tw, const scalar_t* bias_t,
                      int64_t Tb, const acc_t* d, scalar_t* y_t, int64_t M, int64_t N, int64_t T) {
  const int64_t grain = std::max<int64_t>(1, kEpilogueGrain / std::max<int64_t>(N * T, 1));
  at::parallel_for(0, M, grain, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const acc_t* __restrict__ dm = d ? d + m * N : nullptr;
      for (int64_t t = 0; t < T; ++t) {
        // x-tangent rows sit below the primal rows of za (row M + tx*M + m); weight-tangent products are
        // laid out [M, Tw*N]; a tangent shared by all T has index 0.
        const scalar_t* __restrict__ zx = Tx ? za + (M + (Tx == 1 ? 0 : t) * M + m) * N : nullptr;
        const scalar_t* __restrict__ zwm = Tw ? zw + m * Tw * N + (Tw == 1 ? 0 : t) * N : nullptr;
        const scalar_t* __restrict__ bt = Tb ? bias_t + (Tb == 1 ? 0 : t) * N : nullptr;
        scalar_t* __restrict__ out = y_t + (t * M + m) * N;
        for (int64_t n = 0; n < N; ++n) {
          acc_t zt = 0;
          if (zx) zt += acc_t(zx[n]);
          if (zwm) zt += acc_t(zwm[n]);
          if (bt) zt += acc_t(bt[n]);
          out[n] = scalar_t(dm ? dm[n] * zt : zt);
        }
      }
    }
  });
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

  // One GEMM for the primal and all x-tangents: [x; x_t] @ W^T.
  at::Tensor za = Tx ? at::mm(at::cat({a.x, a.x_t.reshape({Tx * M, K})}, 0), a.weight.t()) : at::mm(a.x, a.weight.t());
  at::Tensor zw;
  if (Tw && a.seed >= 0) {
    zw = at::empty({M, Tw * N}, x.options());
    seeded_weight_products(a.x, zw, Tw * N, K, a.seed, a.dist);
  } else if (Tw) {
    zw = at::mm(a.x, a.weight_t.reshape({Tw * N, K}).t());
  }
  za = za.contiguous();
  if (zw.defined()) zw = zw.contiguous();
  const at::Tensor& b = a.bias;
  const at::Tensor& bt = a.bias_t;

  at::Tensor y_t = at::empty({T, M, N}, x.options());
  if (M * N == 0) return {at::empty({M, N}, x.options()), y_t};
  // Primal epilogue in opmath precision (fp32 for half types): z = x W^T + b, then act and act'.
  const auto acc_type = at::toOpMathType(x.scalar_type());
  at::Tensor z = za.narrow(0, 0, M).to(acc_type);
  if (b.defined()) z.add_(b.to(acc_type));
  const at::Tensor y_acc = apply_activation(z, a.act);
  at::Tensor y = y_acc.to(x.scalar_type());
  if (y.is_alias_of(za)) y = y.clone();  // activation "none" in opmath dtype: do not hand out the scratch buffer
  // Without tangents (a plain forward) act' is never computed: it would only add [M, N] temporaries.
  if (T == 0) return {y, y_t};
  at::Tensor d = activation_derivative(z, y_acc, a.act);
  if (d.defined()) d = d.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "linear_dual_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    tangent_epilogue<scalar_t, acc_t>(za.const_data_ptr<scalar_t>(), Tx,
                                      zw.defined() ? zw.const_data_ptr<scalar_t>() : nullptr, Tw,
                                      bt.defined() ? bt.const_data_ptr<scalar_t>() : nullptr, Tb,
                                      d.defined() ? d.const_data_ptr<acc_t>() : nullptr,
                                      y_t.mutable_data_ptr<scalar_t>(), M, N, T);
  });
  return {y, y_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CPU, m) { m.impl("linear_dual", &linear_dual_cpu); }

}  // namespace symkernels::jvp
