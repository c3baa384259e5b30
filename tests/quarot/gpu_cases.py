"""The QuaRot ops' rows in the GPU checks (tests/gpu_cases.py): smoke, compile gate, decomposition probe."""
from __future__ import annotations

import math

import torch

import symkernels
from symkernels.hadamard import hk_for
from symkernels.quarot import ops, reference
from tests.gpu_cases import ALL_FLOATS, BF16, F16, F32, F64, SmokeOp, cuda, randn


def _make_int4_matmul(shape, dtype, gen):
    m, n, k = shape
    codes = lambda rows: torch.randint(-8, 8, (rows, k), generator=gen, dtype=torch.int8)  # noqa: E731
    return (reference.pack_int4(codes(m)), torch.rand(m, 1, generator=gen) * 0.1,
            reference.pack_int4(codes(n)), torch.rand(n, 1, generator=gen) * 0.01,
            torch.randn(n, generator=gen).to(F16))


SMOKE = [
    SmokeOp("quantize_int4", ops.QUANTIZE_IMPLEMENTED, ALL_FLOATS, ((4, 64), (3, 2, 96)),
            lambda s, d, g: ((randn(g, *s) * torch.logspace(-2, 2, s[-1], dtype=F64)).to(d),),
            lambda a, d, be: symkernels.quantize_int4(a[0], clip_ratio=0.9, backend=be), exact=True),
    SmokeOp("int4_matmul", ops.MATMUL_IMPLEMENTED, (F32, F16, BF16), ((5, 7, 64), (17, 33, 128)),
            _make_int4_matmul, lambda a, d, be: symkernels.int4_matmul(*a, out_dtype=d, backend=be),
            half_rule="table"),
]


def gate_cases():
    from symkernels.quarot import triton as qt

    for rows, n, rotate in ((2048, 4096, True), (2048, 11008, True), (16, 4096, True), (2048, 4096, False),
                            (2048, 11008, False), (64, 28672, True), (64, 57344, True), (64, 32768, False),
                            (64, 65536, False)):
        hk, rot_scale = (hk_for(n, torch.float32, torch.device("cpu")), 1 / math.sqrt(n)) if rotate else (None, 1.0)
        yield f"quantize_int4 {rows}x{n} {'rotated' if rotate else 'plain'}", \
            lambda rows=rows, n=n, hk=hk, rot_scale=rot_scale: qt.quantize_int4(cuda(rows, n), 1.0, hk, rot_scale)
    for m in (1, 16, 256, 2048):
        for kn in (4096, 11008):
            yield f"int4_matmul M={m} K=N={kn} fp16 out", lambda m=m, kn=kn: qt.int4_matmul(
                cuda(m, kn // 2, dtype=torch.uint8), cuda(m), cuda(kn, kn // 2, dtype=torch.uint8), cuda(kn),
                cuda(kn, dtype=F16), F16)


def probe_cases(device):
    f32 = dict(dtype=torch.float32, device=device)
    u8 = dict(dtype=torch.uint8, device=device)
    lib = torch.ops.symkernels
    return {
        "quantize_int4": (lib.quantize_int4, (torch.empty(8, 256, **f32), 1.0, None, 1.0)),
        "int4_matmul": (lib.int4_matmul, (torch.empty(8, 128, **u8), torch.empty(8, 1, **f32),
                                          torch.empty(32, 128, **u8), torch.empty(32, 1, **f32), None,
                                          torch.float32)),
    }
