// CPU commit step of the general Jacobi solver (symkernels/jacobi/solver.py): the convergence test and the
// write-back of one iteration fused into one pass over the evaluated rows, instead of ~8 tensor ops (bitwise
// compare, per-row any, first changed row, |new − old|, max, copy) each with its own dispatch and temporary.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "common/checks.h"
#include "jacobi/commit.h"

namespace symkernels::jacobi {
namespace {

constexpr const char* kOp = "jacobi_commit";

// Rows [0, n) of `old` and `nw` (contiguous, `row` elements each). Rows before the first one that differs
// bitwise add nothing to the residual (their elements are equal), so the element loop starts there.
template <typename T>
void commit(T* old, const T* nw, int64_t n, int64_t row, double* out) {
  const size_t row_bytes = sizeof(T) * row;
  int64_t first = n;
  for (int64_t i = 0; i < n; ++i) {
    if (std::memcmp(old + i * row, nw + i * row, row_bytes) != 0) {
      first = i;
      break;
    }
  }
  const int64_t begin = first * row, end = n * row;
  out[0] = max_moved(old + begin, nw + begin, end - begin);
  if (end > begin) std::memcpy(old + begin, nw + begin, sizeof(T) * (end - begin));
  out[1] = static_cast<double>(first);
}

at::Tensor jacobi_commit_cpu(at::Tensor& old, const at::Tensor& new_rows) {
  check_floating(old, kOp, "old");
  TORCH_CHECK_TYPE(new_rows.scalar_type() == old.scalar_type(), kOp, ": new must have old's dtype ",
                   old.scalar_type(), ", got ", new_rows.scalar_type());
  TORCH_CHECK_VALUE(old.dim() >= 1 && new_rows.sizes() == old.sizes(), kOp, ": new must have old's shape ",
                    old.sizes(), " (at least 1-D), got ", new_rows.sizes());
  TORCH_CHECK_VALUE(old.is_contiguous(), kOp, ": old must be contiguous (rows of the solver's iterate)");
  const at::Tensor nw = new_rows.contiguous();
  at::Tensor stats = at::empty({2}, old.options().dtype(at::kDouble));
  const int64_t n = old.size(0), row = n ? old.numel() / n : 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, old.scalar_type(), kOp, [&] {
    commit<scalar_t>(old.mutable_data_ptr<scalar_t>(), nw.const_data_ptr<scalar_t>(), n, row,
                     stats.mutable_data_ptr<double>());
  });
  return stats;
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CPU, m) { m.impl("jacobi_commit", &jacobi_commit_cpu); }

}  // namespace symkernels::jacobi
