// CPU fast Walsh–Hadamard transform along the last dimension.
//
// Per row (rows split across threads by at::parallel_for / OpenMP):
//   1. strides 1 .. W/2 (W = lanes per 64-byte vector) are butterflies *inside* one vector register:
//      a constant lane shuffle plus one multiply-add, fused with the load (and the scale) of the input;
//   2. strides W .. B/2 run block by block, B = 8 KiB of data, so those stages stay in L1;
//   3. strides ≥ B run over the whole row (≤ 128 KiB fp32, L2-resident).
// Stages 2 and 3 go two at a time (radix 4), halving the loads and stores per stage.
// fp16/bf16 rows are widened into an fp32 scratch row and rounded once at the end.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/simd.h"
#include "hadamard/hadamard_args.h"

namespace symkernels::hadamard {
namespace {

using simd::load;
using simd::store;
using simd::Vec;

constexpr int64_t kL1BlockBytes = 8 * 1024;
// Rows per parallel task: enough elements that thread start-up is noise next to the work.
constexpr int64_t kElementsPerTask = 1 << 15;

// Butterfly across lanes H apart inside one vector: lane i becomes v[i] + v[i^H] if bit H of i is clear,
// v[i^H] − v[i] if set. The index and sign vectors are compile-time constants, so this is one permute
// and one FMA.
template <typename T, int H>
SYMKERNELS_INLINE typename Vec<T>::type butterfly_in_vector(typename Vec<T>::type v) {
  using V = typename Vec<T>::type;
  using I = typename Vec<T>::index;
  I partner{};
  V sign{};
  for (int i = 0; i < Vec<T>::width; ++i) {
    partner[i] = i ^ H;
    sign[i] = (i & H) ? T(-1) : T(1);
  }
  return __builtin_shuffle(v, partner) + sign * v;
}

template <typename T>
SYMKERNELS_INLINE typename Vec<T>::type all_in_vector_stages(typename Vec<T>::type v) {
  v = butterfly_in_vector<T, 1>(v);
  v = butterfly_in_vector<T, 2>(v);
  v = butterfly_in_vector<T, 4>(v);
  if constexpr (Vec<T>::width == 16) v = butterfly_in_vector<T, 8>(v);
  return v;
}

// Stages h and 2h over x[0, len), len a multiple of 4h, h a multiple of the vector width.
template <typename T>
SYMKERNELS_INLINE void radix4_stages(T* x, int64_t len, int64_t h) {
  using V = typename Vec<T>::type;
  for (int64_t group = 0; group < len; group += 4 * h) {
    for (int64_t j = group; j < group + h; j += Vec<T>::width) {
      const V a = load<V>(x + j), b = load<V>(x + j + h), c = load<V>(x + j + 2 * h), d = load<V>(x + j + 3 * h);
      const V s0 = a + b, d0 = a - b, s1 = c + d, d1 = c - d;
      store(x + j, s0 + s1);
      store(x + j + h, d0 + d1);
      store(x + j + 2 * h, s0 - s1);
      store(x + j + 3 * h, d0 - d1);
    }
  }
}

template <typename T>
SYMKERNELS_INLINE void radix2_stage(T* x, int64_t len, int64_t h) {
  using V = typename Vec<T>::type;
  for (int64_t group = 0; group < len; group += 2 * h) {
    for (int64_t j = group; j < group + h; j += Vec<T>::width) {
      const V a = load<V>(x + j), b = load<V>(x + j + h);
      store(x + j, a + b);
      store(x + j + h, a - b);
    }
  }
}

// All stages with stride in [h_begin, h_end) over x[0, len).
template <typename T>
SYMKERNELS_INLINE void vector_stages(T* x, int64_t len, int64_t h_begin, int64_t h_end) {
  int64_t h = h_begin;
  for (; 4 * h <= h_end; h *= 4) radix4_stages(x, len, h);
  if (h < h_end) radix2_stage(x, len, h);
}

// Rows shorter than a vector (n = 2, 4, 8 for fp32): plain scalar butterflies.
template <typename T>
SYMKERNELS_INLINE void scalar_row(const T* in, T* x, int64_t n, T scale) {
  for (int64_t i = 0; i < n; ++i) x[i] = in[i] * scale;
  for (int64_t h = 1; h < n; h *= 2) {
    for (int64_t i = 0; i < n; i += 2 * h) {
      for (int64_t j = i; j < i + h; ++j) {
        const T a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
}

// Transform one row: reads `in`, writes the result to `x` (in == x is allowed).
template <typename T>
SYMKERNELS_INLINE void transform_row(const T* in, T* x, int64_t n, T scale) {
  using V = typename Vec<T>::type;
  constexpr int64_t W = Vec<T>::width;
  if (n < W) return scalar_row(in, x, n, scale);
  const int64_t block = std::min<int64_t>(n, kL1BlockBytes / int64_t(sizeof(T)));
  for (int64_t offset = 0; offset < n; offset += block) {
    for (int64_t i = offset; i < offset + block; i += W) store(x + i, all_in_vector_stages<T>(load<V>(in + i) * scale));
    vector_stages(x + offset, block, W, block);
  }
  vector_stages(x, n, block, n);
}

// Entry points compiled once per ISA (see common/simd.h), one overload per dtype; each transforms
// `rows` consecutive rows. Half types are widened into an fp32 scratch row and rounded once.
template <typename Half>
SYMKERNELS_INLINE void rows_half(const Half* in, Half* out, int64_t rows, int64_t n, float scale, float* scratch) {
  for (int64_t r = 0; r < rows; ++r) {
    const Half* src = in + r * n;
    Half* dst = out + r * n;
    for (int64_t i = 0; i < n; ++i) scratch[i] = static_cast<float>(src[i]);
    transform_row(scratch, scratch, n, scale);
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Half>(scratch[i]);
  }
}

SYMKERNELS_SIMD_CLONES void transform_rows(const float* in, float* out, int64_t rows, int64_t n, double scale, float*) {
  for (int64_t r = 0; r < rows; ++r) transform_row(in + r * n, out + r * n, n, static_cast<float>(scale));
}
SYMKERNELS_SIMD_CLONES void transform_rows(const double* in, double* out, int64_t rows, int64_t n, double scale,
                                           float*) {
  for (int64_t r = 0; r < rows; ++r) transform_row(in + r * n, out + r * n, n, scale);
}
SYMKERNELS_SIMD_CLONES void transform_rows(const c10::Half* in, c10::Half* out, int64_t rows, int64_t n,
                                           double scale, float* scratch) {
  rows_half(in, out, rows, n, static_cast<float>(scale), scratch);
}
SYMKERNELS_SIMD_CLONES void transform_rows(const c10::BFloat16* in, c10::BFloat16* out, int64_t rows, int64_t n,
                                           double scale, float* scratch) {
  rows_half(in, out, rows, n, static_cast<float>(scale), scratch);
}

at::Tensor hadamard_transform_cpu(const at::Tensor& x, double scale) {
  const int64_t n = check_hadamard_args(x);
  const at::Tensor input = x.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  const int64_t rows = input.numel() / n;
  if (rows == 0) return out;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "hadamard_transform_cpu", [&] {
    const scalar_t* src = input.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      // fp32 scratch row for the half types (unused for fp32/fp64, which transform in place in `out`).
      std::vector<float> scratch(std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double> ? 0 : n);
      transform_rows(src + begin * n, dst + begin * n, end - begin, n, scale, scratch.data());
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CPU, m) { m.impl("hadamard_transform", &hadamard_transform_cpu); }

}  // namespace symkernels::hadamard
