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
#include <ATen/ExpandUtils.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "common/simd.h"
#include "gaunt/gaunt.h"

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

int64_t lmax_of(int64_t n, const char* op, const char* arg) {
  int64_t l = 0;
  while ((l + 1) * (l + 1) < n) ++l;
  TORCH_CHECK_VALUE(n >= 1 && (l + 1) * (l + 1) == n, op, ": ", arg,
                    ".shape[-1] must be a perfect square (L+1)^2 (degrees 0..L), got ", n);
  return l;
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
  constexpr const char* op = "gaunt_tensor_product";
  TORCH_CHECK_TYPE(x1.scalar_type() == at::kFloat || x1.scalar_type() == at::kDouble, op,
                   ": x1 must be float32 or float64 (the Python wrapper widens float16/bfloat16), got ",
                   x1.scalar_type());
  TORCH_CHECK_TYPE(x2.scalar_type() == x1.scalar_type(), op, ": x2 must have x1's dtype ", x1.scalar_type(),
                   ", got ", x2.scalar_type());
  check_min_dim(x1, 1, op, "x1");
  check_min_dim(x2, 1, op, "x2");
  const int64_t l1 = lmax_of(x1.size(-1), op, "x1");
  const int64_t l2 = lmax_of(x2.size(-1), op, "x2");
  TORCH_CHECK_VALUE(l1 <= kMaxL && l2 <= kMaxL, op, ": input degrees must be <= ", kMaxL, ", got ", l1, " and ", l2);
  // Not capped at L1+L2: backward asks for the gradient of x1 (degree L1) as a product of x2 and the
  // output gradient, and L1 may exceed L2+Lo; the table then simply has no entries for those outputs.
  TORCH_CHECK_VALUE(lmax_out >= 0 && lmax_out <= 2 * kMaxL, op, ": lmax_out must be between 0 and ", 2 * kMaxL,
                    ", got ", lmax_out);
  TORCH_CHECK_TYPE(paths.scalar_type() == at::kInt, op, ": paths must be int32, got ", paths.scalar_type());
  TORCH_CHECK_VALUE(paths.dim() == 2 && paths.size(1) == 3, op, ": paths must have shape [nnz, 3], got ",
                    paths.sizes());
  TORCH_CHECK_VALUE(coeffs.dim() == 1 && coeffs.size(0) == paths.size(0), op, ": coeffs must have shape [",
                    paths.size(0), "] (one per path), got ", coeffs.sizes());
  TORCH_CHECK_TYPE(coeffs.is_floating_point(), op, ": coeffs must be floating point, got ", coeffs.scalar_type());
  TORCH_CHECK_VALUE(paths.device().is_cpu() && coeffs.device().is_cpu() && x2.device().is_cpu(), op,
                    ": all tensors must be on the CPU for this kernel");

  const int n1 = static_cast<int>(x1.size(-1)), n2 = static_cast<int>(x2.size(-1));
  const int no = static_cast<int>((lmax_out + 1) * (lmax_out + 1));
  const at::Tensor table = paths.contiguous();
  // Never read or write out of bounds, whatever table a caller passes.
  const int32_t* t = table.const_data_ptr<int32_t>();
  for (int64_t n = 0; n < table.size(0); ++n) {
    TORCH_CHECK_VALUE(t[3 * n] >= 0 && t[3 * n] < n1 && t[3 * n + 1] >= 0 && t[3 * n + 1] < n2 && t[3 * n + 2] >= 0 &&
                          t[3 * n + 2] < no,
                      op, ": paths[", n, "] = (", t[3 * n], ", ", t[3 * n + 1], ", ", t[3 * n + 2],
                      ") is out of range for sizes (", n1, ", ", n2, ", ", no, ")");
  }

  const auto lead1 = x1.sizes().slice(0, x1.dim() - 1);
  const auto lead2 = x2.sizes().slice(0, x2.dim() - 1);
  std::vector<int64_t> lead = at::infer_size(lead1, lead2);
  std::vector<int64_t> shape1(lead), shape2(lead), shape_out(lead);
  shape1.push_back(n1);
  shape2.push_back(n2);
  shape_out.push_back(no);
  // Broadcast rows are materialized: the kernel streams both inputs row by row.
  const at::Tensor a = x1.expand(shape1).contiguous();
  const at::Tensor b = x2.expand(shape2).contiguous();
  at::Tensor out = at::empty(shape_out, x1.options());
  if (out.numel() == 0) return out;
  const at::Tensor c = coeffs.to(x1.scalar_type()).contiguous();
  if (x1.scalar_type() == at::kFloat) {
    run<float>(a, b, out, table, c, n1, n2, no);
  } else {
    run<double>(a, b, out, table, c, n1, n2, no);
  }
  return out;
}

TORCH_LIBRARY_IMPL(symkernels, CPU, m) { m.impl("gaunt_tensor_product", &gaunt_tensor_product_cpu); }

}  // namespace symkernels::gaunt
