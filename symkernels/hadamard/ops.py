"""Public Hadamard ops: argument checks, backend choice, fake and autograd registrations.

Two dispatcher ops, each registered once with ``_library.register_op``: ``hadamard_transform`` (n a power
of two) and ``hadamard_transform_k`` (n = K·2^m, the K×K factor passed in), each with an ``.out`` overload
writing into a caller's buffer. The public ``hadamard_transform`` serves both sizes and picks the op;
``randomized_hadamard_transform`` is built on it.
"""
from __future__ import annotations

import math

import torch

from symkernels import _backend, _library
from symkernels.hadamard import matrices, reference

OP_NAME = "hadamard_transform"
OP_NAME_K = "hadamard_transform_k"
IMPLEMENTED = ("reference", "cpu", "cuda", "triton")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_triton_transform = _library.TritonLauncher("symkernels.hadamard.triton.hadamard_transform")
_triton_transform_k = _library.TritonLauncher("symkernels.hadamard.triton.hadamard_transform_k")
_triton_transform_out = _library.TritonLauncher("symkernels.hadamard.triton.hadamard_transform_out")
_triton_transform_k_out = _library.TritonLauncher("symkernels.hadamard.triton.hadamard_transform_k_out")
MAX_POWER_OF_TWO = 1 << matrices.MAX_LOG2_SIZE


def _check_args(x: torch.Tensor, scale: float, transpose: bool, op: str = OP_NAME) -> torch.Tensor | None:
    """The K×K factor to apply for x's size n = K·2^m (``matrices.hk_for``; None for a power of two), once x
    and scale are valid for ``op``. Error messages name ``hadamard_transform`` (the public function)."""
    _backend.check_float_tensor(OP_NAME, "x", x, "the transformed one", SUPPORTED_DTYPES)
    n = x.shape[-1]
    kp = matrices.factor(n)
    if op == OP_NAME_K and (kp is None or kp[0] == 1):
        raise ValueError(f"{OP_NAME}: x.shape[-1] = {n} is not a supported size (a power of two 2..32768, or K·2^m "
                         f"≤ {matrices.MAX_SIZE} for K in {matrices.ORDERS_SUMMARY}); nearest supported "
                         f"sizes: {matrices.nearest_supported(n)}")
    if kp is None:
        lower = 1 << max(1, min(matrices.MAX_LOG2_SIZE, n.bit_length() - 1)) if n > 0 else 2
        upper = min(MAX_POWER_OF_TWO, max(2, lower * 2 if lower < n else lower))
        raise ValueError(f"{OP_NAME}: x.shape[-1] must be a power of two between 2 and {MAX_POWER_OF_TWO}, or "
                         f"K·2^m ≤ {matrices.MAX_SIZE} for K in {matrices.ORDERS_SUMMARY}, got {n} (nearest supported "
                         f"sizes: {sorted({lower, upper} | set(matrices.nearest_supported(n)))})")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{OP_NAME}: scale must be a finite Python number, got {scale!r}")
    return None if kp[0] == 1 else matrices.hk_for(n, x.dtype, x.device, transpose)


def _check_out(x: torch.Tensor, out: torch.Tensor) -> None:
    """``out=`` must be a contiguous buffer of x's shape, dtype and device that the kernel can write while it
    reads x (the C++ kernels check the same for direct ``torch.ops`` calls)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{OP_NAME}: out must be a torch.Tensor, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"{OP_NAME}: out must have x's shape {tuple(x.shape)}, got {tuple(out.shape)}")
    if out.dtype != x.dtype:
        raise TypeError(f"{OP_NAME}: out must have x's dtype {x.dtype}, got {out.dtype}")
    if out.device != x.device:
        raise ValueError(f"{OP_NAME}: out must be on x's device {x.device}, got {out.device}")
    if not out.is_contiguous():
        raise ValueError(f"{OP_NAME}: out must be contiguous")
    # A strided x is copied before the kernel reads it, so only a contiguous x can overlap out.
    if x.is_contiguous() and _shares_memory(x, out):
        raise ValueError(f"{OP_NAME}: out must not share memory with x")
    if torch.is_grad_enabled() and (x.requires_grad or out.requires_grad):
        raise RuntimeError(f"{OP_NAME}: out= does not record autograd (as in torch, functions with out= are not "
                           "differentiable), but x or out requires grad; call it without out= or under torch.no_grad()")


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two contiguous tensors' byte ranges intersect."""
    if a.numel() == 0 or b.numel() == 0 or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    a_start, b_start = a.data_ptr(), b.data_ptr()
    return a_start < b_start + b.numel() * b.element_size() and b_start < a_start + a.numel() * a.element_size()


def hadamard_transform(x: torch.Tensor, scale: float = 1.0, *, transpose: bool = False,
                       backend: str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Fast Walsh–Hadamard transform along the last dimension.

    Args:
        x: ``[..., n]`` with n = 2^k, 1 ≤ k ≤ 15; float16, bfloat16, float32 or float64. Any strides.
        scale: multiplies the result; ``1/sqrt(n)`` makes the transform orthonormal and self-inverse.
        backend: ``None`` (fastest available for x's device), ``"reference"``, ``"cpu"``, ``"cuda"``
            or ``"triton"``.

        out: where to write the result instead of a new tensor: contiguous, x's shape, dtype and device, not
            sharing memory with x. Skips the allocation, which at ≥ 8 MB per call costs about as much as the
            transform on CPU (fresh memory is page-faulted in). Not differentiable, as torch's ``out=``.

    Returns:
        ``[..., n]``, same dtype, contiguous (``out`` itself where given); equal to ``x @ H_n.T * scale``
        with the Sylvester-ordered Hadamard matrix H_n (``symkernels.hadamard.hadamard_matrix``), computed
        in fp32 (fp64 for fp64 inputs) and rounded once. Differentiable to any order (backward is the same
        transform of the gradient, since H_n is symmetric), also in forward mode.

    Non-power-of-two sizes n = K·2^m (K in ``symkernels.hadamard.ORDERS``, e.g. 11008 = 172·2^6, 4864 =
    76·2^6) use H_n = H_K ⊗ H_{2^m}, element index k·2^m + j, in one pass (``hadamard_transform_k``). H_K
    need not be symmetric, so there ``transpose=True`` gives ``x @ H_n * scale`` (the inverse, with scale
    1/n); for powers of two it changes nothing.
    """
    hk = _check_args(x, scale, transpose)
    impl = _backend.resolve(OP_NAME if hk is None else OP_NAME_K, x.device, backend, IMPLEMENTED)
    if out is not None:
        _check_out(x, out)
        _transform_into(x, hk, float(scale), impl, out)
        return out
    if impl == "reference":
        return reference.fwht(x, scale) if hk is None else reference.reference_two_pass(x, hk, scale)
    if hk is None:
        return _HadamardFunction.apply(x, float(scale), impl)
    return _KronHadamardFunction.apply(x, hk, float(scale), impl)


def _transform_into(x: torch.Tensor, hk: torch.Tensor | None, scale: float, impl: str, out: torch.Tensor) -> None:
    """One kernel call writing into ``out`` (validated), for either size family."""
    if impl == "reference":
        out.copy_(reference.fwht(x, scale) if hk is None else reference.reference_two_pass(x, hk, scale))
    elif impl == "triton":
        if hk is None:
            _triton_transform_out(x, scale, out=out)
        else:
            _triton_transform_k_out(x, hk, scale, out=out)
    elif hk is None:
        torch.ops.symkernels.hadamard_transform.out(x, scale, out=out)
    else:
        torch.ops.symkernels.hadamard_transform_k.out(x, hk, scale, out=out)


def _raw_transform(x: torch.Tensor, scale: float, impl: str) -> torch.Tensor:
    """One kernel call, no autograd recording."""
    if impl == "triton":
        return _triton_transform(x, scale)
    return torch.ops.symkernels.hadamard_transform(x, scale)


class _HadamardFunction(_library.KernelFunction):
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


# The .out overloads of both ops: no autograd (like torch's out= overloads); the fake only has to exist, since
# nothing is returned.
def _fake_out(*args, out):
    return None


_library.register_op(f"{OP_NAME}.out", fake=_fake_out, triton=_triton_transform_out)


# ---------------------------------------------------------------------------------------------------
# n = K·2^m

def hadamard_transform_k(x: torch.Tensor, scale: float = 1.0, *, transpose: bool = False,
                         backend: str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Hadamard transform of a non-power-of-two size n = K·2^m along the last dimension.

    Returns ``x @ H_n.T * scale`` (``transpose=True``: ``x @ H_n * scale``, the inverse up to 1/n)
    with H_n = H_K ⊗ H_{2^m}: element index k·2^m + j ↔ (k, j). Computed in one pass per row on every
    kernel backend (FWHT over 2^m and the K×K mix in registers/cache), in fp32 (fp64 for fp64 inputs).
    ``symkernels.hadamard_transform`` serves these sizes the same way (``out=`` included); this name
    refuses powers of two.
    """
    _check_args(x, scale, transpose, OP_NAME_K)  # refuses the power-of-two sizes
    return hadamard_transform(x, scale, transpose=transpose, backend=backend, out=out)


def _raw_transform_k(x: torch.Tensor, hk: torch.Tensor, scale: float, impl: str) -> torch.Tensor:
    """One kernel call, no autograd recording."""
    if impl == "triton":
        return _triton_transform_k(x, hk, scale)
    return torch.ops.symkernels.hadamard_transform_k(x, hk, scale)


class _KronHadamardFunction(_library.KernelFunction):
    """Linear in x: the gradient is the transform by the transposed matrix (hkᵀ ⊗ H_P, H_P symmetric),
    the tangent the transform itself; both call ``apply`` so higher orders are recorded too."""

    @staticmethod
    def forward(x, hk, scale, impl):
        return _raw_transform_k(x, hk, scale, impl)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, hk, ctx.scale, ctx.impl = inputs
        ctx.hk = hk

    @staticmethod
    def backward(ctx, grad):
        return _KronHadamardFunction.apply(grad, ctx.hk.t().contiguous(), ctx.scale, ctx.impl), None, None, None

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        return _KronHadamardFunction.apply(x_tangent, ctx.hk, ctx.scale, ctx.impl)

    @staticmethod
    def vmap(info, in_dims, x, hk, scale, impl):
        x_bdim = in_dims[0]
        if in_dims[1] is not None:
            raise NotImplementedError("hadamard_transform_k: vmap over hk is not supported")
        if x_bdim is not None:
            x = x.movedim(x_bdim, 0)
        return _KronHadamardFunction.apply(x, hk, scale, impl), 0 if x_bdim is not None else None


def _fake_k(x, hk, scale):
    torch._check(hk.dim() == 2 and hk.shape[0] == hk.shape[1], lambda: "hk must be square")
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _setup_context_k(ctx, inputs, output):
    ctx.hk, ctx.scale = inputs[1], inputs[2]


# Backward is the same op with hkᵀ, so double backward is the op again; hk gets no gradient.
def _backward_k(ctx, grad):
    return torch.ops.symkernels.hadamard_transform_k(grad, ctx.hk.t().contiguous(), ctx.scale), None, None


# Linear in x: the tangent is the same transform of the input tangent.
def _jvp_k(ctx, x_tangent, _hk_tangent, _scale_tangent):
    return torch.ops.symkernels.hadamard_transform_k(x_tangent, ctx.hk, ctx.scale)


_library.register_op(OP_NAME_K, fake=_fake_k, setup_context=_setup_context_k, backward=_backward_k, jvp=_jvp_k,
                     triton=_triton_transform_k)


_library.register_op(f"{OP_NAME_K}.out", fake=_fake_out, triton=_triton_transform_k_out)


# ---------------------------------------------------------------------------------------------------
# Randomized Hadamard

def randomized_hadamard_transform(x: torch.Tensor, seed: int = 0, *, inverse: bool = False,
                                  backend: str | None = None) -> torch.Tensor:
    """``x @ random_hadamard(n, seed)`` (``inverse=True``: ``x @ Qᵀ``), with the fast transform.

    x·diag(s)·H_nᵀ/√n is the sign flip followed by ``hadamard_transform(·, 1/√n)``; the inverse is
    the transposed transform followed by the same sign flip.
    """
    n = x.shape[-1]
    s = matrices.random_signs(n, seed, dtype=x.dtype, device=x.device)
    if not inverse:
        return hadamard_transform(x * s, 1.0 / math.sqrt(n), backend=backend)
    return hadamard_transform(x, 1.0 / math.sqrt(n), backend=backend, transpose=True) * s
