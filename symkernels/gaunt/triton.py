"""Triton Gaunt tensor product on the exact sphere grid, fused per row tile.

One program owns BLOCK_M rows and BLOCK_O output coefficients. For each chunk of BLOCK_G grid points it
evaluates both inputs there (``x1 @ to_grid1``, ``x2 @ to_grid2``: two small GEMMs, chunked over the input
coefficients), multiplies pointwise, and accumulates the projection back onto its output coefficients
(``f @ from_grid``), so the grid values never leave the chip: the inputs are read once per output tile
(once for Lo ≤ 7) and the output written once. The grid (Gauss–Legendre in cos β × uniform α, see
``coefficients.grid_size``) makes the projection exact, so this is the same product as the sparse
contraction, with O(L³) work per row instead of nnz(G) ~ O(L⁵).

``input_precision="ieee"``: TF32 would cost fp32 its 1e-5 accuracy target.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

# tl.dot needs every dimension ≥ 16.
_MIN_DOT = 16
# Tiles (sized with tools/gpu_compile_gate.py). A program holds a [BLOCK_M, BLOCK_O] accumulator and
# stages [BLOCK_M, BLOCK_C] input and [BLOCK_C, BLOCK_G] / [BLOCK_G, BLOCK_O] table tiles. Whole padded
# coefficient vectors (the kernel before these caps) needed 228-420 KB of shared memory from L = 8 on and
# spilled; fp32 runs its dots on FMA units ("ieee"), which keep the operands in registers: narrow K chunks,
# 16-row blocks and a 2-deep pipeline keep every supported degree (to MAX_L = 32) within 20 KB of shared
# memory and 128 registers on sm_80/sm_90.
_MAX_BLOCK_C = 16
_MAX_BLOCK_O = 64
_BLOCK_G = 32
_NUM_STAGES = 2
_BLOCK_M = 16


@triton.jit
def _on_grid(x_ptr, row_off, col_stride, n, to_ptr, g, n_grid, row_ok, acc_dtype: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr):
    """[BLOCK_M, BLOCK_G]: the rows' functions at grid points g, x @ to_grid[:, g], over BLOCK_C-wide
    chunks of the n coefficients (one chunk for L ≤ 7)."""
    f = tl.zeros((BLOCK_M, BLOCK_G), dtype=acc_dtype)
    g_ok = g < n_grid
    for c0 in range(0, n, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < n
        x = tl.load(x_ptr + row_off[:, None] + c[None, :] * col_stride, mask=row_ok[:, None] & c_ok[None, :],
                    other=0.0)
        t = tl.load(to_ptr + c[:, None] * n_grid + g[None, :], mask=c_ok[:, None] & g_ok[None, :], other=0.0)
        f = tl.dot(x, t, f, input_precision="ieee", out_dtype=acc_dtype)
    return f


@triton.jit
def _gaunt_grid_kernel(x1_ptr, x2_ptr, to1_ptr, to2_ptr, back_ptr, out_ptr, rows, n1, n2, no, n_grid,
                       inner1, outer_stride1, inner_stride1, col_stride1,
                       inner2, outer_stride2, inner_stride2, col_stride2,
                       ACC_F64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_C1: tl.constexpr,
                       BLOCK_C2: tl.constexpr, BLOCK_O: tl.constexpr):
    acc_dtype: tl.constexpr = tl.float64 if ACC_F64 else tl.float32
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = row < rows
    row64 = row.to(tl.int64)
    co = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    co_ok = co < no
    # Each input's rows through its (outer, inner) layout: stride 0 where it is broadcast, read in place.
    # The split is int32 (row < rows < 2^31; a 64-bit division is a subroutine with a stack frame), the
    # offsets int64.
    off1 = (row // inner1).to(tl.int64) * outer_stride1 + (row % inner1).to(tl.int64) * inner_stride1
    off2 = (row // inner2).to(tl.int64) * outer_stride2 + (row % inner2).to(tl.int64) * inner_stride2
    acc = tl.zeros((BLOCK_M, BLOCK_O), dtype=acc_dtype)
    for g0 in range(0, n_grid, BLOCK_G):
        g = g0 + tl.arange(0, BLOCK_G)
        f = _on_grid(x1_ptr, off1, col_stride1, n1, to1_ptr, g, n_grid, row_ok, acc_dtype, BLOCK_M, BLOCK_G,
                     BLOCK_C1)
        f *= _on_grid(x2_ptr, off2, col_stride2, n2, to2_ptr, g, n_grid, row_ok, acc_dtype, BLOCK_M, BLOCK_G,
                      BLOCK_C2)
        back = tl.load(back_ptr + g[:, None] * no + co[None, :], mask=(g < n_grid)[:, None] & co_ok[None, :],
                       other=0.0)
        acc = tl.dot(f, back.to(acc_dtype), acc, input_precision="ieee", out_dtype=acc_dtype)
    tl.store(out_ptr + row64[:, None] * no + co[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & co_ok[None, :])


def _pad(n: int) -> int:
    return max(_MIN_DOT, triton.next_power_of_2(n))


def _row_layout(x: torch.Tensor, lead: torch.Size) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """x viewed with leading shape ``lead`` as rows: (tensor, (inner, outer_stride, inner_stride, col_stride))
    with row r at ``(r // inner)·outer_stride + (r % inner)·inner_stride``. Broadcast dims keep stride 0, so an
    edge SH [E, 1, n] shared by C channels is read in place; a layout that does not coalesce into two dims
    (rare) is made contiguous."""
    n = x.shape[-1]
    v = x.expand(*lead, n)
    sizes: list[int] = []
    strides: list[int] = []
    for d, size in enumerate(lead):
        if size == 1:
            continue
        if sizes and strides[-1] == v.stride(d) * size:  # mergeable with the previous dim
            sizes[-1] *= size
            strides[-1] = v.stride(d)
        else:
            sizes.append(size)
            strides.append(v.stride(d))
    if len(sizes) > 2:
        return _row_layout(v.contiguous(), lead)
    sizes = [1] * (2 - len(sizes)) + sizes
    strides = [0] * (2 - len(strides)) + strides
    return v, (max(sizes[1], 1), strides[0], strides[1], v.stride(-1))


def gaunt_tensor_product(x1: torch.Tensor, x2: torch.Tensor, to_grid1: torch.Tensor, to_grid2: torch.Tensor,
                         from_grid: torch.Tensor) -> torch.Tensor:
    """Launcher: arguments already validated by symkernels.gaunt.ops; tables from ``coefficients.grid_tables``."""
    n1, n2 = x1.shape[-1], x2.shape[-1]
    n_grid, no = from_grid.shape
    lead = torch.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
    a, layout1 = _row_layout(x1, lead)
    b, layout2 = _row_layout(x2, lead)
    rows = math.prod(lead)
    out = torch.empty(rows, no, dtype=x1.dtype, device=x1.device)
    if rows == 0:
        return out.view(*lead, no)
    # Output degrees beyond one BLOCK_O tile go to a second grid axis: each tile re-evaluates the inputs on
    # the grid (cheap next to the projection at those degrees) instead of holding every output in registers.
    block_o = min(_pad(no), _MAX_BLOCK_O)
    grid = (triton.cdiv(rows, _BLOCK_M), triton.cdiv(no, block_o))
    wrap_triton(_gaunt_grid_kernel)[grid](
        a, b, to_grid1.contiguous(), to_grid2.contiguous(), from_grid.contiguous(), out, rows, n1, n2, no, n_grid,
        *layout1, *layout2, ACC_F64=x1.dtype == torch.float64, BLOCK_M=_BLOCK_M, BLOCK_G=_BLOCK_G,
        BLOCK_C1=min(_pad(n1), _MAX_BLOCK_C), BLOCK_C2=min(_pad(n2), _MAX_BLOCK_C), BLOCK_O=block_o, num_warps=4,
        num_stages=_NUM_STAGES)
    return out.view(*lead, no)
