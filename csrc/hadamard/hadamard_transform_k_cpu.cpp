// CPU kernel of hadamard_transform_k: one pass per row (widen, K segment FWHTs and the K×K mix all in
// cache, see hadamard_k_row.h), rows split across threads. The plan (H_K's sign classes) is built once.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/memory.h"
#include "common/simd.h"
#include "hadamard/hadamard_args.h"
#include "hadamard/hadamard_k_row.h"

namespace symkernels::hadamard {
namespace {

// Rows per parallel task: enough elements that thread start-up is noise next to the work.
constexpr int64_t kElementsPerTask = 1 << 14;

// out[i] = static_cast<T>(row[i]) (rounding fp32 once to fp16/bf16), 16 values at a time (bit-identical
// to the per-element c10 conversion, which does not vectorize; see common/simd.h).
template <typename T>
SYMKERNELS_INLINE void narrow_row(const float* row, T* out, int64_t n) {
  using F = simd::Vec<float>::type;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const F v = simd::load<F>(row + i);
    if constexpr (std::is_same_v<T, c10::Half>) {
      simd::store(out + i, simd::fp32_to_fp16(v));
    } else {
      simd::store(out + i, simd::fp32_to_bf16(v));
    }
  }
  for (; i < n; ++i) out[i] = static_cast<T>(row[i]);
}

// One entry point per ISA for each (accumulation, storage) type pair; A = double only for fp64 inputs.
template <int RegisterBytes, typename A, typename T>
SYMKERNELS_INLINE void rows_impl(const T* in, T* out, int64_t rows, const KroneckerPlan<A>& plan, A scale) {
  const int64_t n = plan.k_order * plan.p;
  constexpr bool same = std::is_same_v<A, T>;  // fp32/fp64: the row is mixed straight into `out`
  std::vector<A> scratch_buf, row_buf;
  A* scratch = aligned_scratch(scratch_buf, plan.scratch_size());
  A* row = aligned_scratch(row_buf, same ? 0 : n);
  for (int64_t r = 0; r < rows; ++r) {
    if constexpr (same) {
      kronecker_hadamard_row<RegisterBytes>(in + r * n, out + r * n, plan, scale, scratch);
    } else {
      kronecker_hadamard_row<RegisterBytes>(in + r * n, row, plan, scale, scratch);
      narrow_row(row, out + r * n, n);
    }
  }
}

#define SYMKERNELS_K_ROWS(T, A, name)                                                                          \
  SYMKERNELS_ISA_ENTRY_POINTS(name, (const T* in, T* out, int64_t rows, const KroneckerPlan<A>& plan, A scale), \
                              (in, out, rows, plan, scale), rows_impl<kRegisterBytes>(in, out, rows, plan, scale))
SYMKERNELS_K_ROWS(float, float, rows_f32)
SYMKERNELS_K_ROWS(double, double, rows_f64)
SYMKERNELS_K_ROWS(c10::Half, float, rows_f16)
SYMKERNELS_K_ROWS(c10::BFloat16, float, rows_bf16)
#undef SYMKERNELS_K_ROWS

template <typename T, typename A, typename Fn>
void run(const at::Tensor& input, at::Tensor& out, const at::Tensor& hk, int64_t k, int64_t p, double scale, Fn fn) {
  const int64_t n = k * p;
  const int64_t rows = input.numel() / n;
  const T* src = input.const_data_ptr<T>();
  T* dst = out.mutable_data_ptr<T>();
  const auto plan = cached_kronecker_plan(hk.const_data_ptr<A>(), k, p);
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / n);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    fn(src + begin * n, dst + begin * n, end - begin, *plan, static_cast<A>(scale));
  });
}

// Writes the transform of x into out (contiguous, x's shape and dtype, checked by the callers).
void transform_into(const at::Tensor& x, const at::Tensor& hk, double scale, at::Tensor& out) {
  const int64_t k = hk.size(0);
  const int64_t p = x.size(-1) / k;
  const at::Tensor input = x.contiguous();
  check_no_overlap(out, input, "hadamard_transform_k");
  if (input.numel() == 0) return;
  const bool f64 = x.scalar_type() == at::kDouble;
  const at::Tensor h = hk.to(f64 ? at::kDouble : at::kFloat).contiguous();
  switch (x.scalar_type()) {
    case at::kFloat: run<float, float>(input, out, h, k, p, scale, rows_f32); break;
    case at::kDouble: run<double, double>(input, out, h, k, p, scale, rows_f64); break;
    case at::kHalf: run<c10::Half, float>(input, out, h, k, p, scale, rows_f16); break;
    case at::kBFloat16: run<c10::BFloat16, float>(input, out, h, k, p, scale, rows_bf16); break;
    default: TORCH_CHECK_TYPE(false, "hadamard_transform_k: unsupported dtype ", x.scalar_type());
  }
}

at::Tensor hadamard_transform_k_cpu(const at::Tensor& x, const at::Tensor& hk, double scale) {
  check_hadamard_k_args(x, hk);
  at::Tensor out = at::empty(x.sizes(), x.options());
  advise_huge_pages(out);
  transform_into(x, hk, scale, out);
  return out;
}

void hadamard_transform_k_out_cpu(const at::Tensor& x, const at::Tensor& hk, double scale, at::Tensor& out) {
  check_hadamard_k_args(x, hk);
  check_out(out, x, "hadamard_transform_k");
  transform_into(x, hk, scale, out);
}

}  // namespace

TORCH_LIBRARY_IMPL(symkernels, CPU, m) {
  m.impl("hadamard_transform_k", &hadamard_transform_k_cpu);
  m.impl("hadamard_transform_k.out", &hadamard_transform_k_out_cpu);
}

}  // namespace symkernels::hadamard
