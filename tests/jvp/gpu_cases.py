"""The forward-gradient ops' rows in the GPU checks (tests/gpu_cases.py): smoke, compile gate, decomposition
probe."""
from __future__ import annotations

import math

import torch

import symkernels
from symkernels.jvp import attention, attention_dual, layer_norm_dual, ops, rms_norm_dual, softmax_dual
from tests.gpu_cases import ALL_FLOATS, BF16, F16, F32, F64, SmokeOp, cuda, dtype_name, randn


def _row_inputs(shape, dtype, gen):
    """x, x_t, weight, weight_t, bias, bias_t with T = 2 tangents (row duals take a prefix of them)."""
    N = shape[-1]
    return (randn(gen, *shape, dtype=dtype), randn(gen, 2, *shape, dtype=dtype),
            1 + 0.1 * randn(gen, N, dtype=dtype), randn(gen, 2, N, dtype=dtype),
            randn(gen, N, dtype=dtype), randn(gen, 2, N, dtype=dtype))


_ROW_SHAPES = ((2, 3, 19), (7, 256))

SMOKE = [
    SmokeOp("linear_dual", ops.IMPLEMENTED, ALL_FLOATS, ((3, 17, 16), (20, 64, 33)),
            lambda s, d, g: (randn(g, s[0], s[1], dtype=d), randn(g, 2, s[0], s[1], dtype=d),
                             randn(g, s[2], s[1], dtype=d) / math.sqrt(s[1]), randn(g, s[2], s[1], dtype=d),
                             randn(g, s[2], dtype=d), randn(g, 2, s[2], dtype=d)),
            lambda a, d, be: symkernels.linear_dual(*a, "gelu", backend=be)),
    SmokeOp("layer_norm_dual", ops.ROW_IMPLEMENTED, ALL_FLOATS, _ROW_SHAPES, _row_inputs,
            lambda a, d, be: layer_norm_dual(*a, backend=be)),
    SmokeOp("rms_norm_dual", ops.ROW_IMPLEMENTED, ALL_FLOATS, _ROW_SHAPES, _row_inputs,
            lambda a, d, be: rms_norm_dual(*a[:4], backend=be)),
    SmokeOp("softmax_dual", ops.ROW_IMPLEMENTED, ALL_FLOATS, _ROW_SHAPES, _row_inputs,
            lambda a, d, be: softmax_dual(*a[:2], backend=be)),
    SmokeOp("attention_dual", attention.IMPLEMENTED, (F32, F64), ((2, 5, 7, 4), (3, 33, 20, 16)),
            lambda s, d, g: (randn(g, s[0], s[1], s[3], dtype=d), randn(g, s[0], s[2], s[3], dtype=d),
                             randn(g, s[0], s[2], s[3], dtype=d), randn(g, 2, s[0], s[1], s[3], dtype=d)),
            lambda a, d, be: attention_dual(*a, causal=True, backend=be)),
]


def gate_cases():
    yield from _dense_gate_cases()
    yield from _conv_gate_cases()


def _dense_gate_cases():
    from symkernels.jvp import triton as jt

    for m, nk, t in ((16, 1024, 1), (256, 1024, 4), (4096, 4096, 16), (64, 4096, 8)):
        for dtype in (F32, BF16, F64):
            def dense(m=m, nk=nk, t=t, dtype=dtype):
                jt.linear_dual(cuda(m, nk, dtype=dtype), cuda(t, m, nk, dtype=dtype), cuda(nk, nk, dtype=dtype),
                               cuda(t, nk, nk, dtype=dtype), cuda(nk, dtype=dtype), None, "gelu", t, None, "gaussian")
            yield f"linear_dual M={m} N=K={nk} T={t} {dtype_name(dtype)}", dense
        for dist in ("rademacher", "gaussian"):
            yield f"linear_dual seeded {dist} M={m} N=K={nk} T={t} fp32", lambda m=m, nk=nk, t=t, dist=dist: \
                jt.linear_dual(cuda(m, nk), cuda(t, m, nk), cuda(nk, nk), None, cuda(nk), None, "tanh", t, 7, dist)
    for kind in ("layer_norm", "rms_norm", "softmax"):
        for r, n, t, dtype in ((4096, 1024, 1, F32), (16384, 4096, 4, F32), (1024, 4096, 4, BF16),
                               (256, jt.MAX_ROW, 2, F32), (256, jt.MAX_ROW, 2, F64)):
            affine = kind != "softmax"
            yield f"{kind}_dual R={r} N={n} T={t} {dtype_name(dtype)}", \
                lambda kind=kind, r=r, n=n, t=t, dtype=dtype, affine=affine: jt.row_dual(
                    kind, cuda(r, n, dtype=dtype), cuda(t, r, n, dtype=dtype),
                    cuda(n, dtype=dtype) if affine else None, cuda(t, n, dtype=dtype) if affine else None,
                    cuda(n, dtype=dtype) if kind == "layer_norm" else None, None, 1e-5, t)
    for length in (512, 2048, 8192):
        for causal in (False, True):
            for dtype in (F32, F16, BF16, F64):
                if dtype == F64 and length > 2048:
                    continue
                def attention_launch(length=length, causal=causal, dtype=dtype):
                    q = lambda: cuda(24, length, 64, dtype=dtype)  # noqa: E731  [B·H, L, d], B=2, H=12
                    qt = lambda: cuda(1, 24, length, 64, dtype=dtype)  # noqa: E731
                    jt.attention_dual(q(), q(), q(), qt(), qt(), qt(), causal, 0.125)
                yield (f"attention_dual 2x12x{length}x64 {'causal' if causal else 'full'} {dtype_name(dtype)}",
                       attention_launch)


def _conv_gate_cases():
    from symkernels.jvp import conv_triton
    from symkernels.jvp.conv import Geometry

    # the bench case (batch 64, 64→64 channels, 32×32, 3×3), a strided/dilated/grouped one, a 1×1
    for (nb, c, hw, o, k), geo in (((64, 64, 32, 64, 3), Geometry((1, 1), (1, 1), (1, 1), 1)),
                                   ((8, 32, 17, 48, 3), Geometry((2, 2), (2, 2), (2, 2), 4)),
                                   ((32, 256, 14, 128, 1), Geometry((1, 1), (0, 0), (1, 1), 1))):
        for t, seed in ((1, None), (8, None), (8, 7)):
            for dtype in (F32, BF16, F64):
                def conv(nb=nb, c=c, hw=hw, o=o, k=k, geo=geo, t=t, seed=seed, dtype=dtype):
                    w_t = None if seed is not None else cuda(t, o, c // geo.groups, k, k, dtype=dtype)
                    conv_triton.conv2d_dual(cuda(nb, c, hw, hw, dtype=dtype), cuda(t, nb, c, hw, hw, dtype=dtype),
                                            cuda(o, c // geo.groups, k, k, dtype=dtype), w_t, cuda(o, dtype=dtype),
                                            None, geo, "gelu", t, seed, "gaussian")
                yield (f"conv2d_dual {nb}x{c}x{hw}x{hw}->{o} {k}x{k} s{geo.stride[0]} g{geo.groups} T={t}"
                       f"{' seeded' if seed is not None else ''} {dtype_name(dtype)}"), conv


def probe_cases(device):
    """The Triton kernels of linear_dual and the row duals serve their CUDA keys where _C has no CUDA kernel;
    attention_dual's CUDA kernel runs its Triton kernel for impl="triton"."""
    f32 = dict(dtype=torch.float32, device=device)
    lib = torch.ops.symkernels
    return {
        "linear_dual": (lib.linear_dual, (torch.empty(16, 32, **f32), torch.empty(2, 16, 32, **f32),
                                        torch.empty(24, 32, **f32), None, torch.empty(24, **f32), None, "gelu", 2)),
        "layer_norm_dual": (lib.layer_norm_dual, (torch.empty(8, 64, **f32), torch.empty(2, 8, 64, **f32),
                                                torch.empty(64, **f32), None, torch.empty(64, **f32), None, 1e-5, 2)),
        "rms_norm_dual": (lib.rms_norm_dual, (torch.empty(8, 64, **f32), torch.empty(2, 8, 64, **f32),
                                            torch.empty(64, **f32), None, 1e-6, 2)),
        "softmax_dual": (lib.softmax_dual, (torch.empty(8, 64, **f32), torch.empty(2, 8, 64, **f32), 2)),
        "attention_dual": (lib.attention_dual, (torch.empty(2, 16, 32, **f32), torch.empty(2, 16, 32, **f32),
                                              torch.empty(2, 16, 32, **f32), torch.empty(1, 2, 16, 32, **f32),
                                              None, None, 1, False, 0.125, "triton")),
    }
