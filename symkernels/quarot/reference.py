"""Pure-PyTorch QuaRot quantization and W4A4 matmul: the truth the kernels are tested against.

Per-token symmetric INT4 (design note §2), all in fp32:

    amax  = max |x|                       over the row (of the rotated x, when the op rotates: the Hadamard
                                          pillar's reference rotates first, ``symkernels.quantize_int4``)
    scale = (clip_ratio · amax) / 7        (fp32, this operation order)
    q     = clamp(round_half_even(x / scale), −8, 7)   (0 where x / scale is NaN, i.e. amax = 0 or
                                                         a NaN/inf in the row; the scale carries it)

Packing: two's-complement nibbles, byte j = (q[2j] & 0xF) | (q[2j+1] & 0xF) << 4 — even index in the
low nibble (CUTLASS int4b_t / torchao "plain" order). QuaRot rounds in fp16; we round in fp32.
"""
from __future__ import annotations

import torch


def quantize_codes(x: torch.Tensor, clip_ratio: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes in [−8, 7] of x's shape, fp32 scale [..., 1]) for an fp32 x (no rotation)."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True) if xf.shape[-1] else xf.new_zeros(*xf.shape[:-1], 1)
    scale = (torch.tensor(clip_ratio, dtype=torch.float32) * amax) / 7.0
    v = xf / scale
    q = torch.clamp(torch.round(v), -8, 7)
    q = torch.where(torch.isnan(q), torch.zeros_like(q), q)
    return q.to(torch.int8), scale


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 codes [..., K] (K even) → uint8 [..., K/2], even index in the low nibble."""
    q = q.to(torch.int16) & 0xF
    return (q[..., 0::2] | (q[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K/2] → int8 codes [..., K] (sign-extended nibbles)."""
    p = packed.to(torch.int16)
    lo, hi = p & 0xF, (p >> 4) & 0xF
    q = torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])
    return torch.where(q >= 8, q - 16, q).to(torch.int8)


def quantize_int4(x: torch.Tensor, clip_ratio: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 [..., K/2], fp32 scale [..., 1]): the codes of x, packed."""
    q, scale = quantize_codes(x, clip_ratio)
    return pack_int4(q), scale


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (unpack_int4(packed).float() * scale.float()).to(dtype)


def int4_matmul(a_packed: torch.Tensor, a_scale: torch.Tensor, w_packed: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(a_int @ w_intᵀ) in exact int32 (int64 here, then checked to fit), then fp32 row·col scale + bias."""
    a = unpack_int4(a_packed).to(torch.int64)
    w = unpack_int4(w_packed).to(torch.int64)
    acc = (a @ w.T) if a.shape[-1] else a.new_zeros(a.shape[0], w.shape[0])
    y = acc.to(torch.float32) * a_scale.float().reshape(-1, 1) * w_scale.float().reshape(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)
