"""Triton conv2d dual: an implicit GEMM with two accumulators (primal and tangent), no im2col buffer.

The convolution is the GEMM ``z[m, o] = Σ_k X[m, k] · W[o, k]`` with rows m = (n, ho, wo) of the output,
columns o the output channels of one group, and k = (c, i, j) running over the group's input channels and
the kernel window (K = C/groups · kh · kw, the order of W's memory). X is never formed: a program computes
the input coordinates of its [BLOCK_M, BLOCK_K] tile, ``h = ho·stride − padding + i·dilation`` (same for w),
and loads it directly, zero where the window leaves the image. One program owns a [BLOCK_M, BLOCK_N] tile
of one group for one tangent t (grid axis 2: group and t). As in the linear dual kernel (``triton.py``, whose
seeded-tile generator and activation epilogue this reuses), each x and W tile is loaded once for
``acc += X·Wᵀ`` and ``acc_t += X_t·Wᵀ + X·W_tᵀ``; a seeded W_t is generated in registers from its flat index
((t·O + o)·K + k), never read from memory; act(z) and act'(z) are evaluated once per program. Tangents are
programs, not a loop: a program per t recomputes the primal tile (T − 1 extra primal GEMMs, nothing for the
forward-gradient case T = 1) because a T loop keeping act'(z), the output offsets and the tangent K loop
live at once spilled registers on sm_80 and sm_90 at every tile size tried (tools/gpu_compile_gate.py). A
tangent given once for all T has T-stride 0. Accumulates in fp32 (fp64 for fp64 inputs).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from symkernels.jvp import reference
from symkernels.jvp.triton import _ACT_CODES, _activation, _seeded_tile


@triton.jit
def _input_tile(ptr, row_off, h0, w0, row_ok, kk, K, group_c0, H, W, KH: tl.constexpr, KW: tl.constexpr, DH, DW, s_c,
                s_h, s_w):
    """X[rows, kk] of the implicit GEMM (the input under each output pixel's window), [BLOCK_M, BLOCK_K].
    Offsets are separable, a row part (loop-invariant: batch and window origin) plus a column part (channel and
    tap), so only their sum and the bounds mask are [BLOCK_M, BLOCK_K]: keeps the K loop's registers down."""
    c = kk // (KH * KW)
    r = kk % (KH * KW)
    dh, dw = (r // KW) * DH, (r % KW) * DW
    h = h0[:, None] + dh[None, :]
    w = w0[:, None] + dw[None, :]
    mask = row_ok[:, None] & (kk[None, :] < K) & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    col_off = (group_c0 + c) * s_c + dh * s_h + dw * s_w
    return tl.load(ptr + row_off[:, None] + col_off[None, :], mask=mask, other=0.0)


@triton.jit
def _kernel_tile(ptr, o, col_ok, kk, K, KH: tl.constexpr, KW: tl.constexpr, s_o, s_c, s_h, s_w):
    """W[o, kk] (k = (c, i, j) of the kernel), [BLOCK_N, BLOCK_K]."""
    c = kk // (KH * KW)
    r = kk % (KH * KW)
    return tl.load(ptr + o[:, None] * s_o + (c * s_c + (r // KW) * s_h + (r % KW) * s_w)[None, :],
                   mask=col_ok[:, None] & (kk[None, :] < K), other=0.0)


@triton.jit
def _conv_dual_kernel(x_ptr, w_ptr, b_ptr, xt_ptr, wt_ptr, bt_ptr, y_ptr, yt_ptr,
                      NB, H, W, O, OG, HO, WO, K, key0, key1, SH, SW, PH, PW, DH, DW,
                      s_x_n, s_x_c, s_x_h, s_x_w, s_w_o, s_w_c, s_w_h, s_w_w,
                      s_xt_t, s_xt_n, s_xt_c, s_xt_h, s_xt_w, s_wt_t, s_wt_o, s_wt_c, s_wt_h, s_wt_w, s_bt_t, s_yt_t,
                      KH: tl.constexpr, KW: tl.constexpr, HAS_B: tl.constexpr, HAS_XT: tl.constexpr,
                      HAS_WT: tl.constexpr, SEEDED: tl.constexpr, GAUSSIAN: tl.constexpr, HAS_BT: tl.constexpr,
                      WRITE_T: tl.constexpr, ACT: tl.constexpr, ACC_F64: tl.constexpr, PREC: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    groups = O // OG
    group, t = tl.program_id(2) % groups, tl.program_id(2) // groups
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    M = NB * HO * WO
    row_ok, col_ok = rm < M, rn < OG
    pixel = rm % (HO * WO)
    nb = rm // (HO * WO)
    h0, w0 = (pixel // WO) * SH - PH, (pixel % WO) * SW - PW  # window origin of each output pixel
    x_rows = nb * s_x_n + h0 * s_x_h + w0 * s_x_w
    xt_rows = nb * s_xt_n + h0 * s_xt_h + w0 * s_xt_w
    o = group * OG + rn  # global output channel
    group_c0 = group * (K // (KH * KW))  # first input channel of the group
    HAS_T: tl.constexpr = HAS_XT or HAS_WT or SEEDED
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
    acc_t = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
    # Primal and tangent t together, sharing every x and W tile load.
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        x = _input_tile(x_ptr, x_rows, h0, w0, row_ok, kk, K, group_c0, H, W, KH, KW, DH, DW, s_x_c, s_x_h, s_x_w)
        w = _kernel_tile(w_ptr, o, col_ok, kk, K, KH, KW, s_w_o, s_w_c, s_w_h, s_w_w)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PREC)
        if HAS_T:
            acc_t = _tangent_update(acc_t, x, w, t, xt_rows, h0, w0, row_ok, o, col_ok, kk, K, group_c0, H, W, O,
                                    DH, DW, xt_ptr, s_xt_t, s_xt_c, s_xt_h, s_xt_w, wt_ptr, s_wt_t, s_wt_o, s_wt_c,
                                    s_wt_h, s_wt_w, key0, key1, KH, KW, HAS_XT, HAS_WT, SEEDED, GAUSSIAN, PREC)
    if HAS_B:
        acc += tl.load(b_ptr + o, mask=col_ok, other=0.0).to(acc_dtype)[None, :]
    y, d = _activation(acc, ACT)
    mask_y = row_ok[:, None] & col_ok[None, :]
    out = (nb * O * HO * WO + pixel)[:, None] + (o * HO * WO)[None, :]  # y[nb, o, ho, wo], contiguous
    if t == 0:
        tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=mask_y)
    if WRITE_T:
        if HAS_BT:
            acc_t += tl.load(bt_ptr + t * s_bt_t + o, mask=col_ok, other=0.0).to(acc_dtype)[None, :]
        tl.store(yt_ptr + t * s_yt_t + out, (d * acc_t).to(yt_ptr.dtype.element_ty), mask=mask_y)


@triton.jit
def _tangent_update(acc_t, x, w, t, xt_rows, h0, w0, row_ok, o, col_ok, kk, K, group_c0, H, W, O, DH, DW, xt_ptr,
                    s_xt_t, s_xt_c, s_xt_h, s_xt_w, wt_ptr, s_wt_t, s_wt_o, s_wt_c, s_wt_h, s_wt_w, key0, key1,
                    KH: tl.constexpr, KW: tl.constexpr, HAS_XT: tl.constexpr, HAS_WT: tl.constexpr,
                    SEEDED: tl.constexpr, GAUSSIAN: tl.constexpr, PREC: tl.constexpr):
    """acc_t += X_t[t]·Wᵀ + X·W_t[t]ᵀ over one K tile."""
    if HAS_XT:
        xt = _input_tile(xt_ptr + t * s_xt_t, xt_rows, h0, w0, row_ok, kk, K, group_c0, H, W, KH, KW, DH, DW, s_xt_c,
                         s_xt_h, s_xt_w)
        acc_t = tl.dot(xt, tl.trans(w), acc_t, input_precision=PREC)
    if HAS_WT:
        wt = _kernel_tile(wt_ptr + t * s_wt_t, o, col_ok, kk, K, KH, KW, s_wt_o, s_wt_c, s_wt_h, s_wt_w)
        acc_t = tl.dot(x, tl.trans(wt), acc_t, input_precision=PREC)
    if SEEDED:
        mask_w = col_ok[:, None] & (kk[None, :] < K)
        wt = tl.where(mask_w, _seeded_tile(t, o, kk, O, K, key0, key1, GAUSSIAN), 0.0).to(x.dtype)
        acc_t = tl.dot(x, tl.trans(wt), acc_t, input_precision=PREC)
    return acc_t


def _strides(t: torch.Tensor | None, ndim: int) -> tuple[int, ...]:
    """A canonical tangent's strides [Tk, ...], the T-stride 0 when one tangent serves all (Tk = 1)."""
    if t is None:
        return (0,) * ndim
    s = list(t.stride())
    if t.shape[0] == 1:
        s[0] = 0
    return tuple(s)


def launch_config(interpreted: bool, out_channels_per_group: int, fp64: bool = False) -> dict:
    """Tile sizes and warps: tiny tiles in the interpreter (tl.dot needs >= 16, and it is slow). On GPUs 64
    output pixels x up to 64 output channels (a small group would waste a wider tile), K in steps of 16, 8
    warps: the im2col tiles of x and x_t, the W and W_t tiles and two fp32 accumulators live together in the K
    loop, and with K steps of 32 or 4 warps that spilled on sm_80. fp64 tiles and accumulators take twice the
    registers: 32 output pixels x at least 32 channels there (64 pixels spilled up to 188 B on sm_90, and 16
    channels 4 B on sm_80). tools/gpu_compile_gate.py: 0 spills."""
    if interpreted:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16)
    return dict(BLOCK_M=32 if fp64 else 64, BLOCK_N=max(32 if fp64 else 16,
                                                      min(64, triton.next_power_of_2(out_channels_per_group))),
                BLOCK_K=16, num_warps=8, num_stages=3)


def conv2d_dual(x, x_t, weight, weight_t, bias, bias_t, geo, activation: str, T: int, seed: int | None,
                distribution: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher on canonical shapes (validated by symkernels.jvp.conv). Returns (y, y_t [T, *y.shape])."""
    NB, C, H, W = x.shape
    O, Cg, KH, KW = weight.shape
    HO, WO = geo.output_size(H, W, KH, KW)
    y = torch.empty((NB, O, HO, WO), dtype=x.dtype, device=x.device)
    y_t = torch.empty((T, NB, O, HO, WO), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y, y_t
    if T == 0:
        x_t = weight_t = bias_t = None
        seed = None
    # The kernel indexes bias and bias_t by channel with unit stride (they are tiny: copying costs nothing).
    bias, bias_t = (None if t is None else t.contiguous() for t in (bias, bias_t))
    key0, key1 = reference.seed_keys(seed) if seed is not None else (0, 0)
    interpreted = x.device.type != "cuda"
    # fp32 follows torch's own conv precision setting so the kernel matches F.conv2d's numerics.
    prec = "tf32" if (x.dtype == torch.float32 and not interpreted and torch.backends.cudnn.allow_tf32) else "ieee"
    cfg = launch_config(interpreted, O // geo.groups, fp64=x.dtype == torch.float64)
    grid = (triton.cdiv(NB * HO * WO, cfg["BLOCK_M"]), triton.cdiv(O // geo.groups, cfg["BLOCK_N"]),
            geo.groups * max(T, 1))
    dummy = x  # pointer arguments whose loads are compiled out
    (SH, SW), (PH, PW), (DH, DW) = geo.stride, geo.padding, geo.dilation
    wrap_triton(_conv_dual_kernel)[grid](
        x, weight, bias if bias is not None else dummy, x_t if x_t is not None else dummy,
        weight_t if weight_t is not None else dummy, bias_t if bias_t is not None else dummy, y, y_t,
        NB, H, W, O, O // geo.groups, HO, WO, Cg * KH * KW, key0, key1, SH, SW, PH, PW, DH, DW,
        *x.stride(), *weight.stride(), *_strides(x_t, 5), *_strides(weight_t, 5), _strides(bias_t, 2)[0],
        y.numel(),  # y_t's T-stride: the launcher passes it so that Triton widens it to int64 when it must
        KH=KH, KW=KW, HAS_B=bias is not None, HAS_XT=x_t is not None, HAS_WT=weight_t is not None,
        SEEDED=seed is not None, GAUSSIAN=distribution == "gaussian", HAS_BT=bias_t is not None, WRITE_T=T > 0,
        ACT=_ACT_CODES[activation], ACC_F64=x.dtype == torch.float64, PREC=prec, **cfg)
    return y, y_t
