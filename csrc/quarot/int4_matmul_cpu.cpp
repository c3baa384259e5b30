// CPU W4A4 GEMM: the dispatcher (argument checks, path choice) and the AVX2 (vpmaddubsw) and scalar paths.
// The VNNI paths (vpdpbusd: zmm AVX512-VNNI, ymm AVX-VNNI) live in int4_matmul_vnni.cpp, the AMX path in
// int4_matmul_amx.cpp; this file's AVX2 path is for x86 CPUs without VNNI.
//
// Signed × signed via the unsigned × signed instructions (VNNI vpdpbusd, AVX2 vpmaddubsw): the weight
// nibble XOR 8 is the unsigned code w + 8 ∈ [0, 15], so Σ (w + 8)·a = Σ w·a + 8·Σ a and the row sums of
// A (computed while unpacking A once per call) remove the offset exactly. No saturation: a vpmaddubsw
// pair sum is at most 2·15·8 = 240.
//
// The dot product is a sum, so K may be visited in any order as long as A and W agree: each 32-byte
// block of packed W becomes [32 low nibbles | 32 high nibbles] with one AND and one shift, no
// interleaving shuffle, and A is unpacked once into the same permuted order.
//
// Blocking: columns in panels of kPanelN (the panel's packed W, ≤ 64·K/2 bytes, stays in L2 while all
// rows pass over it); inside, 4 rows × 4 columns per micro-kernel call (16 accumulators).
//
// On CPUs with AMX-INT8 (Sapphire Rapids and later) products of more than kVnniMaxRows rows go to the tile
// kernel in int4_matmul_amx.cpp instead; the VNNI paths serve decode sizes there, every size elsewhere,
// and every path can be forced (tests).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/checks.h"
#include "common/memory.h"
#include "quarot/cpu_scratch.h"
#include "quarot/int4_matmul_amx.h"
#include "quarot/int4_matmul_vnni.h"
#include "quarot/quarot.h"

namespace symkernels::quarot {
namespace {

constexpr int64_t kBlockBytes = 32;  // packed bytes per K step = 64 codes
constexpr int64_t kPanelN = 64;

// Unpacked A: for each full 32-byte block, 32 even codes then 32 odd codes (int8); row_sum over those
// blocks only (the tail bytes are handled exactly by dot_tail).
void unpack_a(const uint8_t* a, int64_t kb, int64_t kb_main, int8_t* out, int32_t* row_sum) {
  int32_t sum = 0;
  for (int64_t blk = 0; blk < kb_main; blk += kBlockBytes) {
    for (int64_t t = 0; t < kBlockBytes; ++t) {
      const uint8_t b = a[blk + t];
      const int8_t lo = low_nibble(b), hi = high_nibble(b);
      out[2 * blk + t] = lo;
      out[2 * blk + kBlockBytes + t] = hi;
      sum += lo + hi;
    }
  }
  *row_sum = sum;
}

// Tail bytes (K/2 not a multiple of 32), exact signed arithmetic.
inline int32_t dot_tail(const uint8_t* a, const uint8_t* w, int64_t from, int64_t to) {
  int32_t acc = 0;
  for (int64_t j = from; j < to; ++j) acc += low_nibble(a[j]) * low_nibble(w[j]) + high_nibble(a[j]) * high_nibble(w[j]);
  return acc;
}

struct Problem {
  const int8_t* a_unpacked;  // [M, 2·kb_main]
  const int32_t* a_sum;      // [M]
  const uint8_t* a_packed;   // [M, kb]
  const uint8_t* w;          // [N, kb]
  int64_t kb, kb_main;
  // Optional pre-unpacked W panel (unsigned codes w + 8, same K order as A) for columns
  // [w_unpacked_n0, w_unpacked_n0 + kPanelN): used when many rows reuse each W byte.
  const uint8_t* w_unpacked = nullptr;
  int64_t w_unpacked_n0 = 0;
};

// ---- AVX2 -------------------------------------------------------------------------------------------
#define SK_AVX2_TARGET __attribute__((target("avx2,fma")))

template <int MR, int NR>
SK_AVX2_TARGET void micro_avx2(const Problem& p, int64_t m0, int64_t n0, int32_t* acc_out) {
  __m256i acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_si256();
  const __m256i nib = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(0x08), ones = _mm256_set1_epi16(1);
  const int64_t a_stride = 2 * p.kb_main;
  for (int64_t blk = 0; blk < p.kb_main; blk += kBlockBytes) {
    __m256i wlo[NR], whi[NR];
    for (int j = 0; j < NR; ++j) {
      if (p.w_unpacked) {
        const uint8_t* wu = p.w_unpacked + (n0 + j - p.w_unpacked_n0) * a_stride + 2 * blk;
        wlo[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wu));
        whi[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wu + kBlockBytes));
        continue;
      }
      const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.w + (n0 + j) * p.kb + blk));
      wlo[j] = _mm256_xor_si256(_mm256_and_si256(packed, nib), eight);
      whi[j] = _mm256_xor_si256(_mm256_and_si256(_mm256_srli_epi16(packed, 4), nib), eight);
    }
    for (int i = 0; i < MR; ++i) {
      const int8_t* arow = p.a_unpacked + (m0 + i) * a_stride + 2 * blk;
      const __m256i alo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(arow));
      const __m256i ahi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(arow + kBlockBytes));
      for (int j = 0; j < NR; ++j) {
        const __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(wlo[j], alo), _mm256_maddubs_epi16(whi[j], ahi));
        acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(s, ones));
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      alignas(32) int32_t lanes[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[i][j]);
      int32_t s = 0;
      for (int l = 0; l < 8; ++l) s += lanes[l];
      acc_out[i * NR + j] = s;
    }
  }
}

// ---- portable fallback ---------------------------------------------------------------------------------
template <int MR, int NR>
void micro_scalar(const Problem& p, int64_t m0, int64_t n0, int32_t* acc_out) {
  const int64_t a_stride = 2 * p.kb_main;
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      int32_t s = 0;
      const int8_t* arow = p.a_unpacked + (m0 + i) * a_stride;
      const uint8_t* wrow = p.w + (n0 + j) * p.kb;
      for (int64_t blk = 0; blk < p.kb_main; blk += kBlockBytes) {
        for (int64_t t = 0; t < kBlockBytes; ++t) {
          const uint8_t b = wrow[blk + t];
          s += ((b & 0xF) ^ 8) * arow[2 * blk + t] + (((b >> 4) & 0xF) ^ 8) * arow[2 * blk + kBlockBytes + t];
        }
      }
      acc_out[i * NR + j] = s;
    }
  }
}

enum class Isa { kAmx, kAvx512Vnni, kAvxVnni, kAvxVnniEvex, kAvx2, kScalar };

// Rows up to which the automatic choice keeps VNNI on an AMX CPU. Both paths then stream W once at about
// memory speed (the tile path unpacks each W chunk into an L1 ring right before its tile loads), and VNNI,
// which unpacks in registers, is slightly ahead at one or two rows: idle 2-thread medians, Sapphire Rapids VM,
// K=N=4096: M=1 VNNI 0.31–0.35 ms vs AMX 0.38–0.46 ms, M=2 0.34 vs 0.39, M=4 0.41 vs 0.39, M=5 0.61 vs 0.39;
// K=N=11008: equal within noise at M ≤ 2, AMX ahead from M=4 (2.3 vs 2.6 ms).
constexpr int64_t kVnniMaxRows = 2;

// The path for an M-row product. SYMKERNELS_INT4_ISA=amx|avx512|avxvnni|avx2|scalar forces one (tests use
// it to cover every path on one CPU); a path the CPU lacks falls back to the automatic choice, so a forced
// run is never wrong, only slower. avxvnni is the ymm VNNI kernel: VEX-encoded where the CPU has AVX-VNNI,
// else (test hook) the same kernel in the EVEX AVX512VL encoding, reported as "avxvnni-evex".
Isa detect_isa(int64_t rows) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool vnni = vnni_kind_supported(VnniKind::kZmm);
  const char* forced = std::getenv("SYMKERNELS_INT4_ISA");
  const bool force_amx = forced && std::strcmp(forced, "amx") == 0;
  if (forced) {
    if (std::strcmp(forced, "scalar") == 0) return Isa::kScalar;
    if (std::strcmp(forced, "avx2") == 0 && __builtin_cpu_supports("avx2")) return Isa::kAvx2;
    if (std::strcmp(forced, "avx512") == 0 && vnni) return Isa::kAvx512Vnni;
    if (std::strcmp(forced, "avxvnni") == 0) {
      if (vnni_kind_supported(VnniKind::kYmmVex)) return Isa::kAvxVnni;
      if (vnni_kind_supported(VnniKind::kYmmEvex)) return Isa::kAvxVnniEvex;
    }
  }
  if (amx_int8_usable() && (force_amx || !vnni || rows > kVnniMaxRows)) return Isa::kAmx;
  if (vnni) return Isa::kAvx512Vnni;
  if (vnni_kind_supported(VnniKind::kYmmVex)) return Isa::kAvxVnni;
  if (__builtin_cpu_supports("avx2")) return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAmx: return "amx";
    case Isa::kAvx512Vnni: return "avx512";
    case Isa::kAvxVnni: return "avxvnni";
    case Isa::kAvxVnniEvex: return "avxvnni-evex";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

template <int MR, int NR>
void micro(Isa isa, const Problem& p, int64_t m0, int64_t n0, int32_t* acc) {
  switch (isa) {
    case Isa::kAvx2: return micro_avx2<MR, NR>(p, m0, n0, acc);
    default: return micro_scalar<MR, NR>(p, m0, n0, acc);
  }
}

template <int NR>
void micro_rows(Isa isa, int mr, const Problem& p, int64_t m0, int64_t n0, int32_t* acc) {
  switch (mr) {
    case 4: return micro<4, NR>(isa, p, m0, n0, acc);
    case 3: return micro<3, NR>(isa, p, m0, n0, acc);
    case 2: return micro<2, NR>(isa, p, m0, n0, acc);
    default: return micro<1, NR>(isa, p, m0, n0, acc);
  }
}

template <typename Out>
void epilogue(const Problem& p, const int32_t* acc, int mr, int nr, int64_t m0, int64_t n0, const float* sa,
              const float* sw, const float* bias, Out* out, int64_t n_total) {
  for (int i = 0; i < mr; ++i) {
    const int64_t m = m0 + i;
    for (int j = 0; j < nr; ++j) {
      const int64_t n = n0 + j;
      // exact integer dot: remove the +8 weight offset of the SIMD blocks, add the tail bytes
      const int32_t dot = acc[i * nr + j] - 8 * p.a_sum[m] + dot_tail(p.a_packed + m * p.kb, p.w + n * p.kb,
                                                                      p.kb_main, p.kb);
      float y = static_cast<float>(dot) * sa[m] * sw[n];
      if (bias) y += bias[n];
      out[m * n_total + n] = static_cast<Out>(y);
    }
  }
}

// Rows from which a W panel is unpacked once into an L2-resident buffer (then every row block reuses it)
// instead of being unpacked in registers for each 4-row block: below this the GEMM is bound by reading
// W, and the in-register unpack is free.
constexpr int64_t kPreUnpackRows = 16;

template <typename Out>
void run_panel(const Problem& p, Isa isa, int64_t panel, int64_t m_begin, int64_t m_end, int64_t M, int64_t N,
               const float* sa, const float* sw, const float* bias, Out* out) {
  int32_t acc[16];
  const int64_t n_end = std::min(N, (panel + 1) * kPanelN);
  for (int64_t m0 = m_begin; m0 < m_end; m0 += 4) {
    const int mr = static_cast<int>(std::min<int64_t>(4, M - m0));
    int64_t n0 = panel * kPanelN;
    for (; n0 + 4 <= n_end; n0 += 4) {
      micro_rows<4>(isa, mr, p, m0, n0, acc);
      epilogue(p, acc, mr, 4, m0, n0, sa, sw, bias, out, N);
    }
    for (; n0 < n_end; ++n0) {
      micro_rows<1>(isa, mr, p, m0, n0, acc);
      epilogue(p, acc, mr, 1, m0, n0, sa, sw, bias, out, N);
    }
  }
}

template <typename Out>
void gemm(const Problem& p, Isa isa, int64_t M, int64_t N, const float* sa, const float* sw, const float* bias,
          Out* out) {
  const int64_t panels = (N + kPanelN - 1) / kPanelN;
  const int64_t m_blocks = (M + 3) / 4;
  if (M < kPreUnpackRows || isa == Isa::kScalar || p.kb_main == 0) {
    // Parallel over (panel, row-block) pairs, panel-major so a thread's consecutive work reuses its W panel.
    at::parallel_for(0, panels * m_blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t panel = task / m_blocks, mb = task % m_blocks;
        run_panel(p, isa, panel, mb * 4, mb * 4 + 4, M, N, sa, sw, bias, out);
      }
    });
    return;
  }
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    const int64_t stride = 2 * p.kb_main;
    ScratchBuffer owner;
    uint8_t* buf = reinterpret_cast<uint8_t*>(scratch(ScratchSlot::kWorker, kPanelN * stride, owner));
    for (int64_t panel = begin; panel < end; ++panel) {
      const int64_t n0 = panel * kPanelN, cols = std::min(N, n0 + kPanelN) - n0;
      for (int64_t c = 0; c < cols; ++c) {
        const uint8_t* wrow = p.w + (n0 + c) * p.kb;
        uint8_t* dst = buf + c * stride;
        for (int64_t blk = 0; blk < p.kb_main; blk += kBlockBytes) {
          for (int64_t t = 0; t < kBlockBytes; ++t) {
            const uint8_t b = wrow[blk + t];
            dst[2 * blk + t] = (b & 0xF) ^ 8;
            dst[2 * blk + kBlockBytes + t] = ((b >> 4) & 0xF) ^ 8;
          }
        }
      }
      Problem local = p;
      local.w_unpacked = buf;
      local.w_unpacked_n0 = n0;
      run_panel(local, isa, panel, 0, M, M, N, sa, sw, bias, out);
    }
  });
}

at::Tensor int4_matmul_cpu(const at::Tensor& a_packed, const at::Tensor& a_scale, const at::Tensor& w_packed,
                           const at::Tensor& w_scale, const std::optional<at::Tensor>& bias, at::ScalarType out_dtype) {
  constexpr const char* op = "int4_matmul";
  TORCH_CHECK_TYPE(a_packed.scalar_type() == at::kByte, op, ": a_packed must be uint8, got ", a_packed.scalar_type());
  TORCH_CHECK_TYPE(w_packed.scalar_type() == at::kByte, op, ": w_packed must be uint8, got ", w_packed.scalar_type());
  TORCH_CHECK_TYPE(a_scale.scalar_type() == at::kFloat, op, ": a_scale must be float32, got ", a_scale.scalar_type());
  TORCH_CHECK_TYPE(w_scale.scalar_type() == at::kFloat, op, ": w_scale must be float32, got ", w_scale.scalar_type());
  TORCH_CHECK_VALUE(a_packed.dim() == 2 && w_packed.dim() == 2, op, ": a_packed and w_packed must be 2-D, got ",
                    a_packed.sizes(), " and ", w_packed.sizes());
  const int64_t M = a_packed.size(0), kb = a_packed.size(1), N = w_packed.size(0);
  TORCH_CHECK_VALUE(w_packed.size(1) == kb, op, ": a_packed and w_packed must have the same K/2, got ", kb, " and ",
                    w_packed.size(1));
  TORCH_CHECK_VALUE(a_scale.numel() == M, op, ": a_scale must have ", M, " elements, got ", a_scale.numel());
  TORCH_CHECK_VALUE(w_scale.numel() == N, op, ": w_scale must have ", N, " elements, got ", w_scale.numel());
  TORCH_CHECK_TYPE(out_dtype == at::kFloat || out_dtype == at::kHalf || out_dtype == at::kBFloat16, op,
                   ": out_dtype must be float32, float16 or bfloat16, got ", out_dtype);
  at::Tensor b;
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N, op, ": bias must have shape [", N, "], got ",
                      bias->sizes());
    b = bias->to(at::kFloat).contiguous();
  }
  at::Tensor out = at::empty({M, N}, a_packed.options().dtype(out_dtype));
  if (M == 0 || N == 0) return out;
  advise_huge_pages(out);
  const at::Tensor a = a_packed.contiguous(), w = w_packed.contiguous();
  const at::Tensor sa = a_scale.contiguous().view({M}), sw = w_scale.contiguous().view({N});
  const uint8_t* ap = a.const_data_ptr<uint8_t>();
  const uint8_t* wp = w.const_data_ptr<uint8_t>();
  const float* sap = sa.const_data_ptr<float>();
  const float* swp = sw.const_data_ptr<float>();
  const float* bp = bias.has_value() ? b.const_data_ptr<float>() : nullptr;
  const Isa isa = detect_isa(M);  // a getenv and a cpuid per call: negligible next to a GEMM
  auto with_out = [&](auto&& f) {
    switch (out_dtype) {
      case at::kFloat: return f(out.mutable_data_ptr<float>());
      case at::kHalf: return f(out.mutable_data_ptr<c10::Half>());
      default: return f(out.mutable_data_ptr<c10::BFloat16>());
    }
  };
  if (isa == Isa::kAmx) {
    with_out([&](auto* o) { int4_matmul_amx(ap, wp, M, N, kb, sap, swp, bp, o); });
    return out;
  }
  if (isa == Isa::kAvx512Vnni || isa == Isa::kAvxVnni || isa == Isa::kAvxVnniEvex) {
    const VnniKind kind = isa == Isa::kAvx512Vnni ? VnniKind::kZmm
                          : isa == Isa::kAvxVnni  ? VnniKind::kYmmVex
                                                  : VnniKind::kYmmEvex;
    with_out([&](auto* o) { int4_matmul_vnni(kind, ap, wp, M, N, kb, sap, swp, bp, o); });
    return out;
  }
  const int64_t kb_main = kb - kb % kBlockBytes;
  ScratchBuffer a_owner;
  int8_t* a_unpacked = scratch(ScratchSlot::kCaller, M * 2 * kb_main, a_owner);
  std::vector<int32_t> a_sum(M);
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) unpack_a(ap + m * kb, kb, kb_main, a_unpacked + m * 2 * kb_main, &a_sum[m]);
  });
  const Problem p{a_unpacked, a_sum.data(), ap, wp, kb, kb_main};
  with_out([&](auto* o) { gemm(p, isa, M, N, sap, swp, bp, o); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CPU, m) { m.impl("int4_matmul", &int4_matmul_cpu); }

// No tensor arguments, so no backend key to dispatch on: one kernel for every caller.
TORCH_LIBRARY_IMPL(symkernels, CompositeExplicitAutograd, m) {
  m.impl("int4_matmul_cpu_isa", [](int64_t rows) -> std::string { return isa_name(detect_isa(rows)); });
}

}  // namespace symkernels::quarot
