"""Public Kronecker (n = K·2^m) Hadamard op: argument checks, backend choice, fake and autograd."""
from __future__ import annotations

import functools
import math

import torch

from symkernels import _backend, _library
from symkernels.hadamard import hadamard_k

OP_NAME = "hadamard_transform_k"
IMPLEMENTED = ("reference", "cpu", "cuda", "triton")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_triton_transform = _library.TritonLauncher("symkernels.hadamard.hadamard_k_triton.hadamard_transform_k")


@functools.lru_cache(maxsize=64)
def _hk(k: int, transpose: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    h = hadamard_k.hadamard_k_matrix(k)
    return (h.T if transpose else h).contiguous().to(dtype=dtype, device=device)


# A constant of the traced graph: without this, dynamo would trace through the lru_cache into the
# construction of H_K and its data-dependent H·Hᵀ = K·I check (a graph break under fullgraph=True).
@torch.compiler.assume_constant_result
def hk_for(n: int, dtype: torch.dtype, device: torch.device, transpose: bool = False) -> torch.Tensor:
    """The K×K factor the kernels apply for size n (fp64 for fp64 data, else fp32; ±1 is exact in both)."""
    k, _ = hadamard_k.decompose(n)
    return _hk(k, transpose, torch.float64 if dtype == torch.float64 else torch.float32, device)


def check_args(x: torch.Tensor, scale: float, op: str = "hadamard_transform") -> tuple[int, int]:
    _backend.check_float_tensor(op, "x", x, "the transformed one", SUPPORTED_DTYPES)
    n = x.shape[-1]
    kp = hadamard_k.decompose(n)
    if kp is None:
        raise ValueError(f"{op}: x.shape[-1] = {n} is not a supported size (a power of two 2..32768, or K·2^m "
                         f"≤ {hadamard_k.MAX_SIZE} for K in {hadamard_k.ORDERS_SUMMARY}); nearest supported "
                         f"sizes: {hadamard_k.nearest_supported(n)}")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{op}: scale must be a finite Python number, got {scale!r}")
    return kp


def hadamard_transform_k(x: torch.Tensor, scale: float = 1.0, *, transpose: bool = False,
                         backend: str | None = None) -> torch.Tensor:
    """Hadamard transform of a non-power-of-two size n = K·2^m along the last dimension.

    Returns ``x @ H_n.T * scale`` (``transpose=True``: ``x @ H_n * scale``, the inverse up to 1/n)
    with H_n = H_K ⊗ H_{2^m}: element index k·2^m + j ↔ (k, j). Computed in one pass per row on every
    kernel backend (FWHT over 2^m and the K×K mix in registers/cache), in fp32 (fp64 for fp64 inputs).
    Use ``symkernels.hadamard_transform``, which routes here for these sizes.
    """
    check_args(x, scale)
    impl = _backend.resolve(OP_NAME, x.device, backend, IMPLEMENTED)
    hk = hk_for(x.shape[-1], x.dtype, x.device, transpose)
    if impl == "reference":
        return hadamard_k.reference_two_pass(x, hk, scale)
    return _KronHadamardFunction.apply(x, hk, float(scale), impl)


def raw_transform(x: torch.Tensor, hk: torch.Tensor, scale: float, impl: str) -> torch.Tensor:
    if impl == "triton":
        return _triton_transform(x, hk, scale)
    return torch.ops.symkernels.hadamard_transform_k(x, hk, scale)


class _KronHadamardFunction(torch.autograd.Function):
    """Linear in x: the gradient is the transform by the transposed matrix (hkᵀ ⊗ H_P, H_P symmetric),
    the tangent the transform itself; both call ``apply`` so higher orders are recorded too."""

    @staticmethod
    def forward(x, hk, scale, impl):
        return raw_transform(x, hk, scale, impl)

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


def _fake(x, hk, scale):
    torch._check(hk.dim() == 2 and hk.shape[0] == hk.shape[1], lambda: "hk must be square")
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _setup_context(ctx, inputs, output):
    ctx.hk, ctx.scale = inputs[1], inputs[2]


# Backward is the same op with hkᵀ, so double backward is the op again; hk gets no gradient.
def _backward(ctx, grad):
    return torch.ops.symkernels.hadamard_transform_k(grad, ctx.hk.t().contiguous(), ctx.scale), None, None


# Linear in x: the tangent is the same transform of the input tangent.
def _jvp(ctx, x_tangent, _hk_tangent, _scale_tangent):
    return torch.ops.symkernels.hadamard_transform_k(x_tangent, ctx.hk, ctx.scale)


_library.register_op(OP_NAME, fake=_fake, setup_context=_setup_context, backward=_backward, jvp=_jvp,
                     triton=_triton_transform)
