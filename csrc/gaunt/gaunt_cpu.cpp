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
#include <ATen/ops/constant_pad_nd.h>
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
// tile, so it takes one vector of rows to keep a pair block's buffers in L1 (measured faster than 2 at
// L = 5..10 on the 2-core AVX-512 Xeon of the dev machine).
constexpr int kSparseVectors = 4;
constexpr int kGridVectors = 1;
// Grid route blocking (see grid_analysis, grid_product, grid_tile): node pairs per block (each coefficient
// vector loaded once feeds 2 * kPairBlock accumulators, and one block's Fourier arrays stay in L1), and
// output Fourier coefficients per product block (each a-coefficient loaded once feeds kFourierBlock complex
// accumulators per node; 3 wastes nothing at Lo = 8, the headline case).
constexpr int kPairBlock = 2;
constexpr int kFourierBlock = 3;

// Reads `count` rows starting at row0 into dst [n][R * width] (rows past count are zero) and adds each
// lane's 0*x into poison. Scalar stores row by row, then whole vectors: building vectors lane by lane
// instead stalls on store forwarding and cost more than the grid route's arithmetic (measured, L = 8).
template <typename T, int R>
SYMKERNELS_INLINE void transpose_in(const T* x, const RowLayout& layout, int n, int64_t row0, int64_t count, T* dst,
                                    typename Vec<T>::type* poison) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::width;
  constexpr int S = R * W;
  const int64_t cs = layout.col_stride;
  for (int r = 0; r < S; ++r) {
    if (r < count) {
      const T* src = x + layout.offset(row0 + r);
      for (int i = 0; i < n; ++i) dst[i * S + r] = src[i * cs];
    } else {
      for (int i = 0; i < n; ++i) dst[i * S + r] = T(0);
    }
  }
  for (int i = 0; i < n; ++i) {
    for (int v = 0; v < R; ++v) poison[v] += load<V>(dst + i * S + v * W) * T(0);
  }
}

// Writes the tile's outputs ct [no][R * width] to rows row0.. of the contiguous output [rows, no], row by row
// (sequential writes; writing coefficient by coefficient strides over all rows and measured ~4x slower).
template <typename T, int R>
SYMKERNELS_INLINE void transpose_out(const T* ct, int no, T* out, int64_t row0, int64_t count) {
  constexpr int S = R * Vec<T>::width;
  for (int r = 0; r < count; ++r) {
    T* dst = out + (row0 + r) * no;
    for (int k = 0; k < no; ++k) dst[k] = ct[k * S + r];
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
  transpose_out<T, R>(ct, in.no, in.out, row0, count);
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
  const T* theta;      // [padded_pairs, ntheta], rows past `pairs` zero
  const T* theta_out;  // [P, no]: weights[p] * theta[p, :no]
  int pairs, padded_pairs, ntheta, l1, l2, lo;
};

// Length of one input's Fourier coefficient array: m = -L..L plus the guards.
constexpr int fourier_size(int L) { return 2 * L + 1 + 2 * kFourierBlock; }

// Scratch of one thread, [..][rows of a tile] each. A tile walks the node pairs kPairBlock at a time (analysis,
// product and synthesis of one block before the next), so the Fourier arrays of one block stay in L1: holding
// all pairs at once spilled to L2 and made the product loads L2-bound (measured, L = 8). Pairs are padded to
// a multiple of kPairBlock (the padded theta rows are zero) and each input's Fourier arrays have
// kFourierBlock zero guards on both sides, so the blocked loops need no tail cases.
template <typename T>
struct GridScratch {
  std::vector<T> at, bt, ct, fa, fb, h;
  GridScratch(const Inputs<T>& in, const GridTable<T>& g) {
    constexpr size_t S = kGridVectors * Vec<T>::width;
    at.resize(in.n1 * S);
    bt.resize(in.n2 * S);
    ct.resize(in.no * S);
    fa.resize(size_t(kPairBlock) * 4 * fourier_size(g.l1) * S);  // [pair of block][node +-][re, im][m], zeroed
    fb.resize(size_t(kPairBlock) * 4 * fourier_size(g.l2) * S);
    h.resize(size_t(kPairBlock) * 2 * (2 * g.lo + 1) * S);  // [pair of block][even, odd][m]
  }
};

// Step 1 for one input of degree L: coefficients xt [(L+1)^2][S] -> f [pair][node][re, im][fourier_size(L)][S].
// Per order m this is a small GEMM (pairs x degrees) x (degrees x rows), blocked over kPairBlock pairs so that
// each coefficient vector, once loaded, feeds 2 * kPairBlock accumulators.
template <typename T>
SYMKERNELS_INLINE void grid_analysis(const T* xt, int L, const GridTable<T>& g, int p0, T* f) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::width;
  constexpr int R = kGridVectors;
  constexpr int S = R * W;
  constexpr int PB = kPairBlock;
  const int M = fourier_size(L);
  const int64_t pair_stride = int64_t(4) * M * S;
  for (int m = -L; m <= L; ++m) {
    const int am = m < 0 ? -m : m;
    {
      const T* th = g.theta + int64_t(p0) * g.ntheta;
      V even[PB][R] = {}, odd[PB][R] = {};
      for (int l = am; l <= L; ++l) {
        const int idx = l * l + l + m;
        V x[R];
        for (int v = 0; v < R; ++v) x[v] = load<V>(xt + idx * S + v * W);
        if ((l - am) & 1) {
          for (int q = 0; q < PB; ++q) {
            const T t = th[q * g.ntheta + idx];
            for (int v = 0; v < R; ++v) odd[q][v] += t * x[v];
          }
        } else {
          for (int q = 0; q < PB; ++q) {
            const T t = th[q * g.ntheta + idx];
            for (int v = 0; v < R; ++v) even[q][v] += t * x[v];
          }
        }
      }
      for (int q = 0; q < PB; ++q) {
        for (int node = 0; node < 2; ++node) {
          T* re = f + q * pair_stride + (2 * node) * M * S + (kFourierBlock + L) * S;  // at m = 0
          T* im = re + M * S;
          for (int v = 0; v < R; ++v) {
            const V val = node == 0 ? even[q][v] + odd[q][v] : even[q][v] - odd[q][v];
            if (m == 0) {
              store(re + v * W, val + val);
              store(im + v * W, V{});
            } else if (m > 0) {
              store(re + m * S + v * W, val);
              store(re - m * S + v * W, val);
            } else {
              store(im - m * S + v * W, -val);  // at +|m|
              store(im + m * S + v * W, val);   // at -|m|
            }
          }
        }
      }
    }
  }
}

// Step 2 at one node for the kFourierBlock outputs k0.. : sum over m of (ar + i ai)_m (br + i bi)_{k-m}. Each
// a-coefficient, once loaded, feeds all outputs of the block; b's zero guards cover the union of the
// outputs' m ranges.
template <typename T>
SYMKERNELS_INLINE void node_product(const T* ar, const T* ai, const T* br, const T* bi, int k0, int m_begin,
                                    int m_end, typename Vec<T>::type (&re)[kFourierBlock][kGridVectors],
                                    typename Vec<T>::type (&im)[kFourierBlock][kGridVectors]) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::width;
  constexpr int R = kGridVectors;
  constexpr int S = R * W;
  constexpr int K = kFourierBlock;
  for (int q = 0; q < K; ++q) {
    for (int v = 0; v < R; ++v) re[q][v] = im[q][v] = V{};
  }
  for (int m = m_begin; m <= m_end; ++m) {
    V xr[R], xi[R];
    for (int v = 0; v < R; ++v) {
      xr[v] = load<V>(ar + m * S + v * W);
      xi[v] = load<V>(ai + m * S + v * W);
    }
    for (int q = 0; q < K; ++q) {
      const int j = k0 + q - m;
      for (int v = 0; v < R; ++v) {
        const V yr = load<V>(br + j * S + v * W), yi = load<V>(bi + j * S + v * W);
        re[q][v] += xr[v] * yr - xi[v] * yi;
        im[q][v] += xr[v] * yi + xi[v] * yr;
      }
    }
  }
}

// Step 2 for the first `count` pairs of a block: h [pair of block][even, odd][2Lo+1][S], the sum and difference
// of the two nodes' products.
template <typename T>
SYMKERNELS_INLINE void grid_product(const GridTable<T>& g, int count, const T* fa, const T* fb, T* h) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::width;
  constexpr int R = kGridVectors;
  constexpr int S = R * W;
  constexpr int K = kFourierBlock;
  const int Ma = fourier_size(g.l1), Mb = fourier_size(g.l2), Mo = 2 * g.lo + 1;
  for (int p = 0; p < count; ++p) {
    // Pointers at m = 0; node +x first, then -x.
    const T* ar0 = fa + int64_t(p) * 4 * Ma * S + (K + g.l1) * S;
    const T* br0 = fb + int64_t(p) * 4 * Mb * S + (K + g.l2) * S;
    const T* ar1 = ar0 + 2 * Ma * S;
    const T* br1 = br0 + 2 * Mb * S;
    T* ph = h + int64_t(p) * 2 * Mo * S + g.lo * S;
    for (int k0 = 0; k0 <= g.lo; k0 += K) {
      const int m_begin = std::max(-g.l1, k0 - g.l2), m_end = std::min(g.l1, k0 + K - 1 + g.l2);
      V re0[K][R], im0[K][R], re1[K][R], im1[K][R];
      node_product<T>(ar0, ar0 + Ma * S, br0, br0 + Mb * S, k0, m_begin, m_end, re0, im0);
      node_product<T>(ar1, ar1 + Ma * S, br1, br1 + Mb * S, k0, m_begin, m_end, re1, im1);
      for (int q = 0; q < K && k0 + q <= g.lo; ++q) {
        const int k = k0 + q;
        for (int v = 0; v < R; ++v) {
          store(ph + k * S + v * W, re0[q][v] + re1[q][v]);
          store(ph + (Mo + k) * S + v * W, re0[q][v] - re1[q][v]);
          if (k > 0) {
            store(ph - k * S + v * W, -(im0[q][v] + im1[q][v]));
            store(ph + (Mo - k) * S + v * W, -(im0[q][v] - im1[q][v]));
          }
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
  const int Mo = 2 * g.lo + 1;
  for (int p0 = 0; p0 < g.padded_pairs; p0 += kPairBlock) {
    const int pairs = std::min(kPairBlock, g.pairs - p0);
    grid_analysis(s.at.data(), g.l1, g, p0, s.fa.data());
    grid_analysis(s.bt.data(), g.l2, g, p0, s.fb.data());
    grid_product(g, pairs, s.fa.data(), s.fb.data(), s.h.data());
    // Step 3: each output accumulates this block's pairs in registers, on top of the earlier blocks.
    for (int l = 0; l <= g.lo; ++l) {
      for (int m = -l; m <= l; ++m) {
        const int k = l * l + l + m;
        const int parity = (l + m) & 1;
        T* c = s.ct.data() + k * S;
        V acc[R];
        for (int v = 0; v < R; ++v) acc[v] = p0 == 0 ? poison[v] : load<V>(c + v * W);
        for (int q = 0; q < pairs; ++q) {
          const T t = g.theta_out[int64_t(p0 + q) * in.no + k];
          const T* hp = s.h.data() + (int64_t(q) * 2 + parity) * Mo * S + (g.lo + m) * S;
          for (int v = 0; v < R; ++v) acc[v] += t * load<V>(hp + v * W);
        }
        for (int v = 0; v < R; ++v) store(c + v * W, acc[v]);
      }
    }
  }
  transpose_out<T, R>(s.ct.data(), in.no, in.out, row0, count);
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
  const int pairs = static_cast<int>(theta_out.size(0));
  const GridTable<T> g{theta.const_data_ptr<T>(), theta_out.const_data_ptr<T>(), pairs,
                       static_cast<int>(theta.size(0)), static_cast<int>(theta.size(1)), l1, l2, lo};
  const int64_t work = int64_t(pairs) * (2 * (l1 + 1) * (l1 + 1) + 2 * (l2 + 1) * (l2 + 1) + args.no +
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
  const int64_t padded = (theta.size(0) + kPairBlock - 1) / kPairBlock * kPairBlock;
  const at::Tensor th_padded = at::constant_pad_nd(th, {0, 0, 0, padded - theta.size(0)});
  if (x1.scalar_type() == at::kFloat) {
    run_grid<float>(args, th_padded, th_out, l1, l2, lo);
  } else {
    run_grid<double>(args, th_padded, th_out, l1, l2, lo);
  }
  return args.out;
}

TORCH_LIBRARY_IMPL(symkernels, CPU, m) {
  m.impl("gaunt_tensor_product", &gaunt_tensor_product_cpu);
  m.impl("gaunt_tensor_product_grid", &gaunt_tensor_product_grid_cpu);
}

}  // namespace symkernels::gaunt
