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
from torch.library import wrap_triton

from symkernels.hadamard.triton import fwht_tile, transform_vectors


@triton.jit
def kron_mix_tile(x_ptr, hk_ptr, row_start, seg_stride, K: tl.constexpr, K_PAD: tl.constexpr, W: tl.constexpr,
                  ACC_F64: tl.constexpr):
    """[K_PAD, W]: (H_K ⊗ I) on W columns of a row's K segments, x_ptr + row_start + k'·seg_stride + [0, W)."""
    k = tl.arange(0, K_PAD)
    j = tl.arange(0, W)
    if ACC_F64:
        acc = tl.zeros((K_PAD, W), dtype=tl.float64)
    else:
        acc = tl.zeros((K_PAD, W), dtype=tl.float32)
    for kk in range(K):
        seg = tl.load(x_ptr + row_start + kk * seg_stride + j).to(acc.dtype)
        col = tl.load(hk_ptr + k * K + kk, mask=k < K, other=0.0).to(acc.dtype)
        acc += col[:, None] * seg[None, :]
    return acc


@triton.jit
def kron_rotate_tile(x_ptr, hk_ptr, row_start, K: tl.constexpr, K_PAD: tl.constexpr, P: tl.constexpr,
                     LOG_P: tl.constexpr, ACC_F64: tl.constexpr):
    """The [K_PAD, P] tile of H_K ⊗ H_P applied to the row at x_ptr + row_start (unscaled)."""
    return fwht_tile(kron_mix_tile(x_ptr, hk_ptr, row_start, P, K, K_PAD, P, ACC_F64), K_PAD, P, LOG_P)


@triton.jit
def _kron_hadamard_kernel(x_ptr, hk_ptr, out_ptr, scale, K: tl.constexpr, K_PAD: tl.constexpr, P: tl.constexpr,
                          LOG_P: tl.constexpr, ACC_F64: tl.constexpr):
    row_start = tl.program_id(0).to(tl.int64) * (K * P)
    acc = kron_rotate_tile(x_ptr, hk_ptr, row_start, K, K_PAD, P, LOG_P, ACC_F64)
    k = tl.arange(0, K_PAD)
    j = tl.arange(0, P)
    offsets = row_start + k[:, None] * P + j[None, :]
    tl.store(out_ptr + offsets, (acc * scale).to(out_ptr.dtype.element_ty), mask=k[:, None] < K)


@triton.jit
def _kron_mix_kernel(x_ptr, hk_ptr, out_ptr, scale, K: tl.constexpr, K_PAD: tl.constexpr, P: tl.constexpr,
                     BLOCK_P: tl.constexpr, ACC_F64: tl.constexpr):
    """out = (H_K ⊗ I_P) x · scale, one program per (row, BLOCK_P columns); in place when out is x (every
    load of the program's columns happens before its store)."""
    row_start = tl.program_id(0).to(tl.int64) * (K * P) + tl.program_id(1) * BLOCK_P
    acc = kron_mix_tile(x_ptr, hk_ptr, row_start, P, K, K_PAD, BLOCK_P, ACC_F64)
    k = tl.arange(0, K_PAD)
    j = tl.arange(0, BLOCK_P)
    offsets = row_start + k[:, None] * P + j[None, :]
    tl.store(out_ptr + offsets, (acc * scale).to(out_ptr.dtype.element_ty), mask=k[:, None] < K)


# The one-pass kernel holds a [K_pad, P] tile in registers; past this many elements (K_pad·P = 2^16 for
# n = 28·2048 spills ~700 B per thread on sm_80/sm_90) the transform runs in two passes.
MAX_TILE = 1 << 15


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
    tile = params["K_PAD"] * params["P"]
    if tile <= MAX_TILE:
        # Warps sized to the tile: ~8 fp32 values per thread keeps the tile in registers.
        num_warps = max(1, min(16, tile // 256))
        wrap_triton(_kron_hadamard_kernel)[(x2.shape[0],)](x2, h, out, float(scale), ACC_F64=f64,
                                                           num_warps=num_warps, **params)
    else:
        # H_K ⊗ H_P = (H_K ⊗ I)(I ⊗ H_P): the power-of-two transform of every length-P segment, then the
        # K-mix in place, BLOCK_P columns per program. Two reads and writes instead of one.
        # 16-bit inputs keep the intermediate in fp32, so the two passes round once, as the one-pass kernel.
        p = params["P"]
        mid = out if x.dtype in (torch.float32, torch.float64) else torch.empty(x2.shape, dtype=torch.float32,
                                                                                 device=x.device)
        transform_vectors(x2, mid, x2.shape[0] * k, 1, p, 1, p, 1.0, f64)
        block_p = min(p, MAX_TILE // params["K_PAD"])
        wrap_triton(_kron_mix_kernel)[(x2.shape[0], p // block_p)](
            mid, h, out, float(scale), K=k, K_PAD=params["K_PAD"], P=p, BLOCK_P=block_p, ACC_F64=f64, num_warps=16)
    return out.view(x.shape)
