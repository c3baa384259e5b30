"""4-bit KV cache quantization (QuaRot §4, design note §2 "KV cache"), pure PyTorch.

Unsigned asymmetric 4-bit per group of ``group_size`` consecutive channels of one (token, head) row
(``group_size = head_dim`` is QuaRot's one pair per token and head):

    xmax = clip·max(x),  xmin = clip·min(x)          over the group
    scale = (xmax − xmin) / 15,   zero = −xmin        (fp32; zero is not rounded)
    q = clamp(round_half_even((x + zero) / scale), 0, 15)
    x̂ = q·scale − zero

A constant group (scale 0) keeps scale = 1, so q = 0 and x̂ = xmin exactly. Packing: two unsigned
nibbles per byte, the even channel in the low nibble (the order of ``quantize_int4``).

There is no KV4 attention kernel here: the "real" path stores the packed bytes and the fp32
(scale, zero) pairs and dequantizes them before attention, which is the memory format of a KV4
cache; the "fake" path computes x̂ directly. Both give the same x̂ bit for bit (packing is a
bijection on codes), which ``tests/quarot/test_quarot_model.py`` checks.
"""
from __future__ import annotations

import torch


def _check(x: torch.Tensor, group_size: int, clip_ratio: float, op: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0:
        raise TypeError(f"{op}: x must be a floating tensor [..., channels], got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    c = x.shape[-1]
    if not isinstance(group_size, int) or group_size < 2 or group_size % 2 or c % group_size:
        raise ValueError(f"{op}: group_size must be an even divisor of x.shape[-1]={c}, got {group_size!r}")
    if not isinstance(clip_ratio, (int, float)) or not (0.0 < clip_ratio <= 1.0):
        raise ValueError(f"{op}: clip_ratio must be a number in (0, 1], got {clip_ratio!r}")


def _codes(x: torch.Tensor, group_size: int, clip_ratio: float):
    """(codes uint8 in [0, 15] [..., G, g], scale fp32 [..., G, 1], zero fp32 [..., G, 1])."""
    xg = x.float().reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)
    clip = torch.tensor(clip_ratio, dtype=torch.float32)
    xmax = clip * xg.amax(dim=-1, keepdim=True)
    xmin = clip * xg.amin(dim=-1, keepdim=True)
    scale = (xmax - xmin) / 15.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = -xmin
    q = torch.clamp(torch.round((xg + zero) / scale), 0, 15)
    return q.to(torch.uint8), scale, zero


def quantize_kv_int4(x: torch.Tensor, *, group_size: int, clip_ratio: float = 1.0
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x [..., C]`` → (packed uint8 [..., C/2], scale fp32 [..., C/g], zero fp32 [..., C/g])."""
    _check(x, group_size, clip_ratio, "quantize_kv_int4")
    q, scale, zero = _codes(x, group_size, clip_ratio)
    q = q.reshape(*x.shape)
    packed = q[..., 0::2] | (q[..., 1::2] << 4)
    return packed, scale.squeeze(-1), zero.squeeze(-1)


def dequantize_kv_int4(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of ``quantize_kv_int4``: ``q·scale − zero`` in fp32, rounded once to ``dtype``."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError(f"dequantize_kv_int4: packed must be uint8, got {getattr(packed, 'dtype', type(packed))}")
    if scale.shape != zero.shape or scale.shape[:-1] != packed.shape[:-1] or (2 * packed.shape[-1]) % scale.shape[-1]:
        raise ValueError(f"dequantize_kv_int4: scale and zero must both be [..., groups] with the leading dims of "
                         f"packed {tuple(packed.shape)}, got {tuple(scale.shape)} and {tuple(zero.shape)}")
    q = torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(*packed.shape[:-1], -1)
    groups = scale.shape[-1]
    qg = q.reshape(*q.shape[:-1], groups, q.shape[-1] // groups).float()
    x = qg * scale.float()[..., None] - zero.float()[..., None]
    return x.reshape(q.shape).to(dtype)


def fake_quantize_kv_int4(x: torch.Tensor, *, group_size: int, clip_ratio: float = 1.0) -> torch.Tensor:
    """``q·scale − zero`` without materializing the packed bytes (the simulated KV4 cache), in x's dtype."""
    _check(x, group_size, clip_ratio, "fake_quantize_kv_int4")
    q, scale, zero = _codes(x, group_size, clip_ratio)
    return (q.float() * scale - zero).reshape(x.shape).to(x.dtype)
