"""Public QuaRot ops: per-token INT4 quantization (optionally fused with the Hadamard rotation), its
inverse, a straight-through fake-quantizer, and the W4A4 matmul with a fused fp32 epilogue."""
from __future__ import annotations

import math

import torch

from symkernels import _backend, _library
from symkernels.hadamard import ORDERS_SUMMARY, hadamard_transform, hk_for, nearest_supported, supported_size
from symkernels.hadamard import reference as hadamard_reference
from symkernels.quarot import reference

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
QUANTIZE_IMPLEMENTED = ("reference", "cpu", "triton")
MATMUL_IMPLEMENTED = ("reference", "cpu", "cuda", "triton")
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_triton_quantize = _library.TritonLauncher("symkernels.quarot.triton.quantize_int4")
_triton_matmul = _library.TritonLauncher("symkernels.quarot.triton.int4_matmul")


def _check_quantize_args(x, clip_ratio, hadamard, op="quantize_int4") -> None:
    _backend.check_float_tensor(op, "x", x, "the quantized one", FLOAT_DTYPES)
    n = x.shape[-1]
    if n % 2:
        raise ValueError(f"{op}: x.shape[-1] must be even (two 4-bit codes per byte), got {n}")
    if not isinstance(clip_ratio, (int, float)) or not (0.0 < clip_ratio <= 1.0):
        raise ValueError(f"{op}: clip_ratio must be a number in (0, 1], got {clip_ratio!r}")
    if hadamard and not supported_size(n):
        raise ValueError(f"{op}: hadamard=True needs x.shape[-1] to be a power of two or K·2^m for K in "
                         f"{ORDERS_SUMMARY}, got {n}; nearest supported sizes: {nearest_supported(n)}")


def quantize_int4(x: torch.Tensor, *, clip_ratio: float = 1.0, hadamard: bool = False,
                  backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (per-row) symmetric INT4 quantization, optionally after a Hadamard rotation.

    Args:
        x: ``[..., n]``, n even; float16/bfloat16/float32/float64 (computed in fp32).
        clip_ratio: in (0, 1]; the scale is ``clip_ratio·max|x|/7`` (QuaRot's paper uses 0.9).
        hadamard: rotate each row by ``H_n/√n`` first (``symkernels.hadamard_transform(x, 1/√n)``,
            n a power of two or K·2^m), fused into the same kernel.

    Returns:
        ``(packed, scale)``: packed ``uint8 [..., n/2]``, two's-complement nibbles with the even index in
        the low nibble; scale ``float32 [..., 1]``. ``dequantize_int4(packed, scale)`` ≈ (rotated) x.
        Codes are ``clamp(round_half_even(x/scale), −8, 7)`` (formula in ``symkernels.quarot.reference``).
        Not differentiable (integer output): use ``fake_quantize_int4`` for a straight-through gradient.
    """
    _check_quantize_args(x, clip_ratio, hadamard)
    impl = _backend.resolve("quantize_int4", x.device, backend, QUANTIZE_IMPLEMENTED)
    n, clip_ratio = x.shape[-1], float(clip_ratio)
    # The rotation as the op takes it: H_n = H_K ⊗ H_{n/K} given by its K×K factor ([[1]] for a power of two),
    # times 1/√n.
    hk, rot_scale = (hk_for(n, torch.float32, x.device), 1.0 / math.sqrt(n)) if hadamard else (None, 1.0)
    if impl == "reference":  # unfused: the Hadamard pillar's truth rotates, QuaRot's quantizes
        rotated = x if hk is None else hadamard_reference.reference_two_pass(x.float(), hk, rot_scale)
        return reference.quantize_int4(rotated, clip_ratio)
    x = x.detach()  # not differentiable (integer codes): the op registers no autograd
    if impl == "triton":
        return _triton_quantize(x, clip_ratio, hk, rot_scale)
    return torch.ops.symkernels.quantize_int4(x, clip_ratio, hk, rot_scale)


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, *, dtype: torch.dtype = torch.float32
                    ) -> torch.Tensor:
    """``codes · scale`` from ``quantize_int4``'s output: ``[..., 2·packed.shape[-1]]`` in ``dtype``.

    Pure PyTorch on every device (one elementwise pass; the GEMM fuses this step into its epilogue).
    Differentiable with respect to ``scale``.
    """
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError(f"dequantize_int4: packed must be a uint8 tensor, got "
                        f"{getattr(packed, 'dtype', type(packed).__name__)}")
    if not isinstance(scale, torch.Tensor) or not scale.is_floating_point():
        raise TypeError(f"dequantize_int4: scale must be a floating tensor, got "
                        f"{getattr(scale, 'dtype', type(scale).__name__)}")
    if packed.dim() == 0 or tuple(scale.shape) != (*packed.shape[:-1], 1):
        raise ValueError(f"dequantize_int4: scale must have shape packed.shape[:-1] + (1,) = "
                         f"{(*packed.shape[:-1], 1)}, got {tuple(scale.shape)}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dequantize_int4: dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    return (reference.unpack_int4(packed).to(scale.dtype) * scale).to(dtype)


class _FakeQuantSTE(_library.KernelFunction):
    """Forward: dequantize(quantize(x)); backward: straight-through (identity through the rounding,
    exact through the rotation, whose gradient is the transposed transform)."""

    @staticmethod
    def forward(x, clip_ratio, hadamard, backend):
        packed, scale = quantize_int4(x, clip_ratio=clip_ratio, hadamard=hadamard, backend=backend)
        return dequantize_int4(packed, scale, dtype=x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, ctx.hadamard, ctx.backend = inputs

    @staticmethod
    def backward(ctx, grad):
        if ctx.hadamard:
            n = grad.shape[-1]
            grad = hadamard_transform(grad, 1.0 / math.sqrt(n), transpose=True, backend=ctx.backend)
        return grad, None, None, None


def fake_quantize_int4(x: torch.Tensor, *, clip_ratio: float = 1.0, hadamard: bool = False,
                       backend: str | None = None) -> torch.Tensor:
    """``dequantize_int4(*quantize_int4(x, ...))`` in x's dtype, with a straight-through-estimator
    gradient (for quantization-aware training or learned rotations). With ``hadamard=True`` the result
    lives in the rotated basis (x·H_nᵀ/√n, quantized), and the gradient flows exactly through H_n."""
    _check_quantize_args(x, clip_ratio, hadamard, op="fake_quantize_int4")
    return _FakeQuantSTE.apply(x, float(clip_ratio), bool(hadamard), backend)


def _check_matmul_args(a_packed, a_scale, w_packed, w_scale, bias, out_dtype) -> None:
    op = "int4_matmul"
    for name, t in (("a_packed", a_packed), ("w_packed", w_packed)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8:
            raise TypeError(f"{op}: {name} must be a uint8 tensor of packed int4 pairs, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
        if t.dim() != 2:
            raise ValueError(f"{op}: {name} must be 2-D [rows, K/2], got shape {tuple(t.shape)}")
    for name, t in (("a_scale", a_scale), ("w_scale", w_scale)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
            raise TypeError(f"{op}: {name} must be a float32 tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    m, kb = a_packed.shape
    n, kb_w = w_packed.shape
    if kb != kb_w:
        raise ValueError(f"{op}: a_packed and w_packed must have the same K/2, got {kb} and {kb_w}")
    if a_scale.numel() != m or a_scale.shape not in ((m,), (m, 1)):
        raise ValueError(f"{op}: a_scale must have shape ({m}, 1) or ({m},) to match a_packed, got {tuple(a_scale.shape)}")
    if w_scale.numel() != n or w_scale.shape not in ((n,), (n, 1)):
        raise ValueError(f"{op}: w_scale must have shape ({n}, 1) or ({n},) to match w_packed, got {tuple(w_scale.shape)}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            raise TypeError(f"{op}: bias must be a floating tensor or None, got {getattr(bias, 'dtype', type(bias))}")
        if bias.shape != (n,):
            raise ValueError(f"{op}: bias must have shape ({n},), got {tuple(bias.shape)}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")


def int4_matmul(a_packed: torch.Tensor, a_scale: torch.Tensor, w_packed: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32, *,
                backend: str | None = None) -> torch.Tensor:
    """W4A4 GEMM: ``y[m, n] = fp32(Σ_k a[m, k]·w[n, k]) · a_scale[m] · w_scale[n] + bias[n]``.

    Args:
        a_packed: ``uint8 [M, K/2]`` activation codes (``quantize_int4`` layout); a_scale ``float32 [M, 1]``.
        w_packed: ``uint8 [N, K/2]`` weight codes, one row per output channel; w_scale ``float32 [N, 1]``.
        bias: optional ``[N]`` (any float dtype, added in fp32).
        out_dtype: float32, float16 or bfloat16; the result is rounded once from fp32.

    The integer dot products are exact (int32 accumulation: |acc| ≤ 64·K), the dequantization is done
    in fp32 in the same kernel (no int32 → fp16 overflow). Equal to the reference
    ``(a.int() @ w.int().T) * sa * sw + bias``. Not differentiable (integer inputs).

    CPU kernels: AMX-INT8 tiles where the CPU and OS provide them (Sapphire Rapids+), else AVX-512 VNNI,
    AVX2 or scalar. ``SYMKERNELS_INT4_ISA=amx|avx512|avx2|scalar`` forces one (a path the CPU lacks falls
    back to the best available); ``torch.ops.symkernels.int4_matmul_cpu_isa()`` names the one in use.
    """
    _check_matmul_args(a_packed, a_scale, w_packed, w_scale, bias, out_dtype)
    device = _backend.common_device("int4_matmul", a_packed=a_packed, a_scale=a_scale, w_packed=w_packed,
                                    w_scale=w_scale, bias=bias)
    impl = _backend.resolve("int4_matmul", device, backend, MATMUL_IMPLEMENTED)
    sa, sw = a_scale.reshape(-1), w_scale.reshape(-1)
    if impl == "reference":
        return reference.int4_matmul(a_packed, sa, w_packed, sw, bias, out_dtype)
    if impl == "triton":
        return _triton_matmul(a_packed, sa, w_packed, sw, bias, out_dtype)
    return torch.ops.symkernels.int4_matmul(a_packed, sa, w_packed, sw, bias, out_dtype)


def _quantize_fake(x, clip_ratio, hk, rot_scale):
    n = x.shape[-1]
    return (x.new_empty((*x.shape[:-1], n // 2), dtype=torch.uint8),
            x.new_empty((*x.shape[:-1], 1), dtype=torch.float32))


def _matmul_fake(a_packed, a_scale, w_packed, w_scale, bias, out_dtype):
    torch._check(a_packed.shape[1] == w_packed.shape[1], lambda: "K/2 mismatch")
    return a_packed.new_empty((a_packed.shape[0], w_packed.shape[0]), dtype=out_dtype)


# Neither op is differentiable (integer codes have no gradient), so only fake and kernels are registered.
_library.register_op("quantize_int4", fake=_quantize_fake, triton=_triton_quantize)
_library.register_op("int4_matmul", fake=_matmul_fake, triton=_triton_matmul)
