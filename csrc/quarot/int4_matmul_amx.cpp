// AMX-INT8 path of the CPU W4A4 GEMM: C[m, n] = Σ_k A[m, k]·W[n, k] with TDPBSSD (signed × signed int8
// → int32, so the nibbles are used as they are: no +8 offset and no row-sum correction as in the VNNI path).
//
// Operand roles. TDPBSSD computes C[i][j] += Σ_r Σ_b X[i][4r + b]·Y[r][4j + b] for X = 16 rows × 64 bytes
// and Y = 16 rows × 64 bytes in "VNNI" layout (4 K values of one column per dword). W is the X operand:
// a 16-row W tile is 16 weight rows, nibble-unpacked in their natural row-major order, no transpose; W is
// the big operand (N·K) so it is the one that must not be reshuffled. The activations (M·K, small) are
// the Y operand, repacked once per call into VNNI tiles by a 16×16 dword transpose. The result tile is
// Cᵀ (16 n × 16 m); the epilogue transposes it in registers (another 16×16 dword transpose, once per
// output tile, far fewer than one per W tile) and writes 16 contiguous outputs per row, fp32 scaled.
//
// K order. A dot product may visit K in any order as long as both operands agree: each 32 packed bytes
// (64 codes, one tile row) unpack to [32 low nibbles | 32 high nibbles], the same permutation the VNNI
// path uses, done with one broadcast, one variable shift, one AND and one byte-shuffle lookup (which also
// sign-extends). K is zero-padded to whole 64-code chunks and M, N to whole tiles inside the buffers, so
// the padded products are 0·x and the result stays exact; nothing is finished by scalar tail code.
//
// Blocking. Output columns go in strips of 32 (2 W tiles) unpacked once into a per-thread buffer
// (32·K bytes: 128 KiB at K = 4096, L2-resident), threads split the strips. Every pair of 16-row
// activation groups then runs the classic 2×2 AMX block over that strip: 4 accumulator tiles, 2 W tiles,
// 2 activation tiles, 4 TDPBSSD per 4 tile loads. Rows are processed in blocks whose repacked activations
// (≤ kActBlockBytes) stay in L2 while every strip passes over them; W strips are re-unpacked per row block,
// which costs one W read per block against ≈ 2·block_rows multiply-adds per W byte. With a single group
// (M ≤ 16) there is no reuse to buy with a strip buffer: strip_stream unpacks W chunk by chunk into an L1
// ring instead, which halved the time at M = 16 (K=N=4096: 0.94 → 0.45 ms, idle, 2 threads).
//
// Tile state is per thread: each parallel_for worker loads the tile configuration before its first tile
// instruction and releases it at the end. Linux grants the (8 KiB) XTILEDATA state only on request,
// once per process (arch_prctl); if that fails the dispatcher falls back to VNNI.
#include "quarot/int4_matmul_amx.h"

#include "quarot/cpu_scratch.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SK_HAVE_AMX_BUILD 1
#include <cpuid.h>
#include <immintrin.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

#include <c10/util/Exception.h>

namespace symkernels::quarot {

#if SK_HAVE_AMX_BUILD
namespace {

bool probe_amx_int8() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const bool amx_tile = (edx >> 24) & 1u, amx_int8 = (edx >> 25) & 1u;
  __builtin_cpu_init();  // AVX-512BW/VL: the unpack, repack and epilogue; cpu_supports also checks XCR0
  if (!amx_tile || !amx_int8 || !__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512vl"))
    return false;
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;  // other kernels: no known way to obtain the tile state here, use VNNI
#endif
}

#define SK_AMX_TARGET __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512dq,f16c")))

constexpr int64_t kChunkBytes = 32;    // packed bytes per tile row = 64 codes
constexpr int64_t kTileBytes = 1024;   // 16 rows × 64 bytes: W tiles, and activation tiles when M ≥ 16
constexpr int64_t kStripRows = 32;     // W rows per strip: 2 tiles
constexpr int64_t kActBlockBytes = 1 << 20;  // repacked activation rows kept in L2 while strips pass
constexpr int64_t kRepackGrain = 256;         // activation tiles per repack task

// Palette 1, 16 rows each: 0..3 accumulators, 4..5 W (64 bytes), 6..7 activations. Accumulator and
// activation tiles are act_cols columns wide (4·act_cols bytes): 16, or M when a single group has M < 16
// rows, so that decode-sized products load (and keep in L1) only the activation bytes that exist.
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

SK_AMX_TARGET void configure_tiles(int act_cols) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = static_cast<uint16_t>(t == 4 || t == 5 ? 64 : 4 * act_cols);
    cfg.rows[t] = 16;
  }
  // GCC (12) does not treat __builtin_ia32_ldtilecfg as reading the whole struct and drops the stores to
  // colsb/rows as dead; an empty asm that reads cfg keeps them (without it: tilezero raises SIGILL).
  __asm__ __volatile__("" : : "m"(cfg) : "memory");
  _tile_loadconfig(&cfg);
}

SK_AMX_TARGET void release_tiles() { _tile_release(); }

// 32 packed bytes (chunk `c` of a row with kb bytes; zeros past kb) → 64 sign-extended int8 codes,
// [32 low nibbles | 32 high nibbles].
SK_AMX_TARGET inline __m512i unpack_chunk(const uint8_t* row, int64_t c, int64_t kb) {
  const int64_t left = kb - c * kChunkBytes;
  const __m256i packed =
      left >= kChunkBytes
          ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c * kChunkBytes))
          : _mm256_maskz_loadu_epi8(static_cast<__mmask32>((1u << left) - 1u), row + c * kChunkBytes);
  // Low 256 bits shift by 0, high 256 bits by 4 (16-bit lanes; the AND drops the bits that cross bytes).
  const __m512i shift = _mm512_set_epi64(0x0004000400040004LL, 0x0004000400040004LL, 0x0004000400040004LL,
                                         0x0004000400040004LL, 0, 0, 0, 0);
  const __m512i nibbles =
      _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i64x4(packed), shift), _mm512_set1_epi8(0x0F));
  // Two's-complement nibble → int8, per 128-bit lane.
  const __m512i sign_extend =
      _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1));
  return _mm512_shuffle_epi8(sign_extend, nibbles);
}

// In-register transpose of a 16×16 matrix of 32-bit elements (r[i] = row i on entry, column i on exit):
// 32-bit then 64-bit unpacks transpose the 4×4 blocks inside each 128-bit lane, two rounds of 128-bit
// lane shuffles transpose the 4×4 matrix of lanes.
SK_AMX_TARGET inline void transpose_16x16_epi32(__m512i r[16]) {
  __m512i v[16];  // v[4q + s], lane L = column 4L + s of rows 4q .. 4q + 3
  for (int q = 0; q < 4; ++q) {
    const __m512i t0 = _mm512_unpacklo_epi32(r[4 * q], r[4 * q + 1]);
    const __m512i t1 = _mm512_unpackhi_epi32(r[4 * q], r[4 * q + 1]);
    const __m512i t2 = _mm512_unpacklo_epi32(r[4 * q + 2], r[4 * q + 3]);
    const __m512i t3 = _mm512_unpackhi_epi32(r[4 * q + 2], r[4 * q + 3]);
    v[4 * q + 0] = _mm512_unpacklo_epi64(t0, t2);
    v[4 * q + 1] = _mm512_unpackhi_epi64(t0, t2);
    v[4 * q + 2] = _mm512_unpacklo_epi64(t1, t3);
    v[4 * q + 3] = _mm512_unpackhi_epi64(t1, t3);
  }
  for (int s = 0; s < 4; ++s) {
    const __m512i x0 = _mm512_shuffle_i32x4(v[s], v[4 + s], 0x44);  // lanes 0,1 of q = 0, 1
    const __m512i x1 = _mm512_shuffle_i32x4(v[s], v[4 + s], 0xEE);  // lanes 2,3 of q = 0, 1
    const __m512i x2 = _mm512_shuffle_i32x4(v[8 + s], v[12 + s], 0x44);
    const __m512i x3 = _mm512_shuffle_i32x4(v[8 + s], v[12 + s], 0xEE);
    r[s] = _mm512_shuffle_i32x4(x0, x2, 0x88);       // lane 0 of q = 0..3
    r[4 + s] = _mm512_shuffle_i32x4(x0, x2, 0xDD);   // lane 1
    r[8 + s] = _mm512_shuffle_i32x4(x1, x3, 0x88);   // lane 2
    r[12 + s] = _mm512_shuffle_i32x4(x1, x3, 0xDD);  // lane 3
  }
}

// Activation tile (group g of 16 rows, chunk c): Y[r][4i + b] = A[16g + i][code 4r + b of the chunk], i.e.
// the transpose of the 16 unpacked rows viewed as 16×16 dwords; `cols` of its 16 columns are stored
// (tile rows of 4·cols bytes). Rows past M are zero.
SK_AMX_TARGET void repack_activation_tile(const uint8_t* a, int64_t M, int64_t kb, int64_t g, int64_t c, int cols,
                                          int8_t* tile) {
  __m512i r[16];
  for (int i = 0; i < 16; ++i) {
    const int64_t m = 16 * g + i;
    r[i] = m < M ? unpack_chunk(a + m * kb, c, kb) : _mm512_setzero_si512();
  }
  transpose_16x16_epi32(r);
  const __mmask16 keep = static_cast<__mmask16>((1u << cols) - 1u);
  for (int i = 0; i < 16; ++i) _mm512_mask_storeu_epi32(tile + 4 * cols * i, keep, r[i]);
}

// W strip buffer: [chunk][32 rows][64 codes], so each 16-row W tile is 1 KiB contiguous (stride 64).
// Rows past N are zero.
SK_AMX_TARGET void unpack_w_strip(const uint8_t* w, int64_t N, int64_t kb, int64_t chunks, int64_t n0,
                                  int8_t* buf) {
  for (int64_t i = 0; i < kStripRows; ++i) {
    const int64_t n = n0 + i;
    int8_t* dst = buf + 64 * i;
    if (n < N) {
      const uint8_t* row = w + n * kb;
      for (int64_t c = 0; c < chunks; ++c) _mm512_store_si512(dst + c * kStripRows * 64, unpack_chunk(row, c, kb));
    } else {
      for (int64_t c = 0; c < chunks; ++c) _mm512_store_si512(dst + c * kStripRows * 64, _mm512_setzero_si512());
    }
  }
}

// One W strip (2 tiles) × MT activation groups (1 or 2) over all of K; acc gets the tiles as
// [W tile t][group u][16 n][16 m] int32. Activation tiles have rows of act_ld = 4·act_cols bytes.
template <int MT>
SK_AMX_TARGET void strip_block(const int8_t* wbuf, const int8_t* act, int64_t act_ld, int64_t chunks,
                               int32_t* acc) {
  const int64_t act_tile = 16 * act_ld;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int8_t* act1 = act + chunks * act_tile;  // the next group's tiles
  for (int64_t c = 0; c < chunks; ++c) {
    const int8_t* wc = wbuf + c * 2 * kTileBytes;
    _tile_loadd(4, wc, 64);
    _tile_loadd(6, act + c * act_tile, act_ld);
    _tile_loadd(5, wc + kTileBytes, 64);
    _tile_dpbssd(0, 4, 6);
    _tile_dpbssd(2, 5, 6);
    if constexpr (MT == 2) {
      _tile_loadd(7, act1 + c * act_tile, act_ld);
      _tile_dpbssd(1, 4, 7);
      _tile_dpbssd(3, 5, 7);
    }
  }
  _tile_stored(0, acc + 0 * 256, 64);
  _tile_stored(2, acc + 2 * 256, 64);
  if constexpr (MT == 2) {
    _tile_stored(1, acc + 1 * 256, 64);
    _tile_stored(3, acc + 3 * 256, 64);
  }
}

// One activation group (M ≤ 16): each W byte meets a single TDPBSSD, so an L2 strip buffer would be written
// and read back for nothing. W is unpacked chunk by chunk into a two-slot L1 ring right before its tile loads
// (the vector units unpack chunk c + 1 while the tile unit multiplies chunk c). Same result tiles as
// strip_block<1>: [W tile t][16 n][16 m] at acc + 2·t·256.
SK_AMX_TARGET void strip_stream(const uint8_t* w, int64_t N, int64_t kb, int64_t chunks, int64_t n0,
                                const int8_t* act, int64_t act_ld, int32_t* acc) {
  alignas(64) int8_t ring[2][2 * kTileBytes];
  const int64_t act_tile = 16 * act_ld;
  const int rows = static_cast<int>(std::min<int64_t>(kStripRows, N - n0));
  if (rows < kStripRows) std::memset(ring, 0, sizeof ring);  // rows past N stay zero in both slots
  _tile_zero(0);
  _tile_zero(2);
  for (int64_t c = 0; c < chunks; ++c) {
    int8_t* slot = ring[c & 1];
    for (int i = 0; i < rows; ++i) _mm512_store_si512(slot + 64 * i, unpack_chunk(w + (n0 + i) * kb, c, kb));
    _tile_loadd(4, slot, 64);
    _tile_loadd(6, act + c * act_tile, act_ld);
    _tile_loadd(5, slot + kTileBytes, 64);
    _tile_dpbssd(0, 4, 6);
    _tile_dpbssd(2, 5, 6);
  }
  _tile_stored(0, acc + 0 * 256, 64);
  _tile_stored(2, acc + 2 * 256, 64);
}

template <typename Out>
SK_AMX_TARGET inline void store_row(Out* dst, __m512 y, __mmask16 mask) {
  if constexpr (std::is_same_v<Out, float>) {
    _mm512_mask_storeu_ps(dst, mask, y);
  } else if constexpr (std::is_same_v<Out, c10::Half>) {
    _mm256_mask_storeu_epi16(dst, mask, _mm512_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    // fp32 → bf16 round-to-nearest-even, NaN → 0x7FC0: c10::BFloat16's conversion, 16 lanes at a time.
    const __m512i u = _mm512_castps_si512(y);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i h = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
    h = _mm512_mask_mov_epi32(h, _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    _mm256_mask_storeu_epi16(dst, mask, _mm512_cvtepi32_epi16(h));
  }
}

// acc: one Cᵀ tile [16 n][16 m]. out[m, n] = (float(acc)·sa[m])·sw[n] + bias[n], the reference's order
// (explicitly rounded intrinsics for the add so that no FMA contraction changes the last bit).
template <typename Out>
SK_AMX_TARGET void epilogue_tile(const int32_t* acc, int64_t m0, int64_t rows, int64_t n0, int64_t cols,
                                 const float* sa, const float* sw, const float* bias, Out* out, int64_t N) {
  __m512i r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(acc + 16 * i);
  transpose_16x16_epi32(r);
  const __mmask16 mask = cols >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << cols) - 1u);
  const __m512 swv = _mm512_maskz_loadu_ps(mask, sw + n0);
  const __m512 bv = bias ? _mm512_maskz_loadu_ps(mask, bias + n0) : _mm512_setzero_ps();
  for (int64_t i = 0; i < std::min<int64_t>(rows, 16); ++i) {
    const __m512 scaled = _mm512_mul_round_ps(_mm512_cvtepi32_ps(r[i]), _mm512_set1_ps(sa[m0 + i]),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 y = _mm512_mul_round_ps(scaled, swv, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    if (bias) y = _mm512_add_round_ps(y, bv, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    store_row(out + (m0 + i) * N + n0, y, mask);
  }
}

template <typename Out>
SK_AMX_TARGET void gemm_amx(const uint8_t* a, const uint8_t* w, int64_t M, int64_t N, int64_t kb, const float* sa,
                            const float* sw, const float* bias, Out* out) {
  const int64_t chunks = (kb + kChunkBytes - 1) / kChunkBytes;
  const int64_t groups = (M + 15) / 16;
  const int64_t strips = (N + kStripRows - 1) / kStripRows;

  // Activations → VNNI tiles [group][chunk][16][4·act_cols], once per call. Fewer than 16 rows: narrow
  // tiles (M columns), which also makes the whole activation L1-sized at decode (M·K bytes).
  const int act_cols = static_cast<int>(std::min<int64_t>(M, 16));
  const int64_t act_ld = 4 * act_cols, act_tile = 16 * act_ld;
  const int64_t act_bytes = groups * chunks * act_tile;
  ScratchBuffer act_owner;
  int8_t* act = scratch(ScratchSlot::kCaller, act_bytes, act_owner);
  // Serial below kRepackGrain tiles (256 KiB): at decode sizes the repack is microseconds, and waking the
  // worker threads for it costs more than it does, a whole scheduler time slice on a loaded machine.
  at::parallel_for(0, groups * chunks, kRepackGrain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      repack_activation_tile(a, M, kb, t / chunks, t % chunks, act_cols, act + t * act_tile);
  });

  // Row blocks of an even number of groups (the 2×2 blocking pairs them) whose tiles fit kActBlockBytes.
  const int64_t block_groups = std::max<int64_t>(2, kActBlockBytes / std::max<int64_t>(chunks * act_tile, 1) / 2 * 2);
  for (int64_t g0 = 0; g0 < groups; g0 += block_groups) {
    const int64_t g1 = std::min(groups, g0 + block_groups);
    at::parallel_for(0, strips, 1, [&](int64_t begin, int64_t end) {
      configure_tiles(act_cols);
      ScratchBuffer wbuf_owner;
      int8_t* wbuf = groups > 1 ? scratch(ScratchSlot::kWorker, chunks * kStripRows * 64, wbuf_owner) : nullptr;
      alignas(64) int32_t acc[4 * 256] = {};  // narrow tiles leave columns ≥ M unwritten (and unused)
      for (int64_t s = begin; s < end; ++s) {
        const int64_t n0 = s * kStripRows;
        if (groups > 1) unpack_w_strip(w, N, kb, chunks, n0, wbuf);
        for (int64_t g = g0; g < g1; g += 2) {
          const int mt = g + 1 < g1 ? 2 : 1;
          const int8_t* act_g = act + g * chunks * act_tile;
          if (groups == 1) {
            strip_stream(w, N, kb, chunks, n0, act_g, act_ld, acc);
          } else if (mt == 2) {
            strip_block<2>(wbuf, act_g, act_ld, chunks, acc);
          } else {
            strip_block<1>(wbuf, act_g, act_ld, chunks, acc);
          }
          for (int t = 0; t < 2; ++t) {
            const int64_t nt = n0 + 16 * t;
            if (nt >= N) break;
            for (int u = 0; u < mt; ++u) {
              const int64_t mu = 16 * (g + u);
              epilogue_tile(acc + (2 * t + u) * 256, mu, M - mu, nt, N - nt, sa, sw, bias, out, N);
            }
          }
        }
      }
      release_tiles();
    });
  }
}

}  // namespace

bool amx_int8_usable() {
  static std::once_flag once;
  static bool usable = false;
  std::call_once(once, [] { usable = probe_amx_int8(); });
  return usable;
}

template <typename Out>
void int4_matmul_amx(const uint8_t* a, const uint8_t* w, int64_t M, int64_t N, int64_t kb, const float* sa,
                     const float* sw, const float* bias, Out* out) {
  TORCH_CHECK(amx_int8_usable(), "int4_matmul: the AMX path was called on a CPU/OS without AMX-INT8");
  gemm_amx(a, w, M, N, kb, sa, sw, bias, out);
}

#else  // not x86-64 GCC/Clang

bool amx_int8_usable() { return false; }

template <typename Out>
void int4_matmul_amx(const uint8_t*, const uint8_t*, int64_t, int64_t, int64_t, const float*, const float*,
                     const float*, Out*) {
  TORCH_CHECK(false, "int4_matmul: this build has no AMX path");
}

#endif

template void int4_matmul_amx<float>(const uint8_t*, const uint8_t*, int64_t, int64_t, int64_t, const float*,
                                     const float*, const float*, float*);
template void int4_matmul_amx<c10::Half>(const uint8_t*, const uint8_t*, int64_t, int64_t, int64_t, const float*,
                                         const float*, const float*, c10::Half*);
template void int4_matmul_amx<c10::BFloat16>(const uint8_t*, const uint8_t*, int64_t, int64_t, int64_t, const float*,
                                             const float*, const float*, c10::BFloat16*);

}  // namespace symkernels::quarot
