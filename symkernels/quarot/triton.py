"""Triton kernels of the QuaRot pillar.

``_quantize_int4_kernel``: one program per row. With ROTATE the row goes through the Kronecker
Hadamard tile of ``symkernels.hadamard.triton`` (K = 1 for a power of two), so rotation,
absmax, scale, rounding and nibble packing happen in registers: one read of x, one write of n/2 bytes
and a scale. The tile flattened row-major is the row in memory order (index k·P + j), with the padded
rows (k ≥ K) at indices ≥ n, masked out.

``_int4_matmul_kernel``: [BLOCK_M, BLOCK_N] output tile; packed bytes of A and W are loaded, split into
their nibbles, sign-extended to int8 and interleaved back into K order in registers, then ``tl.dot``
int8 × int8 → int32; the epilogue applies the fp32 row × column scale and bias once.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

# Past the package's door on purpose: the fused kernel calls the Hadamard pillar's @triton.jit device function
# kron_rotate_tile, sizes its tile as that pillar's kernels do, and falls back to its two-pass launcher.
from symkernels.hadamard.triton import MAX_TILE, hadamard_transform_k, kron_rotate_tile, launch_params

# 1.5·2^23: adding and subtracting it rounds an fp32 |v| < 2^22 to the nearest integer, ties to even
# (the FPU's rounding of the intermediate sum), with no libdevice call; LLVM keeps it without fast-math.
# A tl.constexpr: the compiler refuses plain module-level globals inside a kernel (the interpreter does not).
_ROUND_MAGIC = tl.constexpr(12582912.0)
# Rows (or rotation tiles) past MAX_TILE elements do not fit one program's registers
# (a 2^16 row spills ~200 B per thread): they are quantized in chunks of this many.
_STREAM_BLOCK = 4096


@triton.jit
def _quantize_int4_kernel(x_ptr, hk_ptr, packed_ptr, scale_ptr, n, clip, rot_scale, ROTATE: tl.constexpr,
                          K: tl.constexpr, K_PAD: tl.constexpr, P: tl.constexpr, LOG_P: tl.constexpr,
                          N_PAD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, N_PAD)
    valid = idx < n
    if ROTATE:
        tile = kron_rotate_tile(x_ptr, hk_ptr, row * n, K, K_PAD, P, LOG_P, False) * rot_scale
        v = tl.reshape(tile, (N_PAD,))
    else:
        v = tl.load(x_ptr + row * n + idx, mask=valid, other=0.0).to(tl.float32)
    v = tl.where(valid, v, 0.0)
    has_nan = tl.sum(((v != v) & valid).to(tl.int32), axis=0) > 0  # tl.max may drop NaNs
    amax = tl.max(tl.abs(v), axis=0)
    scale = (clip * amax) / 7.0
    scale = tl.where(has_nan, float("nan"), scale)
    tl.store(scale_ptr + row, scale)
    b_idx = tl.arange(0, N_PAD // 2)
    tl.store(packed_ptr + row * (n // 2) + b_idx, _quantize_pack(v, scale, N_PAD), mask=b_idx < n // 2)


@triton.jit
def _quantize_pack(v, scale, WIDTH: tl.constexpr):
    """[WIDTH] fp32 values → [WIDTH / 2] bytes of two int4 codes, clamp(round_half_even(v / scale), −8, 7)."""
    q = v / scale
    bad = q != q  # NaN (scale 0 / NaN / inf) → code 0, as the reference; test before the clamp, whose
    q = tl.minimum(tl.maximum(q, -8.0), 7.0)  # min/max may return the non-NaN operand
    q = (q + _ROUND_MAGIC) - _ROUND_MAGIC
    q = tl.where(bad, 0.0, q).to(tl.int32)
    lo, hi = tl.split(tl.reshape(q, (WIDTH // 2, 2)))
    return ((lo & 15) | ((hi & 15) << 4)).to(tl.uint8)


@triton.jit
def _quantize_int4_streamed_kernel(x_ptr, packed_ptr, scale_ptr, n, clip, BLOCK: tl.constexpr):
    """_quantize_int4_kernel without rotation for rows longer than one program's registers: max|x| (and
    any NaN) over BLOCK chunks, then each chunk quantized and packed. Two reads of x instead of one."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * n
    idx = tl.arange(0, BLOCK)
    run_max = tl.zeros((BLOCK,), dtype=tl.float32)
    nans = tl.zeros((BLOCK,), dtype=tl.int32)
    for c0 in range(0, n, BLOCK):
        valid = c0 + idx < n
        v = tl.load(x_row + c0 + idx, mask=valid, other=0.0).to(tl.float32)
        nans += ((v != v) & valid).to(tl.int32)
        run_max = tl.maximum(run_max, tl.abs(v))
    scale = (clip * tl.max(run_max, axis=0)) / 7.0
    scale = tl.where(tl.sum(nans, axis=0) > 0, float("nan"), scale)
    tl.store(scale_ptr + row, scale)
    b_idx = tl.arange(0, BLOCK // 2)
    for c0 in range(0, n, BLOCK):
        valid = c0 + idx < n
        v = tl.load(x_row + c0 + idx, mask=valid, other=0.0).to(tl.float32)
        byte_idx = c0 // 2 + b_idx
        tl.store(packed_ptr + row * (n // 2) + byte_idx, _quantize_pack(v, scale, BLOCK), mask=byte_idx < n // 2)


def quantize_int4(x: torch.Tensor, clip_ratio: float, hk: torch.Tensor | None, rot_scale: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher: arguments already validated by symkernels.quarot.ops."""
    n = x.shape[-1]
    rows = math.prod(x.shape[:-1])
    x2 = x.contiguous().view(rows, n)
    packed = torch.empty(rows, n // 2, dtype=torch.uint8, device=x.device)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=x.device)
    if rows and n:
        params = launch_params(hk.shape[0], n) if hk is not None else None
        if params is not None and params["K_PAD"] * params["P"] > MAX_TILE:
            # Too large a rotation tile for one program's registers: rotate first (the two-pass Kronecker
            # transform, into fp32), then quantize the rotated rows (streamed, below).
            x2 = hadamard_transform_k(x2.float(), hk, float(rot_scale))
            params, hk, rot_scale = None, None, 1.0
        if params is not None:
            h = hk.to(device=x.device, dtype=torch.float32).contiguous()
            n_pad = params["K_PAD"] * params["P"]
        else:
            params = dict(K=1, K_PAD=1, P=1, LOG_P=0)
            h = x2  # unused
            n_pad = triton.next_power_of_2(n)
        if n_pad <= MAX_TILE:
            wrap_triton(_quantize_int4_kernel)[(rows,)](
                x2, h, packed, scale, n, float(clip_ratio), float(rot_scale), ROTATE=hk is not None, N_PAD=n_pad,
                **params, num_warps=max(1, min(16, n_pad // 256)))
        else:
            wrap_triton(_quantize_int4_streamed_kernel)[(rows,)](x2, packed, scale, n, float(clip_ratio),
                                                                 BLOCK=_STREAM_BLOCK, num_warps=16)
    elif rows:
        scale.zero_()
    return packed.view(*x.shape[:-1], n // 2), scale.view(*x.shape[:-1], 1)


@triton.jit
def _unpack_tile(ptr, rows, cols_bytes, row_idx, kb_idx, mask_rows):
    """Load [R, KB] packed bytes → [R, 2·KB] int8 codes in K order (byte j → codes 2j, 2j+1)."""
    b = tl.load(ptr + row_idx[:, None].to(tl.int64) * cols_bytes + kb_idx[None, :],
                mask=mask_rows[:, None] & (kb_idx[None, :] < cols_bytes), other=0).to(tl.int32)
    lo = ((b & 15) ^ 8) - 8  # sign-extend a nibble: xor 8 then subtract 8
    hi = (((b >> 4) & 15) ^ 8) - 8
    q = tl.join(lo, hi)  # [R, KB, 2]: the last axis is (even, odd)
    return tl.reshape(q, (q.shape[0], 2 * q.shape[1])).to(tl.int8)


@triton.jit
def _int4_matmul_kernel(a_ptr, sa_ptr, w_ptr, sw_ptr, bias_ptr, out_ptr, M, N, KB, HAS_BIAS: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for kb0 in range(0, KB, BLOCK_KB):
        kb = kb0 + tl.arange(0, BLOCK_KB)
        a = _unpack_tile(a_ptr, M, KB, rm, kb, rm < M)
        w = _unpack_tile(w_ptr, N, KB, rn, kb, rn < N)
        acc += tl.dot(a, tl.trans(w), out_dtype=tl.int32)
    sa = tl.load(sa_ptr + rm, mask=rm < M, other=0.0)
    sw = tl.load(sw_ptr + rn, mask=rn < N, other=0.0)
    y = acc.to(tl.float32) * sa[:, None] * sw[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(out_ptr + rm[:, None].to(tl.int64) * N + rn[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def int4_matmul(a_packed, a_scale, w_packed, w_scale, bias, out_dtype):
    """Launcher: arguments already validated by symkernels.quarot.ops."""
    m, kb = a_packed.shape
    n = w_packed.shape[0]
    out = torch.empty(m, n, dtype=out_dtype, device=a_packed.device)
    if m == 0 or n == 0:
        return out
    if kb == 0:
        out.copy_(bias.expand(m, n) if bias is not None else torch.zeros(m, n))
        return out
    # tl.dot needs every tile dim ≥ 16; 32 bytes = 64 codes per K step.
    block_m = 16 if m <= 16 else 64
    block_n, block_kb = 64, 32
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    wrap_triton(_int4_matmul_kernel)[grid](
        a_packed.contiguous(), a_scale.contiguous().float(), w_packed.contiguous(), w_scale.contiguous().float(),
        bias if bias is not None else a_scale, out, m, n, kb, HAS_BIAS=bias is not None, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_KB=block_kb)
    return out
