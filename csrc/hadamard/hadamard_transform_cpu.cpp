// CPU fast Walsh–Hadamard transform along the last dimension.
//
// Each row (rows split across threads by at::parallel_for / OpenMP) is transformed in as few passes as
// its size allows, every pass keeping a block of vectors in registers (W lanes per vector: one register of
// the entry point for fp32/fp64, 64 bytes for fp16/bf16; see vector_bytes):
//   1. leaf pass: 16 consecutive vectors (16·W values: 256 fp32 with AVX-512) are loaded (widened from
//      fp16/bf16, scaled), the strides 1 .. W/2 run *inside* each vector (a constant lane shuffle plus
//      one multiply-add), the strides W .. 8W *across* the 16 registers; rows of ≤ 16·W values are
//      then finished and stored, with no second pass;
//   2. longer rows: a leaf pass over blocks of B vectors, then the remaining strides B·W .. n/2 in
//      passes of up to log2(B) strides (2..B vectors h apart per register block) over the row, which
//      stays in L1/L2 (≤ 128 KiB fp32). The last pass writes the output (rounding fp16/bf16 once); the
//      passes before it work in place in the output (fp32/fp64) or in a per-thread fp32 scratch row
//      (fp16/bf16). B is what the register file holds (see block_log2).
// So with AVX-512 a 1024-value fp32 row is read once from memory, passed over once more in L1, and written once.
// fp16/bf16 are widened and rounded 16 values at a time: with vcvtph2ps/vcvtps2ph for fp16 on AVX-512
// CPUs, elsewhere with c10's own bit algorithms over vectors (common/simd.h); either way bit-identical
// to c10's casts (NaN payloads aside).
// Stages run in increasing stride and each butterfly is (a + b, a − b), exactly as a radix-2 FWHT of
// the scaled input does: the result does not depend on how the stages are grouped into passes.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/memory.h"
#include "common/simd.h"
#include "hadamard/hadamard_args.h"

namespace symkernels::hadamard {
namespace {

// Rows of up to 16 vectors are transformed in registers in one go (256 fp32 in zmm, 128 in ymm). For 64-byte
// vectors in AVX2 code (fp16/bf16 rows) 16 are 32 ymm and spill; that still beat a leaf pass of 8 plus a
// second pass (measured for fp32 when it used them too: 65536×256, 1 thread, Zen 3: 8.1 ms against 8.9 ms).
constexpr int kRowVectors = 16;

// log2 of the vectors (of VB bytes) per register block of the passes over longer rows, i.e. of the strides
// one pass does. 64-byte vectors: as many as the register file holds, 16 zmm, or 8 (16 ymm) and 4 (16 xmm)
// in the AVX2 and baseline code (RegisterBytes 0 counts as the baseline). Measured on Zen 3 (AVX2 entry
// point, 1 thread, out=, 64 MiB fp32): blocks of 16 64-byte vectors (32 ymm, half of them spilled: a
// 4-stride pass cost 0.23 ns/value in L1 against 0.11 for 3 strides) took 12.5 / 11.7 / 14.5 ms at n =
// 4096 / 16384 / 32768, blocks of 8 took 8.9 / 11.4 / 11.9 ms; SSE2 (four xmm per vector): blocks of 4
// were the fastest in L2 (0.9–1.3 ns/value against 1.2–2.1 with 16). Register-wide vectors below AVX-512:
// 8, half the file, leaving registers for the in-vector stages' shuffles.
template <int RegisterBytes, int VB>
constexpr int block_log2() {
  if constexpr (VB < simd::kVectorBytes) return 3;
  return RegisterBytes == 64 ? 4 : RegisterBytes == 32 ? 3 : 2;
}
// Rows per parallel task: enough elements that thread start-up is noise next to the work.
constexpr int64_t kElementsPerTask = 1 << 15;

// fp16 as seen by the AVX-512 entry point: the same bits, converted with vcvtph2ps/vcvtps2ph.
struct HalfAvx512 {
  c10::Half h;
  HalfAvx512(float f) : h(f) {}  // scalar rows (n < 16): c10's conversion
  operator float() const { return static_cast<float>(h); }
};
static_assert(sizeof(HalfAvx512) == sizeof(c10::Half));

// Accumulation type of a storage type: fp32 for fp32/fp16/bf16, fp64 for fp64.
template <typename S>
using Acc = std::conditional_t<std::is_same_v<S, double>, double, float>;
// Vectors of VB bytes of A: the 64-byte Vec for fp16/bf16 rows (their conversions work on 16 lanes), one
// register of the entry point for fp32/fp64 (see vector_bytes).
template <typename A, int VB>
using VecOf = typename simd::RegVec<A, VB>::type;
template <typename A, int VB>
constexpr int kWidth = simd::RegVec<A, VB>::width;

template <typename A, int VB>
constexpr int log2_width() {
  int log2 = 0;
  while ((1 << log2) < kWidth<A, VB>) ++log2;
  return log2;
}

// The vector the transform of S rows works in: one register of the entry point (RegisterBytes: its width, 0
// in builds without entry points) for fp32/fp64; the 64-byte Vec for fp16/bf16, whose conversions take 16
// lanes. A 64-byte vector in AVX2 code is two ymm, and GCC kept the register blocks of them partly on the
// stack (a 256-value row, 16 of them, is 32 ymm: 169 ymm stack moves per row). Measured (Zen 3, AVX2 entry
// point, fp32, L2-resident rows, 1 thread, old and new builds interleaved 5 times, best of 25): 297 → 280
// ps/value at n = 256, 350 → 301 at 1024, 371 → 338 at 4096; 255 → 264 at n = 128.
template <int RegisterBytes, typename S>
constexpr int vector_bytes() {
  return std::is_same_v<S, Acc<S>> ? simd::register_vector_bytes(RegisterBytes) : simd::kVectorBytes;
}

// One vector of W values of S, as accumulation type (widening fp16/bf16, bit-identical to c10).
template <typename S, int VB>
SYMKERNELS_INLINE VecOf<Acc<S>, VB> load_acc(const S* p) {
  static_assert(VB == simd::kVectorBytes || std::is_same_v<S, Acc<S>>, "fp16/bf16 rows convert 64-byte vectors");
  if constexpr (std::is_same_v<S, HalfAvx512>) {
    return simd::fp16_to_fp32_avx512(simd::load<simd::U16x16>(reinterpret_cast<const uint16_t*>(p)));
  } else if constexpr (std::is_same_v<S, c10::Half>) {
    return simd::fp16_to_fp32(simd::load<simd::U16x16>(p));
  } else if constexpr (std::is_same_v<S, c10::BFloat16>) {
    return simd::bf16_to_fp32(simd::load<simd::U16x16>(p));
  } else {
    return simd::load<VecOf<S, VB>>(p);
  }
}

// Store W accumulated values as S (rounding once to fp16/bf16, bit-identical to c10's conversion).
template <typename S, int VB>
SYMKERNELS_INLINE void store_acc(S* p, VecOf<Acc<S>, VB> v) {
  if constexpr (std::is_same_v<S, HalfAvx512>) {
    simd::store(reinterpret_cast<uint16_t*>(p), simd::fp32_to_fp16_avx512(v));
  } else if constexpr (std::is_same_v<S, c10::Half>) {
    simd::store(p, simd::fp32_to_fp16(v));
  } else if constexpr (std::is_same_v<S, c10::BFloat16>) {
    simd::store(p, simd::fp32_to_bf16(v));
  } else {
    simd::store(p, v);
  }
}

// Butterfly across lanes H apart inside one vector: lane i becomes v[i] + v[i^H] if bit H of i is clear,
// v[i^H] − v[i] if set. The index and sign vectors are compile-time constants, so this is one permute
// and one FMA (exact: the product is ±v).
template <typename A, int VB, int H>
SYMKERNELS_INLINE VecOf<A, VB> butterfly_in_vector(VecOf<A, VB> v) {
  using V = VecOf<A, VB>;
  using I = typename simd::RegVec<A, VB>::index;
  I partner{};
  V sign{};
  for (int i = 0; i < kWidth<A, VB>; ++i) {
    partner[i] = i ^ H;
    sign[i] = (i & H) ? A(-1) : A(1);
  }
  return __builtin_shuffle(v, partner) + sign * v;
}

template <typename A, int VB>
SYMKERNELS_INLINE VecOf<A, VB> all_in_vector_stages(VecOf<A, VB> v) {
  if constexpr (kWidth<A, VB> > 1) v = butterfly_in_vector<A, VB, 1>(v);
  if constexpr (kWidth<A, VB> > 2) v = butterfly_in_vector<A, VB, 2>(v);
  if constexpr (kWidth<A, VB> > 4) v = butterfly_in_vector<A, VB, 4>(v);
  if constexpr (kWidth<A, VB> > 8) v = butterfly_in_vector<A, VB, 8>(v);
  return v;
}

// Butterflies between registers H apart in v[0, N).
template <int H, int N, typename V>
SYMKERNELS_INLINE void cross_stage(V* v) {
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) {
    if (i & H) continue;
    const V a = v[i], b = v[i + H];
    v[i] = a + b;
    v[i + H] = a - b;
  }
}

// All stages across N registers, smallest stride first.
template <int N, typename V>
SYMKERNELS_INLINE void cross_stages(V* v) {
  if constexpr (N >= 2) cross_stage<1, N>(v);
  if constexpr (N >= 4) cross_stage<2, N>(v);
  if constexpr (N >= 8) cross_stage<4, N>(v);
  if constexpr (N >= 16) cross_stage<8, N>(v);
}

// Leaf pass over N·W consecutive values: load (widen, scale), every stride below N·W, in registers.
template <int N, int VB, typename S, typename A = Acc<S>>
SYMKERNELS_INLINE void leaf(const S* in, A scale, VecOf<A, VB>* v) {
  constexpr int W = kWidth<A, VB>;
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) v[i] = all_in_vector_stages<A, VB>(load_acc<S, VB>(in + i * W) * scale);
  cross_stages<N>(v);
}

// A whole row of N·W values (N ≤ 16) in registers: one load and one store per vector.
template <int N, int VB, typename S, typename A = Acc<S>>
SYMKERNELS_INLINE void row_in_registers(const S* in, S* out, A scale) {
  constexpr int W = kWidth<A, VB>;
  VecOf<A, VB> v[N];
  leaf<N, VB>(in, scale, v);
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) store_acc<S, VB>(out + i * W, v[i]);
}

// Strides h, 2h, .., 2^(K−1)·h over x[0, n), h ≥ W: 2^K vectors h apart per register block, read from
// `src` (accumulation type) and written to `dst` (accumulation or storage type; src == dst allowed).
template <int K, int VB, typename A, typename D>
SYMKERNELS_INLINE void radix_pass(const A* src, D* dst, int64_t n, int64_t h) {
  constexpr int N = 1 << K;
  constexpr int W = kWidth<A, VB>;
  for (int64_t group = 0; group < n; group += N * h) {
    for (int64_t j = group; j < group + h; j += W) {
      VecOf<A, VB> v[N];
#pragma GCC unroll 16
      for (int i = 0; i < N; ++i) v[i] = simd::load<VecOf<A, VB>>(src + j + i * h);
      cross_stages<N>(v);
#pragma GCC unroll 16
      for (int i = 0; i < N; ++i) store_acc<D, VB>(dst + j + i * h, v[i]);
    }
  }
}

template <int VB, typename A, typename D>
SYMKERNELS_INLINE void radix_pass(int k, const A* src, D* dst, int64_t n, int64_t h) {
  switch (k) {
    case 1: return radix_pass<1, VB>(src, dst, n, h);
    case 2: return radix_pass<2, VB>(src, dst, n, h);
    case 3: return radix_pass<3, VB>(src, dst, n, h);
    default: return radix_pass<4, VB>(src, dst, n, h);
  }
}

// Rows shorter than a vector (n = 2, 4, 8 for fp32, 2, 4 for fp64): plain scalar butterflies.
template <typename S, typename A = Acc<S>>
SYMKERNELS_INLINE void scalar_row(const S* in, S* out, int64_t n, A scale) {
  A x[16];
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<A>(in[i]) * scale;
  for (int64_t h = 1; h < n; h *= 2) {
    for (int64_t i = 0; i < n; i += 2 * h) {
      for (int64_t j = i; j < i + h; ++j) {
        const A a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<S>(x[i]);
}

// Leaf pass over a whole row: blocks of N vectors loaded, transformed in registers, stored to x.
template <int N, int VB, typename S, typename A>
SYMKERNELS_INLINE void leaf_pass(const S* src, A* x, int64_t n, A scale) {
  constexpr int W = kWidth<A, VB>;
  for (int64_t offset = 0; offset < n; offset += N * W) {
    VecOf<A, VB> v[N];
    leaf<N, VB>(src + offset, scale, v);
#pragma GCC unroll 16
    for (int i = 0; i < N; ++i) simd::store(x + offset + i * W, v[i]);
  }
}

// Transform `rows` consecutive rows of n = 2^log2n values. `work`: n values of the accumulation type
// for the passes before the last (the output row itself for fp32/fp64; unused when n ≤ 16·W).
template <int RegisterBytes, typename S, typename A = Acc<S>>
SYMKERNELS_INLINE void rows_impl(const S* in, S* out, int64_t rows, int log2n, A scale, A* work) {
  constexpr int VB = vector_bytes<RegisterBytes, S>();
  constexpr int W = kWidth<A, VB>;
  constexpr int log2w = log2_width<A, VB>();
  const int64_t n = int64_t{1} << log2n;
  if (log2n < log2w) {
    for (int64_t r = 0; r < rows; ++r) scalar_row(in + r * n, out + r * n, n, scale);
    return;
  }
  switch (log2n - log2w) {  // rows that fit one register block
    case 0: for (int64_t r = 0; r < rows; ++r) row_in_registers<1, VB>(in + r * n, out + r * n, scale); return;
    case 1: for (int64_t r = 0; r < rows; ++r) row_in_registers<2, VB>(in + r * n, out + r * n, scale); return;
    case 2: for (int64_t r = 0; r < rows; ++r) row_in_registers<4, VB>(in + r * n, out + r * n, scale); return;
    case 3: for (int64_t r = 0; r < rows; ++r) row_in_registers<8, VB>(in + r * n, out + r * n, scale); return;
    case 4: for (int64_t r = 0; r < rows; ++r) row_in_registers<kRowVectors, VB>(in + r * n, out + r * n, scale); return;
    default: break;
  }
  // Longer rows: the leaf pass, then the remaining strides in balanced passes of ≤ log2b.
  constexpr int log2b = block_log2<RegisterBytes, VB>();
  const int rest = log2n - log2w - log2b;
  const int passes = (rest + log2b - 1) / log2b;
  constexpr bool in_place = std::is_same_v<S, A>;
  for (int64_t r = 0; r < rows; ++r) {
    const S* src = in + r * n;
    S* dst = out + r * n;
    A* x = in_place ? reinterpret_cast<A*>(dst) : work;
    leaf_pass<1 << log2b, VB>(src, x, n, scale);
    int64_t h = int64_t{W} << log2b;
    int left = rest;
    for (int p = passes; p > 0; --p) {
      const int k = (left + p - 1) / p;  // this pass's strides: the remaining ones spread evenly
      if (p > 1) {
        radix_pass<VB>(k, x, x, n, h);
      } else {
        radix_pass<VB>(k, x, dst, n, h);
      }
      h <<= k;
      left -= k;
    }
  }
}

// fp16 in the AVX-512 entry point: hardware conversions (~3× faster than the portable bit manipulation).
template <int RegisterBytes, typename T, typename A>
SYMKERNELS_INLINE void rows_at_width(const T* in, T* out, int64_t rows, int log2n, double scale, A* work) {
  if constexpr (std::is_same_v<T, c10::Half> && RegisterBytes == 64) {
    rows_impl<RegisterBytes>(reinterpret_cast<const HalfAvx512*>(in), reinterpret_cast<HalfAvx512*>(out), rows, log2n,
              static_cast<A>(scale), work);
  } else {
    rows_impl<RegisterBytes>(in, out, rows, log2n, static_cast<A>(scale), work);
  }
}

// Entry points compiled once per ISA (see common/simd.h), one overload per dtype.
#define SYMKERNELS_TRANSFORM_ROWS(T, A)                                                                      \
  SYMKERNELS_ISA_ENTRY_POINTS(transform_rows,                                                               \
                              (const T* in, T* out, int64_t rows, int log2n, double scale, A* work),        \
                              (in, out, rows, log2n, scale, work),                                          \
                              rows_at_width<kRegisterBytes>(in, out, rows, log2n, scale, work))
SYMKERNELS_TRANSFORM_ROWS(float, float)
SYMKERNELS_TRANSFORM_ROWS(double, double)
SYMKERNELS_TRANSFORM_ROWS(c10::Half, float)
SYMKERNELS_TRANSFORM_ROWS(c10::BFloat16, float)
#undef SYMKERNELS_TRANSFORM_ROWS

// Writes the transform of x into out (contiguous, x's shape and dtype, checked by the callers).
void transform_into(const at::Tensor& x, double scale, int64_t n, at::Tensor& out) {
  const at::Tensor input = x.contiguous();
  check_no_overlap(out, input, "hadamard_transform");
  const int64_t rows = input.numel() / n;
  if (rows == 0) return;
  int log2n = 0;
  while ((int64_t{1} << log2n) < n) ++log2n;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "hadamard_transform_cpu", [&] {
    using A = Acc<scalar_t>;
    const scalar_t* src = input.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      // Scratch row for the fp16/bf16 passes before the last (fp32/fp64 work in place in `out`),
      // 64-byte aligned so that each vector is one cache line.
      constexpr bool in_place = std::is_same_v<scalar_t, A>;
      constexpr int64_t align = 64 / sizeof(A);
      std::vector<A> scratch(in_place ? 0 : n + align);
      A* work = scratch.data();
      while (work != nullptr && reinterpret_cast<uintptr_t>(work) % 64 != 0) ++work;
      transform_rows(src + begin * n, dst + begin * n, end - begin, log2n, scale, work);
    });
  });
}

at::Tensor hadamard_transform_cpu(const at::Tensor& x, double scale) {
  const int64_t n = check_hadamard_args(x);
  at::Tensor out = at::empty(x.sizes(), x.options());
  advise_huge_pages(out);
  transform_into(x, scale, n, out);
  return out;
}

void hadamard_transform_out_cpu(const at::Tensor& x, double scale, at::Tensor& out) {
  const int64_t n = check_hadamard_args(x);
  check_out(out, x, "hadamard_transform");
  transform_into(x, scale, n, out);
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CPU, m) {
  m.impl("hadamard_transform", &hadamard_transform_cpu);
  m.impl("hadamard_transform.out", &hadamard_transform_out_cpu);
}

}  // namespace symkernels::hadamard
