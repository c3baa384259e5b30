// Argument checks and row addressing shared by the CPU kernels and the CUDA glue (torch headers; not for .cu).
#pragma once

#include <ATen/ExpandUtils.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <vector>

#include "common/checks.h"
#include "gaunt/gaunt.h"

namespace symkernels::gaunt {

constexpr const char* kOpName = "gaunt_tensor_product";

inline int64_t lmax_of(int64_t n, const char* op, const char* arg) {
  int64_t l = 0;
  while ((l + 1) * (l + 1) < n) ++l;
  TORCH_CHECK_VALUE(n >= 1 && (l + 1) * (l + 1) == n, op, ": ", arg,
                    ".shape[-1] must be a perfect square (L+1)^2 (degrees 0..L), got ", n);
  return l;
}

// Where row r of an input lives, for an input broadcast to the output's leading shape: any strides,
// including 0 for broadcast dims, so that an edge SH [E, 1, n] shared by C channels is read in place
// (never expanded to [E, C, n]). Dims are coalesced first; a typical call has one or two left.
struct RowLayout {
  static constexpr int kMaxDims = 6;
  int ndim = 0;
  int64_t size[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};  // elements
  int64_t col_stride = 1;         // elements between consecutive coefficients of one row

  int64_t offset(int64_t row) const {
    if (ndim == 1) return row * stride[0];  // the common case, without a division
    int64_t off = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      off += (row % size[d]) * stride[d];
      row /= size[d];
    }
    return off;
  }
};

// Coalesced layout of `x` viewed with leading shape `lead` (x's leading dims broadcast to it). Returns false
// when more than kMaxDims dims remain (the caller then makes x contiguous, which always fits).
inline bool make_row_layout(const at::Tensor& x, at::IntArrayRef lead, RowLayout& out) {
  std::vector<int64_t> shape(lead.begin(), lead.end());
  shape.push_back(x.size(-1));
  const at::Tensor v = x.expand(shape);  // a view: broadcast dims get stride 0
  out = RowLayout{};
  out.col_stride = v.stride(-1);
  std::vector<int64_t> sizes, strides;
  for (int64_t d = 0; d < static_cast<int64_t>(lead.size()); ++d) {
    if (lead[d] == 1) continue;
    if (!sizes.empty() && strides.back() == v.stride(d) * lead[d]) {  // mergeable with the previous dim
      sizes.back() *= lead[d];
      strides.back() = v.stride(d);
    } else {
      sizes.push_back(lead[d]);
      strides.push_back(v.stride(d));
    }
  }
  if (sizes.size() > RowLayout::kMaxDims) return false;
  out.ndim = static_cast<int>(sizes.size());
  for (int d = 0; d < out.ndim; ++d) {
    out.size[d] = sizes[d];
    out.stride[d] = strides[d];
  }
  return true;
}

struct PreparedArgs {
  at::Tensor a, b, out;  // a, b: the inputs (contiguous copies only where `materialize` asked for them)
  RowLayout la, lb;      // rows of a and b in the output's row order
  int64_t rows = 0;
  int n1 = 0, n2 = 0, no = 0;
};

// Checks everything the kernels rely on (dtypes, sizes, devices) and describes how to read each input's
// rows. With `materialize` (the CUDA kernel streams dense rows) the inputs are broadcast and made
// contiguous; otherwise they are read in place, whatever their strides.
inline PreparedArgs prepare_rows(const at::Tensor& x1, const at::Tensor& x2, int64_t lmax_out, bool allow_half,
                                 bool materialize) {
  constexpr const char* op = kOpName;
  const auto s = x1.scalar_type();
  const bool ok = s == at::kFloat || s == at::kDouble || (allow_half && (s == at::kHalf || s == at::kBFloat16));
  TORCH_CHECK_TYPE(ok, op, ": x1 must be float32 or float64", allow_half ? " (or float16/bfloat16)" : "",
                   " on this device, got ", s);
  TORCH_CHECK_TYPE(x2.scalar_type() == s, op, ": x2 must have x1's dtype ", s, ", got ", x2.scalar_type());
  TORCH_CHECK_VALUE(x2.device() == x1.device(), op, ": x1 and x2 must be on one device, got x1 on ", x1.device(),
                    ", x2 on ", x2.device());
  check_min_dim(x1, 1, op, "x1");
  check_min_dim(x2, 1, op, "x2");
  const int64_t l1 = lmax_of(x1.size(-1), op, "x1");
  const int64_t l2 = lmax_of(x2.size(-1), op, "x2");
  TORCH_CHECK_VALUE(l1 <= kMaxL && l2 <= kMaxL, op, ": input degrees must be <= ", kMaxL, ", got ", l1, " and ", l2);
  // Not capped at L1+L2: backward asks for the gradient of x1 (degree L1) as a product of x2 and the
  // output gradient, and L1 may exceed L2+Lo; those outputs are then simply zero.
  TORCH_CHECK_VALUE(lmax_out >= 0 && lmax_out <= 2 * kMaxL, op, ": lmax_out must be between 0 and ", 2 * kMaxL,
                    ", got ", lmax_out);

  PreparedArgs r;
  r.n1 = static_cast<int>(x1.size(-1));
  r.n2 = static_cast<int>(x2.size(-1));
  r.no = static_cast<int>((lmax_out + 1) * (lmax_out + 1));
  const auto lead1 = x1.sizes().slice(0, x1.dim() - 1);
  const auto lead2 = x2.sizes().slice(0, x2.dim() - 1);
  std::vector<int64_t> lead = at::infer_size(lead1, lead2);
  r.rows = c10::multiply_integers(lead);
  std::vector<int64_t> shape_out(lead);
  shape_out.push_back(r.no);
  r.out = at::empty(shape_out, x1.options());
  auto place = [&](const at::Tensor& x, int64_t n, at::Tensor& dst, RowLayout& layout) {
    std::vector<int64_t> shape(lead);
    shape.push_back(n);
    dst = materialize ? x.expand(shape).contiguous() : x;
    if (!make_row_layout(dst, lead, layout)) {
      dst = x.expand(shape).contiguous();
      TORCH_INTERNAL_ASSERT(make_row_layout(dst, lead, layout));
    }
  };
  place(x1, r.n1, r.a, r.la);
  place(x2, r.n2, r.b, r.lb);
  return r;
}

// The sparse-direct op's table: shape, dtype, device, and every index in range (checked on the host, so
// that no table a caller passes makes a kernel read or write out of bounds). Returns it contiguous.
inline at::Tensor check_sparse_table(const at::Tensor& x1, const at::Tensor& paths, const at::Tensor& coeffs,
                                     const PreparedArgs& r) {
  constexpr const char* op = kOpName;
  TORCH_CHECK_TYPE(paths.scalar_type() == at::kInt, op, ": paths must be int32, got ", paths.scalar_type());
  TORCH_CHECK_VALUE(paths.dim() == 2 && paths.size(1) == 3, op, ": paths must have shape [nnz, 3], got ",
                    paths.sizes());
  TORCH_CHECK_VALUE(coeffs.dim() == 1 && coeffs.size(0) == paths.size(0), op, ": coeffs must have shape [",
                    paths.size(0), "] (one per path), got ", coeffs.sizes());
  TORCH_CHECK_TYPE(coeffs.is_floating_point(), op, ": coeffs must be floating point, got ", coeffs.scalar_type());
  TORCH_CHECK_VALUE(paths.device() == x1.device() && coeffs.device() == x1.device(), op,
                    ": all tensors must be on one device, got x1 on ", x1.device(), ", paths on ", paths.device(),
                    ", coeffs on ", coeffs.device());
  at::Tensor p = paths.contiguous();
  const at::Tensor host = p.is_cpu() ? p : p.cpu();
  const int32_t* t = host.const_data_ptr<int32_t>();
  for (int64_t n = 0; n < host.size(0); ++n) {
    TORCH_CHECK_VALUE(t[3 * n] >= 0 && t[3 * n] < r.n1 && t[3 * n + 1] >= 0 && t[3 * n + 1] < r.n2 &&
                          t[3 * n + 2] >= 0 && t[3 * n + 2] < r.no,
                      op, ": paths[", n, "] = (", t[3 * n], ", ", t[3 * n + 1], ", ", t[3 * n + 2],
                      ") is out of range for sizes (", r.n1, ", ", r.n2, ", ", r.no, ")");
  }
  return p;
}

}  // namespace symkernels::gaunt
