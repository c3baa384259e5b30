// CPU Gaunt tensor product: two exact routes over one row-tile machinery.
//
//   sparse-direct  out[k] = sum_i x1[i] * sum_j c_ijk x2[j] over the nonzeros of G, grouped by (i, k) on the
//                  host (SparseSchedule): nnz + groups FMAs per row, nnz ~ L^5.
//   sphere grid    both inputs evaluated on the smallest exact grid (Gauss-Legendre in cos(beta) x Fourier in
//                  alpha), multiplied, projected back: O(L^3) per row (separable transforms, below).
// Python (symkernels/gaunt/ops.py) picks the route per (L1, L2, Lo) by measurement; both are exact.
//
// SIMD runs across rows, not along the tables: a tile of R vectors of rows (64-byte vectors: 16
// fp32 / 8 fp64 rows each) is transposed into [coefficient][row] buffers, so every table entry is a scalar
// broadcast against whole vectors of rows, with no gathers. Rows are read in place through a RowLayout (any
// strides, stride 0 for broadcast dims: an edge SH shared by all channels is never expanded); dense rows are
// transposed an N x N block at a time in registers (N = lanes of one
// register of the running ISA: zmm, ymm or xmm). Tiles are spread over threads with at::parallel_for.
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
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/simd.h"
#include "gaunt/gaunt_args.h"

namespace symkernels::gaunt {
namespace {

using simd::load;
using simd::store;
using simd::Vec;

// Work (table entries x rows) per parallel task: enough that waking a thread is noise.
constexpr int64_t kWorkPerTask = int64_t(1) << 22;

// Rows per tile = R vectors. Every table entry (scalar loads) then feeds R independent FMA chains, which
// both amortizes those loads and hides the FMA latency (the sparse route picks R per size, sparse_vectors).
// The grid route keeps several [..][rows] buffers per tile, so it takes one vector of rows to keep a pair
// block's buffers in L1 (measured faster than 2 at L = 5..10 on the 2-core AVX-512 dev machine).
constexpr int kGridVectors = 1;
// Grid route blocking (see grid_analysis, grid_product, grid_tile): node pairs per block (each coefficient
// vector loaded once feeds 2 * kPairBlock accumulators, and one block's Fourier arrays stay in L1), and
// output Fourier coefficients per product block (each a-coefficient loaded once feeds kFourierBlock complex
// accumulators per node; 3 wastes nothing at Lo = 8, the headline case).
constexpr int kPairBlock = 2;
constexpr int kFourierBlock = 3;

// Registers of N lanes (simd::RegVec of N * sizeof(T) bytes) and the shape of their shuffles. The row
// transposes work in the entry point's own register width (see the entry points): N = 64 / sizeof(T) with
// AVX-512 (one zmm), half that with AVX2 (ymm), a quarter in the baseline (xmm). The 64-byte Vec there is two or four
// registers, and a two-source permute across all of it has no instruction: GCC lowered those to stack
// shuffling, measured 1.1-2x slower than element-by-element transposes at L = 1..3 (fp32, AVX2 entry point).
template <typename T, int N>
struct Reg : simd::RegVec<T, N * int(sizeof(T))> {
  static constexpr int kLaneBlock = std::min<int>(N, 16 / sizeof(T));  // lanes per 128-bit lane
  static constexpr int kStages = N == 16 ? 4 : N == 8 ? 3 : N == 4 ? 2 : N == 2 ? 1 : 0;
};

constexpr int reverse_bits(int v, int bits) {
  int r = 0;
  for (int b = 0; b < bits; ++b) r |= ((v >> b) & 1) << (bits - 1 - b);
  return r;
}

// Register that holds column c after transpose_regs (and row c when it transposes back): the stages below 128
// bits fill the low bits of the register index with c's low bits reversed, those above with the rest reversed.
// An involution, so the same map serves both directions.
template <typename T, int N>
constexpr int transposed_reg(int c) {
  constexpr int E = Reg<T, N>::kLaneBlock, e = Reg<T, E>::kStages;
  return reverse_bits(c % E, e) | reverse_bits(c / E, Reg<T, N>::kStages - e) * E;
}

// Lane c of the shuffle that makes the low (High = false) or the high register of a stage-G pair (see
// transpose_regs) from the pair's two registers, lanes 0..N-1 of the first and N..2N-1 of the second.
template <int N, int E, int G, bool High>
constexpr int stage_lane(int c) {
  const int base = G < E ? c / E * E : 0, u = G < E ? c % E : c;
  const int low = (u / G % 2) * N + base + u / G / 2 * G + u % G;
  return High ? low + (G < E ? E / 2 : N / 2) : low;
}
template <typename T, int N, int G, bool High, int... C>
SYMKERNELS_INLINE typename Reg<T, N>::index stage_index(std::integer_sequence<int, C...>) {
  return typename Reg<T, N>::index{stage_lane<N, Reg<T, N>::kLaneBlock, G, High>(C)...};
}

// In-register transpose of an N x N block: lane c of x[j] ends up as lane j of x[transposed_reg(c)]. Stage G
// (G = 1, 2, .., N/2) interleaves the G-lane chunks of the register pairs (i, i + G): inside each 128-bit lane
// while G is smaller (vunpcklps / vunpcklpd, vshufps), across lanes above (vperm2f128; vpermt2ps, vshuff64x2
// on zmm), one instruction each. The shuffle indices are constants (stage_index), which is what lets GCC pick
// those instructions: computed in a loop, they were built lane by lane at run time (vpinsrd) and every
// shuffle became two vpermps and a blend; with that, and the partial blocks' per-register pruning tests,
// the transposes took ~85% of the L = 2 sparse kernel (AVX2, Zen 3).
template <typename T, int N, int G = 1>
SYMKERNELS_INLINE void transpose_regs(typename Reg<T, N>::type (&x)[N]) {
  if constexpr (G < N) {
    using U = typename Reg<T, N>::type;
    constexpr auto lanes = std::make_integer_sequence<int, N>{};
    const auto lo = stage_index<T, N, G, false>(lanes), hi = stage_index<T, N, G, true>(lanes);
#pragma GCC unroll 16
    for (int k = 0; k < N / 2; ++k) {
      const int i = k / G * 2 * G + k % G;  // the k-th register with bit G clear
      const U p = x[i], q = x[i + G];
#if defined(__clang__)
      U a, b;
      for (int c = 0; c < N; ++c) {
        a[c] = lo[c] < N ? p[lo[c]] : q[lo[c] - N];
        b[c] = hi[c] < N ? p[hi[c]] : q[hi[c] - N];
      }
      x[i] = a;
      x[i + G] = b;
#else
      x[i] = __builtin_shuffle(p, q, lo);
      x[i + G] = __builtin_shuffle(p, q, hi);
#endif
    }
    transpose_regs<T, N, 2 * G>(x);
  }
}

// True when rows are dense [rows][n] (one coalesced dim of stride n, coefficients contiguous): then a group of
// N rows is one contiguous run of N * n elements.
inline bool dense_rows(const RowLayout& layout, int n) {
  return layout.col_stride == 1 && layout.ndim == 1 && layout.stride[0] == n;
}

// Reads `count` rows starting at row0 (of `rows`) into dst [n][R * width] (rows past count are zero) and adds
// each lane's 0*x into poison. Dense inputs go N rows at a time (N = lanes of one register, 1 for none): each
// N-column chunk of the group is loaded as N registers straight from the rows and transposed. The chunk loads
// of the group's last row run up to N - 1 elements past it, so the input's last group is first copied to
// `block` (N * n + N elements). Other layouts (broadcast, strided) are read element by element, row by row,
// then whole vectors: building vectors lane by lane instead stalls on store forwarding (measured, L = 8).
template <typename T, int R, int A, int N>
SYMKERNELS_INLINE void transpose_in(const T* x, const RowLayout& layout, int n, int64_t rows, int64_t row0,
                                    int64_t count, T* dst, T* block, typename Reg<T, A>::type* poison) {
  using V = typename Reg<T, A>::type;
  using U = typename Reg<T, N>::type;
  constexpr int S = R * A;
  int r = 0;
  if constexpr (N > 1) {
    for (; dense_rows(layout, n) && r + N <= count; r += N) {
      const T* src = x + (row0 + r) * n;
      if (row0 + r + 2 * N > rows) {
        for (int i = 0; i < N * n; ++i) block[i] = src[i];
        src = block;
      }
      for (int c0 = 0; c0 < n; c0 += N) {
        U v[N];
        for (int j = 0; j < N; ++j) v[j] = load<U>(src + j * n + c0);
        transpose_regs<T, N>(v);
#pragma GCC unroll 16
        for (int q = 0; q < N; ++q) {
          if (c0 + q < n) store(dst + (c0 + q) * S + r, v[transposed_reg<T, N>(q)]);
        }
      }
    }
  }
  const int64_t cs = layout.col_stride;
  for (; r < S; ++r) {
    if (r < count) {
      const T* src = x + layout.offset(row0 + r);
      for (int i = 0; i < n; ++i) dst[i * S + r] = src[i * cs];
    } else {
      for (int i = 0; i < n; ++i) dst[i * S + r] = T(0);
    }
  }
  for (int i = 0; i < n; ++i) {
    for (int v = 0; v < R; ++v) poison[v] += load<V>(dst + i * S + v * A) * T(0);
  }
}

// Writes the tile's outputs ct [no][R * width] to rows row0.. of the contiguous output [rows, no]. N rows at a
// time: each N-coefficient chunk of ct (padded to whole chunks) is transposed into N row registers stored
// straight to the rows, last chunk first, so that a row's spill into the next row is overwritten by that
// row's own chunks later. A spill past the group (another thread's rows, or past the end) goes through
// `block` instead. The remaining rows go row by row (sequential writes; coefficient by coefficient strides
// over all rows and measured ~4x slower).
template <typename T, int R, int A, int N>
SYMKERNELS_INLINE void transpose_out(const T* ct, int no, T* out, int64_t row0, int64_t count, T* block) {
  using U = typename Reg<T, N>::type;
  constexpr int S = R * A;
  int r = 0;
  if constexpr (N > 1) {
    const int last = (no - 1) / N * N;
    for (; r + N <= count; r += N) {
      T* dst = out + (row0 + r) * no;
      for (int c0 = last; c0 >= 0; c0 -= N) {
        U v[N];
        for (int q = 0; q < N; ++q) v[q] = load<U>(ct + (c0 + q) * S + r);
        transpose_regs<T, N>(v);
#pragma GCC unroll 16
        for (int j = 0; j < N; ++j) {
          const U row = v[transposed_reg<T, N>(j)];
          if (j * no + c0 + N <= N * no) {
            store(dst + j * no + c0, row);
          } else {
            store(block, row);
            for (int c = c0; c < no; ++c) dst[j * no + c] = block[c - c0];
          }
        }
      }
    }
  }
  for (; r < count; ++r) {
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
// The prologue and epilogue both routes share. A route fills the tile's outputs ct [no][S] from the transposed
// inputs at [n1][S], bt [n2][S] and the poison lanes (route_tile below); everything around that is here.
// ---------------------------------------------------------------------------------------------------------
template <typename T, int64_t S>
struct TileBuffers {
  static constexpr int W = Vec<T>::width;
  // ct has whole W-coefficient chunks (transpose_out reads them); block serves both transposes.
  std::vector<T> at, bt, ct, block;
  explicit TileBuffers(const Inputs<T>& in)
      : at(in.n1 * S),
        bt(in.n2 * S),
        ct((in.no + W - 1) / W * W * S),
        block(size_t(W) * std::max({in.n1, in.n2, (in.no + W - 1) / W * W}) + W) {}
};

// Tiles [tile_begin, tile_end) of R vectors of A lanes of rows each: transpose in (N-lane registers), compute
// (Route::tile), transpose out.
template <typename T, int R, int A, int N, typename Route>
SYMKERNELS_INLINE void route_rows(const Inputs<T>& in, const typename Route::Table& tab, int64_t tile_begin,
                                  int64_t tile_end) {
  using V = typename Reg<T, A>::type;
  constexpr int64_t S = R * A;
  TileBuffers<T, S> buf(in);
  typename Route::template Scratch<R> scratch(in, tab);
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    const int64_t row0 = t * S;
    const int64_t count = std::min<int64_t>(S, in.rows - row0);
    V poison[R] = {};
    transpose_in<T, R, A, N>(in.x1, in.l1, in.n1, in.rows, row0, count, buf.at.data(), buf.block.data(), poison);
    transpose_in<T, R, A, N>(in.x2, in.l2, in.n2, in.rows, row0, count, buf.bt.data(), buf.block.data(), poison);
    Route::template tile<R, A>(in, tab, buf.at.data(), buf.bt.data(), buf.ct.data(), poison, scratch);
    transpose_out<T, R, A, N>(buf.ct.data(), in.no, in.out, row0, count, buf.block.data());
  }
}

struct NoScratch {
  template <typename In, typename Tab>
  NoScratch(const In&, const Tab&) {}
};

// ---------------------------------------------------------------------------------------------------------
// Sparse-direct route, factored by (outer, output) groups:
//     out[k] = sum_i a[i] * t_ik,   t_ik = sum_j c_ijk b[j].
// For real SH, the pairs (m_i, m_k) fix |m_j| to at most two values, so a group (i, k) gathers the entries of
// every l_j at those m_j: 1 FMA per nonzero plus 1 per group, where c * a * b per nonzero costs 2 (a multiply
// and an FMA). Measured groups: 595 for nnz 1164 at L = 4, 2337 for 6586 at L = 6 (1.3x and 1.5x fewer FMAs).
// Every FMA still reads one vector of rows from the L1 tile buffers (b[j] in t, a[i] in acc), so loads and
// FMAs are balanced at one each per cycle; the coefficient broadcast is shared by the R vectors of a tile.
// The schedule (plan_sparse) is built on the host from any (paths, coeffs) table: the op is also called with
// permuted tables (backward), and the outer input is whichever of x1, x2 gives fewer groups.
// ---------------------------------------------------------------------------------------------------------
template <typename T>
struct SparseSchedule {
  const int32_t* runs;    // [nruns][2]: output k, number of groups (one run per output that has entries)
  const int32_t* groups;  // [ngroups][2]: outer index i, number of entries
  const int32_t* inner;   // [nnz]: inner index j of each entry
  const T* coeffs;        // [nnz]
  int nruns;
};

template <typename T>
struct SparseRouteT {
  using Table = SparseSchedule<T>;
  template <int R>
  using Scratch = NoScratch;

  template <int R, int W>
  static SYMKERNELS_INLINE void tile(const Inputs<T>& in, const Table& s, const T* at, const T* bt, T* ct,
                                     const typename Reg<T, W>::type* poison, NoScratch&) {
    using V = typename Reg<T, W>::type;
    constexpr int S = R * W;
    // Outputs no entry reaches (e.g. degrees above L1+L2) are 0 (plus poison); the runs overwrite the rest.
    for (int k = 0; k < in.no; ++k) {
      for (int v = 0; v < R; ++v) store(ct + k * S + v * W, poison[v]);
    }
    const int32_t* g = s.groups;
    const int32_t* j = s.inner;
    const T* c = s.coeffs;
    for (int r = 0; r < s.nruns; ++r) {
      const int k = s.runs[2 * r];
      const int ngroups = s.runs[2 * r + 1];
      V acc[R];
      for (int v = 0; v < R; ++v) acc[v] = poison[v];
      for (int q = 0; q < ngroups; ++q, g += 2) {
        const T* pa = at + int64_t(g[0]) * S;
        const int n = g[1];
        V t[R];
        {
          const T ce = *c++;
          const T* pb = bt + int64_t(*j++) * S;
          for (int v = 0; v < R; ++v) t[v] = ce * load<V>(pb + v * W);
        }
        for (int e = 1; e < n; ++e) {
          const T ce = *c++;
          const T* pb = bt + int64_t(*j++) * S;
          for (int v = 0; v < R; ++v) t[v] += ce * load<V>(pb + v * W);
        }
        for (int v = 0; v < R; ++v) acc[v] += load<V>(pa + v * W) * t[v];
      }
      for (int v = 0; v < R; ++v) store(ct + k * S + v * W, acc[v]);
    }
  }
};

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
template <typename T, int R, int W>
SYMKERNELS_INLINE void grid_analysis(const T* xt, int L, const GridTable<T>& g, int p0, T* f) {
  using V = typename Reg<T, W>::type;
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
template <typename T, int R, int W>
SYMKERNELS_INLINE void node_product(const T* ar, const T* ai, const T* br, const T* bi, int k0, int m_begin,
                                    int m_end, typename Reg<T, W>::type (&re)[kFourierBlock][R],
                                    typename Reg<T, W>::type (&im)[kFourierBlock][R]) {
  using V = typename Reg<T, W>::type;
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
template <typename T, int R, int W>
SYMKERNELS_INLINE void grid_product(const GridTable<T>& g, int count, const T* fa, const T* fb, T* h) {
  using V = typename Reg<T, W>::type;
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
      node_product<T, R, W>(ar0, ar0 + Ma * S, br0, br0 + Mb * S, k0, m_begin, m_end, re0, im0);
      node_product<T, R, W>(ar1, ar1 + Ma * S, br1, br1 + Mb * S, k0, m_begin, m_end, re1, im1);
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
struct GridRoute {
  using Table = GridTable<T>;
  template <int R>
  using Scratch = GridScratch<T>;

  // Step 3: each output accumulates one block's pairs in registers, on top of the earlier blocks.
  template <int R, int W>
  static SYMKERNELS_INLINE void tile(const Inputs<T>& in, const Table& g, const T* at, const T* bt, T* ct,
                                     const typename Reg<T, W>::type* poison, GridScratch<T>& s) {
    static_assert(R * W == kGridVectors * Vec<T>::width, "the grid route's scratch holds kGridVectors vectors");
    using V = typename Reg<T, W>::type;
    constexpr int S = R * W;
    const int Mo = 2 * g.lo + 1;
    for (int p0 = 0; p0 < g.padded_pairs; p0 += kPairBlock) {
      const int pairs = std::min(kPairBlock, g.pairs - p0);
      grid_analysis<T, R, W>(at, g.l1, g, p0, s.fa.data());
      grid_analysis<T, R, W>(bt, g.l2, g, p0, s.fb.data());
      grid_product<T, R, W>(g, pairs, s.fa.data(), s.fb.data(), s.h.data());
      for (int l = 0; l <= g.lo; ++l) {
        for (int m = -l; m <= l; ++m) {
          const int k = l * l + l + m;
          const int parity = (l + m) & 1;
          T* c = ct + k * S;
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
  }
};

// Entry points compiled once per ISA (see common/simd.h). The register width is a template argument of the
// inline helpers, so each entry point gets its own copy of every kernel body at exactly one width.
//
// Below AVX-512 both routes compute in 32-byte vectors, 2R of them (the same rows per tile): GCC 12 compiled
// 64-byte vectors there, two ymm each, through the stack (every coefficient broadcast as 16 scalar stores,
// half vectors stored and reloaded): 32-byte vectors measured 2.8x faster at L = 2, 6x at 3, 7.6x at 4 (sparse
// route, fp32, 1 thread, 16384 rows, Zen 3 without AVX-512).
template <typename T, typename Route, int R, int RegisterBytes>
SYMKERNELS_INLINE void rows_at_width(const Inputs<T>& in, const typename Route::Table& tab, int64_t b, int64_t e) {
  constexpr int W = Vec<T>::width;
  constexpr int N = std::max<int>(1, RegisterBytes / int(sizeof(T)));  // lanes of one register
  if constexpr (N < W) {
    route_rows<T, 2 * R, W / 2, std::min(N, W / 2), Route>(in, tab, b, e);
  } else {
    route_rows<T, R, W, N, Route>(in, tab, b, e);
  }
}
#define SYMKERNELS_GAUNT_ROWS(T, Route, R, name)                                                                \
  SYMKERNELS_ISA_ENTRY_POINTS(name, (const Inputs<T>& in, const Route<T>::Table& tab, int64_t b, int64_t e), \
                              (in, tab, b, e), rows_at_width<T, Route<T>, R, kRegisterBytes>(in, tab, b, e))
SYMKERNELS_GAUNT_ROWS(float, SparseRouteT, 1, sparse_rows_f32_r1)
SYMKERNELS_GAUNT_ROWS(float, SparseRouteT, 2, sparse_rows_f32_r2)
SYMKERNELS_GAUNT_ROWS(float, SparseRouteT, 4, sparse_rows_f32_r4)
SYMKERNELS_GAUNT_ROWS(double, SparseRouteT, 1, sparse_rows_f64_r1)
SYMKERNELS_GAUNT_ROWS(double, SparseRouteT, 2, sparse_rows_f64_r2)
SYMKERNELS_GAUNT_ROWS(double, SparseRouteT, 4, sparse_rows_f64_r4)
SYMKERNELS_GAUNT_ROWS(float, GridRoute, kGridVectors, grid_rows_f32)
SYMKERNELS_GAUNT_ROWS(double, GridRoute, kGridVectors, grid_rows_f64)
#undef SYMKERNELS_GAUNT_ROWS

template <typename T>
using RowsFn = void (*)(const Inputs<T>&, const typename SparseRouteT<T>::Table&, int64_t, int64_t);

template <typename T>
Inputs<T> inputs_of(const PreparedArgs& args) {
  return Inputs<T>{args.a.const_data_ptr<T>(), args.b.const_data_ptr<T>(), args.la, args.lb,
                   args.out.mutable_data_ptr<T>(), args.rows, args.n1, args.n2, args.no};
}

// Runs `rows_fn` over the row tiles (R vectors of rows each) on threads; `work` is the table work per row,
// which sets the grain: at least kWorkPerTask of it per task, so small calls stay on one thread.
template <typename T, typename Table, typename Fn>
void run_tiles(const Inputs<T>& in, const Table& table, int R, int64_t work, Fn rows_fn) {
  const int64_t S = R * Vec<T>::width;
  const int64_t tiles = (in.rows + S - 1) / S;
  const int64_t grain = std::max<int64_t>(1, kWorkPerTask / std::max<int64_t>(1, work * S));
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) { rows_fn(in, table, begin, end); });
}

// The host-side schedule of the sparse route (see SparseSchedule): entries grouped by output, then by the
// outer index, from any table (forward tables come sorted by (i3, i1), backward ones permuted and re-sorted).
template <typename T>
struct SparsePlan {
  std::vector<int32_t> runs, groups, inner;
  std::vector<T> coeffs;
  bool swap = false;  // the outer input is x2 (then the kernel gets the inputs swapped)

  SparsePlan(const PathEntry* p, const T* c, int64_t nnz, int n1, int n2, int no) {
    // Order by output k: a counting sort keeps each output's entries in their given order.
    std::vector<int64_t> start(no + 1, 0);
    for (int64_t e = 0; e < nnz; ++e) ++start[p[e].i3 + 1];
    for (int k = 0; k < no; ++k) start[k + 1] += start[k];
    std::vector<int64_t> order(nnz);
    {
      std::vector<int64_t> fill(start.begin(), start.end() - 1);
      for (int64_t e = 0; e < nnz; ++e) order[fill[p[e].i3]++] = e;
    }
    // Groups per output if x1 (resp. x2) is the outer input: distinct i1 (i2) per output, by stamping.
    int64_t groups1 = 0, groups2 = 0;
    {
      std::vector<int> stamp1(n1, -1), stamp2(n2, -1);
      for (int k = 0; k < no; ++k) {
        for (int64_t n = start[k]; n < start[k + 1]; ++n) {
          const PathEntry& x = p[order[n]];
          if (stamp1[x.i1] != k) stamp1[x.i1] = k, ++groups1;
          if (stamp2[x.i2] != k) stamp2[x.i2] = k, ++groups2;
        }
      }
    }
    swap = groups2 < groups1;
    auto outer = [&](int64_t e) { return swap ? p[e].i2 : p[e].i1; };
    auto inner_of = [&](int64_t e) { return swap ? p[e].i1 : p[e].i2; };
    inner.reserve(nnz);
    coeffs.reserve(nnz);
    groups.reserve(2 * std::min(groups1, groups2));
    for (int k = 0; k < no; ++k) {
      if (start[k] == start[k + 1]) continue;
      // One group per outer index: sort this output's entries by it (stable, so the rest keep their order).
      std::stable_sort(order.begin() + start[k], order.begin() + start[k + 1],
                       [&](int64_t x, int64_t y) { return outer(x) < outer(y); });
      int ngroups = 0;
      for (int64_t n = start[k]; n < start[k + 1]; ++ngroups) {
        const int32_t i = outer(order[n]);
        int64_t m = n;
        for (; m < start[k + 1] && outer(order[m]) == i; ++m) {
          inner.push_back(inner_of(order[m]));
          coeffs.push_back(c[order[m]]);
        }
        groups.push_back(i);
        groups.push_back(static_cast<int32_t>(m - n));
        n = m;
      }
      runs.push_back(k);
      runs.push_back(ngroups);
    }
  }

  SparseSchedule<T> schedule() const {
    return SparseSchedule<T>{runs.data(), groups.data(), inner.data(), coeffs.data(),
                             static_cast<int>(runs.size() / 2)};
  }
};

// Row vectors per sparse tile: 4 (64 fp32 rows) while the tile's buffers, (n1 + n2 + no) vectors each, take
// at most 40 KiB, i.e. up to L = 6 for L1 = L2 = Lo: measured (fp32, 1 thread) 4 beat 2 at every L = 2..6
// (by ~10% at L = 6, although its 38 KiB spill the 32 KiB L1) and 8 was slower everywhere (15-40%).
// Fewer vectors for larger degrees.
inline int sparse_vectors(int n1, int n2, int no) {
  const int64_t bytes_per_vector = int64_t(n1 + n2 + no) * simd::kVectorBytes;
  if (4 * bytes_per_vector <= (40 << 10)) return 4;
  if (2 * bytes_per_vector <= (40 << 10)) return 2;
  return 1;
}

template <typename T>
void run_sparse(const PreparedArgs& args, const at::Tensor& paths, const at::Tensor& coeffs) {
  const SparsePlan<T> plan(reinterpret_cast<const PathEntry*>(paths.const_data_ptr<int32_t>()),
                           coeffs.const_data_ptr<T>(), paths.size(0), args.n1, args.n2, args.no);
  const SparseSchedule<T> sched = plan.schedule();
  Inputs<T> in = inputs_of<T>(args);
  if (plan.swap) {
    std::swap(in.x1, in.x2);
    std::swap(in.l1, in.l2);
    std::swap(in.n1, in.n2);
  }
  const int R = sparse_vectors(in.n1, in.n2, in.no);
  const int64_t work = int64_t(paths.size(0)) + plan.groups.size() / 2 + in.n1 + in.n2 + in.no;
  RowsFn<T> fn;
  if constexpr (std::is_same_v<T, float>) {
    fn = R == 4 ? sparse_rows_f32_r4 : R == 2 ? sparse_rows_f32_r2 : sparse_rows_f32_r1;
  } else {
    fn = R == 4 ? sparse_rows_f64_r4 : R == 2 ? sparse_rows_f64_r2 : sparse_rows_f64_r1;
  }
  run_tiles(in, sched, R, work, fn);
}

template <typename T>
void run_grid(const PreparedArgs& args, const at::Tensor& theta, const at::Tensor& theta_out, int l1, int l2,
              int lo) {
  const int pairs = static_cast<int>(theta_out.size(0));
  const GridTable<T> g{theta.const_data_ptr<T>(), theta_out.const_data_ptr<T>(), pairs,
                       static_cast<int>(theta.size(0)), static_cast<int>(theta.size(1)), l1, l2, lo};
  const int64_t work = int64_t(pairs) * (2 * (l1 + 1) * (l1 + 1) + 2 * (l2 + 1) * (l2 + 1) + args.no +
                                         8 * (lo + 1) * (2 * std::min(l1, l2) + 1));
  void (*fn)(const Inputs<T>&, const GridTable<T>&, int64_t, int64_t);
  if constexpr (std::is_same_v<T, float>) {
    fn = grid_rows_f32;
  } else {
    fn = grid_rows_f64;
  }
  run_tiles(inputs_of<T>(args), g, kGridVectors, work, fn);
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
