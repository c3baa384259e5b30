// Launchers of the CUDA Jacobi RNN kernels (raw pointers, no torch headers; glue in jacobi_rnn_iterate_cuda.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace symkernels::jacobi::cuda {

// Largest hidden size: the row kernel keeps h_prev and the G (up to 4H) gate values in shared memory.
constexpr int64_t kMaxHidden = 1024;

// One Jacobi evaluation of rows [*first_t · B, row_end) (row = t·B + b) from `cur` into `nxt`, with each
// row's max-abs residual and bitwise-changed flag. State rows are S wide (H, or 2H for the LSTM's [h | c]).
// `first_t` is read on the device, so iterations chain without the host knowing the pointer. `max_rows`
// bounds the grid (rows beyond row_end return at once).
template <typename T>
cudaError_t launch_rnn_rows(const T* u, const T* h0, const T* wt, const T* b_hh, const T* cur, T* nxt,
                            double* resid, int* changed, const int64_t* first_t, int64_t row_end, int64_t max_rows,
                            int64_t B, int64_t H, int64_t G, int64_t S, int cell, cudaStream_t stream);

// cur[rows ≥ *first_t · B and < row_end] = nxt[same rows].
template <typename T>
cudaError_t launch_commit_rows(T* cur, const T* nxt, const int64_t* first_t, int64_t row_end, int64_t B, int64_t S,
                               cudaStream_t stream);

// After one iteration: residual max and first changed row over the live rows, pointer advance, stop test;
// writes stats_row = (residual, pointer), or (−1, −1) when the solve had already stopped.
cudaError_t launch_advance(const double* resid, const int* changed, int64_t* ptr, int64_t* kernel_ptr, int* active,
                           double* stats_row, int64_t T, int64_t B, double tol, cudaStream_t stream);

}  // namespace symkernels::jacobi::cuda
