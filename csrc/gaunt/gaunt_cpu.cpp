// CPU Gaunt tensor product: two exact routes over one row-tile machinery.
//
//   sparse-direct  out[k] += c * x1[i1] * x2[i2] over the nonzeros of G: 2*nnz FLOP per row, nnz ~ L^5.
//   sphere grid    both inputs evaluated on the smallest exact grid (Gauss-Legendre in cos(beta) x Fourier in
//                  alpha), multiplied, projected back: O(L^3) per row (separable transforms, below).
// Python (symkernels/gaunt/ops.py) picks the route per (L1, L2, Lo) by measurement; both are exact.
//
// SIMD runs across rows, not along the tables: a tile of R vectors of rows (64-byte vectors: 16
// fp32 / 8 fp64 rows each) is transposed into [coefficient][row] buffers, so every table entry is a scalar
// broadcast against whole vectors of rows, with no gathers. Rows are read in place through a RowLayout (any
// strides, stride 0 for broadcast dims: an edge SH shared by all channels is never expanded). Tiles are
// spread over threads with at::parallel_for.
//
// Non-finite inputs: the dense reference contracts with the zeros of G too, so one NaN/inf anywhere in a
// row's inputs makes that whole output row NaN (the product function is undefined everywhere). Both routes
// reproduce that with a per-lane "poison" 0*x summed over the row's inputs (NaN iff any is non-finite)
// added to every output.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
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

// Table work per parallel task: enough that thread start-up is noise.
constexpr int64_t kWorkPerTask = 1 << 16;

// Rows per tile = R vectors. Every table entry (scalar loads) then feeds R independent FMA chains, which
// both amortizes those loads and hides the FMA latency. The grid route keeps several [..][rows] buffers per
// tile, so it takes fewer rows to keep them in L1/L2 (both measured on the 2-core Xeon of the dev machine).
constexpr int kSparseVectors = 4;
constexpr int kGridVectors = 2;

// Reads `count` rows starting at row0 into dst [n][R * width] (rows past count are zero) and adds each
// lane's 0*x into poison.
template <typename T, int R>
SYMKERNELS_INLINE void transpose_in(const T* x, const RowLayout& layout, int n, int64_t row0, int64_t count, T* dst,
                                    typename Vec<T>::type* poison) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::width;
  constexpr int S = R * W;
  int64_t off[S];
  for (int r = 0; r < S; ++r) off[r] = r < count ? layout.offset(row0 + r) : 0;
  const int64_t cs = layout.col_stride;
  for (int i = 0; i < n; ++i) {
    for (int v = 0; v < R; ++v) {
      V lanes{};
      for (int l = 0; l < W; ++l) {
        const int r = v * W + l;
        if (r < count) lanes[l] = x[off[r] + i * cs];
      }
      poison[v] += lanes * T(0);
      store(dst + i * S + v * W, lanes);
    }
  }
}

// Writes output coefficient k of the tile's rows (contiguous output [rows, no]).
template <typename T, int R>
SYMKERNELS_INLINE void store_out(T* out, int no, int k, int64_t row0, int64_t count,
                                 const typename Vec<T>::type* lanes) {
  constexpr int W = Vec<T>::width;
  for (int v = 0; v < R; ++v) {
    for (int l = 0; l < W; ++l) {
      const int64_t r = v * W + l;
      if (r < count) out[(row0 + r) * no + k] = lanes[v][l];
    }
  }
}

template <typename T>
struct Inputs {
  const T* x1;
  const T* x2;
  RowLayout l1, l2;
  T* out;
  int64_t rows;
  int n1, n2, no;
};

// ---------------------------------------------------------------------------------------------------------
// Sparse-direct route. The table is sorted by output index (Python side), so the accumulators for one output
// stay in registers for a run of entries and are flushed with += when the output index changes (correct
// for any order, fastest when sorted).
// ---------------------------------------------------------------------------------------------------------
template <typename T>
struct SparseTable {
  const PathEntry* paths;
  const T* coeffs;
  int64_t nnz;
};

template <typename T>
SYMKERNELS_INLINE void sparse_tile(const Inputs<T>& in, const SparseTable<T>& tab, int64_t row0, int64_t count, T* at,
                                   T* bt, T* ct) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::width;
  constexpr int R = kSparseVectors;
  constexpr int S = R * W;
  V poison[R] = {};
  transpose_in<T, R>(in.x1, in.l1, in.n1, row0, count, at, poison);
  transpose_in<T, R>(in.x2, in.l2, in.n2, row0, count, bt, poison);
  for (int k = 0; k < in.no; ++k) {
    for (int v = 0; v < R; ++v) store(ct + k * S + v * W, poison[v]);
  }
  const PathEntry* paths = tab.paths;
  for (int64_t start = 0; start < tab.nnz;) {  // run by run (a run = consecutive entries with one output)
    const int k = paths[start].i3;
    V acc[R] = {};
    int64_t n = start;
    for (; n < tab.nnz && paths[n].i3 == k; ++n) {
      const T c = tab.coeffs[n];
      const T* pa = at + int64_t(paths[n].i1) * S;
      const T* pb = bt + int64_t(paths[n].i2) * S;
      for (int v = 0; v < R; ++v) acc[v] += c * load<V>(pa + v * W) * load<V>(pb + v * W);
    }
    for (int v = 0; v < R; ++v) store(ct + k * S + v * W, load<V>(ct + k * S + v * W) + acc[v]);
    start = n;
  }
  for (int k = 0; k < in.no; ++k) {
    V lanes[R];
    for (int v = 0; v < R; ++v) lanes[v] = load<V>(ct + k * S + v * W);
    store_out<T, R>(in.out, in.no, k, row0, count, lanes);
  }
}

template <typename T>
SYMKERNELS_INLINE void sparse_rows(const Inputs<T>& in, const SparseTable<T>& tab, int64_t tile_begin,
                                   int64_t tile_end) {
  constexpr int64_t S = kSparseVectors * Vec<T>::width;
  std::vector<T> at(size_t(in.n1) * S), bt(size_t(in.n2) * S), ct(size_t(in.no) * S);
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t row0 = t * S;
    sparse_tile(in, tab, row0, std::min<int64_t>(S, in.rows - row0), at.data(), bt.data(), ct.data());
  }
}

// ---------------------------------------------------------------------------------------------------------
// Sphere-grid route. With Y_lm(beta, alpha) = Theta_l|m|(cos beta) * phi_m(alpha), phi_0 = 1, phi_m = cos(m alpha),
// phi_-m = sin(m alpha), per row:
//   1. analysis   A_m(x_j) = sum_l a_lm Theta_l|m|(x_j) at the Gauss-Legendre nodes x_j (and the same for b):
//                 each input becomes a trigonometric polynomial in alpha per node. The nodes come in pairs +-x
//                 and Theta_l|m|(-x) = (-1)^(l+|m|) Theta_l|m|(x), so one even and one odd partial sum give
//                 both nodes of a pair (half the table, half the FMAs).
//   2. product    in alpha, the product of two trigonometric polynomials is the convolution of their complex
//                 Fourier coefficients, truncated to |k| <= Lo: exact, and O(L1 * Lo) per node where an alpha
//                 grid would need O((L1 + L2 + Lo) * L) for the two forward and one inverse real DFTs.
//   3. synthesis  c_lm = sum_j w'_j Theta_l|m|(x_j) H_m(x_j), with the even/odd combinations of the pair.
// The beta quadrature is exact: the integrand is a polynomial of degree <= L1+L2+Lo in cos(beta) (the sin
// factors pair up), and n_beta = floor((L1+L2+Lo)/2)+1 Gauss-Legendre nodes integrate degree 2 n_beta - 1.
// Tables (symkernels/gaunt/coefficients.py, float64 closed forms): theta [P, N] = Theta at the P nonnegative
// nodes (index l^2+l+m, N >= every degree used), weights [P] = quadrature weight with every constant folded in
// (pi/2 * w_j * normalization scale; halved for the node x = 0, which pairs with itself).
//
// Complex form used in step 2 (the 1/2 factors live in the weights): for m > 0
//   ar[+-m] = A_m, ai[+-m] = -+A_-m  (so f = 1/2 sum_m (ar_m + i ai_m) e^{i m alpha}),  ar[0] = 2 A_0, ai[0] = 0,
// and the product's k-th coefficient sum_m (ar + i ai)_m (br + i bi)_{k-m} gives H_k = Re, H_-k = -Im.
// ---------------------------------------------------------------------------------------------------------
template <typename T>
struct GridTable {
  const T* theta;      // [P, ntheta]
  const T* theta_out;  // [P, no]: weights[p] * theta[p, :no]
  int pairs, ntheta, l1, l2, lo;
};

// Scratch of one thread, [..][rows of a tile] each.
template <typename T>
struct GridScratch {
  std::vector<T> at, bt, fa, fb, h;
  GridScratch(const Inputs<T>& in, const GridTable<T>& g) {
    constexpr size_t S = kGridVectors * Vec<T>::width;
    at.resize(in.n1 * S);
    bt.resize(in.n2 * S);
    fa.resize(size_t(g.pairs) * 4 * (2 * g.l1 + 1) * S);  // [pair][node +-][re, im][m]
    fb.resize(size_t(g.pairs) * 4 * (2 * g.l2 + 1) * S);
    h.resize(size_t(g.pairs) * 2 * (2 * g.lo + 1) * S);  // [pair][even, odd][m]
  }
};

// Step 1 for one input of degree L: coefficients xt [(L+1)^2][S] -> f [pair][node][re, im][2L+1][S].
template <typename T>
SYMKERNELS_INLINE void grid_analysis(const T* xt, int L, const GridTable<T>& g, T* f) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::width;
  constexpr int R = kGridVectors;
  constexpr int S = R * W;
  const int M = 2 * L + 1;
  for (int p = 0; p < g.pairs; ++p) {
    const T* th = g.theta + int64_t(p) * g.ntheta;
    T* fp = f + int64_t(p) * 4 * M * S;  // re(+x), im(+x), re(-x), im(-x)
    for (int m = -L; m <= L; ++m) {
      const int am = m < 0 ? -m : m;
      V even[R] = {}, odd[R] = {};
      for (int l = am; l <= L; l += 2) {
        const T t = th[l * l + l + m];
        for (int v = 0; v < R; ++v) even[v] += t * load<V>(xt + (l * l + l + m) * S + v * W);
      }
      for (int l = am + 1; l <= L; l += 2) {
        const T t = th[l * l + l + m];
        for (int v = 0; v < R; ++v) odd[v] += t * load<V>(xt + (l * l + l + m) * S + v * W);
      }
      for (int node = 0; node < 2; ++node) {
        T* re = fp + (2 * node) * M * S;
        T* im = re + M * S;
        for (int v = 0; v < R; ++v) {
          const V val = node == 0 ? even[v] + odd[v] : even[v] - odd[v];
          if (m == 0) {
            store(re + L * S + v * W, val + val);
            store(im + L * S + v * W, V{});
          } else if (m > 0) {
            store(re + (L + m) * S + v * W, val);
            store(re + (L - m) * S + v * W, val);
          } else {
            store(im + (L - m) * S + v * W, -val);  // index of +|m|
            store(im + (L + m) * S + v * W, val);   // index of -|m|
          }
        }
      }
    }
  }
}

// Step 2 for all pairs: h [pair][even, odd][2Lo+1][S], the sum and difference of the two nodes' products.
template <typename T>
SYMKERNELS_INLINE void grid_product(const GridTable<T>& g, const T* fa, const T* fb, T* h) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::width;
  constexpr int R = kGridVectors;
  constexpr int S = R * W;
  const int Ma = 2 * g.l1 + 1, Mb = 2 * g.l2 + 1, Mo = 2 * g.lo + 1;
  for (int p = 0; p < g.pairs; ++p) {
    const T* pa = fa + int64_t(p) * 4 * Ma * S;
    const T* pb = fb + int64_t(p) * 4 * Mb * S;
    T* ph = h + int64_t(p) * 2 * Mo * S;
    for (int k = 0; k <= g.lo; ++k) {
      V re[2][R] = {}, im[2][R] = {};
      const int m_begin = std::max(-g.l1, k - g.l2), m_end = std::min(g.l1, k + g.l2);
      for (int node = 0; node < 2; ++node) {
        const T* ar = pa + (2 * node) * Ma * S + g.l1 * S;  // index 0 at m = 0
        const T* ai = ar + Ma * S;
        const T* br = pb + (2 * node) * Mb * S + g.l2 * S;
        const T* bi = br + Mb * S;
        for (int m = m_begin; m <= m_end; ++m) {
          const int j = k - m;
          for (int v = 0; v < R; ++v) {
            const V xr = load<V>(ar + m * S + v * W), xi = load<V>(ai + m * S + v * W);
            const V yr = load<V>(br + j * S + v * W), yi = load<V>(bi + j * S + v * W);
            re[node][v] += xr * yr - xi * yi;
            im[node][v] += xr * yi + xi * yr;
          }
        }
      }
      for (int v = 0; v < R; ++v) {
        store(ph + (g.lo + k) * S + v * W, re[0][v] + re[1][v]);
        store(ph + (Mo + g.lo + k) * S + v * W, re[0][v] - re[1][v]);
        if (k > 0) {
          store(ph + (g.lo - k) * S + v * W, -(im[0][v] + im[1][v]));
          store(ph + (Mo + g.lo - k) * S + v * W, -(im[0][v] - im[1][v]));
        }
      }
    }
  }
}

template <typename T>
SYMKERNELS_INLINE void grid_tile(const Inputs<T>& in, const GridTable<T>& g, int64_t row0, int64_t count,
                                 GridScratch<T>& s) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::width;
  constexpr int R = kGridVectors;
  constexpr int S = R * W;
  V poison[R] = {};
  transpose_in<T, R>(in.x1, in.l1, in.n1, row0, count, s.at.data(), poison);
  transpose_in<T, R>(in.x2, in.l2, in.n2, row0, count, s.bt.data(), poison);
  grid_analysis(s.at.data(), g.l1, g, s.fa.data());
  grid_analysis(s.bt.data(), g.l2, g, s.fb.data());
  grid_product(g, s.fa.data(), s.fb.data(), s.h.data());
  // Step 3: each output accumulates over the pairs in registers, then goes straight to memory.
  const int Mo = 2 * g.lo + 1;
  for (int l = 0; l <= g.lo; ++l) {
    for (int m = -l; m <= l; ++m) {
      const int k = l * l + l + m;
      const int parity = (l + m) & 1;
      V acc[R];
      for (int v = 0; v < R; ++v) acc[v] = poison[v];
      for (int p = 0; p < g.pairs; ++p) {
        const T t = g.theta_out[int64_t(p) * in.no + k];
        const T* hp = s.h.data() + (int64_t(p) * 2 + parity) * Mo * S + (g.lo + m) * S;
        for (int v = 0; v < R; ++v) acc[v] += t * load<V>(hp + v * W);
      }
      store_out<T, R>(in.out, in.no, k, row0, count, acc);
    }
  }
}

template <typename T>
SYMKERNELS_INLINE void grid_rows(const Inputs<T>& in, const GridTable<T>& g, int64_t tile_begin, int64_t tile_end) {
  constexpr int64_t S = kGridVectors * Vec<T>::width;
  GridScratch<T> scratch(in, g);
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t row0 = t * S;
    grid_tile(in, g, row0, std::min<int64_t>(S, in.rows - row0), scratch);
  }
}

// Entry points compiled once per ISA (see common/simd.h); Table selects the route.
SYMKERNELS_SIMD_CLONES void rows_f32(const Inputs<float>& in, const SparseTable<float>& tab, int64_t b, int64_t e) {
  sparse_rows(in, tab, b, e);
}
SYMKERNELS_SIMD_CLONES void rows_f64(const Inputs<double>& in, const SparseTable<double>& tab, int64_t b, int64_t e) {
  sparse_rows(in, tab, b, e);
}
SYMKERNELS_SIMD_CLONES void rows_f32(const Inputs<float>& in, const GridTable<float>& g, int64_t b, int64_t e) {
  grid_rows(in, g, b, e);
}
SYMKERNELS_SIMD_CLONES void rows_f64(const Inputs<double>& in, const GridTable<double>& g, int64_t b, int64_t e) {
  grid_rows(in, g, b, e);
}

template <typename T>
Inputs<T> inputs_of(const PreparedArgs& args) {
  return Inputs<T>{args.a.const_data_ptr<T>(), args.b.const_data_ptr<T>(), args.la, args.lb,
                   args.out.mutable_data_ptr<T>(), args.rows, args.n1, args.n2, args.no};
}

// Runs the row tiles of either route over threads; `work` is the table work per row (sets the grain).
template <typename T, int R, typename Table>
void run_tiles(const Inputs<T>& in, const Table& table, int64_t work) {
  constexpr int64_t S = R * Vec<T>::width;
  const int64_t tiles = (in.rows + S - 1) / S;
  const int64_t grain = std::max<int64_t>(1, kWorkPerTask / std::max<int64_t>(1, work));
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<T, float>) {
      rows_f32(in, table, begin, end);
    } else {
      rows_f64(in, table, begin, end);
    }
  });
}

template <typename T>
void run_sparse(const PreparedArgs& args, const at::Tensor& paths, const at::Tensor& coeffs) {
  const SparseTable<T> tab{reinterpret_cast<const PathEntry*>(paths.const_data_ptr<int32_t>()),
                           coeffs.const_data_ptr<T>(), paths.size(0)};
  run_tiles<T, kSparseVectors>(inputs_of<T>(args), tab, tab.nnz + args.n1 + args.n2 + args.no);
}

template <typename T>
void run_grid(const PreparedArgs& args, const at::Tensor& theta, const at::Tensor& theta_out, int l1, int l2,
              int lo) {
  const GridTable<T> g{theta.const_data_ptr<T>(), theta_out.const_data_ptr<T>(), static_cast<int>(theta.size(0)),
                       static_cast<int>(theta.size(1)), l1, l2, lo};
  const int64_t work = int64_t(g.pairs) * (2 * (l1 + 1) * (l1 + 1) + 2 * (l2 + 1) * (l2 + 1) + args.no +
                                           8 * (lo + 1) * (2 * std::min(l1, l2) + 1));
  run_tiles<T, kGridVectors>(inputs_of<T>(args), g, work);
}

}  // namespace

at::Tensor gaunt_tensor_product_cpu(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& paths,
                                    const at::Tensor& coeffs, int64_t lmax_out) {
  const PreparedArgs args = prepare_rows(x1, x2, lmax_out, /*allow_half=*/false, /*materialize=*/false);
  const at::Tensor table = check_sparse_table(x1, paths, coeffs, args);
  if (args.out.numel() == 0) return args.out;
  const at::Tensor c = coeffs.to(x1.scalar_type()).contiguous();
  if (x1.scalar_type() == at::kFloat) {
    run_sparse<float>(args, table, c);
  } else {
    run_sparse<double>(args, table, c);
  }
  return args.out;
}

at::Tensor gaunt_tensor_product_grid_cpu(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& theta,
                                         const at::Tensor& weights, int64_t lmax_out) {
  constexpr const char* op = "gaunt_tensor_product_grid";
  const PreparedArgs args = prepare_rows(x1, x2, lmax_out, /*allow_half=*/false, /*materialize=*/false);
  const int l1 = static_cast<int>(lmax_of(args.n1, op, "x1"));
  const int l2 = static_cast<int>(lmax_of(args.n2, op, "x2"));
  const int lo = static_cast<int>(lmax_out);
  TORCH_CHECK_VALUE(theta.dim() == 2 && weights.dim() == 1 && weights.size(0) == theta.size(0), op,
                    ": theta must be [P, N] and weights [P], got ", theta.sizes(), " and ", weights.sizes());
  TORCH_CHECK_TYPE(theta.is_floating_point() && weights.is_floating_point(), op,
                   ": theta and weights must be floating point, got ", theta.scalar_type(), " and ",
                   weights.scalar_type());
  TORCH_CHECK_VALUE(theta.device() == x1.device() && weights.device() == x1.device(), op,
                    ": all tensors must be on one device, got x1 on ", x1.device(), ", theta on ", theta.device(),
                    ", weights on ", weights.device());
  const int64_t needed = std::max<int64_t>({args.n1, args.n2, args.no});
  TORCH_CHECK_VALUE(theta.size(1) >= needed, op, ": theta has ", theta.size(1), " columns; degrees (", l1, ", ", l2,
                    ", ", lo, ") need ", needed);
  // Exactness needs floor(D/2)+1 nodes, i.e. at least this many pairs (a necessary check on the table).
  const int64_t nodes = (l1 + l2 + lo) / 2 + 1;
  TORCH_CHECK_VALUE(theta.size(0) >= (nodes + 1) / 2, op, ": theta has ", theta.size(0), " node pairs; degrees (",
                    l1, ", ", l2, ", ", lo, ") need ", (nodes + 1) / 2, " for an exact quadrature");
  if (args.out.numel() == 0) return args.out;
  const at::Tensor th = theta.to(x1.scalar_type()).contiguous();
  const at::Tensor th_out = th.narrow(1, 0, args.no).mul(weights.to(x1.scalar_type()).unsqueeze(1)).contiguous();
  if (x1.scalar_type() == at::kFloat) {
    run_grid<float>(args, th, th_out, l1, l2, lo);
  } else {
    run_grid<double>(args, th, th_out, l1, l2, lo);
  }
  return args.out;
}

TORCH_LIBRARY_IMPL(symkernels, CPU, m) {
  m.impl("gaunt_tensor_product", &gaunt_tensor_product_cpu);
  m.impl("gaunt_tensor_product_grid", &gaunt_tensor_product_grid_cpu);
}

}  // namespace symkernels::gaunt
