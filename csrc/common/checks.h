// Argument checks shared by every op. Errors name the op and the argument, and say what was expected.
// TORCH_CHECK_TYPE surfaces in Python as TypeError, TORCH_CHECK_VALUE as ValueError.
#pragma once

#include <ATen/MemoryOverlap.h>
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

// `out=` of an op writing one result shaped like x: the kernels write it as one dense block.
inline void check_out(const at::Tensor& out, const at::Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(out.sizes() == x.sizes(), op, ": out must have x's shape ", x.sizes(), ", got ", out.sizes());
  TORCH_CHECK_TYPE(out.scalar_type() == x.scalar_type(), op, ": out must have x's dtype ", x.scalar_type(), ", got ",
                   out.scalar_type());
  TORCH_CHECK_VALUE(out.device() == x.device(), op, ": out must be on x's device ", x.device(), ", got ", out.device());
  TORCH_CHECK_VALUE(out.is_contiguous(), op, ": out must be contiguous");
}

// The kernels read `input` while writing `out`: they must not share memory. (`input` is x.contiguous(): a
// strided x was copied, so only a contiguous x can overlap out.)
inline void check_no_overlap(const at::Tensor& out, const at::Tensor& input, const char* op) {
  TORCH_CHECK_VALUE(at::get_overlap_status(out, input) == at::MemOverlapStatus::No, op,
                    ": out must not share memory with x");
}

}  // namespace symkernels
