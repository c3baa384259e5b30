"""Pooling duals: primal and T tangents of ``F.max_pool2d`` / ``F.avg_pool2d`` in one call each.

Both are ATen compositions (no kernel of their own), written so that T tangents cost one pass:
  * max pooling picks, per window, the input element at the primal's argmax; the tangent is that same
    element of each x_t (PyTorch's own forward-AD rule, so ties resolve identically): one max_pool2d with
    indices, then ONE gather over all T tangents;
  * average pooling is linear: the T tangents are pooled as one batch of T·N images.
Unlike conv2d_dual's y_t, these tangents are plain torch ops of differentiable inputs. Inside networks the
transparent path needs no wrapper: PyTorch's forward AD through F.max_pool2d / F.avg_pool2d is exact and
already a single pass, so symkernels' CNNs call them directly (examples.DigitsCNN).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from symkernels.jvp import ops


def _canonical(op: str, x, x_t):
    """x as [N, C, H, W] (an unbatched [C, H, W] gets N = 1), x_t as [T, N, C, H, W]; and how to undo it."""
    ops._check_tensor("x", x, None, op)
    if x_t is not None:
        ops._check_tensor("x_t", x_t, x.dtype, op)
    if x.dim() not in (3, 4):
        raise ValueError(f"{op}: x must have shape [N, C, H, W] or [C, H, W], got {list(x.shape)}")
    T = ops._tangent_count("x_t", x_t, tuple(x.shape), "x", op)
    unbatched = x.dim() == 3
    xc = x.unsqueeze(0) if unbatched else x
    xtc = None
    if x_t is not None:
        xtc = x_t if T is not None else x_t.unsqueeze(0)
        xtc = xtc.unsqueeze(1) if unbatched else xtc

    def outputs(y, y_t):
        if unbatched:
            y, y_t = y[0], (None if y_t is None else y_t[:, 0])
        if y_t is None:
            y_t = torch.zeros((T or 1, *y.shape), dtype=y.dtype, device=y.device)
        return y, (y_t if T is not None else y_t[0])

    return xc, xtc, outputs


def max_pool2d_dual(x: torch.Tensor, x_t: torch.Tensor | None, kernel_size, stride=None, padding=0, dilation=1,
                    ceil_mode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F.max_pool2d(x, ...), its tangent along x_t)``; x ``[N, C, H, W]`` or ``[C, H, W]``, x_t ``x.shape`` or
    ``[T, *x.shape]`` (None: zero). Returns y and y_t (``[T, *y.shape]`` when x_t carries T)."""
    xc, xtc, outputs = _canonical("max_pool2d_dual", x, x_t)
    y, index = F.max_pool2d(xc, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
    if xtc is None:
        return outputs(y, None)
    T = xtc.shape[0]
    # index is the argmax's flat position in its H·W plane: one gather serves every tangent.
    flat_index = index.flatten(-2).unsqueeze(0).expand(T, *index.shape[:-2], -1)
    y_t = xtc.flatten(-2).gather(-1, flat_index).view(T, *y.shape)
    return outputs(y, y_t)


def avg_pool2d_dual(x: torch.Tensor, x_t: torch.Tensor | None, kernel_size, stride=None, padding=0,
                    ceil_mode: bool = False, count_include_pad: bool = True,
                    divisor_override: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F.avg_pool2d(x, ...), its tangent along x_t)``; shapes as ``max_pool2d_dual``."""
    xc, xtc, outputs = _canonical("avg_pool2d_dual", x, x_t)

    def pool(t):
        return F.avg_pool2d(t, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)

    y = pool(xc)
    if xtc is None:
        return outputs(y, None)
    return outputs(y, pool(xtc.flatten(0, 1)).unflatten(0, xtc.shape[:2]))
