"""Triton Jacobi iteration for the RNN op (same contract as the C++ ``jacobi_rnn_iterate``).

One launch evaluates every row (timestep t, batch b) at or after the frozen pointer from the previous
iterate, and writes each row's new state, max-abs residual and bitwise-changed flag. The pointer lives
in device memory: the kernel reads it, and a few tensor ops (first changed row, residual max, pointer
advance, stop flag) run on the device after each launch, so ``iters`` iterations need no host sync; the
host reads the per-iteration record once per call.

Batch invariance (hence bitwise Jacobi == sequential): the recurrent mat-vec is an elementwise product
and a ``tl.sum`` over k per row — the same reduction for a row wherever it sits in a block, unlike a
``tl.dot`` whose tiling could depend on the block. That costs BLOCK_R·HP² registers, so hidden sizes are
capped at MAX_HIDDEN here (the C++/CUDA kernels have no such cap).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_HIDDEN = 64
_CELLS = {("elman", "tanh"): 0, ("elman", "relu"): 1, ("gru", "tanh"): 2}


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _gate(prev, w_ptr, b_ptr, gate, H, cols, cmask):
    """gh_gate = b_hh[gate] + W_hh[gate] prev, [BLOCK_R, HP], one fixed-order reduction per row."""
    rows_w = gate * H + cols
    w = tl.load(w_ptr + rows_w[:, None] * H + cols[None, :], mask=cmask[:, None] & cmask[None, :], other=0.0)
    bias = tl.load(b_ptr + rows_w, mask=cmask, other=0.0)
    return tl.sum(prev[:, None, :] * w[None, :, :], axis=2) + bias[None, :]


@triton.jit
def _rnn_rows_kernel(u_ptr, h0_ptr, w_ptr, b_ptr, cur_ptr, nxt_ptr, resid_ptr, changed_ptr, ptr_ptr, row_end,
                     B, H, G, HP: tl.constexpr, CELL: tl.constexpr, BLOCK_R: tl.constexpr,
                     INT_T: tl.constexpr):
    first_row = tl.load(ptr_ptr) * B
    rows = first_row + tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < row_end
    cols = tl.arange(0, HP)
    cmask = cols < H
    m2 = rmask[:, None] & cmask[None, :]
    t = rows // B
    b = rows % B
    from_h0 = (t == 0)[:, None]
    prev_h0 = tl.load(h0_ptr + b[:, None] * H + cols[None, :], mask=m2 & from_h0, other=0.0)
    prev_it = tl.load(cur_ptr + (rows[:, None] - B) * H + cols[None, :], mask=m2 & ~from_h0, other=0.0)
    prev = tl.where(from_h0, prev_h0, prev_it)
    u_row = u_ptr + rows[:, None] * G + cols[None, :]
    if CELL == 2:
        r = _sigmoid(tl.load(u_row, mask=m2, other=0.0) + _gate(prev, w_ptr, b_ptr, 0, H, cols, cmask))
        z = _sigmoid(tl.load(u_row + H, mask=m2, other=0.0) + _gate(prev, w_ptr, b_ptr, 1, H, cols, cmask))
        n_in = tl.load(u_row + 2 * H, mask=m2, other=0.0) + r * _gate(prev, w_ptr, b_ptr, 2, H, cols, cmask)
        n = 2.0 * _sigmoid(2.0 * n_in) - 1.0  # tanh, without relying on a libdevice binding
        new = (1.0 - z) * n + z * prev
    else:
        a = tl.load(u_row, mask=m2, other=0.0) + _gate(prev, w_ptr, b_ptr, 0, H, cols, cmask)
        if CELL == 0:
            new = 2.0 * _sigmoid(2.0 * a) - 1.0
        else:
            new = tl.where(a > 0, a, tl.where(a != a, a, 0.0))  # NaN propagates like torch.relu
    new = new.to(nxt_ptr.dtype.element_ty)
    offs = rows[:, None] * H + cols[None, :]
    old = tl.load(cur_ptr + offs, mask=m2, other=0.0)
    tl.store(nxt_ptr + offs, new, mask=m2)
    moved = (new.to(INT_T, bitcast=True) != old.to(INT_T, bitcast=True)) & m2
    d = tl.abs(new - old)
    d = tl.where((d != d) | (d == float("inf")), float("inf"), d)  # non-finite and moved: infinite residual
    d = tl.where(moved, d, 0.0)
    tl.store(resid_ptr + rows, tl.max(d, axis=1), mask=rmask)
    tl.store(changed_ptr + rows, tl.max(moved.to(tl.int32), axis=1), mask=rmask)


def jacobi_rnn_iterate(u, h0, w_hh, b_hh, h, start: int, iters: int, tol: float, cell: str, nonlinearity: str,
                       sequential: bool):
    """Launcher with the contract of ``torch.ops.symkernels.jacobi_rnn_iterate`` (inputs validated by ops.py)."""
    T, B, H = h.shape
    if H > MAX_HIDDEN:
        raise ValueError(f"rnn: backend='triton' supports hidden size H <= {MAX_HIDDEN} (register-resident "
                         f"batch-invariant mat-vec), got H={H}; use backend='cuda' or 'cpu'")
    G = u.shape[2]
    dev = h.device
    cur = h.contiguous().clone()
    stats = torch.full((iters, 2), -1.0, dtype=torch.float64, device=dev)
    R = T * B
    if R == 0 or H == 0 or start >= T:
        if iters > 0:
            stats[0, 0], stats[0, 1] = 0.0, float(T)
        return cur, stats
    u, h0, w_hh, b_hh = u.contiguous(), h0.contiguous(), w_hh.contiguous(), b_hh.contiguous()
    nxt = torch.empty_like(cur)
    resid = torch.empty(R, dtype=h.dtype, device=dev)
    changed = torch.empty(R, dtype=torch.int32, device=dev)
    hp = max(2, triton.next_power_of_2(H))
    block_r = max(1, min(16, 2048 // (hp * hp)))
    meta = dict(HP=hp, CELL=_CELLS[(cell, nonlinearity)], BLOCK_R=block_r,
                INT_T=tl.int64 if h.dtype == torch.float64 else tl.int32)

    def launch(ptr_t: torch.Tensor, row_end: int, n_rows: int):
        grid = (triton.cdiv(n_rows, block_r),)
        _rnn_rows_kernel[grid](u, h0, w_hh, b_hh, cur, nxt, resid, changed, ptr_t, row_end, B, H, G, **meta)

    flat_cur, flat_nxt = cur.view(R, H), nxt.view(R, H)
    if sequential:
        for t in range(start, T):
            launch(torch.tensor([t], dtype=torch.int64, device=dev), (t + 1) * B, B)
            flat_cur[t * B:(t + 1) * B] = flat_nxt[t * B:(t + 1) * B]
        if iters > 0:
            stats[0, 0], stats[0, 1] = 0.0, float(T)
        return cur, stats

    row_ids = torch.arange(R, device=dev)
    ptr = torch.tensor([start], dtype=torch.int64, device=dev)  # real frozen pointer
    kernel_ptr = ptr.clone()  # what the kernel sees: T once stopped, so later launches do nothing
    active = torch.ones((), dtype=torch.bool, device=dev)
    for it in range(iters):
        launch(kernel_ptr, R, R - start * B)
        live = (row_ids >= ptr * B) & active
        first = torch.where(live & (changed != 0), row_ids, R).min()
        new_ptr = torch.clamp(torch.maximum(ptr + 1, first // B + 1), max=T)
        r = torch.where(live, resid, 0).max().double()
        flat_cur.copy_(torch.where(live[:, None], flat_nxt, flat_cur))
        stats[it] = torch.where(active, torch.stack([r, new_ptr[0].double()]), -1.0)
        ptr = torch.where(active, new_ptr, ptr)
        stop = (ptr[0] >= T) | ~torch.isfinite(r) | ((tol > 0) & (r <= tol))
        active = active & ~stop
        kernel_ptr = torch.where(active, ptr, T)
    return cur, stats
