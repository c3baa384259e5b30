// VNNI paths of the CPU W4A4 GEMM: C[m, n] = Σ_k A[m, k]·W[n, k] with vpdpbusd (unsigned × signed int8,
// 4-way dot into int32). Two routes: below kPackedMinRows rows (decode), W is unpacked from nibbles in
// registers, never through memory (what follows up to "prefill route" describes it); from there on (zmm
// only), W is unpacked once per call into L2 panels in oneDNN's broadcast layout ("prefill route" below).
//
// Signs. vpdpbusd multiplies unsigned bytes by signed bytes. W is the unsigned operand: its nibble XOR 8
// is w + 8 ∈ [0, 15] (one vpternlog per register does AND 0x0F and XOR 8 together), and
// Σ (w + 8)·a = Σ w·a + 8·Σ a, so the row sums of A (taken while A is unpacked once per call) remove the
// offset exactly. No saturation anywhere: vpdpbusd sums four products ≤ 15·8 into int32 directly.
//
// K order. A dot product may visit K in any order as long as both operands agree. A block of packed W
// (64 bytes for zmm, 32 for ymm) becomes [low nibbles | high nibbles] with one shift, so A is unpacked
// once per call into that same permuted order (int8), zero-padded to whole blocks: the padded codes are
// 0·(anything), so the last, partial W block needs only a masked (zmm) or zero-padded (ymm) load and no
// scalar tail code. A's rows are zero-padded to whole row tiles, and stored tile by tile (ALayout) so a
// micro-kernel reaches all its rows from one pointer.
//
// Tiles. The accumulators run along K (each zmm holds 16 partial sums of one output) and are reduced once
// per tile and K chunk: no transpose of W is needed, so W is read in its given [N, K/2] layout (the op
// takes no pre-packed weights). A micro-kernel computes MR rows × NR columns: per 64-byte block, NR W
// loads and 3·NR unpack ops, then 2·MR A loads, each feeding NR vpdpbusd (2·MR·NR in all). Prefill
// 6 × 3 (18 accumulators); decode takes fewer rows and more columns (M = 1: 1 × 6, M = 2: 2 × 6, M ≤ 4:
// 4 × 4). ymm (16 registers on an AVX-VNNI CPU, A as a memory operand): 4 × 2, 2 × 3, 1 × 4.
//
// Blocking and threads. Columns go in groups of NR; threads split the groups (each streams its own part
// of W, which is what bounds decode); inside a thread, groups are walked in chunks whose packed W
// (≤ kChunkBytes) stays in L2 while every row tile passes over it, K in chunks of kKChunkCodes so a
// tile's A chunk stays in L1 across the chunk's groups; the next A chunk is prefetched into L2 meanwhile.
// The epilogue (8·Σa correction, fp32 scales, bias, rounding to the output dtype) runs once per tile and
// column chunk, 16 columns per instruction on the zmm path.
//
// Measured (Zen 4 EPYC, 1 thread, CPU time, K = N = 4096): the decode route at M = 16 55% of the
// vpdpbusd peak, M = 1 W-read bound; the prefill route at M = 256 and 2048 87–91%. valgrind 3.19 hides
// AVX-512 from the program, so callgrind cannot run these kernels (the path check refuses them there).
#include "quarot/int4_matmul_vnni.h"

#include "quarot/cpu_scratch.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SK_VNNI_BUILD 1
#include <immintrin.h>
#endif

#include <c10/util/Exception.h>

namespace symkernels::quarot {

#if SK_VNNI_BUILD
namespace {

#define SK_ZMM_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))
#define SK_INLINE inline __attribute__((always_inline))
// Full unrolling keeps acc[][] in registers (a loop left rolled would index the array in memory).
#define SK_UNROLL _Pragma("GCC unroll 8")
// No inlining, cloning or interprocedural propagation: a clone of micro_packed with its caller's stack
// buffer propagated in (as LTO or a caller in the same unit invites) kept the accumulators in memory,
// at half the rate. Once per 64 columns × K × 6 rows, a call costs nothing.
#define SK_NOIPA __attribute__((noipa))
constexpr int64_t kChunkBytes = 384 << 10;  // packed W per L2 chunk of column groups (≤ 64 groups)
constexpr int64_t kMaxChunkGroups = 64;      // (bounds the per-thread partial sums: 64 groups × 8 × 8 int32)
constexpr int64_t kKChunkCodes = 4096;       // K per pass: a 6-row A chunk (24 KiB) stays in L1 (2048: 7% slower, Zen 4)

// Layout of the unpacked activations. Rows are grouped in tiles of `tile_rows` (the micro-kernel's MR);
// inside a tile, block b of row i (2·B codes: B low nibbles then B high nibbles, B = 64 for zmm, 32 for
// ymm) sits at b·(tile_rows·2B) + i·2B. A micro-kernel thus reaches all its rows from one pointer with
// constant offsets (a row-major layout needs one address register per row: GCC then runs out of them).
struct ALayout {
  int64_t block;      // packed bytes per block (B)
  int64_t blocks;     // blocks per row: ceil(kb / B)
  int64_t tile_rows;  // rows per tile
  int64_t block_stride() const { return tile_rows * 2 * block; }
  int64_t tile_stride() const { return blocks * block_stride(); }
};

// Sum of the 16 int32 lanes. (The masked shuffle and extract forms with a full mask: GCC 12's unmasked ones
// pass an "undefined" source that -Wuninitialized flags.) A 4-accumulators-at-once transpose-and-add
// variant (13 instructions per 4 sums instead of 28) measured 30% slower overall: GCC then kept the
// accumulators in memory.
SK_ZMM_TARGET SK_INLINE int32_t hsum_zmm(__m512i v) {
  v = _mm512_add_epi32(v, _mm512_mask_shuffle_i64x2(v, 0xFF, v, v, 0x4E));  // 256-bit halves
  v = _mm512_add_epi32(v, _mm512_mask_shuffle_i64x2(v, 0xFF, v, v, 0xB1));  // 128-bit quarters
  __m128i q = _mm512_mask_extracti32x4_epi32(_mm_setzero_si128(), 0xF, v, 0);
  q = _mm_add_epi32(q, _mm_unpackhi_epi64(q, q));
  return _mm_cvtsi128_si32(_mm_add_epi32(q, _mm_shuffle_epi32(q, 1)));
}

// ---- zmm micro-kernel ------------------------------------------------------------------------------
// acc += u·s (vpdpbusd zmm). Inline asm, not the intrinsic: GCC 12 allocates the intrinsic's tied
// accumulator badly from about 12 accumulators up (a register copy per instruction, then spills); the
// asm's "+v" keeps each accumulator in one register for the whole K loop.
SK_ZMM_TARGET SK_INLINE void dpbusd(__m512i& acc, __m512i u, __m512i s) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
}

// One 64-byte block of each of the NR W columns (lanes outside `mask` read as 0) against MR rows of A (row i
// at a + 128·i). Every W column of the block is unpacked first (2·NR registers), then each A half-row is
// loaded once and feeds NR instructions: 2·MR + NR loads per 2·MR·NR vpdpbusd. (Taking A as a memory
// operand of each vpdpbusd instead, one load per instruction, ran at half the rate on Zen 4: load-bound.)
template <int MR, int NR>
SK_ZMM_TARGET SK_INLINE void zmm_block(__m512i (&acc)[MR][NR], const uint8_t* const* w, int64_t off, __mmask64 mask,
                                         const int8_t* a, __m512i nib, __m512i eight) {
  __m512i lo[NR], hi[NR];
  SK_UNROLL for (int j = 0; j < NR; ++j) {
    const __m512i packed = _mm512_maskz_loadu_epi8(mask, w[j] + off);
    // (x & 0x0F) ^ 0x08 in one op: truth table of (A & B) ^ C with A=0xF0, B=0xCC, C=0xAA is 0x6A
    lo[j] = _mm512_ternarylogic_epi32(packed, nib, eight, 0x6A);
    hi[j] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(packed, 4), nib, eight, 0x6A);
  }
  SK_UNROLL for (int i = 0; i < MR; ++i) {
    const __m512i a_lo = _mm512_loadu_si512(a + 128 * i), a_hi = _mm512_loadu_si512(a + 128 * i + 64);
    SK_UNROLL for (int j = 0; j < NR; ++j) {
      dpbusd(acc[i][j], lo[j], a_lo);
      dpbusd(acc[i][j], hi[j], a_hi);
    }
  }
}

// acc_out[i·ldo + j] = Σ_k (w_j[k] + 8)·a_i[k] over kb packed bytes (before the 8·Σa correction).
template <int MR, int NR>
SK_ZMM_TARGET void micro_zmm(const int8_t* a, int64_t a_stride, const uint8_t* const* wrow, int64_t kb,
                               int32_t* acc_out, int64_t ldo) {
  __m512i acc[MR][NR];
  SK_UNROLL for (int i = 0; i < MR; ++i) SK_UNROLL for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  const uint8_t* w[NR];
  SK_UNROLL for (int j = 0; j < NR; ++j) w[j] = wrow[j];
  const __m512i nib = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(0x08);
  const int64_t full = kb - kb % 64;
  int64_t off = 0;
  for (; off < full; off += 64, a += a_stride) zmm_block<MR, NR>(acc, w, off, ~__mmask64{0}, a, nib, eight);
  if (off < kb) zmm_block<MR, NR>(acc, w, off, (__mmask64{1} << (kb - off)) - 1, a, nib, eight);
  SK_UNROLL for (int i = 0; i < MR; ++i) SK_UNROLL for (int j = 0; j < NR; ++j) acc_out[i * ldo + j] = hsum_zmm(acc[i][j]);
}

// ---- ymm micro-kernels: one body, two encodings ------------------------------------------------------
#define SK_YMM_TARGET __attribute__((target("avx2,avxvnni")))
#define SK_YMM_DPBUSD "%{vex%} vpdpbusd"
#define SK_YMM_NAME micro_ymm_vex
#include "quarot/int4_matmul_vnni_micro.inc"
#undef SK_YMM_TARGET
#undef SK_YMM_DPBUSD
#undef SK_YMM_NAME

#define SK_YMM_TARGET __attribute__((target("avx2,avx512f,avx512vl,avx512vnni")))
#define SK_YMM_DPBUSD "%{evex%} vpdpbusd"
#define SK_YMM_NAME micro_ymm_evex
#include "quarot/int4_matmul_vnni_micro.inc"
#undef SK_YMM_TARGET
#undef SK_YMM_DPBUSD
#undef SK_YMM_NAME

// ---- A: unpack once per call ---------------------------------------------------------------------------
// Rows [m_begin, m_end) of A into `layout` (sign-extended int8 codes, zero past K); sum[m] = Σ codes.
// AVX2 (every VNNI CPU has it).
__attribute__((target("avx2"))) void unpack_a_rows(const uint8_t* a, int64_t kb, int64_t m_begin, int64_t m_end,
                                                  const ALayout& layout, int8_t* out, int32_t* sum) {
  const __m256i nib = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(0x08), ones8 = _mm256_set1_epi8(1),
                ones16 = _mm256_set1_epi16(1);
  const int64_t B = layout.block;
  for (int64_t m = m_begin; m < m_end; ++m) {
    const uint8_t* src = a + m * kb;
    int8_t* dst = out + (m / layout.tile_rows) * layout.tile_stride() + (m % layout.tile_rows) * 2 * B;
    __m256i total = _mm256_setzero_si256();
    for (int64_t b = 0; b < layout.blocks; ++b, dst += layout.block_stride()) {
      for (int64_t half = 0; half < B; half += 32) {
        const int64_t off = b * B + half;
        __m256i packed;
        if (off + 32 <= kb) {
          packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + off));
        } else {
          alignas(32) uint8_t tmp[32] = {};
          if (off < kb) std::memcpy(tmp, src + off, static_cast<size_t>(kb - off));
          packed = _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp));
        }
        // sign-extend a nibble: ((x & 0xF) ^ 8) − 8
        const __m256i lo = _mm256_sub_epi8(_mm256_xor_si256(_mm256_and_si256(packed, nib), eight), eight);
        const __m256i hi = _mm256_sub_epi8(
            _mm256_xor_si256(_mm256_and_si256(_mm256_srli_epi16(packed, 4), nib), eight), eight);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + half), lo);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + B + half), hi);
        const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(ones8, lo), _mm256_maddubs_epi16(ones8, hi));
        total = _mm256_add_epi32(total, _mm256_madd_epi16(pairs, ones16));
      }
    }
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), total);
    int32_t s = 0;
    for (int l = 0; l < 8; ++l) s += lanes[l];
    sum[m] = s;
  }
}

// ---- driver ------------------------------------------------------------------------------------------------
using MicroFn = void (*)(const int8_t*, int64_t, const uint8_t* const*, int64_t, int32_t*, int64_t);

// A tile shape: mr rows × nr columns, and the kernels for a last tile of 1, 2, 4 rows (the smallest that
// covers what is left; the rows past M are zero padding).
struct Config {
  int mr, nr;
  MicroFn full;
  MicroFn rows[3];
};

// out[m0 + i, n0 + c] = Out((fp32(acc[i·ldo + c] − 8·a_sum) · sa) · sw + bias) for i < rows, c < cols: the
// reference's order and rounding. Plain (baseline) code, so no FMA contraction: the ymm paths' epilogue.
template <typename Out>
void epilogue(const int32_t* acc, int64_t ldo, int64_t rows, int64_t cols, int64_t m0, int64_t n0, const int32_t* a_sum,
              const float* sa, const float* sw, const float* bias, Out* out, int64_t N) {
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t m = m0 + i;
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t n = n0 + c;
      float y = static_cast<float>(acc[i * ldo + c] - 8 * a_sum[m]) * sa[m] * sw[n];
      if (bias) y += bias[n];
      out[m * N + n] = static_cast<Out>(y);
    }
  }
}

// The same, 16 columns per instruction (zmm paths; a scalar epilogue cost 10–15% of the whole GEMM at M = 256).
// Multiplies and adds with an explicit rounding mode: those builtins are never contracted into an FMA, so
// every output rounds exactly as the reference's (and the scalar epilogue's).
#define SK_ZMM_EPI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))
constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

SK_ZMM_EPI_TARGET SK_INLINE void store16(float* dst, __m512 y, __mmask16 k) { _mm512_mask_storeu_ps(dst, k, y); }
SK_ZMM_EPI_TARGET SK_INLINE void store16(c10::Half* dst, __m512 y, __mmask16 k) {
  // RNE, ±inf past 65504, as c10::Half (full-mask forms, see epilogue_zmm)
  _mm256_mask_storeu_epi16(dst, k, _mm512_mask_cvtps_ph(_mm256_setzero_si256(), 0xFFFF, y, kRne));
}
SK_ZMM_EPI_TARGET SK_INLINE void store16(c10::BFloat16* dst, __m512 y, __mmask16 k) {
  // c10::BFloat16's rounding: (bits + 0x7FFF + lsb) >> 16 (RNE), NaN → 0x7FC0
  const __m512i bits = _mm512_castps_si512(y);
  const __m512i lsb = _mm512_and_si512(_mm512_mask_srli_epi32(bits, 0xFFFF, bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  r = _mm512_mask_srli_epi32(r, 0xFFFF, r, 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_mask_storeu_epi16(dst, k, _mm512_mask_cvtepi32_epi16(_mm256_setzero_si256(), 0xFFFF, r));
}

template <typename Out>
SK_ZMM_EPI_TARGET void epilogue_zmm(const int32_t* acc, int64_t ldo, int64_t rows, int64_t cols, int64_t m0, int64_t n0,
                                    const int32_t* a_sum, const float* sa, const float* sw, const float* bias, Out* out,
                                    int64_t N) {
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t m = m0 + i;
    const __m512i corr = _mm512_set1_epi32(8 * a_sum[m]);
    const __m512 s = _mm512_set1_ps(sa[m]);
    for (int64_t c = 0; c < cols; c += 16) {
      const __mmask16 k = cols - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (cols - c)) - 1);
      const __m512i dot = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(k, acc + i * ldo + c), corr);
      // (full-mask forms: GCC 12's unmasked ones pass an "undefined" source that -Wuninitialized flags)
      __m512 y = _mm512_mask_cvtepi32_ps(s, 0xFFFF, dot);
      y = _mm512_mask_mul_round_ps(y, 0xFFFF, y, s, kRne);
      y = _mm512_mask_mul_round_ps(y, 0xFFFF, y, _mm512_maskz_loadu_ps(k, sw + n0 + c), kRne);
      if (bias) y = _mm512_mask_add_round_ps(y, 0xFFFF, y, _mm512_maskz_loadu_ps(k, bias + n0 + c), kRne);
      store16(out + m * N + n0 + c, y, k);
    }
  }
}

template <typename Out>
void run(const Config& cfg, bool zmm_epilogue, int64_t block, const uint8_t* a, const uint8_t* w, int64_t M, int64_t N, int64_t kb,
         const float* sa, const float* sw, const float* bias, Out* out) {
  const int mr = cfg.mr, nr = cfg.nr;
  const ALayout layout{block, (kb + block - 1) / block, mr};
  const int64_t tiles = (M + mr - 1) / mr;
  const int64_t a_bytes = tiles * layout.tile_stride();
  ScratchBuffer a_owner;
  int8_t* a_u = scratch(ScratchSlot::kCaller, a_bytes + 4 * M, a_owner);
  int32_t* a_sum = reinterpret_cast<int32_t*>(a_u + a_bytes);
  if (tiles * mr > M) {  // zero the padding rows of the last tile
    for (int64_t m = M; m < tiles * mr; ++m) {
      int8_t* dst = a_u + (tiles - 1) * layout.tile_stride() + (m % mr) * 2 * block;
      for (int64_t b = 0; b < layout.blocks; ++b) std::memset(dst + b * layout.block_stride(), 0, 2 * block);
    }
  }
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) { unpack_a_rows(a, kb, begin, end, layout, a_u, a_sum); });
  const int64_t groups = (N + nr - 1) / nr;
  const int64_t chunk = std::clamp<int64_t>(kChunkBytes / std::max<int64_t>(1, nr * kb), 1, kMaxChunkGroups);
  const int64_t kc_bytes = std::max<int64_t>(block, kKChunkCodes / 2 / block * block);
  at::parallel_for(0, groups, 1, [&](int64_t g_begin, int64_t g_end) {
    // Partial sums of one row tile × one chunk of column groups, row-major (row i at i·ldo): what the
    // epilogue reads 16 columns at a time.
    const int64_t ldo = chunk * nr;
    int32_t sums[8 * kMaxChunkGroups * 8];
    int32_t part[8 * 8];
    const uint8_t* wrow[8];
    for (int64_t c0 = g_begin; c0 < g_end; c0 += chunk) {
      const int64_t c1 = std::min(g_end, c0 + chunk);
      const int64_t n_first = c0 * nr, n_cols = std::min(N, c1 * nr) - n_first;
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t m0 = t * mr, rows = std::min<int64_t>(mr, M - m0);
        const MicroFn micro = rows == mr || rows > 4 ? cfg.full : cfg.rows[rows <= 1 ? 0 : rows <= 2 ? 1 : 2];
        for (int64_t k0 = 0; k0 == 0 || k0 < kb; k0 += kc_bytes) {  // once even for K = 0: sums = 0
          // K in chunks: this tile's A chunk (≤ 8 rows × kKChunkCodes) stays in L1 while the groups pass
          const int8_t* a_chunk = a_u + t * layout.tile_stride() + k0 / block * layout.block_stride();
          const int64_t kc = std::min(kc_bytes, kb - k0);
          // Meanwhile the next A chunk (this tile's next K chunk, else the next tile) is prefetched into L2,
          // a few lines per group: at M = 2048 A (8 MiB) is re-read from L3 once per column chunk.
          const int8_t* next = k0 + kc_bytes < kb ? a_chunk + kc_bytes / block * layout.block_stride()
                                                  : a_u + (t + 1 < tiles ? t + 1 : t) * layout.tile_stride();
          const int64_t next_lines = kc / block * layout.block_stride() / 64;
          const int64_t per_group = (next_lines + (c1 - c0) - 1) / (c1 - c0);
          for (int64_t g = c0; g < c1; ++g) {
            for (int64_t l = (g - c0) * per_group, e = std::min(next_lines, l + per_group); l < e; ++l)
              _mm_prefetch(reinterpret_cast<const char*>(next + 64 * l), _MM_HINT_T1);
            const int64_t n0 = g * nr;
            const int64_t cols = std::min<int64_t>(nr, N - n0);
            // a partial group repeats its last column (valid memory; the extra results are not stored)
            for (int j = 0; j < nr; ++j) wrow[j] = w + (n0 + std::min<int64_t>(j, cols - 1)) * kb + k0;
            int32_t* dst = sums + (g - c0) * nr;
            if (k0 == 0) {
              micro(a_chunk, layout.block_stride(), wrow, kc, dst, ldo);
            } else {
              micro(a_chunk, layout.block_stride(), wrow, kc, part, nr);
              for (int i = 0; i < mr; ++i)
                for (int j = 0; j < nr; ++j) dst[i * ldo + j] += part[i * nr + j];
            }
          }
        }
        if (zmm_epilogue)
          epilogue_zmm(sums, ldo, rows, n_cols, m0, n_first, a_sum, sa, sw, bias, out, N);
        else
          epilogue(sums, ldo, rows, n_cols, m0, n_first, a_sum, sa, sw, bias, out, N);
      }
    }
  });
}

// ---- prefill route: W unpacked once per call into a broadcast layout -----------------------------------
// From kPackedMinRows rows on, each W byte is used by so many rows that unpacking it once per call into an
// L2 panel, and running a kernel with no unpack work in its loop, wins: the GEMM layout of oneDNN's int8
// kernels. Each zmm of the panel holds 16 columns × 4 K codes (unsigned w + 8, one dword per column); the
// matching 4 codes of an activation row are one dword, broadcast to all 16 lanes (vpbroadcastd from memory:
// a load, no vector ALU). The accumulators are whole output vectors (16 columns of one row): no horizontal
// sums, and the epilogue reads them directly. The micro-kernel runs at 97–100% of the vpdpbusd peak with
// its panel in L2 (1 thread, Zen 4); what the whole GEMM loses beyond that is the A stream from L3 and the
// output's cache misses (both prefetched, below), the W packing (~0.6 ms per 4096 × 4096) and A's unpack.
//
// K order: packed byte quad q (8 codes) gives two dword groups, the low nibbles of its 4 bytes (codes 8q,
// 8q+2, 8q+4, 8q+6) and the high nibbles (8q+1, …, 8q+7): one AND (and one shift) per zmm on either side,
// no byte shuffle. A is unpacked into the same order once per call. Group g = 2q (low) or 2q + 1 (high).
//
// Blocking: threads split the 64-column panel groups; each packs a chunk of its groups (≤ kPanelBytes, in
// L2), then every 6-row A tile passes over the chunk, the tile streaming from L3 (A is re-read once per
// chunk: 8 MiB per chunk at M = 2048, K = 4096, well within L3 bandwidth). No K blocking: a tile's int32
// sums stay in registers for the whole K, so the epilogue is fused and nothing is accumulated in memory.
//
// From 48 rows (1 thread, CPU time, K = N = 4096, Zen 4: at 32 rows the packing still costs 16%, at 48
// both routes tie, at 64 the packed one is 8% ahead, from 256 rows 12–17%).
constexpr int64_t kPackedMinRows = 48;
// 24 accumulators + 4 W registers + the broadcast. Measured at M = 256 / 2048: 6 × 4 ≈ 4 × 6 > 8 × 3 ≈ 5 × 5.
constexpr int kPackMR = 6, kPackNR = 4;
constexpr int64_t kPackCols = 16 * kPackNR;    // columns per panel group
constexpr int64_t kPanelBytes = 512 << 10;     // unpacked W per chunk of groups: half of Zen 4's 1 MiB L2
// (256 and 768 KiB measured the same within noise). An A tile is 24·K bytes, re-read from L3 for every
// chunk: the micro-kernel prefetches its own A stream this far ahead (into the next tile at the end), which
// brings a streamed tile to the in-L1 rate (−8% without).
constexpr int64_t kAPrefetchBytes = 1024;

// A for the packed route: rows in tiles of kPackMR; in a tile, group g of row i (4 codes, sign-extended
// int8, zero past K) is the dword at (g·kPackMR + i)·4. sum[m] = Σ codes (the 8·Σa correction of the
// unsigned weights).
SK_ZMM_TARGET void unpack_a_groups(const uint8_t* a, int64_t kb, int64_t m_begin, int64_t m_end, int64_t quads,
                                   int8_t* out, int32_t* sum) {
  const __m512i nib = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(0x08), ones = _mm512_set1_epi8(1);
  const int64_t tile_stride = 2 * quads * kPackMR * 4;
  for (int64_t m = m_begin; m < m_end; ++m) {
    const uint8_t* src = a + m * kb;
    int8_t* dst = out + (m / kPackMR) * tile_stride + (m % kPackMR) * 4;
    __m512i total = _mm512_setzero_si512();
    for (int64_t q0 = 0; q0 < quads; q0 += 16) {
      const int64_t bytes = std::min<int64_t>(64, kb - 4 * q0);
      const __m512i packed = _mm512_maskz_loadu_epi8(bytes >= 64 ? ~__mmask64{0} : (__mmask64{1} << bytes) - 1,
                                                     src + 4 * q0);
      // sign-extend a nibble: ((x & 0xF) ^ 8) − 8
      alignas(64) int32_t half[2][16];  // [low | high nibbles][quad q0 + j]
      const __m512i lo = _mm512_sub_epi8(_mm512_ternarylogic_epi32(packed, nib, eight, 0x6A), eight);
      const __m512i hi =
          _mm512_sub_epi8(_mm512_ternarylogic_epi32(_mm512_srli_epi16(packed, 4), nib, eight, 0x6A), eight);
      _mm512_store_si512(half[0], lo);
      _mm512_store_si512(half[1], hi);
      total = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(total, ones, lo), ones, hi);
      for (int64_t j = 0, e = std::min<int64_t>(16, quads - q0); j < e; ++j)
        for (int h = 0; h < 2; ++h) std::memcpy(dst + (2 * (q0 + j) + h) * kPackMR * 4, &half[h][j], 4);
    }
    sum[m] = hsum_zmm(total);
  }
}

// lanes<imm>(x, y): 128-bit lanes imm[1:0], imm[3:2] of x, then imm[5:4], imm[7:6] of y.
template <int kImm>
SK_ZMM_TARGET SK_INLINE __m512i lanes(__m512i x, __m512i y) {
  return _mm512_mask_shuffle_i32x4(x, 0xFFFF, x, y, kImm);
}

// In-register transpose of a 16 × 16 dword matrix (r[i] = row i → r[j] = column j): three rounds of
// interleaves (dwords, qwords, 128-bit lanes twice), 64 shuffles. (Full-mask forms throughout: GCC 12's
// unmasked ones pass an "undefined" source that -Wmaybe-uninitialized flags.)
SK_ZMM_TARGET SK_INLINE void transpose16x16(__m512i (&r)[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {  // t[2i], t[2i+1]: rows 2i, 2i+1 interleaved, elements 4L+{0,1} / 4L+{2,3}
    t[2 * i] = _mm512_mask_unpacklo_epi32(r[2 * i], 0xFFFF, r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_mask_unpackhi_epi32(r[2 * i], 0xFFFF, r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // u[4i+e], lane L: rows 4i…4i+3 of element 4L+e
    for (int odd = 0; odd < 2; ++odd) {
      const __m512i x = t[4 * i + odd], y = t[4 * i + 2 + odd];
      u[4 * i + 2 * odd] = _mm512_mask_unpacklo_epi64(x, 0xFF, x, y);
      u[4 * i + 2 * odd + 1] = _mm512_mask_unpackhi_epi64(x, 0xFF, x, y);
    }
  }
  for (int e = 0; e < 4; ++e) {  // lane L of u[e], u[4+e], u[8+e], u[12+e]: element 4L+e of all 16 rows
    const __m512i v0 = lanes<0x44>(u[e], u[4 + e]), v1 = lanes<0xEE>(u[e], u[4 + e]);  // lanes 0, 1 / 2, 3
    const __m512i v2 = lanes<0x44>(u[8 + e], u[12 + e]), v3 = lanes<0xEE>(u[8 + e], u[12 + e]);
    r[e] = lanes<0x88>(v0, v2);  // lanes 0, 2 of each
    r[4 + e] = lanes<0xDD>(v0, v2);  // lanes 1, 3 of each
    r[8 + e] = lanes<0x88>(v1, v3);
    r[12 + e] = lanes<0xDD>(v1, v3);
  }
}

// Columns [n0, n0 + cols) (cols ≤ kPackCols; a partial group repeats its last column) of W into one panel
// group: for quad q, half h (low / high nibbles), register s: 16 dwords at ((2q + h)·kPackNR + s)·64, dword c
// holding the 4 codes + 8 of column n0 + 16s + c. 16 columns × 16 quads at a time: 16 row loads (masked
// past K: zero bytes, whose codes meet zero activations), one transpose. (A gather per 16 columns × quad
// instead cost ~100 cycles each on Zen 4: packing took as long as a 64-row GEMM.)
SK_ZMM_TARGET void pack_w_group(const uint8_t* w, int64_t kb, int64_t n0, int64_t cols, int64_t quads,
                                uint8_t* dst) {
  const __m512i nib = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(0x08);
  for (int s = 0; s < kPackNR; ++s) {
    const uint8_t* col[16];
    for (int c = 0; c < 16; ++c) col[c] = w + (n0 + std::min<int64_t>(16 * s + c, cols - 1)) * kb;
    for (int64_t q0 = 0; q0 < quads; q0 += 16) {
      const int64_t bytes = std::min<int64_t>(64, kb - 4 * q0);
      const __mmask64 mask = bytes >= 64 ? ~__mmask64{0} : (__mmask64{1} << bytes) - 1;
      __m512i r[16];
      for (int c = 0; c < 16; ++c) r[c] = _mm512_maskz_loadu_epi8(mask, col[c] + 4 * q0);
      transpose16x16(r);  // r[j]: quad q0 + j of the 16 columns
      for (int64_t j = 0, e = std::min<int64_t>(16, quads - q0); j < e; ++j) {
        uint8_t* d = dst + (2 * (q0 + j) * kPackNR + s) * 64;
        // (x & 0x0F) ^ 0x08 in one op, as in zmm_block
        _mm512_store_si512(d, _mm512_ternarylogic_epi32(r[j], nib, eight, 0x6A));
        _mm512_store_si512(d + kPackNR * 64,
                           _mm512_ternarylogic_epi32(_mm512_srli_epi16(r[j], 4), nib, eight, 0x6A));
      }
    }
  }
}

// acc += u · broadcast(dword at p). The intrinsic here, not dpbusd's asm: GCC 12 compiles this loop to one
// vpbroadcastd per row and no register copies, where the asm form (with an embedded {1to16} broadcast) got
// a register copy per 4 instructions.
SK_ZMM_TARGET SK_INLINE void dpbusd_bcast(__m512i& acc, __m512i u, const int8_t* p) {
  int32_t x;
  std::memcpy(&x, p, 4);
  acc = _mm512_dpbusd_epi32(acc, u, _mm512_set1_epi32(x));
}

// sums[i·kPackCols + c] = Σ_k (w_c[k] + 8)·a_i[k] for one A tile and one panel group, over `groups` dword
// groups: per group NR W loads, then MR·NR vpdpbusd with a broadcast A dword each.
SK_ZMM_TARGET SK_NOIPA void micro_packed(const int8_t* a, const uint8_t* w, int64_t groups, int32_t* sums) {
  constexpr int MR = kPackMR, NR = kPackNR;
  __m512i acc[MR][NR];
  SK_UNROLL for (int i = 0; i < MR; ++i) SK_UNROLL for (int s = 0; s < NR; ++s) acc[i][s] = _mm512_setzero_si512();
  for (int64_t g = 0; g < groups; ++g, a += MR * 4, w += NR * 64) {
    __m512i u[NR];
    SK_UNROLL for (int s = 0; s < NR; ++s) u[s] = _mm512_load_si512(w + s * 64);
    _mm_prefetch(reinterpret_cast<const char*>(a + kAPrefetchBytes), _MM_HINT_T0);
    SK_UNROLL for (int i = 0; i < MR; ++i) SK_UNROLL for (int s = 0; s < NR; ++s)
      dpbusd_bcast(acc[i][s], u[s], a + 4 * i);
  }
  SK_UNROLL for (int i = 0; i < MR; ++i) SK_UNROLL for (int s = 0; s < NR; ++s)
    _mm512_storeu_si512(sums + i * kPackCols + 16 * s, acc[i][s]);
}

// The packed route's driver (blocking: see the top of this section).
template <typename Out>
void run_packed(const uint8_t* a, const uint8_t* w, int64_t M, int64_t N, int64_t kb, const float* sa,
                const float* sw, const float* bias, Out* out) {
  const int64_t quads = (kb + 3) / 4;
  const int64_t tiles = (M + kPackMR - 1) / kPackMR;
  const int64_t tile_stride = 2 * quads * kPackMR * 4;
  const int64_t a_bytes = tiles * tile_stride;
  ScratchBuffer a_owner;
  int8_t* a_u = scratch(ScratchSlot::kCaller, a_bytes + 4 * M, a_owner);
  int32_t* a_sum = reinterpret_cast<int32_t*>(a_u + a_bytes);
  if (tiles * kPackMR > M)  // the padding rows of the last tile: zero codes, so zero sums (not stored)
    for (int64_t g = 0; g < 2 * quads; ++g)
      for (int64_t m = M; m < tiles * kPackMR; ++m)
        std::memset(a_u + (tiles - 1) * tile_stride + (g * kPackMR + m % kPackMR) * 4, 0, 4);
  at::parallel_for(0, M, 16,
                   [&](int64_t begin, int64_t end) { unpack_a_groups(a, kb, begin, end, quads, a_u, a_sum); });
  const int64_t groups = (N + kPackCols - 1) / kPackCols;
  const int64_t group_bytes = std::max<int64_t>(1, quads * 2 * kPackNR * 64);
  const int64_t chunk = std::max<int64_t>(1, kPanelBytes / group_bytes);
  // Groups [g_begin, g_end) × tiles [t_begin, t_end) on one thread.
  auto work = [&](int64_t g_begin, int64_t g_end, int64_t t_begin, int64_t t_end) {
    ScratchBuffer w_owner;
    uint8_t* panel = reinterpret_cast<uint8_t*>(
        scratch(ScratchSlot::kWorker, std::min(chunk, g_end - g_begin) * group_bytes, w_owner));
    alignas(64) int32_t sums[kPackMR * kPackCols];
    for (int64_t c0 = g_begin; c0 < g_end; c0 += chunk) {
      const int64_t c1 = std::min(g_end, c0 + chunk);
      for (int64_t g = c0; g < c1; ++g)
        pack_w_group(w, kb, g * kPackCols, std::min(kPackCols, N - g * kPackCols), quads,
                     panel + (g - c0) * group_bytes);
      for (int64_t t = t_begin; t < t_end; ++t) {
        const int64_t m0 = t * kPackMR, rows = std::min<int64_t>(kPackMR, M - m0);
        for (int64_t g = c0; g < c1; ++g) {
          const int64_t n0 = g * kPackCols, cols = std::min(kPackCols, N - n0);
          // The output lines this call's epilogue writes, fetched for writing while the micro-kernel runs:
          // left to the stores, their misses (out is rarely cached) cost 5–7% at M = 2048 (Zen 4).
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t byte = 0; byte < cols * static_cast<int64_t>(sizeof(Out)); byte += 64)
              __builtin_prefetch(reinterpret_cast<const char*>(out + (m0 + i) * N + n0) + byte, 1, 3);
          micro_packed(a_u + t * tile_stride, panel + (g - c0) * group_bytes, 2 * quads, sums);
          epilogue_zmm(sums, kPackCols, rows, cols, m0, n0, a_sum, sa, sw, bias, out, N);
        }
      }
    }
  };
  // Threads split the groups; with fewer groups than threads (N ≤ 64 here; N = 256 on 16 cores), they
  // split the row tiles of each group as well, each packing its group's panel itself (packing is ~1/M of
  // the group's work, so the duplicate costs little next to an idle core).
  const int64_t row_parts = std::clamp<int64_t>(at::get_num_threads() / groups, 1, tiles);
  if (row_parts == 1) {
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) { work(begin, end, 0, tiles); });
    return;
  }
  const int64_t tiles_per_part = (tiles + row_parts - 1) / row_parts;
  at::parallel_for(0, groups * row_parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / row_parts, t0 = task % row_parts * tiles_per_part;
      work(g, g + 1, t0, std::min(tiles, t0 + tiles_per_part));
    }
  });
}

// Tile shapes by M. zmm (32 registers): MR·NR accumulators + 2·NR unpacked W + 2 A + 2 constants ≤ 32.
// Prefill 6 × 3 (28 registers); in L1 on Zen 4 (1 thread, CPU time, K = 2048): 6 × 3 and 7 × 3 at 90% of
// the vpdpbusd peak, 5 × 4 88%, 4 × 4 86%, 8 × 2 77%, 2 × 6 75%, 1 × 6 45% (decode reads W from memory
// at well below that rate anyway).
#define SK_CONFIG(MICRO, MR, NR) \
  Config { MR, NR, &MICRO<MR, NR>, { &MICRO<1, NR>, &MICRO<(MR < 2 ? MR : 2), NR>, &MICRO<(MR < 4 ? MR : 4), NR> } }

const Config& zmm_config(int64_t M) {
  static const Config one = SK_CONFIG(micro_zmm, 1, 6);
  static const Config two = SK_CONFIG(micro_zmm, 2, 6);
  static const Config four = SK_CONFIG(micro_zmm, 4, 4);
  static const Config six = SK_CONFIG(micro_zmm, 6, 3);
  return M <= 1 ? one : M <= 2 ? two : M <= 4 ? four : six;
}

// ymm: 16 registers on an AVX-VNNI CPU without AVX-512.
template <bool kVex>
const Config& ymm_config(int64_t M) {
  static const Config one = kVex ? SK_CONFIG(micro_ymm_vex, 1, 4) : SK_CONFIG(micro_ymm_evex, 1, 4);
  static const Config two = kVex ? SK_CONFIG(micro_ymm_vex, 2, 3) : SK_CONFIG(micro_ymm_evex, 2, 3);
  static const Config four = kVex ? SK_CONFIG(micro_ymm_vex, 4, 2) : SK_CONFIG(micro_ymm_evex, 4, 2);
  return M <= 1 ? one : M <= 2 ? two : four;
}
#undef SK_CONFIG

}  // namespace

bool vnni_kind_supported(VnniKind kind) {
  __builtin_cpu_init();
  switch (kind) {
    case VnniKind::kZmm:  // VL: the epilogue's 16-bit masked stores
      return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl");
    case VnniKind::kYmmVex: return __builtin_cpu_supports("avxvnni") && __builtin_cpu_supports("avx2");
    case VnniKind::kYmmEvex: return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
  }
  return false;
}

template <typename Out>
void int4_matmul_vnni(VnniKind kind, const uint8_t* a, const uint8_t* w, int64_t M, int64_t N, int64_t kb,
                      const float* sa, const float* sw, const float* bias, Out* out) {
  TORCH_CHECK(vnni_kind_supported(kind), "int4_matmul: VNNI path ", static_cast<int>(kind), " not supported here");
  if (M == 0 || N == 0) return;
  switch (kind) {
    case VnniKind::kZmm:
      if (M >= kPackedMinRows) return run_packed(a, w, M, N, kb, sa, sw, bias, out);
      return run(zmm_config(M), true, 64, a, w, M, N, kb, sa, sw, bias, out);
    case VnniKind::kYmmVex: return run(ymm_config<true>(M), false, 32, a, w, M, N, kb, sa, sw, bias, out);
    case VnniKind::kYmmEvex: return run(ymm_config<false>(M), false, 32, a, w, M, N, kb, sa, sw, bias, out);
  }
}

#else  // not x86-64 GCC/Clang: never selected

bool vnni_kind_supported(VnniKind) { return false; }

template <typename Out>
void int4_matmul_vnni(VnniKind, const uint8_t*, const uint8_t*, int64_t, int64_t, int64_t, const float*,
                      const float*, const float*, Out*) {
  TORCH_CHECK(false, "int4_matmul: no VNNI path in this build");
}

#endif

template void int4_matmul_vnni<float>(VnniKind, const uint8_t*, const uint8_t*, int64_t, int64_t, int64_t,
                                      const float*, const float*, const float*, float*);
template void int4_matmul_vnni<c10::Half>(VnniKind, const uint8_t*, const uint8_t*, int64_t, int64_t, int64_t,
                                          const float*, const float*, const float*, c10::Half*);
template void int4_matmul_vnni<c10::BFloat16>(VnniKind, const uint8_t*, const uint8_t*, int64_t, int64_t, int64_t,
                                              const float*, const float*, const float*, c10::BFloat16*);

}  // namespace symkernels::quarot
