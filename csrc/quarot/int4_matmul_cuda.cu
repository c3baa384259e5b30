// CUDA W4A4 GEMM: out[m, n] = fp32(Σ_k a[m, k]·w[n, k])·sa[m]·sw[n] + bias[n], codes packed two per byte
// (even index in the low nibble, two's complement). Two kernels share the unpack and the epilogue:
//  * int4_matmul_mma_kernel (sm_80+, chosen at run time by the glue): int8 tensor cores through
//    `mma.sync.m16n8k32.s8.s8.s32` after an in-register unpack. Hopper has no INT4 tensor cores, so int8
//    MMA is the exact path there (same peak as W8A8; the 4-bit format saves bytes, not math). Code
//    compiled for sm_80–sm_89 uses the INT4 tensor cores instead (`mma.sync.m16n8k64.s4`, no unpack).
//  * int4_matmul_dp4a_kernel (sm_61+): SIMT __dp4a, the portable fallback for older devices.
// Both accumulate exactly in int32 (|acc| ≤ 64·K) and round once to the output dtype.
// Not done: Hopper's warpgroup MMA (wgmma, s8) fed by TMA, and a split-K decode path; the mma.sync
// kernel is a correct tensor-core baseline, not tuned to the design targets (nothing was measured).
//
// !! The tensor-core kernel has NEVER EXECUTED: it was written and compile-checked (sm_90a, sm_80) on a
// !! machine without a GPU. Its fragment index mapping is mirrored by a Python model in
// !! tests/quarot/test_int4_matmul_mma_layout.py, which reproduces an integer matmul on CPU; the CUDA
// !! test in tests/quarot/test_int4_matmul.py runs both kernels on a GPU and has not been run yet.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/cuda_convert.cuh"
#include "quarot/int4_matmul_cuda.h"
#include "quarot/quarot.h"

namespace symkernels::quarot {
namespace {

// 4 packed bytes → int8x4 of the even codes and of the odd codes. Both kernels apply the same
// permutation of K to A and to W, which leaves every dot product unchanged.
__device__ __forceinline__ void unpack4(uint32_t packed, int& even, int& odd) {
  const uint32_t lo = packed & 0x0F0F0F0Fu, hi = (packed >> 4) & 0x0F0F0F0Fu;
  // sign-extend each nibble inside its byte: (v ^ 8) − 8 per byte, via a borrow-free byte trick
  even = static_cast<int>(((lo ^ 0x08080808u) + 0x78787878u) ^ 0x80808080u);
  odd = static_cast<int>(((hi ^ 0x08080808u) + 0x78787878u) ^ 0x80808080u);
}

// The fused epilogue, in fp32 (an int32 → fp16 cast would overflow at |acc| > 65504).
template <typename Out>
__device__ __forceinline__ void store_epilogue(Out* __restrict__ out, const float* __restrict__ sa,
                                               const float* __restrict__ sw, const float* __restrict__ bias,
                                               int acc, int64_t row, int64_t col, int64_t n) {
  float y = static_cast<float>(acc) * sa[row] * sw[col];
  if (bias != nullptr) y += bias[col];
  out[row * n + col] = convert<Out, float>(y);
}

// ---------------------------------------------------------------------------------------------------
// SIMT __dp4a kernel. A 64×64 output tile per 256-thread block, each thread 4×4 outputs; per K step the
// block stages 64 rows × 16 packed bytes of A and of W in shared memory, and each thread unpacks 4 bytes
// (8 codes) into two int8x4 words per operand in registers.
constexpr int kDp4aTile = 64;
constexpr int kDp4aStepBytes = 16;  // packed bytes per K step = 32 codes
constexpr int kDp4aThreads = 256;

template <typename Out>
__global__ void __launch_bounds__(kDp4aThreads)
    int4_matmul_dp4a_kernel(const uint8_t* __restrict__ a, const float* __restrict__ sa,
                            const uint8_t* __restrict__ w, const float* __restrict__ sw,
                            const float* __restrict__ bias, Out* __restrict__ out, int64_t m, int64_t n, int64_t kb) {
  __shared__ uint32_t as[kDp4aTile][kDp4aStepBytes / 4 + 1];  // +1 word: no bank conflicts on column reads
  __shared__ uint32_t ws[kDp4aTile][kDp4aStepBytes / 4 + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kDp4aTile, n0 = static_cast<int64_t>(blockIdx.x) * kDp4aTile;
  int acc[4][4] = {};
  for (int64_t k0 = 0; k0 < kb; k0 += kDp4aStepBytes) {
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
    for (int c = 0; c < kDp4aStepBytes / 4; ++c) {
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
      if (col < n) store_epilogue(out, sa, sw, bias, acc[i][j], row, col, n);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Tensor-core kernel: int8 mma.sync m16n8k32 after an in-register unpack.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k32", .s8), lane = 4·g + t:
//   A (16×32, row): a0 = A[g][4t..4t+3], a1 = A[g+8][4t..4t+3], a2 = A[g][16+4t..], a3 = A[g+8][16+4t..]
//   B (32×8, col):  b0 = B[4t..4t+3][g], b1 = B[16+4t..16+4t+3][g]       (B[k][n] = W[n][k])
//   C (16×8, s32):  c0, c1 = C[g][2t, 2t+1],  c2, c3 = C[g+8][2t, 2t+1]
// One MMA consumes 32 codes = 16 packed bytes of each row. Lane t reads the packed word t of that
// 16-byte chunk (codes 8t..8t+7) and unpack4 splits it into the even codes, placed in K slots 4t..4t+3,
// and the odd codes, placed in slots 16+4t..16+4t+3. A and W use the same slot ↔ code map, so the MMA's
// K order is a permutation of the true one and the sum is unchanged — no int8 tile is ever materialised.
//
// Block tile BM×BN over K steps of kMmaStageBytes packed bytes (64 codes), staged in shared memory with
// cp.async double buffering (the load of step s+1 overlaps the MMAs of step s). Warps tile the block
// WARPS_M × WARPS_N; each warp owns (BM/WARPS_M)×(BN/WARPS_N) outputs = MI×NJ m16n8 accumulators.
constexpr int kMmaStageBytes = 32;  // packed bytes per row per stage = 64 codes = 2 s8 MMAs or 1 s4 MMA
constexpr int kMmaChunksPerRow = kMmaStageBytes / 16;  // 16-byte cp.async chunks
// Row pitch in shared memory: 8 data words + 4 pad. In one fragment load the 32 lanes read word t of
// rows g = 0..7: bank (12g + t) mod 32 is distinct for all 32 lanes; the 48-byte pitch keeps every
// 16-byte chunk aligned for cp.async.
constexpr int kMmaRowWords = kMmaStageBytes / 4 + 4;

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // never launched below sm_80: the glue dispatches on the compute capability
#else
  // src_bytes < 16 zero-fills the rest of the chunk (0: no global read at all), which is the edge padding.
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes) : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// (maybe_unused: each architecture compiles one of the two MMA helpers.)
// d += a·b for one m16n8k32 tile, int8 inputs, exact int32 accumulation (no .satfinite: |acc| ≤ 64·K
// never reaches the int32 range for any K a tensor can hold here).
[[maybe_unused]] __device__ __forceinline__ void mma_s8_m16n8k32(int (&d)[4], const int (&a)[4], const int (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Ampere/Ada (sm_80–sm_89) have INT4 tensor cores: mma.sync m16n8k64 .s4 takes the packed words as they
// are. Its fragments (PTX ISA, m16n8k64 .s4): a0 = A[g][8t..8t+7], a1 = A[g+8][8t..], a2 = A[g][32+8t..],
// a3 = A[g+8][32+8t..]; b0 = B[8t..8t+7][g], b1 = B[32+8t..][g]; element 0 in the lowest nibble, which
// is our packing order (even code low). So lane t's registers are the packed words t and 4+t of a
// 32-byte (64-code) chunk, with no unpack and no K permutation. Hopper (sm_90) has no INT4 tensor
// cores, and newer devices are not assumed to: they take the int8 path.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && __CUDA_ARCH__ < 900
constexpr bool kHasS4Mma = true;
#else
constexpr bool kHasS4Mma = false;
#endif

[[maybe_unused]] __device__ __forceinline__ void mma_s4_m16n8k64(int (&d)[4], const int (&a)[4], const int (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && __CUDA_ARCH__ < 900
  asm volatile(
      "mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();  // compiled out: only reached under kHasS4Mma
#endif
}

template <int BM, int BN>
struct MmaSmem {
  uint32_t a[2][BM][kMmaRowWords];
  uint32_t w[2][BN][kMmaRowWords];
};

// Stage one K step (packed bytes [k0, k0 + kMmaStageBytes)) of the A and W tiles into shared memory,
// zero-filled past M, N and K (zero bytes are code pairs (0, 0): they add nothing). vec16: every row
// starts 16-byte aligned and kb % 16 == 0, so each 16-byte chunk is wholly in or out of range and can go
// through cp.async; otherwise the chunk is gathered byte by byte (synchronously, same shared layout).
template <int BM, int BN, int THREADS>
__device__ __forceinline__ void load_stage(MmaSmem<BM, BN>& s, int stage, const uint8_t* __restrict__ a,
                                           const uint8_t* __restrict__ w, int64_t m0, int64_t n0, int64_t m,
                                           int64_t n, int64_t kb, int64_t k0, bool vec16) {
  constexpr int kChunks = (BM + BN) * kMmaChunksPerRow;
  for (int c = threadIdx.x; c < kChunks; c += THREADS) {
    const bool is_a = c < BM * kMmaChunksPerRow;
    const int cc = is_a ? c : c - BM * kMmaChunksPerRow;
    const int r = cc / kMmaChunksPerRow, part = cc % kMmaChunksPerRow;
    const uint8_t* base = is_a ? a : w;
    const int64_t row = (is_a ? m0 : n0) + r, kk = k0 + part * 16;
    const bool row_ok = row < (is_a ? m : n);
    uint32_t* dst = is_a ? &s.a[stage][r][part * 4] : &s.w[stage][r][part * 4];
    if (vec16) {
      const bool ok = row_ok && kk < kb;
      cp_async16(dst, ok ? base + row * kb + kk : base, ok ? 16 : 0);
    } else {
      uint32_t v[4] = {0, 0, 0, 0};
      if (row_ok) {
#pragma unroll  // constant register indices: v stays in registers
        for (int b = 0; b < 16; ++b)
          if (kk + b < kb) v[b / 4] |= static_cast<uint32_t>(base[row * kb + kk + b]) << (8 * (b % 4));
      }
      *reinterpret_cast<uint4*>(dst) = make_uint4(v[0], v[1], v[2], v[3]);
    }
  }
}

template <int BM, int BN, int WARPS_M, int WARPS_N, typename Out>
__global__ void __launch_bounds__(32 * WARPS_M * WARPS_N)
    int4_matmul_mma_kernel(const uint8_t* __restrict__ a, const float* __restrict__ sa,
                           const uint8_t* __restrict__ w, const float* __restrict__ sw,
                           const float* __restrict__ bias, Out* __restrict__ out, int64_t m, int64_t n, int64_t kb,
                           bool vec16) {
  constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // warp tile
  constexpr int MI = WTM / 16, NJ = WTN / 8;             // m16n8 accumulators per warp
  static_assert(WTM % 16 == 0 && WTN % 8 == 0, "warp tile must be a multiple of the m16n8 MMA tile");
  __shared__ __align__(16) MmaSmem<BM, BN> s;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;  // groupID, threadID_in_group of the fragment layouts
  const int wm = (warp / WARPS_N) * WTM, wn = (warp % WARPS_N) * WTN;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t steps = (kb + kMmaStageBytes - 1) / kMmaStageBytes;

  int acc[MI][NJ][4] = {};
  if (steps > 0) load_stage<BM, BN, kThreads>(s, 0, a, w, m0, n0, m, n, kb, 0, vec16);
  cp_async_commit();
  for (int64_t step = 0; step < steps; ++step) {
    const int stage = static_cast<int>(step & 1);
    // Prefetch the next step into the other buffer (freed by the trailing __syncthreads of the previous
    // iteration); an empty commit group keeps the wait count uniform on the last step.
    if (step + 1 < steps)
      load_stage<BM, BN, kThreads>(s, stage ^ 1, a, w, m0, n0, m, n, kb, (step + 1) * kMmaStageBytes, vec16);
    cp_async_commit();
    cp_async_wait<1>();  // all but the newest group done: this step's tile has landed
    __syncthreads();
    if constexpr (kHasS4Mma) {
      static_assert(kMmaStageBytes == 32, "one m16n8k64 s4 MMA per 32-byte stage");
      int af[MI][4], bf[NJ][2];
#pragma unroll
      for (int i = 0; i < MI; ++i) {
        const int r = wm + i * 16 + g;
        af[i][0] = static_cast<int>(s.a[stage][r][t]);          // row g,   codes 8t..8t+7
        af[i][1] = static_cast<int>(s.a[stage][r + 8][t]);      // row g+8, codes 8t..8t+7
        af[i][2] = static_cast<int>(s.a[stage][r][4 + t]);      // row g,   codes 32+8t..
        af[i][3] = static_cast<int>(s.a[stage][r + 8][4 + t]);  // row g+8, codes 32+8t..
      }
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        bf[j][0] = static_cast<int>(s.w[stage][wn + j * 8 + g][t]);
        bf[j][1] = static_cast<int>(s.w[stage][wn + j * 8 + g][4 + t]);
      }
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NJ; ++j) mma_s4_m16n8k64(acc[i][j], af[i], bf[j]);
    } else {
#pragma unroll
      for (int ks = 0; ks < kMmaStageBytes / 16; ++ks) {
        const int word = ks * 4 + t;  // packed word t of this MMA's 16-byte chunk
        int af[MI][4], bf[NJ][2];
#pragma unroll
        for (int i = 0; i < MI; ++i) {
          int e0, o0, e1, o1;
          unpack4(s.a[stage][wm + i * 16 + g][word], e0, o0);
          unpack4(s.a[stage][wm + i * 16 + g + 8][word], e1, o1);
          af[i][0] = e0;  // row g,   slots 4t..4t+3
          af[i][1] = e1;  // row g+8, slots 4t..4t+3
          af[i][2] = o0;  // row g,   slots 16+4t..16+4t+3
          af[i][3] = o1;  // row g+8, slots 16+4t..16+4t+3
        }
#pragma unroll
        for (int j = 0; j < NJ; ++j) unpack4(s.w[stage][wn + j * 8 + g][word], bf[j][0], bf[j][1]);
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
          for (int j = 0; j < NJ; ++j) mma_s8_m16n8k32(acc[i][j], af[i], bf[j]);
      }
    }
    __syncthreads();  // everyone is done reading this buffer before the next iteration refills it
  }

#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int64_t row = m0 + wm + i * 16 + g + (r / 2) * 8, col = n0 + wn + j * 8 + 2 * t + (r % 2);
        if (row < m && col < n) store_epilogue(out, sa, sw, bias, acc[i][j][r], row, col, n);
      }
}

// Launch configurations of the one tensor-core kernel, bucketed by M (untuned: chosen so that the
// decode case M ≤ 16 still spreads N over many blocks, and prefill uses a 128×128 tile).
template <int BM, int BN, int WARPS_M, int WARPS_N>
struct MmaConfig {
  static constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  template <typename Out>
  static cudaError_t launch(const uint8_t* a, const float* sa, const uint8_t* w, const float* sw, const float* bias,
                            Out* out, int64_t m, int64_t n, int64_t kb, cudaStream_t stream) {
    const auto kernel = int4_matmul_mma_kernel<BM, BN, WARPS_M, WARPS_N, Out>;
    // A build whose PTX targets < sm_80 holds only the trapping stub: fail clearly instead of trapping.
    // Queried once per instantiation (the answer depends on the build, not on the device: the glue only
    // asks for this kernel on compute capability >= 8.0).
    static const int ptx_version = [&] {
      cudaFuncAttributes attr{};
      return cudaFuncGetAttributes(&attr, kernel) == cudaSuccess ? attr.ptxVersion : 0;
    }();
    if (ptx_version < 80) return cudaErrorInvalidDeviceFunction;
    const bool vec16 = kb % 16 == 0 && reinterpret_cast<uintptr_t>(a) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(w) % 16 == 0;
    const dim3 grid(static_cast<unsigned>((n + BN - 1) / BN), static_cast<unsigned>((m + BM - 1) / BM));
    kernel<<<grid, kThreads, 0, stream>>>(a, sa, w, sw, bias, out, m, n, kb, vec16);
    return cudaGetLastError();
  }
};
using MmaDecode = MmaConfig<16, 32, 1, 4>;    // warp tile 16×8
using MmaMedium = MmaConfig<64, 64, 2, 2>;    // warp tile 32×32
using MmaPrefill = MmaConfig<128, 128, 2, 4>; // warp tile 64×32

template <typename Out>
cudaError_t launch_typed(const uint8_t* a, const float* sa, const uint8_t* w, const float* sw, const float* bias,
                         Out* out, int64_t m, int64_t n, int64_t kb, Int4MatmulKernel kernel, cudaStream_t stream) {
  if (kernel == Int4MatmulKernel::kDp4a) {
    const dim3 grid(static_cast<unsigned>((n + kDp4aTile - 1) / kDp4aTile),
                    static_cast<unsigned>((m + kDp4aTile - 1) / kDp4aTile));
    int4_matmul_dp4a_kernel<Out><<<grid, kDp4aThreads, 0, stream>>>(a, sa, w, sw, bias, out, m, n, kb);
    return cudaGetLastError();
  }
  if (m <= 16) return MmaDecode::launch(a, sa, w, sw, bias, out, m, n, kb, stream);
  if (m <= 64) return MmaMedium::launch(a, sa, w, sw, bias, out, m, n, kb, stream);
  return MmaPrefill::launch(a, sa, w, sw, bias, out, m, n, kb, stream);
}

}  // namespace

cudaError_t launch_int4_matmul(const uint8_t* a, const float* sa, const uint8_t* w, const float* sw, const float* bias,
                               void* out, int64_t m, int64_t n, int64_t kb, int out_dtype, Int4MatmulKernel kernel,
                               cudaStream_t stream) {
  if (m == 0 || n == 0) return cudaSuccess;
  switch (out_dtype) {
    case 0: return launch_typed(a, sa, w, sw, bias, static_cast<float*>(out), m, n, kb, kernel, stream);
    case 1: return launch_typed(a, sa, w, sw, bias, static_cast<__half*>(out), m, n, kb, kernel, stream);
    case 2: return launch_typed(a, sa, w, sw, bias, static_cast<__nv_bfloat16*>(out), m, n, kb, kernel, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace symkernels::quarot
