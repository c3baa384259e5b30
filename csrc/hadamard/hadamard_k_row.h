// One-row Kronecker Hadamard transform for CPU kernels: y = x · (H_K ⊗ H_P)ᵀ · scale, P = 2^m.
//
// Shared by the hadamard_transform_k op and the fused rotate+quantize op (csrc/quarot/), so that both
// produce bit-identical rotated rows. Everything here is inline: it must be compiled inside the
// caller's SYMKERNELS_SIMD_CLONES entry point to get that clone's vector ISA.
//
// Order of work per row (the data is touched once in memory, everything else is in L1/L2):
//   1. widen the row into the accumulation type, FWHT each of the K segments of length P;
//   2. mix the K segments: out[k, j] = scale · Σ_k' H_K[k, k'] · seg[k', j]. Done on 16-column vector
//      slabs with 8 output segments per pass, so each loaded slab feeds 8 FMAs; a K×16 slab
//      (≤ 172·64 B = 11 KiB) stays in L1 across the K/8 passes.
#pragma once

#include <cstdint>

#include "common/simd.h"

namespace symkernels::hadamard {

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
SYMKERNELS_INLINE void mix_rows_two_slabs(const A* seg, A* out, int64_t k_order, int64_t p, const A* hk, A scale,
                                          int64_t k, int64_t j0) {
  using V = typename simd::Vec<A>::type;
  constexpr int64_t W = simd::Vec<A>::width;
  V lo[R] = {}, hi[R] = {};
  const A* h0 = hk + k * k_order;
  for (int64_t kk = 0; kk < k_order; ++kk) {
    const V v0 = simd::load<V>(seg + kk * p + j0), v1 = simd::load<V>(seg + kk * p + j0 + W);
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

// seg: K·P values (K segments of P, already FWHT'd); out: K·P values; hk: K×K row-major.
template <typename A>
SYMKERNELS_INLINE void kronecker_mix(const A* seg, A* out, int64_t k_order, int64_t p, const A* hk, A scale) {
  using V = typename simd::Vec<A>::type;
  constexpr int64_t W = simd::Vec<A>::width;
  const int64_t p_vec = p - p % W;
  int64_t j0 = 0;
  // Two vector slabs × 8 output segments: each broadcast H entry feeds 2 FMAs and each slab load 8,
  // so the loop is FMA-bound rather than load-bound. Same per-output summation order as below.
  for (; j0 + 2 * W <= p_vec; j0 += 2 * W) {
    int64_t k = 0;
    for (; k + 8 <= k_order; k += 8) mix_rows_two_slabs<A, 8>(seg, out, k_order, p, hk, scale, k, j0);
    for (; k + 4 <= k_order; k += 4) mix_rows_two_slabs<A, 4>(seg, out, k_order, p, hk, scale, k, j0);
    for (; k < k_order; ++k) mix_rows_two_slabs<A, 1>(seg, out, k_order, p, hk, scale, k, j0);
  }
  for (int64_t j = j0; j < p_vec; j += W) {
    int64_t k = 0;
    // 8 output segments per pass: 8 accumulators + 1 loaded slab, each slab load feeds 8 FMAs.
    for (; k + 8 <= k_order; k += 8) {
      V acc[8] = {};
      const A* h0 = hk + k * k_order;
      for (int64_t kk = 0; kk < k_order; ++kk) {
        const V v = simd::load<V>(seg + kk * p + j);
        for (int r = 0; r < 8; ++r) acc[r] += h0[r * k_order + kk] * v;
      }
      for (int r = 0; r < 8; ++r) simd::store(out + (k + r) * p + j, acc[r] * scale);
    }
    for (; k + 4 <= k_order; k += 4) {
      V a0{}, a1{}, a2{}, a3{};
      const A* h0 = hk + k * k_order;
      for (int64_t kk = 0; kk < k_order; ++kk) {
        const V v = simd::load<V>(seg + kk * p + j);
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
      for (int64_t kk = 0; kk < k_order; ++kk) acc += hk[k * k_order + kk] * simd::load<V>(seg + kk * p + j);
      simd::store(out + k * p + j, acc * scale);
    }
  }
  // Columns left over when P is not a multiple of the vector width (P < W): scalar.
  for (int64_t j = p_vec; j < p; ++j) {
    for (int64_t k = 0; k < k_order; ++k) {
      A acc = 0;
      for (int64_t kk = 0; kk < k_order; ++kk) acc += hk[k * k_order + kk] * seg[kk * p + j];
      out[k * p + j] = acc * scale;
    }
  }
}

// Full row: in (any element type convertible to A) → out (A), using `scratch` (K·P values of A).
// With K == 1 and hk = [1] this is the plain power-of-two FWHT.
template <typename A, typename T>
SYMKERNELS_INLINE void kronecker_hadamard_row(const T* in, A* out, int64_t k_order, int64_t p, const A* hk, A scale,
                                              A* scratch) {
  const int64_t n = k_order * p;
  for (int64_t i = 0; i < n; ++i) scratch[i] = static_cast<A>(in[i]);
  for (int64_t k = 0; k < k_order; ++k) fwht_inplace(scratch + k * p, p);
  if (k_order == 1) {
    const A s = scale * hk[0];
    for (int64_t i = 0; i < n; ++i) out[i] = scratch[i] * s;
    return;
  }
  kronecker_mix(scratch, out, k_order, p, hk, scale);
}

}  // namespace symkernels::hadamard
