"""Public Hadamard ops: argument checks, backend choice, fake and autograd registrations."""
from __future__ import annotations

import math

import torch

from symkernels import _backend, _library
from symkernels.hadamard import hadamard_k, hadamard_k_ops, reference

OP_NAME = "hadamard_transform"
IMPLEMENTED = ("reference", "cpu", "cuda", "triton")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_triton_transform = _library.TritonLauncher("symkernels.hadamard.triton.hadamard_transform")
MAX_SIZE = 1 << reference.MAX_LOG2_SIZE


def _check_args(x: torch.Tensor, scale: float) -> None:
    _backend.check_float_tensor(OP_NAME, "x", x, "the transformed one", SUPPORTED_DTYPES)
    n = x.shape[-1]
    if n < 2 or n > MAX_SIZE or n & (n - 1):
        lower = 1 << max(1, min(reference.MAX_LOG2_SIZE, n.bit_length() - 1)) if n > 0 else 2
        upper = min(MAX_SIZE, max(2, lower * 2 if lower < n else lower))
        raise ValueError(f"{OP_NAME}: x.shape[-1] must be a power of two between 2 and {MAX_SIZE}, or K·2^m ≤ "
                         f"{hadamard_k.MAX_SIZE} for K in {hadamard_k.ORDERS_SUMMARY}, got {n} (nearest supported sizes: "
                         f"{sorted({lower, upper} | set(hadamard_k.nearest_supported(n)))})")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{OP_NAME}: scale must be a finite Python number, got {scale!r}")


def hadamard_transform(x: torch.Tensor, scale: float = 1.0, *, transpose: bool = False,
                       backend: str | None = None) -> torch.Tensor:
    """Fast Walsh–Hadamard transform along the last dimension.

    Args:
        x: ``[..., n]`` with n = 2^k, 1 ≤ k ≤ 15; float16, bfloat16, float32 or float64. Any strides.
        scale: multiplies the result; ``1/sqrt(n)`` makes the transform orthonormal and self-inverse.
        backend: ``None`` (fastest available for x's device), ``"reference"``, ``"cpu"``, ``"cuda"``
            or ``"triton"``.

    Returns:
        ``[..., n]``, same dtype, contiguous; equal to ``x @ H_n.T * scale`` with the Sylvester-ordered
        Hadamard matrix H_n (``symkernels.hadamard.reference.hadamard_matrix``), computed in fp32
        (fp64 for fp64 inputs) and rounded once. Differentiable to any order (backward is the same
        transform of the gradient, since H_n is symmetric), also in forward mode.

    Non-power-of-two sizes n = K·2^m (K in ``hadamard_k.ORDERS``, e.g. 11008 = 172·2^6, 4864 = 76·2^6) use
    H_n = H_K ⊗ H_{2^m}, element index k·2^m + j, in one pass (``hadamard_k_ops``). H_K need not be
    symmetric, so there ``transpose=True`` gives ``x @ H_n * scale`` (the inverse, with scale 1/n);
    for powers of two it changes nothing.
    """
    if isinstance(x, torch.Tensor) and x.dim() > 0 and hadamard_k.decompose(x.shape[-1]) is not None:
        return hadamard_k_ops.hadamard_transform_k(x, scale, transpose=transpose, backend=backend)
    _check_args(x, scale)
    impl = _backend.resolve(OP_NAME, x.device, backend, IMPLEMENTED)
    if impl == "reference":
        return reference.hadamard_transform(x, scale)
    return _HadamardFunction.apply(x, float(scale), impl)


def _raw_transform(x: torch.Tensor, scale: float, impl: str) -> torch.Tensor:
    """One kernel call, no autograd recording."""
    if impl == "triton":
        return _triton_transform(x, scale)
    return torch.ops.symkernels.hadamard_transform(x, scale)


class _HadamardFunction(torch.autograd.Function):
    """Autograd for the kernel backends, in both modes.

    The transform is linear and symmetric, so the gradient (reverse mode) and the tangent (forward mode)
    are both the same transform applied to the incoming gradient / tangent. ``backward`` calls ``apply``
    again, so double (and higher) backward is recorded as well. This wrapper exists because a bare
    ``torch.library`` op has no forward-mode formula; the dispatcher op below carries its own
    registration (``_library.register_op``) for users calling ``torch.ops.symkernels.hadamard_transform`` directly.
    """

    @staticmethod
    def forward(x, scale, impl):
        return _raw_transform(x, scale, impl)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, ctx.scale, ctx.impl = inputs

    @staticmethod
    def backward(ctx, grad):
        return _HadamardFunction.apply(grad, ctx.scale, ctx.impl), None, None

    @staticmethod
    def jvp(ctx, x_tangent, _scale_tangent, _impl_tangent):
        return _HadamardFunction.apply(x_tangent, ctx.scale, ctx.impl)

    @staticmethod
    def vmap(info, in_dims, x, scale, impl):
        # The op maps over every leading dim, so a vmapped batch dim only has to stay off the last dim.
        x_bdim = in_dims[0]
        if x_bdim is not None:
            x = x.movedim(x_bdim, 0)
        return _HadamardFunction.apply(x, scale, impl), 0 if x_bdim is not None else None


# The transform is linear and symmetric: gradient and tangent are the op applied to them, so the op is
# its own backward and jvp, to every order.
def _fake(x, scale):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _setup_context(ctx, inputs, output):
    ctx.scale = inputs[1]


def _backward(ctx, grad):
    return torch.ops.symkernels.hadamard_transform(grad, ctx.scale), None


def _jvp(ctx, x_tangent, _scale_tangent):
    return torch.ops.symkernels.hadamard_transform(x_tangent, ctx.scale)


# The op maps over all leading dims, so a vmapped dim only has to be moved off the last one.
def _vmap(info, in_dims, x, scale):
    x_bdim = in_dims[0]
    if x_bdim is None:
        return torch.ops.symkernels.hadamard_transform(x, scale), None
    return torch.ops.symkernels.hadamard_transform(x.movedim(x_bdim, 0), scale), 0


_library.register_op(OP_NAME, fake=_fake, setup_context=_setup_context, backward=_backward, jvp=_jvp,
                     vmap=_vmap, triton=_triton_transform)
