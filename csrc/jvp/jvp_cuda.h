// Launchers of the JVP pillar's CUDA kernels, shared by the .cu files and the torch glue (*_cuda.cpp).
// CUDA runtime types only, no torch headers. All tensors are contiguous, on the device, checked by the glue
// (jvp/jvp_args.h). A tangent shared by all T has T-stride 0; an absent one a null pointer.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/accumulator.h"
#include "jvp/jvp.h"

namespace symkernels::jvp {

template <typename In>
struct LinearDualParams {
  const In *x, *x_t, *w, *w_t, *b, *b_t;  // x [M,K], x_t [.,M,K], w [N,K], w_t [.,N,K], b [N], b_t [.,N]
  In *y, *y_t;                            // y [M,N], y_t [T,M,N]
  int64_t M, N, K, T;
  int64_t x_t_stride, w_t_stride, b_t_stride;  // elements between tangents t and t+1 (0: shared)
  int activation;                              // Activation
  int64_t seed;                                // >= 0: w_t generated from the counter-based RNG (w_t null)
  int distribution;                            // Distribution
};

template <typename In>
struct RowDualParams {
  const In *x, *x_t, *w, *w_t, *b, *b_t;  // x [R,N], x_t [.,R,N], w/b [N] or null, w_t/b_t [.,N]
  In *y, *y_t;                            // y [R,N], y_t [T,R,N]
  int64_t R, N, T;
  int64_t x_t_stride, w_t_stride, b_t_stride;
  double eps;
  int kind;  // RowKind
};

template <typename In>
cudaError_t launch_linear_dual(const LinearDualParams<In>& p, cudaStream_t stream);

template <typename In>
cudaError_t launch_row_dual(const RowDualParams<In>& p, cudaStream_t stream);

}  // namespace symkernels::jvp
