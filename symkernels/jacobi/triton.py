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

State rows have width S: H, or 2H for the LSTM, whose state row is [h | c] (the fixed point, residual and
changed flag are over both parts; only h enters the mat-vec).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

MAX_HIDDEN = 64
_CELLS = {("elman", "tanh"): 0, ("elman", "relu"): 1, ("gru", "tanh"): 2, ("lstm", "tanh"): 3}


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 * _sigmoid(2.0 * x) - 1.0  # without relying on a libdevice binding


@triton.jit
def _change(new, old, mask, INT_T: tl.constexpr):
    """(|new − old| where the bits changed, +inf for a changed non-finite value, else 0; the changed mask)."""
    moved = (new.to(INT_T, bitcast=True) != old.to(INT_T, bitcast=True)) & mask
    d = tl.abs(new - old)
    d = tl.where((d != d) | (d == float("inf")), float("inf"), d)
    return tl.where(moved, d, 0.0), moved


@triton.jit
def _load_prev(h0_ptr, cur_ptr, prev_rows, b, from_h0, S, offset, cols, m2):
    """Columns offset + cols of each row's previous state: h0's row b at t = 0, else the iterate's row
    prev_rows = row − B (timestep t − 1)."""
    at_h0 = tl.load(h0_ptr + b[:, None] * S + offset + cols[None, :], mask=m2 & from_h0, other=0.0)
    at_it = tl.load(cur_ptr + prev_rows[:, None] * S + offset + cols[None, :], mask=m2 & ~from_h0, other=0.0)
    return tl.where(from_h0, at_h0, at_it)


@triton.jit
def _gate(prev, w_ptr, b_ptr, gate, H, cols, cmask):
    """gh_gate = b_hh[gate] + W_hh[gate] prev, [BLOCK_R, HP], one fixed-order reduction per row."""
    rows_w = gate * H + cols
    w = tl.load(w_ptr + rows_w[:, None] * H + cols[None, :], mask=cmask[:, None] & cmask[None, :], other=0.0)
    bias = tl.load(b_ptr + rows_w, mask=cmask, other=0.0)
    return tl.sum(prev[:, None, :] * w[None, :, :], axis=2) + bias[None, :]


@triton.jit
def _rnn_rows_kernel(u_ptr, h0_ptr, w_ptr, b_ptr, cur_ptr, nxt_ptr, resid_ptr, changed_ptr, ptr_ptr, row_end,
                     B, H, G, S, HP: tl.constexpr, CELL: tl.constexpr, BLOCK_R: tl.constexpr,
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
    prev = _load_prev(h0_ptr, cur_ptr, rows - B, b, from_h0, S, 0, cols, m2)
    u_row = u_ptr + rows[:, None] * G + cols[None, :]
    offs = rows[:, None] * S + cols[None, :]
    if CELL == 3:  # LSTM, gates i, f, g, o as in torch.nn.LSTM; c at offset H of the state row
        i = _sigmoid(tl.load(u_row, mask=m2, other=0.0) + _gate(prev, w_ptr, b_ptr, 0, H, cols, cmask))
        f = _sigmoid(tl.load(u_row + H, mask=m2, other=0.0) + _gate(prev, w_ptr, b_ptr, 1, H, cols, cmask))
        g = _tanh(tl.load(u_row + 2 * H, mask=m2, other=0.0) + _gate(prev, w_ptr, b_ptr, 2, H, cols, cmask))
        o = _sigmoid(tl.load(u_row + 3 * H, mask=m2, other=0.0) + _gate(prev, w_ptr, b_ptr, 3, H, cols, cmask))
        c_prev = _load_prev(h0_ptr, cur_ptr, rows - B, b, from_h0, S, H, cols, m2)
        c = (f * c_prev + i * g).to(nxt_ptr.dtype.element_ty)
        new = o * _tanh(c)
        c_old = tl.load(cur_ptr + offs + H, mask=m2, other=0.0)
        tl.store(nxt_ptr + offs + H, c, mask=m2)
        d_c, moved_c = _change(c, c_old, m2, INT_T)
    elif CELL == 2:
        r = _sigmoid(tl.load(u_row, mask=m2, other=0.0) + _gate(prev, w_ptr, b_ptr, 0, H, cols, cmask))
        z = _sigmoid(tl.load(u_row + H, mask=m2, other=0.0) + _gate(prev, w_ptr, b_ptr, 1, H, cols, cmask))
        n_in = tl.load(u_row + 2 * H, mask=m2, other=0.0) + r * _gate(prev, w_ptr, b_ptr, 2, H, cols, cmask)
        new = (1.0 - z) * _tanh(n_in) + z * prev
    else:
        a = tl.load(u_row, mask=m2, other=0.0) + _gate(prev, w_ptr, b_ptr, 0, H, cols, cmask)
        if CELL == 0:
            new = _tanh(a)
        else:
            new = tl.where(a > 0, a, tl.where(a != a, a, 0.0))  # NaN propagates like torch.relu
    new = new.to(nxt_ptr.dtype.element_ty)
    old = tl.load(cur_ptr + offs, mask=m2, other=0.0)
    tl.store(nxt_ptr + offs, new, mask=m2)
    d, moved = _change(new, old, m2, INT_T)
    if CELL == 3:
        d = tl.maximum(d, d_c)
        moved = moved | moved_c
    tl.store(resid_ptr + rows, tl.max(d, axis=1), mask=rmask)
    tl.store(changed_ptr + rows, tl.max(moved.to(tl.int32), axis=1), mask=rmask)


def jacobi_rnn_iterate(u, h0, w_hh, b_hh, h, start: int, iters: int, tol: float, cell: str, nonlinearity: str,
                       sequential: bool):
    """Launcher with the contract of ``torch.ops.symkernels.jacobi_rnn_iterate`` (inputs validated by ops.py)."""
    T, B, S = h.shape
    H = w_hh.shape[1]
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

    def launch(src: torch.Tensor, ptr_t: torch.Tensor, row_end: int, n_rows: int):
        grid = (triton.cdiv(n_rows, block_r),)
        wrap_triton(_rnn_rows_kernel)[grid](u, h0, w_hh, b_hh, src, nxt, resid, changed, ptr_t, row_end, B, H, G, S,
                                            **meta)

    if sequential:
        flat_cur, flat_nxt = cur.view(R, S), nxt.view(R, S)
        for t in range(start, T):
            launch(cur, torch.full((1,), t, dtype=torch.int64, device=dev), (t + 1) * B, B)
            flat_cur[t * B:(t + 1) * B] = flat_nxt[t * B:(t + 1) * B]
        if iters > 0:
            stats[0, 0], stats[0, 1] = 0.0, float(T)
        return cur, stats

    # Out of place (a new iterate and stats row per iteration, no in-place writes into views) and no 0-dim
    # tensors: AOTAutograd's functionalization then traces the loop on fake CUDA tensors even where torch has no
    # CUDA (tests/triton_decomposition_probe.py).
    row_ids = torch.arange(R, device=dev)
    ptr = torch.full((1,), start, dtype=torch.int64, device=dev)  # real frozen pointer
    kernel_ptr = ptr.clone()  # what the kernel sees: T once stopped, so later launches do nothing
    active = torch.ones((1,), dtype=torch.bool, device=dev)
    records, not_run = [], torch.full((2,), -1.0, dtype=torch.float64, device=dev)
    for _ in range(iters):
        launch(cur, kernel_ptr, R, R - start * B)
        live = (row_ids >= ptr * B) & active
        first = torch.where(live & (changed != 0), row_ids, R).amin(0, keepdim=True)
        new_ptr = torch.clamp(torch.maximum(ptr + 1, first // B + 1), max=T)
        r = torch.where(live, resid, 0).amax(0, keepdim=True).double()
        cur = torch.where(live.view(T, B, 1), nxt, cur)
        records.append(torch.where(active, torch.cat([r, new_ptr.double()]), not_run))
        ptr = torch.where(active, new_ptr, ptr)
        stop = (ptr >= T) | ((r - r) != 0)  # (r − r) != 0: r is inf or NaN
        if tol > 0:
            stop = stop | (r <= tol)
        active = active & (stop == 0)  # (not ~stop: bitwise_not does not trace on fake CUDA without CUDA torch)
        kernel_ptr = torch.where(active, ptr, T)
    stats = torch.stack(records) if records else stats
    return cur, stats
