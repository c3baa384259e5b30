"""Triton FWHT: one program transforms BLOCK_M whole rows held in registers.

All log2(n) butterfly stages (``fwht_tile``) run without touching memory between them: one read and one
write of the data in total (two of each for fp64 rows of 32768, too large for one SM's registers).
Accumulates in fp32 (fp64 for fp64 inputs).
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
    transform's first pass, symkernels/hadamard/hadamard_k_triton.py)."""
    block_m = max(1, _ELEMENTS_PER_PROGRAM // n)
    num_warps = max(1, min(32, block_m * n // 512))
    wrap_triton(_fwht_kernel)[(triton.cdiv(vectors, block_m),)](
        x, out, vectors, inner, outer_stride, elem_stride, float(scale), N=n, LOG_N=n.bit_length() - 1,
        BLOCK_M=block_m, ACC_F64=acc_f64, num_warps=num_warps)


def hadamard_transform(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Launcher: arguments already validated by symkernels.hadamard.ops."""
    n = x.shape[-1]
    x2 = x.contiguous().view(-1, n)
    out = torch.empty_like(x2)
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
