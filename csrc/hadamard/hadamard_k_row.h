// One-row Kronecker Hadamard transform for CPU kernels: y = x · (H_K ⊗ H_P)ᵀ · scale, P = 2^m.
//
// Shared by the hadamard_transform_k op and the fused rotate+quantize op (csrc/quarot/), so that both
// produce bit-identical rotated rows. Everything here is inline: it must be compiled inside the
// caller's SYMKERNELS_ISA_ENTRY_POINTS to get that entry point's vector ISA. A KroneckerPlan, built on
// the host (and cached per matrix), carries H_K and (when H_K is ±1) the sign-class lists of the K×K mix.
//
// Order of work per row (the data is touched once in memory, everything else is in L1/L2):
//   1. widen the row into the accumulation type, FWHT each of the K segments of length P;
//   2. mix the K segments: out[k, j] = scale · Σ_k' H_K[k, k'] · seg[k', j].
//
// The mix dominates (K multiply-adds per element against log2 P for the FWHT), and there are two ways
// to run it:
//   * sign classes (any ±1 H_K with K ≥ sign_class_min_order(), P a multiple of two vector widths).
//     Normalize the columns so that row 0 is all ones: seg'[k'] = H[0, k']·seg[k'] (folded into the
//     widening copy), H' = H·diag(H[0, :]). Take the other rows three at a time, (a, b, c). Each column
//     k' has a sign pattern (H'[a,k'], H'[b,k'], H'[c,k']) ∈ {±1}³; sum the seg' rows of each of the
//     8 patterns (plain vector adds: no multiplies, no signs), then one 8-point Walsh butterfly on the
//     8 class sums gives out[a], out[b], out[c] (Walsh indices 1, 2, 4) and out[0] (index 0). That is
//     K adds per 3 outputs instead of 3K multiply-adds: about K/3 + 6 vector ops per output element
//     (58 instead of 172 at K = 172). Class lists are padded to the triple's longest class with a zero
//     segment, so the 8 classes run in one loop of 8·NV independent add chains without data-dependent
//     branches; triples are picked so that the classes are balanced (little padding).
//     Measured on Sapphire Rapids, the indexed adds run at about half the FMA rate (one index byte
//     and a dependent load per NV adds), so the 3× fewer operations give ~1.4× on the mix at
//     K ≥ 108 and nothing at K ≤ 52, hence the threshold (AVX-512 entry point only, see below).
//   * general FMA (any K×K matrix; ±1 ones below the threshold or with P < 2 vector widths): 16-column
//     vector slabs × 8 output segments per pass, each loaded slab feeds 8 FMAs.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/simd.h"

namespace symkernels::hadamard {

// Orders from which the sign-class mix beats the FMA mix in the AVX-512 entry point (measured on Sapphire
// Rapids: about equal at K = 40..52, 1.1-1.3× at K = 60, 1.25-1.45× at K = 108..172; below, the padding
// and butterfly overhead eat the saving of K/3 + 6 adds over K multiply-adds; measured when the AVX-512 code
// had no FMA, which it has since: to re-measure). In the AVX2 and baseline
// entry points a 64-byte vector is 2 or 4 registers and the FMA mix's 16 accumulators spill: there the
// sign-class mix was 6-19× faster at every K (12..172, measured with an -mavx2 build), so it is taken
// whenever it applies.
constexpr int64_t kSignClassMinOrderAvx512 = 56;
inline int64_t sign_class_min_order() {
  static const bool avx512 = std::strcmp(simd::runtime_simd_level(), "avx512") == 0;
  return avx512 ? kSignClassMinOrderAvx512 : 4;
}
// L1 bytes the sign-class mix may fill with its K × tile panel (48 KiB L1d on Sapphire Rapids; the
// lists and the output rows stream past it). Measured: the widest tile that fits is fastest.
constexpr int64_t kPanelBytes = 45 * 1024;
// Register-wide slabs per sign-class tile below AVX-512: 8 classes × 2 = 16 accumulators, the whole ymm/xmm
// file (the adds take their operand from memory). Measured (AVX2, Zen 3, fp32, 64 rows, 1 thread): against the
// 64-byte tiles that GCC kept on the stack, 2 slabs ran 2.1-2.9x faster at n = 3584 / 11008 / 14336 / 768 /
// 5120, 1 slab 1.5-2.2x, 4 slabs (spilling) no faster than 2.
constexpr int kNarrowSlabs = 2;
// Segment indices in the class lists: one byte below K = 256 (the lists share L1 with the panel, and
// that is the size the route was measured with), two bytes up to K = 65535 (index K is the zero
// segment). Orders past 255 (up to 1020 in symkernels.hadamard.hadamard_k, e.g. Qwen2-72B's 924) would
// otherwise fall to the FMA mix, whose 16 accumulators spill in the AVX2 and baseline entry points.
constexpr int64_t kNarrowIndexMaxOrder = 255;
constexpr int64_t kWideIndexMaxOrder = 65535;

// A 64-byte aligned view of `buf` with room for `size` values: every 64-byte vector load of a segment
// then touches one cache line (misaligned rows cost ~1.4× on the L1-bound mixes).
template <typename A>
inline A* aligned_scratch(std::vector<A>& buf, int64_t size) {
  buf.assign(size + 64 / sizeof(A), A(0));
  A* ptr = buf.data();
  while (reinterpret_cast<uintptr_t>(ptr) % 64) ++ptr;
  return ptr;
}

// Butterfly between lanes H apart inside one vector: lane i becomes v[i] + v[i^H] (bit H of i clear) or
// v[i^H] − v[i] (set). Constant permutation and sign vectors: one shuffle and one FMA.
template <typename A, int H>
SYMKERNELS_INLINE typename simd::Vec<A>::type lane_butterfly(typename simd::Vec<A>::type v) {
  using V = typename simd::Vec<A>::type;
  using I = typename simd::Vec<A>::index;
  I partner{};
  V sign{};
  for (int i = 0; i < simd::Vec<A>::width; ++i) {
    partner[i] = i ^ H;
    sign[i] = (i & H) ? A(-1) : A(1);
  }
  return __builtin_shuffle(v, partner) + sign * v;
}

// In-place FWHT of x[0, p) (p a power of two). Strides below the vector width run inside registers
// (one load/store per vector for all of them); wider strides are radix-2 passes over whole vectors.
template <typename A>
SYMKERNELS_INLINE void fwht_inplace(A* x, int64_t p) {
  using V = typename simd::Vec<A>::type;
  constexpr int64_t W = simd::Vec<A>::width;
  int64_t h = 1;
  if (p >= W) {
    for (int64_t i = 0; i < p; i += W) {
      V v = simd::load<V>(x + i);
      v = lane_butterfly<A, 1>(v);
      v = lane_butterfly<A, 2>(v);
      v = lane_butterfly<A, 4>(v);
      if constexpr (W == 16) v = lane_butterfly<A, 8>(v);
      simd::store(x + i, v);
    }
    h = W;
  }
  // Two strides (h, 2h) per pass over the segment: half the loads and stores of radix-2 passes, and the
  // same additions in the same order (bit-identical results).
  for (; 4 * h <= p; h *= 4) {
    for (int64_t i = 0; i < p; i += 4 * h) {
      for (int64_t j = i; j < i + h; ++j) {  // h ≥ W here: contiguous, vectorized
        const A a = x[j], b = x[j + h], c = x[j + 2 * h], d = x[j + 3 * h];
        const A s0 = a + b, s1 = a - b, s2 = c + d, s3 = c - d;
        x[j] = s0 + s2;
        x[j + h] = s1 + s3;
        x[j + 2 * h] = s0 - s2;
        x[j + 3 * h] = s1 - s3;
      }
    }
  }
  for (; h < p; h *= 2) {
    for (int64_t i = 0; i < p; i += 2 * h) {
      for (int64_t j = i; j < i + h; ++j) {  // h ≥ W here (or p < W): contiguous, vectorized
        const A a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
}

// R output segments (rows k .. k+R) × 2 vector slabs (columns j0 .. j0 + 2W) of the K×K mix.
template <typename A, int R>
SYMKERNELS_INLINE void mix_rows_two_slabs(const A* seg, int64_t stride, A* out, int64_t k_order, int64_t p, const A* hk,
                                          A scale, int64_t k, int64_t j0) {
  using V = typename simd::Vec<A>::type;
  constexpr int64_t W = simd::Vec<A>::width;
  V lo[R] = {}, hi[R] = {};
  const A* h0 = hk + k * k_order;
  for (int64_t kk = 0; kk < k_order; ++kk) {
    const V v0 = simd::load<V>(seg + kk * stride + j0), v1 = simd::load<V>(seg + kk * stride + j0 + W);
    for (int r = 0; r < R; ++r) {
      const A h = h0[r * k_order + kk];
      lo[r] += h * v0;
      hi[r] += h * v1;
    }
  }
  for (int r = 0; r < R; ++r) {
    simd::store(out + (k + r) * p + j0, lo[r] * scale);
    simd::store(out + (k + r) * p + j0 + W, hi[r] * scale);
  }
}

// seg: K segments of P values (already FWHT'd), `stride` apart; out: K·P values; hk: K×K row-major.
template <typename A>
SYMKERNELS_INLINE void kronecker_mix(const A* seg, int64_t stride, A* out, int64_t k_order, int64_t p, const A* hk,
                                     A scale) {
  using V = typename simd::Vec<A>::type;
  constexpr int64_t W = simd::Vec<A>::width;
  const int64_t p_vec = p - p % W;
  int64_t j0 = 0;
  // Two vector slabs × 8 output segments: each broadcast H entry feeds 2 FMAs and each slab load 8,
  // so the loop is FMA-bound rather than load-bound. Same per-output summation order as below.
  for (; j0 + 2 * W <= p_vec; j0 += 2 * W) {
    int64_t k = 0;
    for (; k + 8 <= k_order; k += 8) mix_rows_two_slabs<A, 8>(seg, stride, out, k_order, p, hk, scale, k, j0);
    for (; k + 4 <= k_order; k += 4) mix_rows_two_slabs<A, 4>(seg, stride, out, k_order, p, hk, scale, k, j0);
    for (; k < k_order; ++k) mix_rows_two_slabs<A, 1>(seg, stride, out, k_order, p, hk, scale, k, j0);
  }
  for (int64_t j = j0; j < p_vec; j += W) {
    int64_t k = 0;
    // 8 output segments per pass: 8 accumulators + 1 loaded slab, each slab load feeds 8 FMAs.
    for (; k + 8 <= k_order; k += 8) {
      V acc[8] = {};
      const A* h0 = hk + k * k_order;
      for (int64_t kk = 0; kk < k_order; ++kk) {
        const V v = simd::load<V>(seg + kk * stride + j);
        for (int r = 0; r < 8; ++r) acc[r] += h0[r * k_order + kk] * v;
      }
      for (int r = 0; r < 8; ++r) simd::store(out + (k + r) * p + j, acc[r] * scale);
    }
    for (; k + 4 <= k_order; k += 4) {
      V a0{}, a1{}, a2{}, a3{};
      const A* h0 = hk + k * k_order;
      for (int64_t kk = 0; kk < k_order; ++kk) {
        const V v = simd::load<V>(seg + kk * stride + j);
        a0 += h0[kk] * v;
        a1 += h0[k_order + kk] * v;
        a2 += h0[2 * k_order + kk] * v;
        a3 += h0[3 * k_order + kk] * v;
      }
      simd::store(out + k * p + j, a0 * scale);
      simd::store(out + (k + 1) * p + j, a1 * scale);
      simd::store(out + (k + 2) * p + j, a2 * scale);
      simd::store(out + (k + 3) * p + j, a3 * scale);
    }
    for (; k < k_order; ++k) {
      V acc{};
      for (int64_t kk = 0; kk < k_order; ++kk) acc += hk[k * k_order + kk] * simd::load<V>(seg + kk * stride + j);
      simd::store(out + k * p + j, acc * scale);
    }
  }
  // Columns left over when P is not a multiple of the vector width (P < W): scalar.
  for (int64_t j = p_vec; j < p; ++j) {
    for (int64_t k = 0; k < k_order; ++k) {
      A acc = 0;
      for (int64_t kk = 0; kk < k_order; ++kk) acc += hk[k * k_order + kk] * seg[kk * stride + j];
      out[k * p + j] = acc * scale;
    }
  }
}

// Host-side description of one transform: H_K, P, and the sign-class lists when H_K is ±1. Built once
// per call (O(K²)), outside the per-ISA entry points; the row code below only reads it.
template <typename A>
struct KroneckerPlan {
  static constexpr int kGroupRows = 3;                // outputs per pass over the K segments
  static constexpr int kClasses = 1 << kGroupRows;    // sign patterns of those rows on one column

  std::vector<A> hk_values;  // K×K row-major copy (the plan may outlive the caller's tensor in the cache)
  const A* hk = nullptr;     // = hk_values.data(), for the general route
  int64_t k_order = 1;
  int64_t p = 1;
  bool sign_classes = false;
  std::vector<A> column_sign;      // K: H[0, k'], applied while widening (sign route)
  std::vector<int32_t> group_rows; // groups × 3 output rows (the last group may overlap the one before)
  std::vector<int32_t> group_len;  // groups: padded class length L_g
  std::vector<uint8_t> lists;      // per group, 8 classes × L_g segment indices k' (K: the zero segment)
  std::vector<uint16_t> wide_lists; // the same for K > kNarrowIndexMaxOrder (then `lists` is empty)
  // Values from one segment to the next in the scratch: P and one cache line. The mixes read the K segments at
  // the same column together; at a power-of-two stride those K lines fall into a few L1 sets (one or two of
  // the 64 at P = 512 fp32, 8 ways each) and evict each other. A line more per segment spreads them over the
  // sets: the whole transform 1.23× faster at n = 14336 (K = 28, P = 512; AVX2, Zen 3, 64 rows, 1 thread).
  int64_t stride = 1;

  KroneckerPlan(const A* h, int64_t k, int64_t p_)
      : hk_values(h, h + k * k), hk(hk_values.data()), k_order(k), p(p_),
        stride(k > 1 ? p_ + 64 / int64_t(sizeof(A)) : p_) {
    constexpr int64_t W = simd::Vec<A>::width;
    // P ≥ 2 vectors: with one slab per index byte the indexed adds do not beat the FMA mix (measured).
    bool pm1 = k >= std::max<int64_t>(sign_class_min_order(), 1 + kGroupRows) && k <= kWideIndexMaxOrder &&
               p >= 2 * W && p % W == 0;
    for (int64_t i = 0; pm1 && i < k * k; ++i) pm1 = h[i] == A(1) || h[i] == A(-1);
    if (!pm1) return;
    sign_classes = true;
    column_sign.assign(h, h + k);
    // H'[r, c] = H[r, c]·H[0, c] as ±1 integers.
    std::vector<int8_t> hn(k * k);
    for (int64_t r = 0; r < k; ++r) {
      for (int64_t c = 0; c < k; ++c) hn[r * k + c] = h[r * k + c] == h[c] ? 1 : -1;
    }
    const bool narrow = k <= kNarrowIndexMaxOrder;
    std::vector<uint16_t> members[kClasses];
    for (const auto& rows : balanced_triples(hn, k)) {
      for (auto& m : members) m.clear();
      for (int64_t c = 0; c < k; ++c) {
        int cls = 0;
        for (int i = 0; i < kGroupRows; ++i) cls |= (hn[rows[i] * k + c] < 0) << i;
        members[cls].push_back(static_cast<uint16_t>(c));
      }
      size_t len = 0;
      for (auto& m : members) len = std::max(len, m.size());
      for (auto& m : members) {
        m.resize(len, static_cast<uint16_t>(k));  // pad with the zero segment
        if (narrow) {
          lists.insert(lists.end(), m.begin(), m.end());  // every index ≤ K ≤ 255 fits a byte
        } else {
          wide_lists.insert(wide_lists.end(), m.begin(), m.end());
        }
      }
      group_rows.insert(group_rows.end(), rows.begin(), rows.end());
      group_len.push_back(static_cast<int32_t>(len));
    }
  }

  // Rows 1 .. K−1 of the normalized H' in triples (a, b, c). Rows of H' are orthogonal to each other and
  // to the all-ones row 0, so the 8 class sizes of a triple are (K ± t)/8 with t = Σ_k' H'[a]·H'[b]·H'[c]:
  // greedily pick triples with the smallest |t| (K mod 8 for these K, i.e. 0 or 4) so that padding to
  // the longest class wastes little. With the −1 entries as bits (⌈K/64⌉ words per row),
  // t = K − 2·popcount(a ^ b ^ c), and the search stops at the first triple reaching the bound: ~10 µs
  // for K = 172 (the int8 dot-product version took 350 µs, more than a one-row transform). Rows left
  // over (K−1 not a multiple of 3) are completed with already-placed rows: recomputing a row is harmless.
  static std::vector<std::array<int32_t, kGroupRows>> balanced_triples(const std::vector<int8_t>& hn, int64_t k) {
    const int64_t words = (k + 63) / 64;
    std::vector<uint64_t> neg(k * words, 0);  // row r: words r·words .. (r+1)·words
    for (int64_t r = 0; r < k; ++r) {
      for (int64_t c = 0; c < k; ++c) {
        if (hn[r * k + c] < 0) neg[r * words + c / 64] |= uint64_t{1} << (c % 64);
      }
    }
    std::vector<uint64_t> ab(words);
    const int64_t bound = std::min<int64_t>(k % 8, 8 - k % 8);
    std::vector<char> used(k, 0);
    std::vector<std::array<int32_t, kGroupRows>> out;
    for (int64_t a = 1; a < k; ++a) {
      if (used[a]) continue;
      used[a] = 1;
      std::array<int32_t, kGroupRows> best{static_cast<int32_t>(a), -1, -1};
      int64_t best_t = k + 1;
      for (int64_t b = a + 1; b < k && best_t > bound; ++b) {
        if (used[b]) continue;
        for (int64_t w = 0; w < words; ++w) ab[w] = neg[a * words + w] ^ neg[b * words + w];
        for (int64_t c = b + 1; c < k && best_t > bound; ++c) {
          if (used[c]) continue;
          int64_t odd = 0;
          for (int64_t w = 0; w < words; ++w) odd += __builtin_popcountll(ab[w] ^ neg[c * words + w]);
          const int64_t t = k - 2 * odd;
          if ((t < 0 ? -t : t) < best_t) {
            best_t = t < 0 ? -t : t;
            best = {static_cast<int32_t>(a), static_cast<int32_t>(b), static_cast<int32_t>(c)};
          }
        }
      }
      // Fewer than 3 unused rows were left: complete the triple with other rows, unused ones first so
      // that none is left for a triple of its own.
      for (int i = 1; i < kGroupRows; ++i) {
        for (int pass = 0; pass < 2 && best[i] < 0; ++pass) {
          for (int32_t r = 1; r < k && best[i] < 0; ++r) {
            if ((pass == 1 || !used[r]) && std::find(best.begin(), best.end(), r) == best.end()) best[i] = r;
          }
        }
        used[best[i]] = 1;
      }
      out.push_back(best);
    }
    return out;
  }

  // Scratch values the row code needs: the K segments, plus one zero segment for the padded lists.
  int64_t scratch_size() const { return (k_order + (sign_classes ? 1 : 0)) * stride; }
  int64_t groups() const { return static_cast<int64_t>(group_len.size()); }
};

// The plan for (H_K, P), from a small process-wide cache: models apply the same one or two sizes over
// and over, and building a plan costs up to ~0.2–0.6 ms at K = 172 and ~15 ms at K = 924 (the
// balanced-triple search), more than transforming a few rows. Matrices are compared bit for bit; the last kPlanCacheSize are kept.
template <typename A>
std::shared_ptr<const KroneckerPlan<A>> cached_kronecker_plan(const A* hk, int64_t k, int64_t p) {
  constexpr size_t kPlanCacheSize = 8;
  static std::mutex mutex;
  static std::vector<std::shared_ptr<const KroneckerPlan<A>>> cache;  // most recently used last
  const std::lock_guard<std::mutex> lock(mutex);
  for (auto it = cache.begin(); it != cache.end(); ++it) {
    const auto& plan = **it;
    if (plan.k_order == k && plan.p == p && std::memcmp(plan.hk, hk, sizeof(A) * k * k) == 0) {
      auto hit = *it;
      cache.erase(it);
      cache.push_back(hit);
      return hit;
    }
  }
  auto plan = std::make_shared<const KroneckerPlan<A>>(hk, k, p);
  if (cache.size() == kPlanCacheSize) cache.erase(cache.begin());
  cache.push_back(plan);
  return plan;
}

// Sign-class mix of NV vector slabs of VB bytes (columns j .. j + NV·W of every segment) for all output rows.
// NV·W columns × K segments stay in L1 across the K/3 groups; see the header comment for the math.
template <typename A, int NV, int VB, typename Index>
SYMKERNELS_INLINE void sign_class_mix_tile(const A* seg, A* out, const KroneckerPlan<A>& plan, const Index* list,
                                           A scale, int64_t j) {
  using V = typename simd::RegVec<A, VB>::type;
  constexpr int64_t W = simd::RegVec<A, VB>::width;
  constexpr int C = KroneckerPlan<A>::kClasses, G = KroneckerPlan<A>::kGroupRows;
  const int64_t p = plan.p, stride = plan.stride;
  const A* base = seg + j;
  for (int64_t g = 0; g < plan.groups(); ++g) {
    const int64_t len = plan.group_len[g];
    // All 8 classes have the same (padded) length ≥ 1: one loop per group, with 8·NV independent add chains
    // in registers; every add takes its operand straight from L1 (one index byte per NV adds). The sums
    // start from their first member, not from zero: GCC stored `= {}` as a rep stosq over the whole array
    // for every group (~10% of the AVX2 mix at K = 28).
    V cls[C][NV];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const A* src = base + static_cast<int64_t>(list[c * len]) * stride;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) cls[c][v] = simd::load<V>(src + v * W);
    }
    for (int64_t i = 1; i < len; ++i) {
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        const A* src = base + static_cast<int64_t>(list[c * len + i]) * stride;
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) cls[c][v] += simd::load<V>(src + v * W);
      }
    }
    list += C * len;
    // 8-point Walsh butterfly over the classes: index u gets Σ_c (−1)^popcount(u & c) · cls[c]. Only
    // indices 0, 1, 2, 4 are stored, the compiler drops the rest.
#pragma GCC unroll 8
    for (int h = 1; h < C; h *= 2) {
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        if (c & h) continue;
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          const V a = cls[c][v], b = cls[c + h][v];
          cls[c][v] = a + b;
          cls[c + h][v] = a - b;
        }
      }
    }
    for (int i = 0; i < G; ++i) {
      A* dst = out + plan.group_rows[g * G + i] * p + j;
      for (int v = 0; v < NV; ++v) simd::store(dst + v * W, cls[1 << i][v] * scale);
    }
    if (g == 0) {
      for (int v = 0; v < NV; ++v) simd::store(out + j + v * W, cls[0][v] * scale);  // row 0: Σ seg'
    }
  }
}

// RegisterBytes: the entry point's register width (see common/simd.h). With zmm the 8 classes × NV slabs are
// at most 32 registers; narrower, the tile is kNarrowSlabs register-wide slabs (8 · kNarrowSlabs accumulators
// of the 16 ymm / xmm).
template <int RegisterBytes, typename A, typename Index>
SYMKERNELS_INLINE void sign_class_mix(const A* seg, A* out, const KroneckerPlan<A>& plan, const Index* lists,
                                      A scale) {
  if constexpr (RegisterBytes < 64) {
    constexpr int VB = simd::register_vector_bytes(RegisterBytes);
    constexpr int64_t W = simd::RegVec<A, VB>::width;
    for (int64_t j = 0; j < plan.p; j += kNarrowSlabs * W) {
      sign_class_mix_tile<A, kNarrowSlabs, VB>(seg, out, plan, lists, scale, j);
    }
  } else {
    constexpr int64_t W = simd::Vec<A>::width;
    // Widest tile (in slabs) whose K-segment panel fits kPanelBytes and that divides P.
    const int64_t panel_slabs = kPanelBytes / (plan.k_order * W * static_cast<int64_t>(sizeof(A)));
    const int64_t slabs = plan.p / W;
    constexpr int VB = simd::kVectorBytes;
    if (slabs % 4 == 0 && panel_slabs >= 4) {
      for (int64_t j = 0; j < plan.p; j += 4 * W) sign_class_mix_tile<A, 4, VB>(seg, out, plan, lists, scale, j);
    } else if (slabs % 2 == 0 && panel_slabs >= 2) {
      for (int64_t j = 0; j < plan.p; j += 2 * W) sign_class_mix_tile<A, 2, VB>(seg, out, plan, lists, scale, j);
    } else {
      for (int64_t j = 0; j < plan.p; j += W) sign_class_mix_tile<A, 1, VB>(seg, out, plan, lists, scale, j);
    }
  }
}

// out[i] = s · in[i] for i < n, widening fp16/bf16 rows 16 values at a time (bit-identical to
// static_cast, see common/simd.h: the per-element c10 conversion does not vectorize).
template <typename A, typename T>
SYMKERNELS_INLINE void widen_row(const T* in, A* out, int64_t n, A s) {
  int64_t i = 0;
  if constexpr (std::is_same_v<A, float> && (std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>)) {
    for (; i + 16 <= n; i += 16) {
      const auto h = simd::load<simd::U16x16>(in + i);
      simd::store(out + i, s * (std::is_same_v<T, c10::Half> ? simd::fp16_to_fp32(h) : simd::bf16_to_fp32(h)));
    }
  }
  for (; i < n; ++i) out[i] = s * static_cast<A>(in[i]);
}

// Full row: in (any element type convertible to A) → out (A), using `scratch` (plan.scratch_size()
// values of A, whose zero segment the caller zeroed once: the row code never writes it).
// With K == 1 and hk = [1] this is the plain power-of-two FWHT.
template <int RegisterBytes, typename A, typename T>
SYMKERNELS_INLINE void kronecker_hadamard_row(const T* in, A* out, const KroneckerPlan<A>& plan, A scale, A* scratch) {
  const int64_t k_order = plan.k_order, p = plan.p, n = k_order * p;
  for (int64_t k = 0; k < k_order; ++k) {
    widen_row(in + k * p, scratch + k * plan.stride, p, plan.sign_classes ? plan.column_sign[k] : A(1));  // ±1: exact
    fwht_inplace(scratch + k * plan.stride, p);
  }
  if (plan.sign_classes) {
    if (plan.wide_lists.empty()) {
      sign_class_mix<RegisterBytes>(scratch, out, plan, plan.lists.data(), scale);
    } else {
      sign_class_mix<RegisterBytes>(scratch, out, plan, plan.wide_lists.data(), scale);
    }
    return;
  }
  if (k_order == 1) {
    const A s = scale * plan.hk[0];
    for (int64_t i = 0; i < n; ++i) out[i] = scratch[i] * s;
    return;
  }
  kronecker_mix(scratch, plan.stride, out, k_order, p, plan.hk, scale);
}

}  // namespace symkernels::hadamard
