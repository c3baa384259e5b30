"""Triton Kronecker Hadamard transform, y = x · (H_K ⊗ H_P)ᵀ · scale: one program per row, one pass.

The row is read once as K segments of P; each segment k' is folded into a [K_pad, P] register tile
with the column H_K[:, k'] (an outer-product FMA; K_pad = next power of two ≥ K, padded rows masked),
then the FWHT over P runs on the tile in registers (the butterfly-as-reshape of the power-of-two
kernel), and the tile is written once. H_K ⊗ I and I ⊗ H_P commute, so mixing first is exact.
``kron_rotate_tile`` is shared with the fused rotate+quantize kernel (symkernels/quarot/triton.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from symkernels.hadamard.triton import fwht_tile


@triton.jit
def kron_rotate_tile(x_ptr, hk_ptr, row_start, K: tl.constexpr, K_PAD: tl.constexpr, P: tl.constexpr,
                     LOG_P: tl.constexpr, ACC_F64: tl.constexpr):
    """The [K_PAD, P] tile of H_K ⊗ H_P applied to the row at x_ptr + row_start (unscaled)."""
    k = tl.arange(0, K_PAD)
    j = tl.arange(0, P)
    if ACC_F64:
        acc = tl.zeros((K_PAD, P), dtype=tl.float64)
    else:
        acc = tl.zeros((K_PAD, P), dtype=tl.float32)
    for kk in range(K):
        seg = tl.load(x_ptr + row_start + kk * P + j).to(acc.dtype)
        col = tl.load(hk_ptr + k * K + kk, mask=k < K, other=0.0).to(acc.dtype)
        acc += col[:, None] * seg[None, :]
    return fwht_tile(acc, K_PAD, P, LOG_P)


@triton.jit
def _kron_hadamard_kernel(x_ptr, hk_ptr, out_ptr, scale, K: tl.constexpr, K_PAD: tl.constexpr, P: tl.constexpr,
                          LOG_P: tl.constexpr, ACC_F64: tl.constexpr):
    row_start = tl.program_id(0).to(tl.int64) * (K * P)
    acc = kron_rotate_tile(x_ptr, hk_ptr, row_start, K, K_PAD, P, LOG_P, ACC_F64)
    k = tl.arange(0, K_PAD)
    j = tl.arange(0, P)
    offsets = row_start + k[:, None] * P + j[None, :]
    tl.store(out_ptr + offsets, (acc * scale).to(out_ptr.dtype.element_ty), mask=k[:, None] < K)


def launch_params(k: int, n: int) -> dict:
    p = n // k
    return dict(K=k, K_PAD=triton.next_power_of_2(k), P=p, LOG_P=p.bit_length() - 1)


def hadamard_transform_k(x: torch.Tensor, hk: torch.Tensor, scale: float) -> torch.Tensor:
    """Launcher: arguments already validated by symkernels.hadamard.hadamard_k_ops."""
    n = x.shape[-1]
    k = hk.shape[0]
    x2 = x.contiguous().view(-1, n)
    out = torch.empty_like(x2)
    if x2.shape[0] == 0:
        return out.view(x.shape)
    f64 = x.dtype == torch.float64
    h = hk.to(device=x.device, dtype=torch.float64 if f64 else torch.float32).contiguous()
    params = launch_params(k, n)
    # Warps sized to the tile: ~8 fp32 values per thread keeps the tile in registers.
    num_warps = max(1, min(16, params["K_PAD"] * params["P"] // 256))
    _kron_hadamard_kernel[(x2.shape[0],)](x2, h, out, float(scale), ACC_F64=f64, num_warps=num_warps, **params)
    return out.view(x.shape)
