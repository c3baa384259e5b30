// CUDA W4A4 GEMM, SIMT with __dp4a (sm_61+): a portable, exact baseline, compile-checked here (no GPU).
// A 64×64 output tile per 256-thread block, each thread 4×4 outputs; per K step the block stages
// 64 rows × 16 packed bytes of A and of W in shared memory, and each thread unpacks 4 bytes (8 codes)
// into two int8x4 words per operand in registers, feeding __dp4a (int8·int8 → int32, exact).
// The epilogue is fused: fp32(acc)·sa[m]·sw[n] + bias[n], rounded once to the output dtype.
// Not yet done: Hopper int8 wgmma / Ampere s4 mma.sync (the path that would reach the design targets).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/cuda_convert.cuh"
#include "quarot/int4_matmul.h"
#include "quarot/quarot.h"

namespace symkernels::quarot {
namespace {

constexpr int kTile = 64;
constexpr int kStepBytes = 16;  // packed bytes per K step = 32 codes
constexpr int kThreads = 256;

// 4 packed bytes → int8x4 of the even codes and of the odd codes (same K permutation for A and W,
// which leaves the dot product unchanged).
__device__ __forceinline__ void unpack4(uint32_t packed, int& even, int& odd) {
  const uint32_t lo = packed & 0x0F0F0F0Fu, hi = (packed >> 4) & 0x0F0F0F0Fu;
  // sign-extend each nibble inside its byte: (v ^ 8) − 8 per byte, via a borrow-free byte trick
  even = static_cast<int>(((lo ^ 0x08080808u) + 0x78787878u) ^ 0x80808080u);
  odd = static_cast<int>(((hi ^ 0x08080808u) + 0x78787878u) ^ 0x80808080u);
}

template <typename Out>
__global__ void __launch_bounds__(kThreads) int4_matmul_kernel(const uint8_t* __restrict__ a,
                                                               const float* __restrict__ sa,
                                                               const uint8_t* __restrict__ w,
                                                               const float* __restrict__ sw,
                                                               const float* __restrict__ bias, Out* __restrict__ out,
                                                               int64_t m, int64_t n, int64_t kb) {
  __shared__ uint32_t as[kTile][kStepBytes / 4 + 1];  // +1 word: no bank conflicts on column reads
  __shared__ uint32_t ws[kTile][kStepBytes / 4 + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTile, n0 = static_cast<int64_t>(blockIdx.x) * kTile;
  int acc[4][4] = {};
  for (int64_t k0 = 0; k0 < kb; k0 += kStepBytes) {
    // 64 rows × 4 words for each operand = 256 words each: one per thread, zero-filled past the edges.
    {
      const int r = threadIdx.x / 4, c = threadIdx.x % 4;
      uint32_t va = 0, vw = 0;
      for (int b = 0; b < 4; ++b) {
        const int64_t kk = k0 + c * 4 + b;
        if (kk < kb) {
          if (m0 + r < m) va |= static_cast<uint32_t>(a[(m0 + r) * kb + kk]) << (8 * b);
          if (n0 + r < n) vw |= static_cast<uint32_t>(w[(n0 + r) * kb + kk]) << (8 * b);
        }
      }
      as[r][c] = va;  // zero bytes are code pairs (0, 0): they add nothing
      ws[r][c] = vw;
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < kStepBytes / 4; ++c) {
      int ae[4], ao[4], we[4], wo[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        unpack4(as[ty * 4 + i][c], ae[i], ao[i]);
        unpack4(ws[tx * 4 + i][c], we[i], wo[i]);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(ae[i], we[j], __dp4a(ao[i], wo[j], acc[i][j]));
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = m0 + ty * 4 + i;
    if (row >= m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t col = n0 + tx * 4 + j;
      if (col >= n) continue;
      float y = static_cast<float>(acc[i][j]) * sa[row] * sw[col];
      if (bias != nullptr) y += bias[col];
      out[row * n + col] = convert<Out, float>(y);
    }
  }
}

}  // namespace

cudaError_t launch_int4_matmul(const uint8_t* a, const float* sa, const uint8_t* w, const float* sw, const float* bias,
                               void* out, int64_t m, int64_t n, int64_t kb, int out_dtype, cudaStream_t stream) {
  if (m == 0 || n == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((n + kTile - 1) / kTile), static_cast<unsigned>((m + kTile - 1) / kTile));
  switch (out_dtype) {
    case 0:
      int4_matmul_kernel<float><<<grid, kThreads, 0, stream>>>(a, sa, w, sw, bias, static_cast<float*>(out), m, n, kb);
      break;
    case 1:
      int4_matmul_kernel<__half><<<grid, kThreads, 0, stream>>>(a, sa, w, sw, bias, static_cast<__half*>(out), m, n, kb);
      break;
    case 2:
      int4_matmul_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(a, sa, w, sw, bias,
                                                                        static_cast<__nv_bfloat16*>(out), m, n, kb);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace symkernels::quarot
