// CPU Gaunt tensor product, sparse-direct: out[k] += c * x1[i1] * x2[i2] over the nonzeros of G.
//
// Why sparse-direct on CPU: it does 2*nnz FLOP per row, fewer than the sphere-grid or 2D-Fourier
// routes for every L <= 8 (design note §4), and each row is independent.
//
// SIMD runs across rows, not along the table: a tile of 4 vectors of rows (64-byte vectors: 64 fp32 /
// 32 fp64 rows) is transposed into [coefficient][row] buffers, so every table entry is a few vector
// loads and FMAs for all rows of the tile at once, with no gathers. The table is sorted by output index (Python side),
// so the accumulators for one output stay in registers for a run of entries and are flushed with +=
// when the output index changes (correct for any order, fastest when sorted). Tiles are spread over
// threads with at::parallel_for.
//
// Non-finite inputs: the dense reference contracts with zeros of G too, so one NaN/inf anywhere in a
// row's inputs makes that whole output row NaN (the product function is undefined everywhere). We
// reproduce that with a per-lane "poison" 0*x summed over the row's inputs (NaN iff any non-finite)
// added to every output.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/simd.h"
#include "gaunt/gaunt_args.h"

namespace symkernels::gaunt {
namespace {

using simd::load;
using simd::store;
using simd::Vec;

// Tiles per parallel task: enough table work that thread start-up is noise.
constexpr int64_t kWorkPerTask = 1 << 16;

// Rows per tile = kTileVectors vectors. Every table entry (three indices and a coefficient, scalar
// loads) then feeds kTileVectors independent FMA chains, which both amortizes those loads and hides the
// FMA latency (a single chain would wait ~4 cycles per entry).
constexpr int kTileVectors = 4;

template <typename T>
constexpr int kTileRows = kTileVectors * Vec<T>::width;

// One tile of `count` <= kTileRows rows starting at row `row0`. at/bt/ct are [n][kTileRows] buffers.
template <typename T>
SYMKERNELS_INLINE void tile(const T* x1, const T* x2, T* out, int64_t row0, int64_t count, int n1, int n2, int no,
                            const PathEntry* paths, const T* coeffs, int64_t nnz, T* at, T* bt, T* ct) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::width;
  constexpr int R = kTileVectors;
  constexpr int S = R * W;
  V poison[R] = {};
  auto transpose_in = [&](const T* x, int n, T* dst) {
    for (int i = 0; i < n; ++i) {
      for (int v = 0; v < R; ++v) {
        V lanes{};
        for (int l = 0; l < W; ++l) {
          const int64_t r = v * W + l;
          if (r < count) lanes[l] = x[(row0 + r) * n + i];
        }
        poison[v] += lanes * T(0);
        store(dst + i * S + v * W, lanes);
      }
    }
  };
  transpose_in(x1, n1, at);
  transpose_in(x2, n2, bt);
  for (int k = 0; k < no; ++k) {
    for (int v = 0; v < R; ++v) store(ct + k * S + v * W, poison[v]);
  }
  // Walk the table run by run (a run = consecutive entries with one output index).
  for (int64_t start = 0; start < nnz;) {
    const int k = paths[start].i3;
    V acc[R] = {};
    int64_t n = start;
    for (; n < nnz && paths[n].i3 == k; ++n) {
      const T c = coeffs[n];
      const T* pa = at + int64_t(paths[n].i1) * S;
      const T* pb = bt + int64_t(paths[n].i2) * S;
      for (int v = 0; v < R; ++v) acc[v] += c * load<V>(pa + v * W) * load<V>(pb + v * W);
    }
    for (int v = 0; v < R; ++v) store(ct + k * S + v * W, load<V>(ct + k * S + v * W) + acc[v]);
    start = n;
  }
  for (int k = 0; k < no; ++k) {
    for (int v = 0; v < R; ++v) {
      const V lanes = load<V>(ct + k * S + v * W);
      for (int l = 0; l < W; ++l) {
        const int64_t r = v * W + l;
        if (r < count) out[(row0 + r) * no + k] = lanes[l];
      }
    }
  }
}

template <typename T>
SYMKERNELS_INLINE void rows_impl(const T* x1, const T* x2, T* out, int64_t tile_begin, int64_t tile_end, int64_t rows,
                                 int n1, int n2, int no, const PathEntry* paths, const T* coeffs, int64_t nnz) {
  constexpr int64_t S = kTileRows<T>;
  std::vector<T> at(size_t(n1) * S), bt(size_t(n2) * S), ct(size_t(no) * S);
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t row0 = t * S;
    const int64_t count = std::min<int64_t>(S, rows - row0);
    tile(x1, x2, out, row0, count, n1, n2, no, paths, coeffs, nnz, at.data(), bt.data(), ct.data());
  }
}

// Entry points compiled once per ISA (see common/simd.h).
SYMKERNELS_SIMD_CLONES void rows_f32(const float* x1, const float* x2, float* out, int64_t tile_begin,
                                     int64_t tile_end, int64_t rows, int n1, int n2, int no,
                                     const PathEntry* paths, const float* coeffs, int64_t nnz) {
  rows_impl(x1, x2, out, tile_begin, tile_end, rows, n1, n2, no, paths, coeffs, nnz);
}

SYMKERNELS_SIMD_CLONES void rows_f64(const double* x1, const double* x2, double* out, int64_t tile_begin,
                                     int64_t tile_end, int64_t rows, int n1, int n2, int no,
                                     const PathEntry* paths, const double* coeffs, int64_t nnz) {
  rows_impl(x1, x2, out, tile_begin, tile_end, rows, n1, n2, no, paths, coeffs, nnz);
}

template <typename T>
void run(const at::Tensor& a, const at::Tensor& b, at::Tensor& out, const at::Tensor& paths, const at::Tensor& coeffs,
         int n1, int n2, int no) {
  constexpr int64_t S = kTileRows<T>;
  const int64_t rows = out.numel() / no;
  const int64_t tiles = (rows + S - 1) / S;
  const int64_t nnz = paths.size(0);
  const T* pa = a.const_data_ptr<T>();
  const T* pb = b.const_data_ptr<T>();
  T* po = out.mutable_data_ptr<T>();
  const auto* table = reinterpret_cast<const PathEntry*>(paths.const_data_ptr<int32_t>());
  const T* pc = coeffs.const_data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, kWorkPerTask / std::max<int64_t>(1, nnz + n1 + n2 + no));
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<T, float>) {
      rows_f32(pa, pb, po, begin, end, rows, n1, n2, no, table, pc, nnz);
    } else {
      rows_f64(pa, pb, po, begin, end, rows, n1, n2, no, table, pc, nnz);
    }
  });
}

}  // namespace

at::Tensor gaunt_tensor_product_cpu(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& paths,
                                    const at::Tensor& coeffs, int64_t lmax_out) {
  PreparedArgs args = prepare_args(x1, x2, paths, coeffs, lmax_out, /*allow_half=*/false);
  if (args.out.numel() == 0) return args.out;
  const at::Tensor c = coeffs.to(x1.scalar_type()).contiguous();
  if (x1.scalar_type() == at::kFloat) {
    run<float>(args.a, args.b, args.out, args.paths, c, args.n1, args.n2, args.no);
  } else {
    run<double>(args.a, args.b, args.out, args.paths, c, args.n1, args.n2, args.no);
  }
  return args.out;
}

TORCH_LIBRARY_IMPL(symkernels, CPU, m) { m.impl("gaunt_tensor_product", &gaunt_tensor_product_cpu); }

}  // namespace symkernels::gaunt
