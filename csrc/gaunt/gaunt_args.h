// Argument checks and broadcasting shared by the CPU kernel and the CUDA glue (torch headers; not for .cu).
#pragma once

#include <ATen/ExpandUtils.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <vector>

#include "common/checks.h"
#include "gaunt/gaunt.h"

namespace symkernels::gaunt {

inline int64_t lmax_of(int64_t n, const char* op, const char* arg) {
  int64_t l = 0;
  while ((l + 1) * (l + 1) < n) ++l;
  TORCH_CHECK_VALUE(n >= 1 && (l + 1) * (l + 1) == n, op, ": ", arg,
                    ".shape[-1] must be a perfect square (L+1)^2 (degrees 0..L), got ", n);
  return l;
}

struct PreparedArgs {
  at::Tensor a, b, out, paths;  // a, b broadcast + contiguous; out allocated; paths contiguous
  int n1, n2, no;
};

// Checks everything the kernels rely on (dtypes, sizes, table shape and every table index) and
// materializes the broadcast inputs. `allowed` says which input dtypes the caller's kernel supports.
inline PreparedArgs prepare_args(const at::Tensor& x1, const at::Tensor& x2, const at::Tensor& paths,
                                 const at::Tensor& coeffs, int64_t lmax_out, bool allow_half) {
  constexpr const char* op = "gaunt_tensor_product";
  const auto s = x1.scalar_type();
  const bool ok = s == at::kFloat || s == at::kDouble || (allow_half && (s == at::kHalf || s == at::kBFloat16));
  TORCH_CHECK_TYPE(ok, op, ": x1 must be float32 or float64", allow_half ? " (or float16/bfloat16)" : "",
                   " on this device, got ", s);
  TORCH_CHECK_TYPE(x2.scalar_type() == s, op, ": x2 must have x1's dtype ", s, ", got ", x2.scalar_type());
  check_min_dim(x1, 1, op, "x1");
  check_min_dim(x2, 1, op, "x2");
  const int64_t l1 = lmax_of(x1.size(-1), op, "x1");
  const int64_t l2 = lmax_of(x2.size(-1), op, "x2");
  TORCH_CHECK_VALUE(l1 <= kMaxL && l2 <= kMaxL, op, ": input degrees must be <= ", kMaxL, ", got ", l1, " and ", l2);
  // Not capped at L1+L2: backward asks for the gradient of x1 (degree L1) as a product of x2 and the
  // output gradient, and L1 may exceed L2+Lo; the table then simply has no entries for those outputs.
  TORCH_CHECK_VALUE(lmax_out >= 0 && lmax_out <= 2 * kMaxL, op, ": lmax_out must be between 0 and ", 2 * kMaxL,
                    ", got ", lmax_out);
  TORCH_CHECK_TYPE(paths.scalar_type() == at::kInt, op, ": paths must be int32, got ", paths.scalar_type());
  TORCH_CHECK_VALUE(paths.dim() == 2 && paths.size(1) == 3, op, ": paths must have shape [nnz, 3], got ",
                    paths.sizes());
  TORCH_CHECK_VALUE(coeffs.dim() == 1 && coeffs.size(0) == paths.size(0), op, ": coeffs must have shape [",
                    paths.size(0), "] (one per path), got ", coeffs.sizes());
  TORCH_CHECK_TYPE(coeffs.is_floating_point(), op, ": coeffs must be floating point, got ", coeffs.scalar_type());
  TORCH_CHECK_VALUE(x2.device() == x1.device() && paths.device() == x1.device() && coeffs.device() == x1.device(),
                    op, ": all tensors must be on one device, got x1 on ", x1.device(), ", x2 on ", x2.device(),
                    ", paths on ", paths.device(), ", coeffs on ", coeffs.device());

  PreparedArgs r;
  r.n1 = static_cast<int>(x1.size(-1));
  r.n2 = static_cast<int>(x2.size(-1));
  r.no = static_cast<int>((lmax_out + 1) * (lmax_out + 1));
  r.paths = paths.contiguous();
  // Never read or write out of bounds, whatever table a caller passes (checked on the host).
  const at::Tensor host = r.paths.is_cpu() ? r.paths : r.paths.cpu();
  const int32_t* t = host.const_data_ptr<int32_t>();
  for (int64_t n = 0; n < host.size(0); ++n) {
    TORCH_CHECK_VALUE(t[3 * n] >= 0 && t[3 * n] < r.n1 && t[3 * n + 1] >= 0 && t[3 * n + 1] < r.n2 &&
                          t[3 * n + 2] >= 0 && t[3 * n + 2] < r.no,
                      op, ": paths[", n, "] = (", t[3 * n], ", ", t[3 * n + 1], ", ", t[3 * n + 2],
                      ") is out of range for sizes (", r.n1, ", ", r.n2, ", ", r.no, ")");
  }
  const auto lead1 = x1.sizes().slice(0, x1.dim() - 1);
  const auto lead2 = x2.sizes().slice(0, x2.dim() - 1);
  std::vector<int64_t> lead = at::infer_size(lead1, lead2);
  std::vector<int64_t> shape1(lead), shape2(lead), shape_out(lead);
  shape1.push_back(r.n1);
  shape2.push_back(r.n2);
  shape_out.push_back(r.no);
  // Broadcast rows are materialized: the kernels stream both inputs row by row.
  r.a = x1.expand(shape1).contiguous();
  r.b = x2.expand(shape2).contiguous();
  r.out = at::empty(shape_out, x1.options());
  return r;
}

}  // namespace symkernels::gaunt
