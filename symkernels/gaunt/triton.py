"""Triton Gaunt tensor product on the exact sphere grid, fused per row tile.

One program owns BLOCK_M rows. For each chunk of BLOCK_G grid points it evaluates both inputs there
(``x1 @ to_grid1``, ``x2 @ to_grid2``: two small GEMMs), multiplies pointwise, and accumulates the
projection back onto the output degrees (``f @ from_grid``), so the grid values never leave the chip:
one read of the inputs and one write of the output. The grid (Gauss–Legendre in cos β × uniform α, see
``coefficients.grid_size``) makes the projection exact, so this is the same product as the sparse
contraction, with O(L³) work per row instead of nnz(G) ~ O(L⁵).

``input_precision="ieee"``: TF32 would cost fp32 its 1e-5 accuracy target.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# tl.dot needs every dimension ≥ 16.
_MIN_DOT = 16


@triton.jit
def _gaunt_grid_kernel(x1_ptr, x2_ptr, to1_ptr, to2_ptr, back_ptr, out_ptr, rows, n1, n2, no, n_grid,
                       inner1, outer_stride1, inner_stride1, col_stride1,
                       inner2, outer_stride2, inner_stride2, col_stride2,
                       N1: tl.constexpr, N2: tl.constexpr, NO: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_G: tl.constexpr):
    row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = row < rows
    row64 = row.to(tl.int64)
    c1 = tl.arange(0, N1)
    c2 = tl.arange(0, N2)
    co = tl.arange(0, NO)
    # Each input's rows through its (outer, inner) layout: stride 0 where it is broadcast, read in place.
    off1 = (row64 // inner1) * outer_stride1 + (row64 % inner1) * inner_stride1
    off2 = (row64 // inner2) * outer_stride2 + (row64 % inner2) * inner_stride2
    a = tl.load(x1_ptr + off1[:, None] + c1[None, :] * col_stride1, mask=row_ok[:, None] & (c1 < n1)[None, :],
                other=0.0)
    b = tl.load(x2_ptr + off2[:, None] + c2[None, :] * col_stride2, mask=row_ok[:, None] & (c2 < n2)[None, :],
                other=0.0)
    acc = tl.zeros((BLOCK_M, NO), dtype=a.dtype)
    for g0 in range(0, n_grid, BLOCK_G):
        g = g0 + tl.arange(0, BLOCK_G)
        g_ok = g < n_grid
        t1 = tl.load(to1_ptr + c1[:, None] * n_grid + g[None, :], mask=(c1 < n1)[:, None] & g_ok[None, :], other=0.0)
        t2 = tl.load(to2_ptr + c2[:, None] * n_grid + g[None, :], mask=(c2 < n2)[:, None] & g_ok[None, :], other=0.0)
        f = tl.dot(a, t1, input_precision="ieee") * tl.dot(b, t2, input_precision="ieee")
        back = tl.load(back_ptr + g[:, None] * no + co[None, :], mask=g_ok[:, None] & (co < no)[None, :], other=0.0)
        acc += tl.dot(f, back, input_precision="ieee")
    tl.store(out_ptr + row64[:, None] * no + co[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (co < no)[None, :])


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
    block_m = 16 if x1.dtype == torch.float64 else 32
    block_g = 32
    grid = (triton.cdiv(rows, block_m),)
    _gaunt_grid_kernel[grid](a, b, to_grid1.contiguous(), to_grid2.contiguous(), from_grid.contiguous(), out, rows,
                             n1, n2, no, n_grid, *layout1, *layout2, N1=_pad(n1), N2=_pad(n2), NO=_pad(no),
                             BLOCK_M=block_m, BLOCK_G=block_g, num_warps=4)
    return out.view(*lead, no)
