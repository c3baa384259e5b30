// Argument checks shared by every op. Errors name the op and the argument, and say what was expected.
// TORCH_CHECK_TYPE surfaces in Python as TypeError, TORCH_CHECK_VALUE as ValueError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace symkernels {

inline bool is_power_of_two(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

inline int log2_exact(int64_t n) {
  int k = 0;
  while ((int64_t{1} << k) < n) ++k;
  return k;
}

inline void check_floating(const at::Tensor& t, const char* op, const char* arg) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kHalf || s == at::kBFloat16 || s == at::kDouble, op, ": ", arg,
                   " must be float16, bfloat16, float32 or float64, got ", s);
}

inline void check_min_dim(const at::Tensor& t, int64_t dims, const char* op, const char* arg) {
  TORCH_CHECK_VALUE(t.dim() >= dims, op, ": ", arg, " must have at least ", dims, " dimension(s), got shape ",
                    t.sizes());
}

}  // namespace symkernels
