// Argument checks of hadamard_transform, shared by the CPU and CUDA kernels (torch headers: not for .cu).
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

}  // namespace symkernels::hadamard
