// Argument checks of hadamard_transform and hadamard_transform_k, shared by the CPU and CUDA kernels
// (torch headers: not for .cu).
#pragma once

#include "common/checks.h"
#include "hadamard/hadamard.h"

namespace symkernels::hadamard {

// Validates x and returns n = x.size(-1).
inline int64_t check_hadamard_args(const at::Tensor& x) {
  constexpr const char* op = "hadamard_transform";
  check_floating(x, op, "x");
  check_min_dim(x, 1, op, "x");
  const int64_t n = x.size(-1);
  TORCH_CHECK_VALUE(is_power_of_two(n) && n >= (int64_t{1} << kMinLog2Size) && n <= (int64_t{1} << kMaxLog2Size),
                    op, ": x.shape[-1] must be a power of two between 2 and 32768, got ", n);
  return n;
}

// Validates x and the K×K factor hk of hadamard_transform_k and returns K (x.size(-1) = K·2^m).
inline int64_t check_hadamard_k_args(const at::Tensor& x, const at::Tensor& hk) {
  constexpr const char* op = "hadamard_transform_k";
  check_floating(x, op, "x");
  check_min_dim(x, 1, op, "x");
  check_floating(hk, op, "hk");
  TORCH_CHECK_VALUE(hk.dim() == 2 && hk.size(0) == hk.size(1) && hk.size(0) >= 1, op,
                    ": hk must be a square K×K matrix, got shape ", hk.sizes());
  TORCH_CHECK_VALUE(hk.device() == x.device(), op, ": hk must be on x's device (", x.device(), "), got ", hk.device());
  const int64_t k = hk.size(0);
  const int64_t n = x.size(-1);
  TORCH_CHECK_VALUE(n % k == 0 && is_power_of_two(n / k), op, ": x.shape[-1] must be K·2^m for K = hk.shape[0] = ", k,
                    ", got ", n);
  return k;
}

}  // namespace symkernels::hadamard
