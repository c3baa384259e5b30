"""Triton fused linear(+bias)+activation JVP with two accumulators (primal and tangent).

One program owns a [BLOCK_M, BLOCK_N] tile of y. Its K loop loads each x and W tile once and feeds
both ``acc += x·Wᵀ`` and ``acc_t += x_t·Wᵀ + x·W_tᵀ`` (the weight tangent is either loaded or, for seeded
tangents, generated in registers from the counter-based hash: it is never in memory). The epilogue
evaluates act(z) and act'(z) once and writes y and y_t. Tangents 1..T−1 reuse that act'(z) and only
redo the tangent K loop (the primal is computed once for all T). A tangent given once for all T has
T-stride 0. Accumulates in fp32 (fp64 for fp64 inputs).

Every launch goes through ``torch.library.wrap_triton``, so torch.compile records the kernels themselves
(``symkernels._library.register_op``). The launchers named after the ops (``linear_dual``,
``layer_norm_dual``, ``rms_norm_dual``, ``softmax_dual``) take their op's arguments.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

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
    """acc_t += x_t[t]·Wᵀ + x·W_t[t]ᵀ over one K tile (rm, rn, kk int64)."""
    t = tl.cast(t, tl.int64)  # t·s_xt_t passes 2^31 for T·M·K > 2^31 elements
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
    # int64 indices: rm·s_x_m, rn·s_w_n, rk·s_x_k (a transposed x) and t·M·N pass 2^31 on large operands.
    # (The seeded tile's uint32 counter keeps the low 32 bits, the same as int32 arithmetic would.)
    rm = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K).to(tl.int64)
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
        y_t_ptr = yt_ptr + tl.cast(t, tl.int64) * M * N
        tl.store(y_t_ptr + out, (d * z_t).to(yt_ptr.dtype.element_ty), mask=mask_y)


def _t_strides(t: torch.Tensor | None) -> tuple[int, ...]:
    """Strides of a canonical tangent [Tk, ...]; T-stride 0 when it is shared by all tangents (Tk = 1)."""
    if t is None:
        return (0, 0, 0)
    s = list(t.stride())
    if t.shape[0] == 1:
        s[0] = 0
    return tuple(s) + (0,) * (3 - len(s))


def _dot_kind(dtype: torch.dtype, prec: str) -> str:
    """How this dtype's tl.dot runs on a GPU: tensor cores (16-bit, tf32), DMMA (fp64) or FMA (fp32 ieee).
    The last holds its operands in registers, so it takes smaller tiles."""
    if dtype in (torch.float16, torch.bfloat16) or prec == "tf32":
        return "tensor_core"
    return "fp64" if dtype == torch.float64 else "fp32_ieee"


# Two accumulators (primal and tangent) plus, for seeded tangents, a generated W_t tile. At 64×64×32 the
# FMA (fp32 "ieee") and fp64 dots spill 0.4-26 KB per thread (the Gaussian tile's log/cos the most);
# 32×32×16 over 8 warps does not, on sm_80 or sm_90 (sized with tools/gpu_compile_gate.py).
_LINEAR_TILES = {
    "tensor_core": dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32),
    "fp32_ieee": dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, num_warps=8, num_stages=2),
    "fp64": dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, num_warps=8, num_stages=2),
}


def linear_dual(x, x_t, weight, weight_t, bias, bias_t, activation: str, T: int, seed: int | None = -1,
                distribution: str = "gaussian") -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher on canonical shapes (validated by symkernels.jvp.ops), with the arguments of the op
    ``symkernels::linear_dual`` (seed -1 or None: no seeded tangent). Returns (y [M, N], y_t [T, M, N])."""
    if seed is not None and seed < 0:
        seed = None
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
    # fp32 follows torch's own matmul precision setting so the kernel matches torch.matmul's numerics.
    prec = "tf32" if (x.dtype == torch.float32 and not interpreted and torch.backends.cuda.matmul.allow_tf32) else "ieee"
    # tl.dot needs >= 16; the interpreter is slow, so tiny tiles there
    tiles = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16) if interpreted else dict(_LINEAR_TILES[_dot_kind(x.dtype, prec)])
    xts, wts, bts = _t_strides(x_t), _t_strides(weight_t), _t_strides(bias_t)
    dummy = x  # unused pointer arguments (their loads are compiled out)
    grid = (triton.cdiv(M, tiles["BLOCK_M"]), triton.cdiv(N, tiles["BLOCK_N"]))
    wrap_triton(_linear_dual_kernel)[grid](
        x, weight, bias if bias is not None else dummy, x_t if x_t is not None else dummy,
        weight_t if weight_t is not None else dummy, bias_t if bias_t is not None else dummy, y, y_t,
        M, N, K, T, key0, key1, x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
        xts[0], xts[1], xts[2], wts[0], wts[1], wts[2], bts[0],
        HAS_B=bias is not None, HAS_XT=x_t is not None, HAS_WT=weight_t is not None, SEEDED=seed is not None,
        GAUSSIAN=distribution == "gaussian", HAS_BT=bias_t is not None, ACT=_ACT_CODES[activation],
        ACC_F64=x.dtype == torch.float64, PREC=prec, **tiles)
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
        t64 = tl.cast(t, tl.int64)  # t·R·N passes 2^31 before R·N does
        y_t = tl.zeros((BLOCK_N,), dtype=acc_dtype)
        if HAS_XT:
            xt = tl.load(xt_ptr + t64 * s_xt_t + row * N + cols, mask=mask, other=0.0).to(acc_dtype)
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
            y_t += xh * tl.load(wt_ptr + t64 * s_wt_t + cols, mask=mask, other=0.0).to(acc_dtype)
        if HAS_BT:
            y_t += tl.load(bt_ptr + t64 * s_bt_t + cols, mask=mask, other=0.0).to(acc_dtype)
        tl.store(yt_ptr + (t64 * R + row) * N + cols, y_t.to(yt_ptr.dtype.element_ty), mask=mask)


# A row stays in registers up to this many accumulator bytes per array (fp32 4096, fp64 2048: spill-free
# with x, x̂, w and ẋ live, see tools/gpu_compile_gate.py); longer rows (to MAX_ROW) are streamed in
# chunks of that size by _row_dual_streamed_kernel, a few more passes over a row that sits in L2.
_RESIDENT_ROW_BYTES = 16 << 10


@triton.jit
def _row_chunk(ptr, c0, cols, N, acc_dtype: tl.constexpr):
    """Elements c0 + cols of a row at ptr (0 past N), in the accumulation dtype, and their mask."""
    c = c0 + cols
    mask = c < N
    return tl.load(ptr + c, mask=mask, other=0.0).to(acc_dtype), mask


@triton.jit
def _row_hat(x, mask, shift, inv, KIND: tl.constexpr):
    """x̂ of a chunk from the row statistics: exp(x − max)/Σ for softmax, (x − mean)·(1/σ) for the norms."""
    if KIND == 2:
        return tl.where(mask, tl.exp(x - shift), 0.0) * inv
    else:
        return tl.where(mask, x - shift, 0.0) * inv


@triton.jit
def _row_dual_streamed_kernel(x_ptr, xt_ptr, w_ptr, wt_ptr, b_ptr, bt_ptr, y_ptr, yt_ptr, R, N, T, eps,
                              s_xt_t, s_wt_t, s_bt_t, KIND: tl.constexpr, HAS_XT: tl.constexpr, HAS_W: tl.constexpr,
                              HAS_WT: tl.constexpr, HAS_B: tl.constexpr, HAS_BT: tl.constexpr,
                              ACC_F64: tl.constexpr, BLOCK_N: tl.constexpr):
    """_row_dual_kernel for rows longer than the register file holds: the same formulas, each row reduction
    a loop over BLOCK_N chunks (elementwise partial sums, reduced once)."""
    acc_dtype: tl.constexpr = tl.float64 if ACC_F64 else tl.float32
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * N
    cols = tl.arange(0, BLOCK_N)
    # Statistics: softmax's max and 1/Σexp, or the norms' mean (layer norm) and 1/σ.
    if KIND == 2:
        run_max = tl.full((BLOCK_N,), float("-inf"), acc_dtype)
        for c0 in range(0, N, BLOCK_N):
            x, mask = _row_chunk(x_row, c0, cols, N, acc_dtype)
            run_max = tl.maximum(run_max, tl.where(mask, x, float("-inf")))
        shift = tl.max(run_max, axis=0)
        total = tl.zeros((BLOCK_N,), acc_dtype)
        for c0 in range(0, N, BLOCK_N):
            x, mask = _row_chunk(x_row, c0, cols, N, acc_dtype)
            total += tl.where(mask, tl.exp(x - shift), 0.0)
        inv = 1.0 / tl.sum(total, axis=0)
    else:
        shift = 0.0
        if KIND == 0:
            total = tl.zeros((BLOCK_N,), acc_dtype)
            for c0 in range(0, N, BLOCK_N):
                x, mask = _row_chunk(x_row, c0, cols, N, acc_dtype)
                total += x
            shift = tl.sum(total, axis=0) / N
        squares = tl.zeros((BLOCK_N,), acc_dtype)
        for c0 in range(0, N, BLOCK_N):
            x, mask = _row_chunk(x_row, c0, cols, N, acc_dtype)
            xc = tl.where(mask, x - shift, 0.0)
            squares += xc * xc
        inv = 1.0 / tl.sqrt(tl.sum(squares, axis=0) / N + eps)
    for c0 in range(0, N, BLOCK_N):
        x, mask = _row_chunk(x_row, c0, cols, N, acc_dtype)
        y = _row_hat(x, mask, shift, inv, KIND)
        if HAS_W:
            y = y * _row_chunk(w_ptr, c0, cols, N, acc_dtype)[0]
        if HAS_B:
            y = y + _row_chunk(b_ptr, c0, cols, N, acc_dtype)[0]
        tl.store(y_ptr + row * N + c0 + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    for t in range(0, T):
        t64 = tl.cast(t, tl.int64)
        xt_row = xt_ptr + t64 * s_xt_t + row * N
        mean_xt = 0.0
        dot_hxt = 0.0
        if HAS_XT:  # the tangent's two row reductions: mean ẋ (layer norm) and ⟨x̂, ẋ⟩
            sum_xt = tl.zeros((BLOCK_N,), acc_dtype)
            sum_hxt = tl.zeros((BLOCK_N,), acc_dtype)
            for c0 in range(0, N, BLOCK_N):
                x, mask = _row_chunk(x_row, c0, cols, N, acc_dtype)
                xt = _row_chunk(xt_row, c0, cols, N, acc_dtype)[0]
                sum_xt += xt
                sum_hxt += _row_hat(x, mask, shift, inv, KIND) * xt
            mean_xt = tl.sum(sum_xt, axis=0) / N
            dot_hxt = tl.sum(sum_hxt, axis=0)
        for c0 in range(0, N, BLOCK_N):
            x, mask = _row_chunk(x_row, c0, cols, N, acc_dtype)
            xh = _row_hat(x, mask, shift, inv, KIND)
            y_t = tl.zeros((BLOCK_N,), acc_dtype)
            if HAS_XT:
                xt = _row_chunk(xt_row, c0, cols, N, acc_dtype)[0]
                if KIND == 2:
                    y_t = xh * (xt - dot_hxt)
                else:
                    if KIND == 0:
                        xt = tl.where(mask, xt - mean_xt, 0.0)
                    y_t = (xt - xh * (dot_hxt / N)) * inv
                    if HAS_W:
                        y_t = y_t * _row_chunk(w_ptr, c0, cols, N, acc_dtype)[0]
            if HAS_WT:
                y_t += xh * _row_chunk(wt_ptr + t64 * s_wt_t, c0, cols, N, acc_dtype)[0]
            if HAS_BT:
                y_t += _row_chunk(bt_ptr + t64 * s_bt_t, c0, cols, N, acc_dtype)[0]
            tl.store(yt_ptr + (t64 * R + row) * N + c0 + cols, y_t.to(yt_ptr.dtype.element_ty), mask=mask)


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
    resident = N * (8 if x.dtype == torch.float64 else 4) <= _RESIDENT_ROW_BYTES
    block = triton.next_power_of_2(N) if resident else _RESIDENT_ROW_BYTES // (8 if x.dtype == torch.float64 else 4)
    kernel = _row_dual_kernel if resident else _row_dual_streamed_kernel
    dummy = x
    wrap_triton(kernel)[(R,)](
        x, x_t if x_t is not None else dummy, weight if weight is not None else dummy,
        weight_t if weight_t is not None else dummy, bias if bias is not None else dummy,
        bias_t if bias_t is not None else dummy, y, y_t, R, N, T, float(eps),
        t_stride(x_t, R * N), t_stride(weight_t, N), t_stride(bias_t, N),
        KIND=_ROW_KIND_CODES[kind], HAS_XT=x_t is not None, HAS_W=weight is not None, HAS_WT=weight_t is not None,
        HAS_B=bias is not None, HAS_BT=bias_t is not None, ACC_F64=x.dtype == torch.float64, BLOCK_N=block,
        num_warps=max(1, min(16, block // 256)))
    return y, y_t


def _op_row_dual(op: str, kind: str, x, x_t, weight, weight_t, bias, bias_t, eps: float, T: int):
    if x.shape[-1] > MAX_ROW:
        raise ValueError(f"{op}: x.shape[-1] must be at most {MAX_ROW} for the Triton kernel (a row is held in "
                         f"registers), got {x.shape[-1]}")
    return row_dual(kind, x, x_t, weight, weight_t, bias, bias_t, eps, T)


# The launchers of the three row ops, with their op's arguments (csrc/jvp/schema.cpp).
def layer_norm_dual(x, x_t, weight, weight_t, bias, bias_t, eps: float, num_tangents: int):
    return _op_row_dual("layer_norm_dual", "layer_norm", x, x_t, weight, weight_t, bias, bias_t, eps, num_tangents)


def rms_norm_dual(x, x_t, weight, weight_t, eps: float, num_tangents: int):
    return _op_row_dual("rms_norm_dual", "rms_norm", x, x_t, weight, weight_t, None, None, eps, num_tangents)


def softmax_dual(x, x_t, num_tangents: int):
    return _op_row_dual("softmax_dual", "softmax", x, x_t, None, None, None, None, 0.0, num_tangents)


# ------------------------------------------------------------------------------------------------------
# Flash-style attention JVP: one program per (query block, batch·head, tangent). The K/V loop keeps the
# online-softmax state (running max m, normaliser l) and three tangent statistics, all rescaled together
# when m grows:  acc_o = Σ p v,  acc_t = Σ p ṡ v + Σ p v̇,  a = Σ p ṡ   (p = exp(s − m), unnormalised),
# with ṡ = (q̇ kᵀ + q k̇ᵀ)·scale. At the end o = acc_o / l and ȯ = acc_t / l − (a / l)·o
# (fwdgrad.md §4). Nothing of size L×L is stored. Tangent t ≥ 1 recomputes the primal statistics (a
# T-accumulator version would share them).
# ------------------------------------------------------------------------------------------------------
@triton.jit
def _attention_dual_kernel(q_ptr, k_ptr, v_ptr, qt_ptr, kt_ptr, vt_ptr, o_ptr, ot_ptr, Lq, Lk, D, DV, scale,
                           s_qt_t, s_kt_t, s_vt_t, HAS_QT: tl.constexpr, HAS_KT: tl.constexpr,
                           HAS_VT: tl.constexpr, CAUSAL: tl.constexpr, ACC_F64: tl.constexpr, PREC: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                           BLOCK_DV: tl.constexpr):
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    pid_m, bh, t = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, BLOCK_D)
    rdv = tl.arange(0, BLOCK_DV)
    mask_q = (rm[:, None] < Lq) & (rd[None, :] < D)
    q_off = bh * Lq * D + rm[:, None] * D + rd[None, :]
    q = tl.load(q_ptr + q_off, mask=mask_q, other=0.0)
    if HAS_QT:
        qt = tl.load(qt_ptr + t * s_qt_t + q_off, mask=mask_q, other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=acc_dtype)
    l_i = tl.zeros((BLOCK_M,), dtype=acc_dtype)
    a_i = tl.zeros((BLOCK_M,), dtype=acc_dtype)
    acc_o = tl.zeros((BLOCK_M, BLOCK_DV), dtype=acc_dtype)
    acc_t = tl.zeros((BLOCK_M, BLOCK_DV), dtype=acc_dtype)
    for n0 in range(0, Lk, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        mask_k = (rn[:, None] < Lk) & (rd[None, :] < D)
        mask_v = (rn[:, None] < Lk) & (rdv[None, :] < DV)
        k_off = bh * Lk * D + rn[:, None] * D + rd[None, :]
        v_off = bh * Lk * DV + rn[:, None] * DV + rdv[None, :]
        k = tl.load(k_ptr + k_off, mask=mask_k, other=0.0)
        v = tl.load(v_ptr + v_off, mask=mask_v, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC).to(acc_dtype) * scale
        valid = rn[None, :] < Lk
        if CAUSAL:
            valid = valid & (rn[None, :] <= rm[:, None])  # top-left aligned, as torch SDPA is_causal
        s = tl.where(valid, s, float("-inf"))
        s_dot = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
        if HAS_QT:
            s_dot += tl.dot(qt, tl.trans(k), input_precision=PREC).to(acc_dtype) * scale
        if HAS_KT:
            kt = tl.load(kt_ptr + t * s_kt_t + k_off, mask=mask_k, other=0.0)
            s_dot += tl.dot(q, tl.trans(kt), input_precision=PREC).to(acc_dtype) * scale
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # Rows with no valid key so far keep m = -inf; use 0 there so exp() gives 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        ps = tl.where(valid, p * s_dot, 0.0)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        a_i = a_i * alpha + tl.sum(ps, axis=1)
        acc_o = acc_o * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC).to(acc_dtype)
        acc_t = acc_t * alpha[:, None] + tl.dot(ps.to(v.dtype), v, input_precision=PREC).to(acc_dtype)
        if HAS_VT:
            vt = tl.load(vt_ptr + t * s_vt_t + v_off, mask=mask_v, other=0.0)
            acc_t += tl.dot(p.to(vt.dtype), vt, input_precision=PREC).to(acc_dtype)
        m_i = m_new
    o = acc_o / l_i[:, None]
    o_t = acc_t / l_i[:, None] - (a_i / l_i)[:, None] * o
    o_off = bh * Lq * DV + rm[:, None] * DV + rdv[None, :]
    mask_o = (rm[:, None] < Lq) & (rdv[None, :] < DV)
    if t == 0:
        tl.store(o_ptr + o_off, o.to(o_ptr.dtype.element_ty), mask=mask_o)
    ot_off = t * (tl.num_programs(1).to(tl.int64) * Lq * DV) + o_off  # T·BH·Lq·DV passes 2^31 before BH·Lq·DV
    tl.store(ot_ptr + ot_off, o_t.to(ot_ptr.dtype.element_ty), mask=mask_o)


def _attention_tiles(dtype: torch.dtype, prec: str) -> dict:
    """Tiles, warps and pipeline depth on a GPU (sized with tools/gpu_compile_gate.py)."""
    return dict(_ATTENTION_TILES[_dot_kind(dtype, prec)])


# Each program keeps ~10 [BLOCK_M, BLOCK_N]/[BLOCK_*, 64] tiles live (q, q̇, s, ṡ, p, pṡ, o and ȯ
# accumulators, k/k̇/v/v̇ loads). Without tensor cores (fp32 "ieee", FMA dots hold their operands in
# registers) 64×64 tiles spill ~40 KB per thread and their 3-stage pipeline needs 192 KB of shared memory,
# over an A100's 163 KB; these sizes compile without spills on sm_80 and sm_90 at head dim 64.
_ATTENTION_TILES = {
    "tensor_core": dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=3),
    "fp32_ieee": dict(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=2),
    "fp64": dict(BLOCK_M=16, BLOCK_N=32, num_warps=8, num_stages=2),
}


def attention_dual(q, k, v, q_t, k_t, v_t, causal: bool, scale: float):
    """Launcher: q [BH, Lq, D], k [BH, Lk, D], v [BH, Lk, DV], tangents [Tk, ...] (Tk in {1, T}) or None.
    Returns (o [BH, Lq, DV], o_t [T, BH, Lq, DV])."""
    BH, Lq, D = q.shape
    Lk, DV = v.shape[1], v.shape[2]
    T = max([t.shape[0] for t in (q_t, k_t, v_t) if t is not None], default=1)
    o = torch.empty((BH, Lq, DV), dtype=q.dtype, device=q.device)
    o_t = torch.zeros((T, BH, Lq, DV), dtype=q.dtype, device=q.device)
    if BH == 0 or Lq == 0 or Lk == 0:
        o.zero_()  # softmax over no keys: an empty sum, as in the reference
        return o, o_t
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    q_t, k_t, v_t = (None if t is None else t.contiguous() for t in (q_t, k_t, v_t))
    stride = lambda t, x: 0 if t is None or t.shape[0] == 1 else x.numel()  # noqa: E731  shared tangent
    interpreted = q.device.type != "cuda"
    prec = "tf32" if (q.dtype == torch.float32 and not interpreted and torch.backends.cuda.matmul.allow_tf32) else "ieee"
    tiles = dict(BLOCK_M=16, BLOCK_N=16) if interpreted else _attention_tiles(q.dtype, prec)
    grid = (triton.cdiv(Lq, tiles["BLOCK_M"]), BH, T)
    wrap_triton(_attention_dual_kernel)[grid](
        q, k, v, q_t if q_t is not None else q, k_t if k_t is not None else k, v_t if v_t is not None else v, o, o_t,
        Lq, Lk, D, DV, float(scale), stride(q_t, q), stride(k_t, k), stride(v_t, v),
        HAS_QT=q_t is not None, HAS_KT=k_t is not None, HAS_VT=v_t is not None, CAUSAL=bool(causal),
        ACC_F64=q.dtype == torch.float64, PREC=prec, BLOCK_D=max(16, triton.next_power_of_2(D)),
        BLOCK_DV=max(16, triton.next_power_of_2(DV)), **tiles)
    return o, o_t
