// Argument checks of the JVP pillar's dual ops, shared by the CPU kernels and the CUDA glue so that every
// device reports the same errors (ValueError / TypeError naming the op and the argument). The tensors come
// back contiguous, with the T-counts of the optional tangents resolved (0: absent, 1: shared by all T).
// Also the row duals' common entry (checks, outputs, empty early return) and registration, per device.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#include "common/checks.h"
#include "jvp/jvp.h"

namespace symkernels::jvp {

inline Activation parse_activation(const std::string& name, const char* op) {
  if (name == "none") return Activation::kNone;
  if (name == "relu") return Activation::kRelu;
  if (name == "gelu") return Activation::kGelu;
  if (name == "gelu_tanh") return Activation::kGeluTanh;
  if (name == "silu") return Activation::kSilu;
  if (name == "tanh") return Activation::kTanh;
  TORCH_CHECK_VALUE(false, op, ": activation must be one of none, relu, gelu, gelu_tanh, silu, tanh, got '", name,
                    "'");
}

inline Distribution parse_distribution(const std::string& name, const char* op) {
  if (name == "gaussian") return Distribution::kGaussian;
  if (name == "rademacher") return Distribution::kRademacher;
  TORCH_CHECK_VALUE(false, op, ": distribution must be 'gaussian' or 'rademacher', got '", name, "'");
}

inline const char* row_op_name(RowKind kind) {
  switch (kind) {
    case RowKind::kLayerNorm: return "layer_norm_dual";
    case RowKind::kRmsNorm: return "rms_norm_dual";
    case RowKind::kSoftmax: return "softmax_dual";
  }
  return "row_dual";
}

// An optional primal-shaped tensor (weight / bias of a row op): dtype and device of x, the given shape.
inline void check_like(const std::optional<at::Tensor>& t, const at::Tensor& x, at::IntArrayRef shape, const char* op,
                       const char* arg) {
  if (!t.has_value()) return;
  TORCH_CHECK_TYPE(t->scalar_type() == x.scalar_type(), op, ": ", arg, " must have the dtype of x (",
                   x.scalar_type(), "), got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->device() == x.device(), op, ": ", arg, " must be on ", x.device(), ", got ", t->device());
  TORCH_CHECK_VALUE(t->sizes() == shape, op, ": ", arg, " must have shape ", shape, ", got ", t->sizes());
}

// Leading tangent count (0 if absent) of an optional canonical tangent [Tk, *primal.shape], Tk in {1, T}.
inline int64_t check_tangent(const std::optional<at::Tensor>& t, const at::Tensor& primal, const char* op,
                             const char* arg, const char* primal_arg, int64_t T) {
  if (!t.has_value() || T == 0) return 0;
  TORCH_CHECK_TYPE(t->scalar_type() == primal.scalar_type(), op, ": ", arg, " must have the dtype of ", primal_arg,
                   " (", primal.scalar_type(), "), got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->device() == primal.device(), op, ": ", arg, " must be on ", primal.device(), ", got ",
                    t->device());
  TORCH_CHECK_VALUE(t->dim() == primal.dim() + 1 && t->sizes().slice(1) == primal.sizes(), op, ": ", arg,
                    " must have shape [T, ", primal.sizes(), "] (T = 1 or num_tangents), got ", t->sizes());
  TORCH_CHECK_VALUE(t->size(0) == 1 || t->size(0) == T, op, ": ", arg, ".shape[0] must be 1 or num_tangents=", T,
                    ", got ", t->size(0));
  return t->size(0);
}

inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t, int64_t count) {
  return count && t.has_value() ? t->contiguous() : at::Tensor();
}

// ---------------------------------------------------------------------------------------------- linear_dual
struct LinearArgs {
  at::Tensor x, x_t, weight, weight_t, bias, bias_t;  // undefined when absent (x_t etc.: or T = 0)
  int64_t M, K, N, T, Tx, Tw, Tb;                      // Tw = T for a seeded weight tangent
  Activation act;
  Distribution dist;
  int64_t seed;  // -1: weight_t given (or none)
};

inline LinearArgs prepare_linear_args(const at::Tensor& x, const std::optional<at::Tensor>& x_t,
                                      const at::Tensor& weight, const std::optional<at::Tensor>& weight_t,
                                      const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& bias_t,
                                      const std::string& activation, int64_t num_tangents, int64_t seed,
                                      const std::string& distribution) {
  constexpr const char* op = "linear_dual";
  check_floating(x, op, "x");
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), op, ": weight must have the dtype of x (",
                   x.scalar_type(), "), got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == x.device(), op, ": weight must be on ", x.device(), ", got ", weight.device());
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must have shape [M, K], got ", x.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == x.size(1), op, ": weight must have shape [N, K=",
                    x.size(1), "], got ", weight.sizes());
  LinearArgs a;
  a.M = x.size(0), a.K = x.size(1), a.N = weight.size(0), a.T = num_tangents;
  TORCH_CHECK_VALUE(a.T >= 0, op, ": num_tangents must be >= 0, got ", a.T);
  a.act = parse_activation(activation, op);
  a.dist = parse_distribution(distribution, op);
  if (bias.has_value()) {
    TORCH_CHECK_TYPE(bias->scalar_type() == x.scalar_type(), op, ": bias must have the dtype of x (",
                     x.scalar_type(), "), got ", bias->scalar_type());
    TORCH_CHECK_VALUE(bias->device() == x.device(), op, ": bias must be on ", x.device(), ", got ", bias->device());
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == a.N, op, ": bias must have shape [N=", a.N, "], got ",
                      bias->sizes());
  }
  TORCH_CHECK_VALUE(!(bias_t.has_value() && !bias.has_value()), op, ": bias_t given without bias");
  const bool seeded = seed >= 0;
  TORCH_CHECK_VALUE(!(seeded && weight_t.has_value()), op, ": give weight_t or a seed, not both");
  TORCH_CHECK_VALUE(seed < (int64_t{1} << 31), op, ": seed must be in [0, 2**31), got ", seed);
  a.Tx = check_tangent(x_t, x, op, "x_t", "x", a.T);
  a.Tw = check_tangent(weight_t, weight, op, "weight_t", "weight", a.T);
  a.Tb = bias.has_value() ? check_tangent(bias_t, *bias, op, "bias_t", "bias", a.T) : 0;
  a.seed = seeded && a.T ? seed : -1;
  if (a.seed >= 0) {
    a.Tw = a.T;
    TORCH_CHECK_VALUE(a.T * a.N * a.K < (int64_t{1} << 31), op, ": seeded tangents support T*N*K < 2**31, got ",
                      a.T * a.N * a.K);
  }
  a.x = x.contiguous();
  a.weight = weight.contiguous();
  a.bias = bias.has_value() ? bias->contiguous() : at::Tensor();
  a.x_t = contiguous_or_undefined(x_t, a.Tx);
  a.weight_t = contiguous_or_undefined(weight_t, a.seed >= 0 ? 0 : a.Tw);
  a.bias_t = contiguous_or_undefined(bias_t, a.Tb);
  return a;
}

// ------------------------------------------------------------------------------------------------- row_dual
struct RowArgs {
  at::Tensor x, x_t, weight, weight_t, bias, bias_t;  // contiguous; undefined when absent
  int64_t R, N, T, Tx, Tw, Tb;
  RowKind kind;
  double eps;
};

// The schemas already keep softmax's weight/bias and RMS norm's bias absent (see schema.cpp).
inline RowArgs prepare_row_args(RowKind kind, const at::Tensor& x, const std::optional<at::Tensor>& x_t,
                                const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& weight_t,
                                const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& bias_t,
                                double eps, int64_t num_tangents) {
  const char* op = row_op_name(kind);
  check_floating(x, op, "x");
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must have shape [R, N], got ", x.sizes());
  RowArgs a;
  a.kind = kind;
  a.R = x.size(0), a.N = x.size(1), a.T = num_tangents, a.eps = eps;
  TORCH_CHECK_VALUE(a.T >= 0, op, ": num_tangents must be >= 0, got ", a.T);
  TORCH_CHECK_VALUE(eps >= 0, op, ": eps must be >= 0, got ", eps);  // also rejects NaN
  check_like(weight, x, {a.N}, op, "weight");
  check_like(bias, x, {a.N}, op, "bias");
  TORCH_CHECK_VALUE(!(weight_t.has_value() && !weight.has_value()), op, ": weight_t given without weight");
  TORCH_CHECK_VALUE(!(bias_t.has_value() && !bias.has_value()), op, ": bias_t given without bias");
  a.Tx = check_tangent(x_t, x, op, "x_t", "x", a.T);
  a.Tw = weight.has_value() ? check_tangent(weight_t, *weight, op, "weight_t", "weight", a.T) : 0;
  a.Tb = bias.has_value() ? check_tangent(bias_t, *bias, op, "bias_t", "bias", a.T) : 0;
  a.x = x.contiguous();
  a.weight = weight.has_value() ? weight->contiguous() : at::Tensor();
  a.bias = bias.has_value() ? bias->contiguous() : at::Tensor();
  a.x_t = contiguous_or_undefined(x_t, a.Tx);
  a.weight_t = contiguous_or_undefined(weight_t, a.Tw);
  a.bias_t = contiguous_or_undefined(bias_t, a.Tb);
  return a;
}

// Element stride between the T slices of a canonical tangent [Tk, ...] of `size` elements: a tangent shared
// by all T (Tk = 1) is read with stride 0.
inline int64_t tangent_stride(int64_t count, int64_t size) { return count > 1 ? size : int64_t{0}; }

// Typed data pointer of an optional (possibly undefined) tensor, for the raw-pointer kernel parameters.
template <typename In, typename TorchIn>
const In* data_or_null(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<const In*>(t.const_data_ptr<TorchIn>()) : nullptr;
}

// A device's row-dual kernel: y [R,N] and y_t [T,R,N] from checked arguments, never called with R or N 0.
using RowDualKernel = void (*)(const RowArgs&, at::Tensor& y, at::Tensor& y_t);

// The row duals on every device: the checks, the outputs, and the device's kernel unless they are empty.
template <RowDualKernel Kernel>
std::tuple<at::Tensor, at::Tensor> row_dual(RowKind kind, const at::Tensor& x, const std::optional<at::Tensor>& x_t,
                                            const std::optional<at::Tensor>& weight,
                                            const std::optional<at::Tensor>& weight_t,
                                            const std::optional<at::Tensor>& bias,
                                            const std::optional<at::Tensor>& bias_t, double eps,
                                            int64_t num_tangents) {
  const RowArgs a = prepare_row_args(kind, x, x_t, weight, weight_t, bias, bias_t, eps, num_tangents);
  at::Tensor y = at::empty({a.R, a.N}, x.options());
  at::Tensor y_t = at::empty({a.T, a.R, a.N}, x.options());
  if (a.R > 0 && a.N > 0) Kernel(a, y, y_t);
  return {y, y_t};
}

// The three row ops have their own schemas (softmax has no weight, rms_norm no bias); each device implements
// one row kernel and registers these schema-shaped entry points instantiated on it (register_row_duals).
template <RowDualKernel Kernel>
std::tuple<at::Tensor, at::Tensor> layer_norm_dual(const at::Tensor& x, const std::optional<at::Tensor>& x_t,
                                                   const std::optional<at::Tensor>& weight,
                                                   const std::optional<at::Tensor>& weight_t,
                                                   const std::optional<at::Tensor>& bias,
                                                   const std::optional<at::Tensor>& bias_t, double eps,
                                                   int64_t num_tangents) {
  return row_dual<Kernel>(RowKind::kLayerNorm, x, x_t, weight, weight_t, bias, bias_t, eps, num_tangents);
}

template <RowDualKernel Kernel>
std::tuple<at::Tensor, at::Tensor> rms_norm_dual(const at::Tensor& x, const std::optional<at::Tensor>& x_t,
                                                 const std::optional<at::Tensor>& weight,
                                                 const std::optional<at::Tensor>& weight_t, double eps,
                                                 int64_t num_tangents) {
  return row_dual<Kernel>(RowKind::kRmsNorm, x, x_t, weight, weight_t, std::nullopt, std::nullopt, eps,
                          num_tangents);
}

template <RowDualKernel Kernel>
std::tuple<at::Tensor, at::Tensor> softmax_dual(const at::Tensor& x, const std::optional<at::Tensor>& x_t,
                                                int64_t num_tangents) {
  return row_dual<Kernel>(RowKind::kSoftmax, x, x_t, std::nullopt, std::nullopt, std::nullopt, std::nullopt, 0.0,
                          num_tangents);
}

// A device's TORCH_LIBRARY_IMPL block for the three row ops.
template <RowDualKernel Kernel>
void register_row_duals(torch::Library& m) {
  m.impl("layer_norm_dual", TORCH_FN(layer_norm_dual<Kernel>));
  m.impl("rms_norm_dual", TORCH_FN(rms_norm_dual<Kernel>));
  m.impl("softmax_dual", TORCH_FN(softmax_dual<Kernel>));
}

}  // namespace symkernels::jvp
