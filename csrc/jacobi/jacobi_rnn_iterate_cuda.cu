// CUDA Jacobi iteration for the RNN op (Elman, GRU, LSTM). Three small kernels per iteration, all reading the
// frozen pointer from device memory, so the host queues `iters` iterations without a synchronization:
//   rows    one block per row: gh = b_hh + W_hh h_prev with a fixed k order (thread j owns gate value j, so a
//           row's bits never depend on how many rows run — the Jacobi fixed point is bitwise the sequential
//           sweep of this same kernel), the cell, the row residual and changed flag;
//   commit  copy the live rows into the iterate;
//   advance one block: first changed row, residual max, new pointer, stop flag, the iteration's record.
#include <cfloat>
#include <cmath>

#include "jacobi/jacobi_rnn.h"
#include "jacobi/jacobi_rnn_iterate_cuda.h"

namespace symkernels::jacobi::cuda {
namespace {

constexpr int kRowThreads = 128;
constexpr int kAdvanceThreads = 512;

// Associative combines for block_reduce_pair. fmax, like the CPU kernel's std::max on residuals that are
// never NaN (a non-finite moved value is recorded as +inf before the reduction).
struct MaxOp {
  __device__ __forceinline__ double operator()(double a, double b) const { return fmax(a, b); }
};
struct OrOp {
  __device__ __forceinline__ int operator()(int a, int b) const { return a | b; }
};
struct MinOp {
  __device__ __forceinline__ long long operator()(long long a, long long b) const { return a < b ? a : b; }
};

// Tree reduction of two per-thread values at once (one __syncthreads per level serves both), each with its
// own combine; blockDim.x must be a power of two and the scratch arrays blockDim.x long. Thread 0 gets the
// block's results in `a` and `b`. Both the row kernel (residual max + changed-or) and the advance kernel
// (residual max + first-changed-row min) use it.
template <typename A, typename B, typename OpA, typename OpB>
__device__ __forceinline__ void block_reduce_pair(A& a, B& b, A* scratch_a, B* scratch_b, OpA op_a, OpB op_b) {
  scratch_a[threadIdx.x] = a;
  scratch_b[threadIdx.x] = b;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      scratch_a[threadIdx.x] = op_a(scratch_a[threadIdx.x], scratch_a[threadIdx.x + s]);
      scratch_b[threadIdx.x] = op_b(scratch_b[threadIdx.x], scratch_b[threadIdx.x + s]);
    }
    __syncthreads();
  }
  a = scratch_a[0];
  b = scratch_b[0];
}

template <typename T>
struct Bits;
template <>
struct Bits<float> {
  static __device__ __forceinline__ unsigned long long of(float x) { return __float_as_uint(x); }
};
template <>
struct Bits<double> {
  static __device__ __forceinline__ unsigned long long of(double x) {
    return static_cast<unsigned long long>(__double_as_longlong(x));
  }
};

// Folds one new state value into the thread's residual max and changed flag.
template <typename T>
__device__ __forceinline__ void track_change(T v, T old, double& d_max, int& moved_any) {
  if (Bits<T>::of(v) != Bits<T>::of(old)) {
    moved_any = 1;
    const double d = fabs(double(v) - double(old));
    d_max = fmax(d_max, isfinite(d) ? d : INFINITY);  // non-finite and moved: infinite residual
  }
}

// State rows are S wide: h (S = H), or [h | c] for the LSTM (S = 2H); only h enters the mat-vec.
template <typename T>
__global__ void rnn_rows_kernel(const T* __restrict__ u, const T* __restrict__ h0, const T* __restrict__ wt,
                                const T* __restrict__ b_hh, const T* __restrict__ cur, T* __restrict__ nxt,
                                double* __restrict__ resid, int* __restrict__ changed, const int64_t* first_t,
                                int64_t row_end, int64_t B, int64_t H, int64_t G, int64_t S, int cell) {
  const int64_t row = *first_t * B + blockIdx.x;
  if (row >= row_end) return;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* prev = reinterpret_cast<T*>(smem_raw);
  T* gh = prev + H;
  __shared__ double red_d[kRowThreads];
  __shared__ int red_c[kRowThreads];

  const int64_t t = row / B, b = row % B;
  const T* h_prev = t == 0 ? h0 + b * S : cur + (row - B) * S;
  for (int64_t k = threadIdx.x; k < H; k += blockDim.x) prev[k] = h_prev[k];
  __syncthreads();
  for (int64_t j = threadIdx.x; j < G; j += blockDim.x) {
    T acc = b_hh[j];
    for (int64_t k = 0; k < H; ++k) acc += wt[k * G + j] * prev[k];  // coalesced over j, fixed order over k
    gh[j] = acc;
  }
  __syncthreads();
  double d_max = 0;
  int moved_any = 0;
  const T* u_row = u + row * G;
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    T v;
    if (cell == kLstm) {
      T c;
      lstm_unit<T>(u_row, gh, h_prev[H + j], j, H, v, c);
      track_change(c, cur[row * S + H + j], d_max, moved_any);
      nxt[row * S + H + j] = c;
    } else {
      v = cell_unit<T>(cell, u_row, gh, prev, j, H);
    }
    track_change(v, cur[row * S + j], d_max, moved_any);
    nxt[row * S + j] = v;
  }
  block_reduce_pair(d_max, moved_any, red_d, red_c, MaxOp{}, OrOp{});
  if (threadIdx.x == 0) {
    resid[row] = d_max;
    changed[row] = moved_any;
  }
}

template <typename T>
__global__ void commit_rows_kernel(T* __restrict__ cur, const T* __restrict__ nxt, const int64_t* first_t,
                                   int64_t row_end, int64_t B, int64_t S) {
  const int64_t begin = *first_t * B * S, end = row_end * S;
  for (int64_t i = begin + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < end;
       i += int64_t(gridDim.x) * blockDim.x) {
    cur[i] = nxt[i];
  }
}

__global__ void advance_kernel(const double* __restrict__ resid, const int* __restrict__ changed, int64_t* ptr,
                               int64_t* kernel_ptr, int* active, double* stats_row, int64_t T, int64_t B,
                               double tol) {
  __shared__ double red_d[kAdvanceThreads];
  __shared__ long long red_first[kAdvanceThreads];
  if (!*active) {
    if (threadIdx.x == 0) stats_row[0] = stats_row[1] = -1.0;
    return;
  }
  const int64_t R = T * B, p = *ptr;
  double d = 0;
  long long first = R;
  for (int64_t row = p * B + threadIdx.x; row < R; row += blockDim.x) {
    d = fmax(d, resid[row]);
    if (changed[row] && row < first) first = row;
  }
  block_reduce_pair(d, first, red_d, red_first, MaxOp{}, MinOp{});
  if (threadIdx.x == 0) {
    const double r = d;
    // Timesteps before the first changed one are exact, and so is the first changed one (see solver.py).
    int64_t q = first / B + 1;
    int64_t np = q > p + 1 ? q : p + 1;
    if (np > T) np = T;
    stats_row[0] = r;
    stats_row[1] = double(np);
    *ptr = np;
    const bool stop = np >= T || !isfinite(r) || (tol > 0 && r <= tol);
    *active = stop ? 0 : 1;
    *kernel_ptr = stop ? T : np;
  }
}

}  // namespace

template <typename T>
cudaError_t launch_rnn_rows(const T* u, const T* h0, const T* wt, const T* b_hh, const T* cur, T* nxt,
                            double* resid, int* changed, const int64_t* first_t, int64_t row_end, int64_t max_rows,
                            int64_t B, int64_t H, int64_t G, int64_t S, int cell, cudaStream_t stream) {
  if (max_rows <= 0) return cudaSuccess;
  const size_t smem = sizeof(T) * size_t(H + G);
  rnn_rows_kernel<T><<<unsigned(max_rows), kRowThreads, smem, stream>>>(u, h0, wt, b_hh, cur, nxt, resid, changed,
                                                                          first_t, row_end, B, H, G, S, cell);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_commit_rows(T* cur, const T* nxt, const int64_t* first_t, int64_t row_end, int64_t B, int64_t S,
                               cudaStream_t stream) {
  const int64_t n = row_end * S;
  if (n <= 0) return cudaSuccess;
  const int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  commit_rows_kernel<T><<<unsigned(blocks < 65535 ? blocks : 65535), threads, 0, stream>>>(cur, nxt, first_t,
                                                                                          row_end, B, S);
  return cudaGetLastError();
}

cudaError_t launch_advance(const double* resid, const int* changed, int64_t* ptr, int64_t* kernel_ptr, int* active,
                           double* stats_row, int64_t T, int64_t B, double tol, cudaStream_t stream) {
  advance_kernel<<<1, kAdvanceThreads, 0, stream>>>(resid, changed, ptr, kernel_ptr, active, stats_row, T, B, tol);
  return cudaGetLastError();
}

template cudaError_t launch_rnn_rows<float>(const float*, const float*, const float*, const float*, const float*,
                                            float*, double*, int*, const int64_t*, int64_t, int64_t, int64_t,
                                            int64_t, int64_t, int64_t, int, cudaStream_t);
template cudaError_t launch_rnn_rows<double>(const double*, const double*, const double*, const double*,
                                             const double*, double*, double*, int*, const int64_t*, int64_t, int64_t,
                                             int64_t, int64_t, int64_t, int64_t, int, cudaStream_t);
template cudaError_t launch_commit_rows<float>(float*, const float*, const int64_t*, int64_t, int64_t, int64_t,
                                               cudaStream_t);
template cudaError_t launch_commit_rows<double>(double*, const double*, const int64_t*, int64_t, int64_t, int64_t,
                                                cudaStream_t);

}  // namespace symkernels::jacobi::cuda
