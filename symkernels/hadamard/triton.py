"""Triton Hadamard kernels and their launchers; accumulate in fp32 (fp64 for fp64 inputs).

**Powers of two** (``hadamard_transform``): one program transforms BLOCK_M whole rows held in registers.
All log2(n) butterfly stages (``fwht_tile``) run without touching memory between them: one read and one
write of the data in total (two of each for fp64 rows of 32768, too large for one SM's registers).

**n = K·2^m** (``hadamard_transform_k``), y = x · (H_K ⊗ H_P)ᵀ · scale: one program per row, one pass.
The row is read once as K segments of P; each segment k' is folded into a [K_pad, P] register tile with
the column H_K[:, k'] (an outer-product FMA; K_pad = next power of two ≥ K, padded rows masked), then the
FWHT over P runs on the tile in registers (``fwht_tile``), and the tile is written once. H_K ⊗ I and
I ⊗ H_P commute, so mixing first is exact.

``fwht_tile`` and ``kron_rotate_tile`` are @triton.jit device functions shared with the fused
rotate+quantize kernel (symkernels/quarot/triton.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

# A program holds BLOCK_M·n values in registers; this many per program keeps the register file
# (64K 32-bit registers per SM) from spilling at num_warps=8..32 while giving small rows enough work.
_ELEMENTS_PER_PROGRAM = 4096
# A row is one program up to this many accumulator bytes (an fp32 row of 32768 at 32 warps: 32 values
# per thread). An fp64 row of 32768 would be 256 KB, the whole register file of an SM: it spills, so
# such rows are transformed in two passes (hadamard_transform).
_MAX_ROW_BYTES = 128 << 10


@triton.jit
def fwht_tile(x, ROWS: tl.constexpr, N: tl.constexpr, LOG_N: tl.constexpr):
    """Butterflies along the last dim of a [ROWS, N] register tile: each row becomes row @ H_N.T (unscaled).

    Stage s views the tile as [ROWS, N / 2h, 2, h] with h = 2^s, splits the size-2 axis into the pair (a, b) and joins
    (a + b, a − b) back. Shared by every Triton Hadamard kernel (power-of-two and Kronecker sizes).
    """
    for stage in tl.static_range(LOG_N):
        # The half-width 2^stage is written inline: naming it would reassign a constexpr every unrolled
        # stage, which the interpreter allows and the compiler rejects.
        x = tl.reshape(x, (ROWS, N >> (stage + 1), 2, 1 << stage))
        a, b = tl.split(tl.permute(x, (0, 1, 3, 2)))
        x = tl.permute(tl.join(a + b, a - b), (0, 1, 3, 2))
        x = tl.reshape(x, (ROWS, N))
    return x


@triton.jit
def _fwht_kernel(x_ptr, out_ptr, vectors, inner, outer_stride, elem_stride, scale,
                 N: tl.constexpr, LOG_N: tl.constexpr, BLOCK_M: tl.constexpr, ACC_F64: tl.constexpr):
    """BLOCK_M length-N vectors; vector v's element j is at (v // inner)·outer_stride + v % inner + j·elem_stride.

    Whole rows are inner = 1, outer_stride = N, elem_stride = 1 (Triton specialises the ones away)."""
    v = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    col = tl.arange(0, N)
    base = (v // inner) * outer_stride + v % inner
    offsets = base[:, None] + col[None, :].to(tl.int64) * elem_stride
    mask = v[:, None] < vectors
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    x = x.to(tl.float64) if ACC_F64 else x.to(tl.float32)
    x = fwht_tile(x, BLOCK_M, N, LOG_N)
    tl.store(out_ptr + offsets, (x * scale).to(out_ptr.dtype.element_ty), mask=mask)


def transform_vectors(x, out, vectors: int, inner: int, outer_stride: int, elem_stride: int, n: int,
                      scale: float, acc_f64: bool) -> None:
    """Launches _fwht_kernel over ``vectors`` length-n vectors in that layout (also the Kronecker
    transform's first pass, ``hadamard_transform_k``)."""
    block_m = max(1, _ELEMENTS_PER_PROGRAM // n)
    num_warps = max(1, min(32, block_m * n // 512))
    wrap_triton(_fwht_kernel)[(triton.cdiv(vectors, block_m),)](
        x, out, vectors, inner, outer_stride, elem_stride, float(scale), N=n, LOG_N=n.bit_length() - 1,
        BLOCK_M=block_m, ACC_F64=acc_f64, num_warps=num_warps)


def hadamard_transform(x: torch.Tensor, scale: float = 1.0, out: torch.Tensor | None = None) -> torch.Tensor:
    """Launcher: arguments (and ``out``, contiguous and apart from x, where given) already validated by
    symkernels.hadamard.ops."""
    n = x.shape[-1]
    x2 = x.contiguous().view(-1, n)
    out = torch.empty_like(x2) if out is None else out.view(-1, n)
    rows = x2.shape[0]
    if rows == 0:
        return out.view(x.shape)
    acc_f64 = x.dtype == torch.float64
    if n * (8 if acc_f64 else 4) <= _MAX_ROW_BYTES:
        transform_vectors(x2, out, rows, 1, n, 1, n, scale, acc_f64)
    else:
        # H_n = H_a ⊗ H_b with b = one program's worth: the length-b transforms of each row's a segments,
        # then, in place, the length-a transforms across them (stride b). The intermediate is stored in
        # the input dtype, which only fp64 reaches here, so nothing is rounded in between.
        b = _ELEMENTS_PER_PROGRAM
        a = n // b
        transform_vectors(x2, out, rows * a, 1, b, 1, b, 1.0, acc_f64)
        transform_vectors(out, out, rows * b, b, n, b, a, scale, acc_f64)
    return out.view(x.shape)


# ---------------------------------------------------------------------------------------------------
# n = K·2^m: the Kronecker transform

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


def hadamard_transform_k(x: torch.Tensor, hk: torch.Tensor, scale: float,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """Launcher: arguments (and ``out``, contiguous and apart from x, where given) already validated by
    symkernels.hadamard.ops."""
    n = x.shape[-1]
    k = hk.shape[0]
    x2 = x.contiguous().view(-1, n)
    out = torch.empty_like(x2) if out is None else out.view(-1, n)
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


# The launchers of the out= ops (schema ``... -> ()``: they return nothing, the result is in ``out``).
def hadamard_transform_out(x: torch.Tensor, scale: float, *, out: torch.Tensor) -> None:
    hadamard_transform(x, scale, out)


def hadamard_transform_k_out(x: torch.Tensor, hk: torch.Tensor, scale: float, *, out: torch.Tensor) -> None:
    hadamard_transform_k(x, hk, scale, out)
