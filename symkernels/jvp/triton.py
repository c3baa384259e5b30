"""Triton fused linear(+bias)+activation JVP with two accumulators (primal and tangent).

One program owns a [BLOCK_M, BLOCK_N] tile of y. Its K loop loads each x and W tile once and feeds
both ``acc += x·Wᵀ`` and ``acc_t += x_t·Wᵀ + x·W_tᵀ`` (the weight tangent is either loaded or, for seeded
tangents, generated in registers from the counter-based hash: it is never in memory). The epilogue
evaluates act(z) and act'(z) once and writes y and y_t. Tangents 1..T−1 reuse that act'(z) and only
redo the tangent K loop (the primal is computed once for all T). A tangent given once for all T has
T-stride 0. Accumulates in fp32 (fp64 for fp64 inputs).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from symkernels.jvp import reference

_ACT_CODES = {name: i for i, name in enumerate(reference.ACTIVATIONS)}  # same order as csrc/jvp/jvp.h's enum


@triton.jit
def _mix32(x):
    # lowbias32 (see reference.py); x is uint32, so the multiplies wrap mod 2^32.
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _seeded_tile(t, rn, kk, N, K, key0, key1, GAUSSIAN: tl.constexpr):
    """W_t[t, rn, kk] from the counter-based RNG, fp32, [BLOCK_N, BLOCK_K]."""
    index = ((t * N + rn)[:, None] * K + kk[None, :]).to(tl.uint32)
    k0 = key0.to(tl.uint32)
    b0 = _mix32(_mix32(index + k0) ^ k0)
    if GAUSSIAN:
        k1 = key1.to(tl.uint32)
        b1 = _mix32(_mix32(index + k1) ^ k1)
        u1 = ((b0 >> 8) + 1).to(tl.float32) * 5.9604644775390625e-08
        u2 = (b1 >> 8).to(tl.float32) * 5.9604644775390625e-08
        return tl.sqrt(-2.0 * tl.log(u1)) * tl.cos(6.283185307179586 * u2)
    else:
        return 1.0 - 2.0 * (b0 >> 31).to(tl.float32)


@triton.jit
def _tanh(u):
    # tanh without a libdevice call (the interpreter and every target have exp); saturates correctly.
    # (2u clamped at 60: e^60 is finite in fp32 and 2/(e^60+1) already rounds tanh to ±1.)
    return 1.0 - 2.0 / (tl.exp(tl.minimum(2.0 * u, 60.0)) + 1.0)


@triton.jit
def _activation(z, ACT: tl.constexpr):
    """(act(z), act'(z)); codes follow reference.ACTIVATIONS."""
    if ACT == 0:
        y = z
        d = z * 0.0 + 1.0
    elif ACT == 1:
        y = tl.where(z > 0, z, tl.where(z != z, z, 0.0))
        d = tl.where(y <= 0, 0.0, 1.0)  # PyTorch's relu JVP convention
    elif ACT == 2:
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
        y = z * cdf
        d = cdf + z * tl.exp(-0.5 * z * z) * 0.3989422804014327
    elif ACT == 3:
        th = _tanh(0.7978845608028654 * (z + 0.044715 * z * z * z))
        y = 0.5 * z * (1.0 + th)
        d = 0.5 * (1.0 + th) + 0.5 * z * (1.0 - th * th) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * z * z)
    elif ACT == 4:
        s = 1.0 / (1.0 + tl.exp(-z))
        y = z * s
        d = s * (1.0 + z * (1.0 - s))
    else:
        th = _tanh(z)
        y = th
        d = 1.0 - th * th
    return y, d


@triton.jit
def _tangent_update(acc_t, x, w, t, rm, rn, kk, M, N, K, xt_ptr, s_xt_t, s_xt_m, s_xt_k, wt_ptr, s_wt_t, s_wt_n,
                    s_wt_k, key0, key1, HAS_XT: tl.constexpr, HAS_WT: tl.constexpr, SEEDED: tl.constexpr,
                    GAUSSIAN: tl.constexpr, PREC: tl.constexpr):
    """acc_t += x_t[t]·Wᵀ + x·W_t[t]ᵀ over one K tile."""
    mask_x = (rm[:, None] < M) & (kk[None, :] < K)
    mask_w = (rn[:, None] < N) & (kk[None, :] < K)
    if HAS_XT:
        xt = tl.load(xt_ptr + t * s_xt_t + rm[:, None] * s_xt_m + kk[None, :] * s_xt_k, mask=mask_x, other=0.0)
        acc_t = tl.dot(xt, tl.trans(w), acc_t, input_precision=PREC)
    if HAS_WT:
        wt = tl.load(wt_ptr + t * s_wt_t + rn[:, None] * s_wt_n + kk[None, :] * s_wt_k, mask=mask_w, other=0.0)
        acc_t = tl.dot(x, tl.trans(wt), acc_t, input_precision=PREC)
    if SEEDED:
        wt = tl.where(mask_w, _seeded_tile(t, rn, kk, N, K, key0, key1, GAUSSIAN), 0.0).to(x.dtype)
        acc_t = tl.dot(x, tl.trans(wt), acc_t, input_precision=PREC)
    return acc_t


@triton.jit
def _linear_dual_kernel(x_ptr, w_ptr, b_ptr, xt_ptr, wt_ptr, bt_ptr, y_ptr, yt_ptr, M, N, K, T, key0, key1,
                        s_x_m, s_x_k, s_w_n, s_w_k, s_xt_t, s_xt_m, s_xt_k, s_wt_t, s_wt_n, s_wt_k, s_bt_t,
                        HAS_B: tl.constexpr, HAS_XT: tl.constexpr, HAS_WT: tl.constexpr, SEEDED: tl.constexpr,
                        GAUSSIAN: tl.constexpr, HAS_BT: tl.constexpr, ACT: tl.constexpr, ACC_F64: tl.constexpr,
                        PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    HAS_T: tl.constexpr = HAS_XT or HAS_WT or SEEDED
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
    acc_t = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
    # Pass 1: primal and tangent 0 together, sharing every x and W tile load.
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        x = tl.load(x_ptr + rm[:, None] * s_x_m + kk[None, :] * s_x_k, mask=(rm[:, None] < M) & (kk[None, :] < K),
                    other=0.0)
        w = tl.load(w_ptr + rn[:, None] * s_w_n + kk[None, :] * s_w_k, mask=(rn[:, None] < N) & (kk[None, :] < K),
                    other=0.0)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PREC)
        if HAS_T:
            acc_t = _tangent_update(acc_t, x, w, 0, rm, rn, kk, M, N, K, xt_ptr, s_xt_t, s_xt_m, s_xt_k, wt_ptr,
                                    s_wt_t, s_wt_n, s_wt_k, key0, key1, HAS_XT, HAS_WT, SEEDED, GAUSSIAN, PREC)
    mask_y = (rm[:, None] < M) & (rn[None, :] < N)
    if HAS_B:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(acc_dtype)[None, :]
    y, d = _activation(acc, ACT)
    out = rm[:, None] * N + rn[None, :]
    tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=mask_y)
    # Tangents: act'(z) is reused; tangent t >= 1 redoes only its own K loop.
    for t in range(0, T):
        if t > 0:
            acc_t = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
            if HAS_T:
                for k0 in range(0, K, BLOCK_K):
                    kk = k0 + rk
                    x = tl.load(x_ptr + rm[:, None] * s_x_m + kk[None, :] * s_x_k,
                                mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
                    w = tl.load(w_ptr + rn[:, None] * s_w_n + kk[None, :] * s_w_k,
                                mask=(rn[:, None] < N) & (kk[None, :] < K), other=0.0)
                    acc_t = _tangent_update(acc_t, x, w, t, rm, rn, kk, M, N, K, xt_ptr, s_xt_t, s_xt_m, s_xt_k,
                                            wt_ptr, s_wt_t, s_wt_n, s_wt_k, key0, key1, HAS_XT, HAS_WT, SEEDED,
                                            GAUSSIAN, PREC)
        z_t = acc_t
        if HAS_BT:
            z_t += tl.load(bt_ptr + t * s_bt_t + rn, mask=rn < N, other=0.0).to(acc_dtype)[None, :]
        tl.store(yt_ptr + t * M * N + out, (d * z_t).to(yt_ptr.dtype.element_ty), mask=mask_y)


def _t_strides(t: torch.Tensor | None) -> tuple[int, ...]:
    """Strides of a canonical tangent [Tk, ...]; T-stride 0 when it is shared by all tangents (Tk = 1)."""
    if t is None:
        return (0, 0, 0)
    s = list(t.stride())
    if t.shape[0] == 1:
        s[0] = 0
    return tuple(s) + (0,) * (3 - len(s))


def linear_dual(x, x_t, weight, weight_t, bias, bias_t, activation: str, T: int, seed: int | None,
                distribution: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher on canonical shapes (validated by symkernels.jvp.ops). Returns (y [M, N], y_t [T, M, N])."""
    M, K = x.shape
    N = weight.shape[0]
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    y_t = torch.empty((T, M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y, y_t
    if T == 0:
        x_t = weight_t = bias_t = None
        seed = None
    key0, key1 = reference.seed_keys(seed) if seed is not None else (0, 0)
    interpreted = x.device.type != "cuda"
    block = 16 if interpreted else 64  # tl.dot needs >= 16; the interpreter is slow, so tiny tiles there
    # fp32 follows torch's own matmul precision setting so the kernel matches torch.matmul's numerics.
    prec = "tf32" if (x.dtype == torch.float32 and not interpreted and torch.backends.cuda.matmul.allow_tf32) else "ieee"
    xts, wts, bts = _t_strides(x_t), _t_strides(weight_t), _t_strides(bias_t)
    dummy = x  # unused pointer arguments (their loads are compiled out)
    grid = (triton.cdiv(M, block), triton.cdiv(N, block))
    _linear_dual_kernel[grid](
        x, weight, bias if bias is not None else dummy, x_t if x_t is not None else dummy,
        weight_t if weight_t is not None else dummy, bias_t if bias_t is not None else dummy, y, y_t,
        M, N, K, T, key0, key1, x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
        xts[0], xts[1], xts[2], wts[0], wts[1], wts[2], bts[0],
        HAS_B=bias is not None, HAS_XT=x_t is not None, HAS_WT=weight_t is not None, SEEDED=seed is not None,
        GAUSSIAN=distribution == "gaussian", HAS_BT=bias_t is not None, ACT=_ACT_CODES[activation],
        ACC_F64=x.dtype == torch.float64, PREC=prec, BLOCK_M=block, BLOCK_N=block, BLOCK_K=block if interpreted else 32)
    return y, y_t


# ------------------------------------------------------------------------------------------------------
# Row-wise duals: layer norm, RMS norm, softmax over the last dim (one kernel, the kind a constexpr).
# One program per row holds the whole row in registers: the statistics (mean, 1/σ, or max/sum) are
# computed once and shared by the primal and all T tangents, each tangent costing two more row
# reductions (mean ẋ and mean x̂ẋ, or ⟨s, ẋ⟩) — one pass over memory per tangent.
# ------------------------------------------------------------------------------------------------------
_ROW_KIND_CODES = {name: i for i, name in enumerate(reference.ROW_KINDS)}
MAX_ROW = 1 << 16  # a row lives in registers; beyond this a split-row kernel would be needed


@triton.jit
def _row_dual_kernel(x_ptr, xt_ptr, w_ptr, wt_ptr, b_ptr, bt_ptr, y_ptr, yt_ptr, R, N, T, eps,
                     s_xt_t, s_wt_t, s_bt_t, KIND: tl.constexpr, HAS_XT: tl.constexpr, HAS_W: tl.constexpr,
                     HAS_WT: tl.constexpr, HAS_B: tl.constexpr, HAS_BT: tl.constexpr, ACC_F64: tl.constexpr,
                     BLOCK_N: tl.constexpr):
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(x_ptr + row * N + cols, mask=mask, other=0.0).to(acc_dtype)
    if KIND == 2:
        xm = tl.where(mask, x, float("-inf"))
        e = tl.where(mask, tl.exp(xm - tl.max(xm, axis=0)), 0.0)
        xh = e / tl.sum(e, axis=0)
        inv = xh  # unused for softmax
        y = xh
    else:
        if KIND == 0:
            xc = tl.where(mask, x - tl.sum(x, axis=0) / N, 0.0)
        else:
            xc = x
        inv = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)
        xh = xc * inv
        y = xh
        if HAS_W:
            w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(acc_dtype)
            y = y * w
        if HAS_B:
            y = y + tl.load(b_ptr + cols, mask=mask, other=0.0).to(acc_dtype)
    tl.store(y_ptr + row * N + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    for t in range(0, T):
        y_t = tl.zeros((BLOCK_N,), dtype=acc_dtype)
        if HAS_XT:
            xt = tl.load(xt_ptr + t * s_xt_t + row * N + cols, mask=mask, other=0.0).to(acc_dtype)
            if KIND == 2:
                y_t = xh * (xt - tl.sum(xh * xt, axis=0))
            else:
                if KIND == 0:
                    xt_c = tl.where(mask, xt - tl.sum(xt, axis=0) / N, 0.0)
                else:
                    xt_c = xt
                xh_t = (xt_c - xh * (tl.sum(xh * xt, axis=0) / N)) * inv
                if HAS_W:
                    xh_t = xh_t * w
                y_t = xh_t
        if HAS_WT:
            y_t += xh * tl.load(wt_ptr + t * s_wt_t + cols, mask=mask, other=0.0).to(acc_dtype)
        if HAS_BT:
            y_t += tl.load(bt_ptr + t * s_bt_t + cols, mask=mask, other=0.0).to(acc_dtype)
        tl.store(yt_ptr + (t * R + row) * N + cols, y_t.to(yt_ptr.dtype.element_ty), mask=mask)


def row_dual(kind: str, x, x_t, weight, weight_t, bias, bias_t, eps: float, T: int):
    """Launcher on canonical shapes (see reference.row_dual)."""
    R, N = x.shape
    y = torch.empty((R, N), dtype=x.dtype, device=x.device)
    y_t = torch.empty((T, R, N), dtype=x.dtype, device=x.device)
    if R == 0 or N == 0:
        return y, y_t
    x = x.contiguous()
    x_t, weight, weight_t, bias, bias_t = (None if t is None else t.contiguous()
                                           for t in (x_t, weight, weight_t, bias, bias_t))
    t_stride = lambda t, n: 0 if t is None or t.shape[0] == 1 else n  # noqa: E731  shared tangent: stride 0
    block = triton.next_power_of_2(N)
    dummy = x
    _row_dual_kernel[(R,)](
        x, x_t if x_t is not None else dummy, weight if weight is not None else dummy,
        weight_t if weight_t is not None else dummy, bias if bias is not None else dummy,
        bias_t if bias_t is not None else dummy, y, y_t, R, N, T, float(eps),
        t_stride(x_t, R * N), t_stride(weight_t, N), t_stride(bias_t, N),
        KIND=_ROW_KIND_CODES[kind], HAS_XT=x_t is not None, HAS_W=weight is not None, HAS_WT=weight_t is not None,
        HAS_B=bias is not None, HAS_BT=bias_t is not None, ACC_F64=x.dtype == torch.float64, BLOCK_N=block,
        num_warps=max(1, min(16, block // 256)))
    return y, y_t
