"""Weight quantization to symmetric INT4: round-to-nearest (RTN) and GPTQ, per output channel or in
groups of input columns (group_size, e.g. 128).

Both return integer codes ``q`` (int8 in [−8, 7], [N, K]) and scales ``[N, K/group_size]`` (one column
for per-channel), with ``W ≈ q · scale`` broadcast over each group. The W4A4 kernel's epilogue takes one
scale per output channel, so only per-channel weights run on ``int4_matmul``; group-wise weights are
for simulated (dequantized) evaluation.

GPTQ (Frantar et al., 2022): quantize columns left to right, and after each column spread its rounding
error over the not-yet-quantized columns with the inverse Hessian of the layer's squared error,
H = 2·XᵀX / tokens (+ percdamp·mean(diag H) on the diagonal), in blocks of ``blocksize`` columns using
the upper Cholesky factor of H⁻¹. Computed in float64. ``act_order`` quantizes the columns in order of
descending diag(H) (the inputs with the most energy first, while the most columns are left to absorb
their error) and undoes the permutation on the codes.

Clip search (``mse_clip=True``, GPTQ's ``mse`` quantizer): per output channel (or group), the scale
p·max|w|/7 for p on the grid 1, 0.99, …, 1 − maxshrink (80 candidates) that minimises Σ|w − Q(w)|^2.4
(QuaRot's norm 2.4, grid 100, maxshrink 0.8): clipping a few large weights buys resolution for the
rest. ``search_activation_clip`` does the same for the one static activation clip ratio of a layer,
on a calibration batch, by the layer's output error.
"""
from __future__ import annotations

import torch

from symkernels.quarot import reference

MSE_NORM, MSE_GRID, MSE_MAXSHRINK = 2.4, 100, 0.8


def _scale(amax: torch.Tensor, ratio) -> torch.Tensor:
    """(ratio·amax)/7 in fp32; an all-zero row gets scale 1 (it quantizes to 0 with any scale)."""
    s = (torch.as_tensor(ratio, dtype=torch.float32) * amax) / 7.0
    return torch.where(s > 0, s, torch.ones_like(s))


# elements of the [candidates, rows, cols] error tensor evaluated at once: bounds the temporaries
# (about 3 such fp32 buffers live at a time, 12 MB each) while keeping every op long enough to vectorise
_MSE_CHUNK_ELEMS = 1 << 20


def _scale_of(w: torch.Tensor, clip_ratio: float, mse: bool = False) -> torch.Tensor:
    """Symmetric INT4 scale per row of w ([..., cols] → [..., 1]), fp32, as for activations; with
    ``mse`` the per-row shrink of it (grid search) that minimises the row's Σ|w − Q(w)|^MSE_NORM.

    The search evaluates every candidate ratio clip·(1 − i/MSE_GRID), i < MSE_MAXSHRINK·MSE_GRID, on
    every row as one broadcast [candidates, rows, cols] computation (in chunks of rows), in fp32 (ample
    to rank candidates). Each candidate's error is computed with the same elementwise ops as a
    one-candidate-at-a-time loop, and ties go to the first (largest) ratio, so the chosen scales are
    the loop's; the cost is dominated by |e|^2.4 (one pow per element and candidate).
    """
    amax = w.abs().amax(dim=-1, keepdim=True).float()
    if not mse:
        return _scale(amax, clip_ratio)
    cols = w.shape[-1]
    wf = w.float().reshape(-1, cols)
    amax = amax.reshape(-1, 1)
    ratios = torch.tensor([clip_ratio * (1.0 - i / MSE_GRID) for i in range(int(MSE_MAXSHRINK * MSE_GRID))],
                          dtype=torch.float32)
    cands = _scale(amax[None], ratios[:, None, None])  # [C, rows, 1]
    best = torch.empty_like(amax)
    rows_per_chunk = max(1, _MSE_CHUNK_ELEMS // (len(ratios) * cols))
    for r0 in range(0, wf.shape[0], rows_per_chunk):
        wc, sc = wf[r0:r0 + rows_per_chunk], cands[:, r0:r0 + rows_per_chunk]
        e = torch.div(wc, sc).round_().clamp_(-8, 7).mul_(sc)  # Q(w) = _round(w, s)·s, in place: one buffer
        err = torch.sub(wc, e, out=e).abs_().pow_(MSE_NORM).sum(dim=-1)  # [C, rows]
        best[r0:r0 + rows_per_chunk] = sc.gather(0, err.argmin(dim=0)[None, :, None])[0]  # argmin: first of ties
    return best.reshape(*w.shape[:-1], 1)


def _round(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale), -8, 7)


def _check(w: torch.Tensor, group_size: int | None, op: str) -> int:
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise TypeError(f"{op}: weight must be a 2-D floating tensor [out, in], got "
                        f"{getattr(w, 'shape', type(w).__name__)}")
    k = w.shape[1]
    if group_size is None:
        return k
    if not isinstance(group_size, int) or group_size <= 0 or k % group_size:
        raise ValueError(f"{op}: group_size must be a positive divisor of in_features={k}, got {group_size!r}")
    return group_size


def quantize_weight_rtn(w: torch.Tensor, *, group_size: int | None = None, clip_ratio: float = 1.0,
                        mse_clip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest INT4: (codes int8 [N, K], scales fp32 [N, K/g])."""
    g = _check(w, group_size, "quantize_weight_rtn")
    n, k = w.shape
    wg = w.float().reshape(n, k // g, g)
    scale = _scale_of(wg, clip_ratio, mse_clip)  # [N, G, 1]
    q = _round(wg, scale)
    return q.reshape(n, k).to(torch.int8), scale.reshape(n, k // g)


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    n, k = q.shape
    groups = scale.shape[1]
    return (q.float().reshape(n, groups, k // groups) * scale.float()[..., None]).reshape(n, k)


def gptq_hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2·XᵀX / tokens of a calibration batch x [..., K] (float64)."""
    x2 = x.reshape(-1, x.shape[-1]).double()
    return 2.0 * x2.T @ x2 / max(1, x2.shape[0])


def quantize_weight_gptq(w: torch.Tensor, hessian: torch.Tensor, *, group_size: int | None = None,
                         clip_ratio: float = 1.0, mse_clip: bool = False, act_order: bool = False,
                         blocksize: int = 128, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ INT4: (codes int8 [N, K], scales fp32 [N, K/g]) minimizing ‖(W − Ŵ)Xᵀ‖² given H = 2XᵀX/t."""
    g = _check(w, group_size, "quantize_weight_gptq")
    n, k = w.shape
    if hessian.shape != (k, k):
        raise ValueError(f"quantize_weight_gptq: hessian must be [{k}, {k}], got {tuple(hessian.shape)}")
    if act_order:
        if group_size is not None:
            # permuted columns would scatter each group over the row: the contiguous-group layout of
            # the scales (and of the kernels) could no longer describe them
            raise ValueError("quantize_weight_gptq: act_order=True needs per-channel scales (group_size=None)")
        perm = torch.argsort(torch.diag(hessian), descending=True, stable=True)
        q, scales = quantize_weight_gptq(w[:, perm], hessian[perm][:, perm], clip_ratio=clip_ratio,
                                         mse_clip=mse_clip, blocksize=blocksize, percdamp=percdamp)
        return q[:, torch.argsort(perm)], scales  # per-channel scales do not depend on the column order
    wq = w.double().clone()
    h = hessian.double().clone()
    dead = torch.diag(h) == 0  # inputs that are always zero: any weight works, pin it to 0
    h[dead, dead] = 1.0
    wq[:, dead] = 0.0
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(k, dtype=torch.float64)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    q = torch.zeros(n, k, dtype=torch.int8)
    scales = torch.zeros(n, k // g, dtype=torch.float32)
    if group_size is None:  # per-channel: the scale comes from the whole (original) row, like RTN
        scales[:, 0] = _scale_of(wq, clip_ratio, mse_clip)[:, 0]
    for b0 in range(0, k, blocksize):
        b1 = min(k, b0 + blocksize)
        block = wq[:, b0:b1].clone()
        err = torch.zeros_like(block)
        hb = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if group_size is not None and col % g == 0:
                # group scale from the weights as updated so far (this block's error already applied)
                current = torch.cat([block[:, i:], wq[:, b1:]], dim=1)[:, :g]
                scales[:, col // g] = _scale_of(current, clip_ratio, mse_clip)[:, 0]
            s = scales[:, col // g].double()
            qi = _round(block[:, i], s)
            q[:, col] = qi.to(torch.int8)
            e = (block[:, i] - qi * s) / hb[i, i]
            block[:, i:] -= e[:, None] * hb[i, i:][None, :]
            err[:, i] = e
        wq[:, b0:b1] = block
        wq[:, b1:] -= err @ hinv[b0:b1, b1:]
    return q, scales


ACT_CLIP_GRID = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))  # 1.0, 0.95, …, 0.5


def search_activation_clip(x: torch.Tensor, weight: torch.Tensor, *, grid: tuple[float, ...] = ACT_CLIP_GRID,
                           max_tokens: int = 4096) -> float:
    """The activation clip ratio (one per layer, as QuaRot's ``clip_ratio``) from ``grid`` that minimises
    the layer's output error ‖Q_c(x)·Wᵀ − x·Wᵀ‖ on a calibration batch ``x [..., K]``.

    ``x`` and ``weight [N, K]`` must be in the basis the quantizer sees (after any Hadamard rotation).
    The output error, not ‖x − Q_c(x)‖, is the objective: it weighs each channel's rounding error by
    how much the layer reads it. Beyond ``max_tokens`` rows, every ⌈rows/max_tokens⌉-th row is used:
    one ratio per layer is pinned down by a few thousand tokens, and the search costs one matmul per
    candidate.
    """
    x2 = x.reshape(-1, x.shape[-1]).float()
    x2 = x2[::-(-x2.shape[0] // max_tokens)]
    w = weight.float()
    exact = x2 @ w.T
    best, best_err = 1.0, float("inf")
    for c in grid:
        q, s = reference.quantize_codes(x2, c)
        err = ((q.float() * s) @ w.T - exact).norm().item()
        if err < best_err:
            best, best_err = float(c), err
    return best


def corrective_bias(x: torch.Tensor, weight: torch.Tensor, weight_q: torch.Tensor, clip_ratio: float) -> torch.Tensor:
    """mean(x·Wᵀ − Q(x)·Ŵᵀ) over the rows of a calibration batch ``x [T, K]`` (fp32 ``[N]``): the part of a
    W4A4 layer's output error that every token shares, which its bias can absorb (and which mean pooling, and
    every later layer, would otherwise accumulate). ``weight`` W and ``weight_q`` Ŵ ``[N, K]`` are in the basis
    the quantizer sees; Q quantizes each row of x with ``clip_ratio``."""
    codes, scale = reference.quantize_codes(x.float(), clip_ratio)
    error = x.float() @ weight.float().T - (codes.float() * scale) @ weight_q.T
    return error.mean(dim=0)
