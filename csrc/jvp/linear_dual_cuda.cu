// CUDA fused linear(+bias)+activation JVP: y = act(x Wᵀ + b), y_t = act'(z) ⊙ (x_t Wᵀ + x W_tᵀ + b_t).
//
// A tiled SIMT GEMM with TWO accumulators sharing every tile load. A block of 256 threads owns a
// kBM×kBN tile of y; per k-step it stages x, W, x_t and W_t tiles (kBK deep) in shared memory, widened to
// the accumulation type (fp32 for fp16/bf16/fp32 inputs, fp64 for fp64), and each thread updates a 4×4
// micro-tile of both
//     acc   += x·Wᵀ                 (the primal)
//     acc_t += x_t·Wᵀ + x·W_tᵀ      (tangent 0)
// so W's tile feeds the primal and the x-tangent product, and x's tile the primal and the weight-tangent
// product: three multiply-adds per pair of loads (fwdgrad.md §4: 3 MMAs into 2 accumulators).
// A seeded W_t is generated while staging (jvp.h's counter-based RNG, the exact numbers of the C++ and
// Triton kernels): it never exists in global memory. The epilogue adds the bias (and bias tangent),
// evaluates act(z) and act'(z) once, writes y, and keeps act'(z) in registers: tangents 1..T-1 redo only
// their own K loop and reuse it (the primal is computed once for all T).
//
// Not tuned: no tensor cores, no double buffering (cp.async) — a correct, compile-checked baseline. The
// CUDA key of the op therefore stays on the Triton kernel unless SYMKERNELS_JVP_CUDA_NATIVE is set (see
// linear_dual_cuda.cpp), until a GPU benchmark says otherwise.
#include "common/cuda_convert.cuh"
#include "jvp/jvp_cuda.h"

namespace symkernels::jvp {
namespace {

constexpr int kBM = 64, kBN = 64, kBK = 16;  // block tile
constexpr int kThreads = 256;                // 16×16 threads, each a 4×4 micro-tile strided by 16
constexpr int kMicro = 4;

template <typename Acc>
__device__ __forceinline__ void activation_and_derivative(Acc z, int act, Acc& y, Acc& d) {
  switch (Activation(act)) {
    case Activation::kNone:
      y = z, d = Acc(1);
      return;
    case Activation::kRelu:
      y = z > Acc(0) ? z : (z != z ? z : Acc(0));
      d = y <= Acc(0) ? Acc(0) : Acc(1);  // PyTorch's relu JVP convention (NaN passes the tangent)
      return;
    case Activation::kGelu: {
      const Acc cdf = Acc(0.5) * (Acc(1) + erf(z * Acc(0.7071067811865476)));
      y = z * cdf;
      d = cdf + z * exp(Acc(-0.5) * z * z) * Acc(0.3989422804014327);
      return;
    }
    case Activation::kGeluTanh: {
      const Acc c = Acc(0.7978845608028654), a = Acc(0.044715);
      const Acc th = tanh(c * (z + a * z * z * z));
      y = Acc(0.5) * z * (Acc(1) + th);
      d = Acc(0.5) * (Acc(1) + th) + Acc(0.5) * z * (Acc(1) - th * th) * c * (Acc(1) + Acc(3) * a * z * z);
      return;
    }
    case Activation::kSilu: {
      const Acc s = Acc(1) / (Acc(1) + exp(-z));
      y = z * s;
      d = s * (Acc(1) + z * (Acc(1) - s));
      return;
    }
    case Activation::kTanh: {
      const Acc th = tanh(z);
      y = th, d = Acc(1) - th * th;
      return;
    }
  }
  y = z, d = Acc(1);
}

// Stage rows [r0, r0+rows) × cols [k0, k0+kBK) of a row-major [rows_total, K] matrix, transposed into
// s[kBK][rows] (the inner-product loop then reads contiguous rows). Out-of-range elements are 0.
template <int kRows, typename In, typename Acc>
__device__ __forceinline__ void stage(Acc (*s)[kRows], const In* __restrict__ src, int64_t r0, int64_t rows_total,
                                      int64_t k0, int64_t K) {
  for (int e = threadIdx.x; e < kRows * kBK; e += kThreads) {
    const int r = e / kBK, k = e % kBK;
    const int64_t gr = r0 + r, gk = k0 + k;
    s[k][r] = gr < rows_total && gk < K ? convert<Acc>(src[gr * K + gk]) : Acc(0);
  }
}

// The seeded weight tangent's tile: W_t[t, n, k] = value at flat index (t·N + n)·K + k (reference.py).
template <typename Acc>
__device__ __forceinline__ void stage_seeded(Acc (*s)[kBN], int64_t t, int64_t n0, int64_t N, int64_t k0, int64_t K,
                                             uint32_t key0, uint32_t key1, bool gaussian) {
  for (int e = threadIdx.x; e < kBN * kBK; e += kThreads) {
    const int r = e / kBK, k = e % kBK;
    const int64_t gn = n0 + r, gk = k0 + k;
    Acc v = Acc(0);
    if (gn < N && gk < K) {
      const uint32_t index = uint32_t((t * N + gn) * K + gk);
      v = Acc(gaussian ? seeded_gaussian(index, key0, key1) : seeded_rademacher(index, key0));
    }
    s[k][r] = v;
  }
}

template <typename In>
__global__ void __launch_bounds__(kThreads) linear_dual_kernel(const LinearDualParams<In> p, uint32_t key0,
                                                               uint32_t key1) {
  using Acc = typename AccumulatorOf<In>::type;
  __shared__ Acc xs[kBK][kBM], ws[kBK][kBN], xts[kBK][kBM], wts[kBK][kBN];
  const int64_t m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const bool has_xt = p.x_t != nullptr, seeded = p.seed >= 0, has_wt = p.w_t != nullptr || seeded;
  const bool has_t = p.T > 0 && (has_xt || has_wt);

  Acc acc[kMicro][kMicro] = {}, acc_t[kMicro][kMicro] = {};
  // K loop of tangent t; with_primal: also the primal (pass 1 only). Each __syncthreads pair brackets one
  // shared tile generation; every thread takes the same branches (uniform flags), so they are safe.
  auto k_loop = [&](int64_t t, bool with_primal) {
    for (int64_t k0 = 0; k0 < p.K; k0 += kBK) {
      const bool need_w = with_primal || has_xt;  // W feeds the primal and the x-tangent product
      if (with_primal || has_wt) stage<kBM>(xs, p.x, m0, p.M, k0, p.K);
      if (need_w) stage<kBN>(ws, p.w, n0, p.N, k0, p.K);
      if (has_xt) stage<kBM>(xts, p.x_t + t * p.x_t_stride, m0, p.M, k0, p.K);
      if (seeded) {
        stage_seeded(wts, t, n0, p.N, k0, p.K, key0, key1, p.distribution == int(Distribution::kGaussian));
      } else if (has_wt) {
        stage<kBN>(wts, p.w_t + t * p.w_t_stride, n0, p.N, k0, p.K);
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kBK; ++kk) {
        Acc a[kMicro], w[kMicro], at[kMicro], wt[kMicro];
#pragma unroll
        for (int i = 0; i < kMicro; ++i) {
          a[i] = xs[kk][ty + 16 * i];
          w[i] = ws[kk][tx + 16 * i];
          at[i] = has_xt ? xts[kk][ty + 16 * i] : Acc(0);
          wt[i] = has_wt ? wts[kk][tx + 16 * i] : Acc(0);
        }
#pragma unroll
        for (int i = 0; i < kMicro; ++i) {
#pragma unroll
          for (int j = 0; j < kMicro; ++j) {
            if (with_primal) acc[i][j] += a[i] * w[j];
            if (has_t) acc_t[i][j] += at[i] * w[j] + a[i] * wt[j];
          }
        }
      }
      __syncthreads();
    }
  };

  k_loop(0, true);
  Acc d[kMicro][kMicro];
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      Acc z = acc[i][j];
      if (p.b && n < p.N) z += convert<Acc>(p.b[n]);
      Acc y;
      activation_and_derivative<Acc>(z, p.activation, y, d[i][j]);
      if (m < p.M && n < p.N) p.y[m * p.N + n] = convert<In>(y);
    }
  }
  for (int64_t t = 0; t < p.T; ++t) {
    if (t > 0 && has_t) {
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
#pragma unroll
        for (int j = 0; j < kMicro; ++j) acc_t[i][j] = Acc(0);
      }
      k_loop(t, false);
    }
#pragma unroll
    for (int i = 0; i < kMicro; ++i) {
#pragma unroll
      for (int j = 0; j < kMicro; ++j) {
        const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
        if (m >= p.M || n >= p.N) continue;
        Acc zt = has_t ? acc_t[i][j] : Acc(0);
        if (p.b_t) zt += convert<Acc>(p.b_t[t * p.b_t_stride + n]);
        p.y_t[(t * p.M + m) * p.N + n] = convert<In>(d[i][j] * zt);
      }
    }
  }
}

}  // namespace

template <typename In>
cudaError_t launch_linear_dual(const LinearDualParams<In>& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  const uint32_t key0 = p.seed >= 0 ? seed_key(p.seed, 0) : 0u, key1 = p.seed >= 0 ? seed_key(p.seed, 1) : 0u;
  const dim3 grid(unsigned((p.N + kBN - 1) / kBN), unsigned((p.M + kBM - 1) / kBM));
  if (grid.y > 65535u) return cudaErrorInvalidConfiguration;  // M > 4M rows: split the call
  linear_dual_kernel<In><<<grid, kThreads, 0, stream>>>(p, key0, key1);
  return cudaGetLastError();
}

template cudaError_t launch_linear_dual<float>(const LinearDualParams<float>&, cudaStream_t);
template cudaError_t launch_linear_dual<double>(const LinearDualParams<double>&, cudaStream_t);
template cudaError_t launch_linear_dual<__half>(const LinearDualParams<__half>&, cudaStream_t);
template cudaError_t launch_linear_dual<__nv_bfloat16>(const LinearDualParams<__nv_bfloat16>&, cudaStream_t);

}  // namespace symkernels::jvp
