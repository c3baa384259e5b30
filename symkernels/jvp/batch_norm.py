"""batch_norm_dual: primal and T tangents of ``F.batch_norm`` in one pass over the statistics.

Per channel c the statistics run over the batch and spatial dims. With batch statistics (training, or no
running statistics) x̂ = (x − μ)/σ and, as layer norm's rule over those dims (fwdgrad.md §4),
    ẋ̂ = (ẋ − mean ẋ − x̂·mean(x̂ ẋ)) / σ,      ẏ = γ ẋ̂ + γ̇ x̂ + β̇;
with running statistics (eval) μ and σ are constants and ẋ̂ = ẋ / σ. μ, σ and x̂ are computed once and
shared by all T tangents (torch.func.jvp / vmap(jvp) recompute them per tangent). ATen composition; the
tangent is made of differentiable torch ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from symkernels.jvp import ops

OP_NAME = "batch_norm_dual"


def batch_norm_dual(x: torch.Tensor, x_t: torch.Tensor | None, weight: torch.Tensor | None = None,
                    weight_t: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                    bias_t: torch.Tensor | None = None, running_mean: torch.Tensor | None = None,
                    running_var: torch.Tensor | None = None, training: bool = True, momentum: float = 0.1,
                    eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps), its tangent)``.

    x ``[N, C, *spatial]``; x_t ``x.shape`` or ``[T, *x.shape]``; weight/bias ``[C]``, their tangents ``[C]`` or
    ``[T, C]`` (None: zero). In training the running statistics, when given, are updated in place exactly as
    F.batch_norm does (from the primal). Returns y and y_t (``[T, *x.shape]`` when a tangent carries T).
    """
    ops._check_tensor("x", x, None, OP_NAME)
    for name, t in (("x_t", x_t), ("weight", weight), ("weight_t", weight_t), ("bias", bias), ("bias_t", bias_t),
                    ("running_mean", running_mean), ("running_var", running_var)):
        if t is not None:
            ops._check_tensor(name, t, x.dtype, OP_NAME)
    if x.dim() < 2:
        raise ValueError(f"{OP_NAME}: x must have shape [N, C, *spatial], got {list(x.shape)}")
    C = x.shape[1]
    for name, p, t in (("weight", weight, weight_t), ("bias", bias, bias_t)):
        if p is not None and tuple(p.shape) != (C,):
            raise ValueError(f"{OP_NAME}: {name} must have shape [C={C}], got {list(p.shape)}")
        if t is not None and p is None:
            raise ValueError(f"{OP_NAME}: {name}_t was given but {name} is None")
    counts = {name: c for name, c in (
        ("x_t", ops._tangent_count("x_t", x_t, tuple(x.shape), "x", OP_NAME)),
        ("weight_t", ops._tangent_count("weight_t", weight_t, (C,), "weight", OP_NAME)),
        ("bias_t", ops._tangent_count("bias_t", bias_t, (C,), "bias", OP_NAME)),
    ) if c is not None}
    T = ops.common_tangent_count(OP_NAME, counts)
    dims = [0, *range(2, x.dim())]
    channel = (1, C) + (1,) * (x.dim() - 2)  # broadcasts a [C] vector over x
    batch_stats = training or running_mean is None or running_var is None
    if batch_stats:
        mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    else:
        mean, var = running_mean.view(channel), running_var.view(channel)
    inv_std = torch.rsqrt(var + eps)
    x_hat = (x - mean) * inv_std
    # The primal by F.batch_norm itself: the same numbers, and the running statistics' update.
    y = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    y_t = x.new_zeros((T, *x.shape))
    tangent = lambda t, name: t if name in counts else t.unsqueeze(0)  # noqa: E731  a T dim, 1 = shared
    if x_t is not None:
        xt = tangent(x_t, "x_t")
        if batch_stats:
            tdims = [d + 1 for d in dims]
            xh_t = (xt - xt.mean(tdims, keepdim=True) - x_hat * (x_hat * xt).mean(tdims, keepdim=True)) * inv_std
        else:
            xh_t = xt * inv_std
        y_t = y_t + (xh_t if weight is None else xh_t * weight.view(channel))
    if weight_t is not None:
        y_t = y_t + x_hat * tangent(weight_t, "weight_t").view(-1, *channel)
    if bias_t is not None:
        y_t = y_t + tangent(bias_t, "bias_t").view(-1, *channel)
    return y, (y_t if counts else y_t[0])
