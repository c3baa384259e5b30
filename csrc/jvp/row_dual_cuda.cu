// CUDA row-wise duals over the last dim (layer norm, RMS norm, softmax): primal and T tangents.
//
// One block per row, any row length: the row is not held on chip, the statistics are block reductions
// (warp shuffles, then one value per warp through shared memory) and the primal x̂ (or s) is recomputed
// from x in each pass — x is re-read from L1/L2, which is cheaper than limiting N to what shared memory
// holds. Per row: the primal statistics once (mean and 1/σ, 1/rms, or max and Σe), y, then per tangent
// one reduction pass (Σẋ and Σx̂ẋ together, or ⟨s, ẋ⟩) and one write pass (same formulas as
// row_dual_cpu.cpp / reference.row_dual). Accumulates in fp32 (fp64 for fp64 inputs).
#include "common/cuda_convert.cuh"
#include "jvp/jvp_cuda.h"

namespace symkernels::jvp {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Sum of (a, b) over the block; every thread gets the result. `scratch` holds 2·kWarps values.
template <typename Acc>
__device__ __forceinline__ void block_sum2(Acc& a, Acc& b, Acc* scratch) {
  for (int off = 16; off > 0; off >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, off);
    b += __shfl_xor_sync(0xffffffffu, b, off);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by the previous reduction
  if (lane == 0) scratch[warp] = a, scratch[kWarps + warp] = b;
  __syncthreads();
  a = 0, b = 0;
  for (int w = 0; w < kWarps; ++w) a += scratch[w], b += scratch[kWarps + w];
}

template <typename Acc>
__device__ __forceinline__ Acc block_max(Acc a, Acc* scratch) {
  for (int off = 16; off > 0; off >>= 1) a = max(a, __shfl_xor_sync(0xffffffffu, a, off));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = a;
  __syncthreads();
  a = scratch[0];
  for (int w = 1; w < kWarps; ++w) a = max(a, scratch[w]);
  return a;
}

template <typename In, typename Acc>
__device__ __forceinline__ Acc load_or(const In* p, int64_t i, Acc fallback) {
  return p ? convert<Acc>(p[i]) : fallback;
}

template <RowKind kKind, typename In>
__global__ void __launch_bounds__(kThreads) row_dual_kernel(const RowDualParams<In> p) {
  using Acc = typename AccumulatorOf<In>::type;
  __shared__ Acc scratch[2 * kWarps];
  const int64_t N = p.N;
  const Acc inv_n = Acc(1) / Acc(N);
  for (int64_t r = blockIdx.x; r < p.R; r += gridDim.x) {
    const In* x = p.x + r * N;
    // Primal statistics: x̂ = (x − shift)·scale (norms) or s = exp(x − shift)·scale (softmax).
    Acc shift = 0, scale = 0;
    if constexpr (kKind == RowKind::kSoftmax) {
      Acc m = -INFINITY;
      for (int64_t n = threadIdx.x; n < N; n += kThreads) m = max(m, convert<Acc>(x[n]));
      m = block_max(m, scratch);
      shift = m == -INFINITY ? Acc(0) : m;  // all -inf: 0/0 = NaN, as torch.softmax
      Acc total = 0, unused = 0;
      for (int64_t n = threadIdx.x; n < N; n += kThreads) total += exp(convert<Acc>(x[n]) - shift);
      block_sum2(total, unused, scratch);
      scale = Acc(1) / total;
    } else {
      Acc sum = 0, unused = 0;
      if constexpr (kKind == RowKind::kLayerNorm) {
        for (int64_t n = threadIdx.x; n < N; n += kThreads) sum += convert<Acc>(x[n]);
        block_sum2(sum, unused, scratch);
        shift = sum * inv_n;
      }
      Acc sq = 0;
      for (int64_t n = threadIdx.x; n < N; n += kThreads) {
        const Acc c = convert<Acc>(x[n]) - shift;
        sq += c * c;
      }
      block_sum2(sq, unused, scratch);
      scale = Acc(1) / sqrt(sq * inv_n + Acc(p.eps));
    }
    auto xhat = [&](int64_t n) {
      const Acc c = convert<Acc>(x[n]) - shift;
      if constexpr (kKind == RowKind::kSoftmax) {
        return exp(c) * scale;
      } else {
        return c * scale;
      }
    };
    for (int64_t n = threadIdx.x; n < N; n += kThreads) {
      Acc y = xhat(n);
      if constexpr (kKind != RowKind::kSoftmax) y = y * load_or(p.w, n, Acc(1)) + load_or(p.b, n, Acc(0));
      p.y[r * N + n] = convert<In>(y);
    }
    for (int64_t t = 0; t < p.T; ++t) {
      In* out = p.y_t + (t * p.R + r) * N;
      const In* xt = p.x_t ? p.x_t + t * p.x_t_stride + r * N : nullptr;
      const In* wt = p.w_t ? p.w_t + t * p.w_t_stride : nullptr;
      const In* bt = p.b_t ? p.b_t + t * p.b_t_stride : nullptr;
      Acc sum_t = 0, dot_t = 0;
      if (xt) {
        for (int64_t n = threadIdx.x; n < N; n += kThreads) {
          const Acc v = convert<Acc>(xt[n]);
          sum_t += v;
          dot_t += xhat(n) * v;
        }
        block_sum2(sum_t, dot_t, scratch);
      }
      for (int64_t n = threadIdx.x; n < N; n += kThreads) {
        const Acc h = xhat(n);
        Acc v = 0;
        if (xt) {
          const Acc xv = convert<Acc>(xt[n]);
          if constexpr (kKind == RowKind::kSoftmax) {
            v = h * (xv - dot_t);
          } else {
            const Acc centre = kKind == RowKind::kLayerNorm ? sum_t * inv_n : Acc(0);
            v = (xv - centre - h * dot_t * inv_n) * scale * load_or(p.w, n, Acc(1));
          }
        }
        if constexpr (kKind != RowKind::kSoftmax) v += h * load_or(wt, n, Acc(0)) + load_or(bt, n, Acc(0));
        out[n] = convert<In>(v);
      }
    }
  }
}

}  // namespace

template <typename In>
cudaError_t launch_row_dual(const RowDualParams<In>& p, cudaStream_t stream) {
  if (p.R == 0 || p.N == 0) return cudaSuccess;
  // Grid-stride over rows: enough blocks to fill any GPU, never more than the grid limit.
  const unsigned blocks = unsigned(p.R < (1 << 20) ? p.R : (1 << 20));
  switch (RowKind(p.kind)) {
    case RowKind::kLayerNorm: row_dual_kernel<RowKind::kLayerNorm, In><<<blocks, kThreads, 0, stream>>>(p); break;
    case RowKind::kRmsNorm: row_dual_kernel<RowKind::kRmsNorm, In><<<blocks, kThreads, 0, stream>>>(p); break;
    case RowKind::kSoftmax: row_dual_kernel<RowKind::kSoftmax, In><<<blocks, kThreads, 0, stream>>>(p); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template cudaError_t launch_row_dual<float>(const RowDualParams<float>&, cudaStream_t);
template cudaError_t launch_row_dual<double>(const RowDualParams<double>&, cudaStream_t);
template cudaError_t launch_row_dual<__half>(const RowDualParams<__half>&, cudaStream_t);
template cudaError_t launch_row_dual<__nv_bfloat16>(const RowDualParams<__nv_bfloat16>&, cudaStream_t);

}  // namespace symkernels::jvp
