"""The Hadamard ops' rows in the GPU checks (tests/gpu_cases.py): smoke, compile gate, decomposition probe."""
from __future__ import annotations

import torch

import symkernels
from symkernels.hadamard import ops
from tests.gpu_cases import ALL_FLOATS, BF16, F16, F32, F64, SmokeOp, cuda, dtype_name, into_fresh_buffer, randn


def _transform(a, d, be):
    return symkernels.hadamard_transform(a[0], a[0].shape[-1] ** -0.5, backend=be)


def _transform_into_buffer(a, d, be):
    return symkernels.hadamard_transform(a[0], a[0].shape[-1] ** -0.5, backend=be, out=torch.empty_like(a[0]))


SMOKE = [
    SmokeOp("hadamard", ops.IMPLEMENTED, ALL_FLOATS, ((3, 64), (5, 1024)),
            lambda s, d, g: (randn(g, *s, dtype=d),), _transform),
    SmokeOp("hadamard_k", ops.IMPLEMENTED, ALL_FLOATS, ((3, 48), (4, 28 * 8)),
            lambda s, d, g: (randn(g, *s, dtype=d),), _transform),
    # out=: the .out overloads of both ops (a power of two, then K·2^m)
    SmokeOp("hadamard_out", ops.IMPLEMENTED, ALL_FLOATS, ((3, 64), (4, 28 * 8)),
            lambda s, d, g: (randn(g, *s, dtype=d),), _transform_into_buffer),
]


def gate_cases():
    from symkernels.hadamard import decompose, hadamard_k_matrix
    from symkernels.hadamard import triton as hadamard_triton

    for dtype, sizes in ((F32, (2, 16, 256, 1024, 4096, 16384, 32768)), (F16, (256, 4096, 32768)),
                         (BF16, (1024, 16384)), (F64, (256, 4096, 32768))):
        for n in sizes:
            rows = max(1, (64 << 20) // (n * dtype.itemsize))  # the benchmark's 64 MiB batches
            yield f"hadamard_transform {rows}x{n} {dtype_name(dtype)}", \
                lambda n=n, rows=rows, dtype=dtype: hadamard_triton.hadamard_transform(cuda(rows, n, dtype=dtype), 1.0)
    # K·2^m sizes: quarot's benchmark (K = 28, 172) and the largest tile (K_pad·P = 2^16).
    for n, dtype in ((3584, F32), (11008, F32), (14336, F32), (28672, F32), (57344, F32), (11008, F16),
                     (14336, F64)):
        k, _ = decompose(n)
        hk = hadamard_k_matrix(k)  # real values (built outside the fake mode); the launcher moves it
        yield f"hadamard_transform_k 256x{n} (K={k}) {dtype_name(dtype)}", \
            lambda n=n, hk=hk, dtype=dtype: hadamard_triton.hadamard_transform_k(cuda(256, n, dtype=dtype), hk, 1.0)


def probe_cases(device):
    f32 = dict(dtype=torch.float32, device=device)
    hk = torch.empty(12, 12, **f32)
    lib = torch.ops.symkernels
    return {
        "hadamard_transform": (lib.hadamard_transform, (torch.empty(8, 256, **f32), 0.0625)),
        "hadamard_transform_k": (lib.hadamard_transform_k, (torch.empty(8, 12 * 64, **f32), hk, 1.0)),
        "hadamard_transform.out": (into_fresh_buffer(lib.hadamard_transform.out), (torch.empty(8, 256, **f32), 0.0625)),
        "hadamard_transform_k.out": (into_fresh_buffer(lib.hadamard_transform_k.out),
                                     (torch.empty(8, 12 * 64, **f32), hk, 1.0)),
    }
