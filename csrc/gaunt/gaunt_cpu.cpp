// CPU Gaunt tensor product, sparse-direct: out[k] += c * x1[i1] * x2[i2] over the nonzeros of G.
//
// Why sparse-direct on CPU: it does 2*nnz FLOP per row, fewer than the sphere-grid or 2D-Fourier
// routes for every L <= 8 (design note §4), and each row is independent.
//
// SIMD runs across rows, not along the table: a tile of W rows (one 64-byte vector: 16 fp32 / 8 fp64)
// is transposed into [coefficient][lane] buffers, so every table entry is two vector loads and one
// vector FMA for W rows at once, with no gathers. The table is sorted by output index (Python side),
// so the accumulator for one output stays in a register for a run of entries and is flushed with +=
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

template <typename T>
struct TileBuffers {
  std::vector<T> a, b, c;  // [n][W] transposed tiles of x1, x2, out
};

// One tile of `count` <= W rows starting at row `row0`.
template <typename T>
SYMKERNELS_INLINE void tile(const T* x1, const T* x2, T* out, int64_t row0, int64_t count, int n1, int n2, int no,
                            const PathEntry* paths, const T* coeffs, int64_t nnz, T* at, T* bt, T* ct) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::width;
  V poison{};
  for (int i = 0; i < n1; ++i) {
    V v{};
    for (int r = 0; r < count; ++r) v[r] = x1[(row0 + r) * n1 + i];
    poison += v * T(0);
    store(at + i * W, v);
  }
  for (int i = 0; i < n2; ++i) {
    V v{};
    for (int r = 0; r < count; ++r) v[r] = x2[(row0 + r) * n2 + i];
    poison += v * T(0);
    store(bt + i * W, v);
  }
  for (int k = 0; k < no; ++k) store(ct + k * W, poison);
  if (nnz > 0) {
    int current = paths[0].i3;
    V acc{};
    for (int64_t n = 0; n < nnz; ++n) {
      const PathEntry p = paths[n];
      if (p.i3 != current) {
        store(ct + current * W, load<V>(ct + current * W) + acc);
        acc = V{};
        current = p.i3;
      }
      acc += coeffs[n] * load<V>(at + p.i1 * W) * load<V>(bt + p.i2 * W);
    }
    store(ct + current * W, load<V>(ct + current * W) + acc);
  }
  for (int k = 0; k < no; ++k) {
    const V v = load<V>(ct + k * W);
    for (int r = 0; r < count; ++r) out[(row0 + r) * no + k] = v[r];
  }
}

template <typename T>
SYMKERNELS_INLINE void rows_impl(const T* x1, const T* x2, T* out, int64_t tile_begin, int64_t tile_end, int64_t rows,
                                 int n1, int n2, int no, const PathEntry* paths, const T* coeffs, int64_t nnz) {
  constexpr int W = Vec<T>::width;
  std::vector<T> at(size_t(n1) * W), bt(size_t(n2) * W), ct(size_t(no) * W);
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t row0 = t * W;
    const int64_t count = std::min<int64_t>(W, rows - row0);
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
  constexpr int W = Vec<T>::width;
  const int64_t rows = out.numel() / no;
  const int64_t tiles = (rows + W - 1) / W;
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
