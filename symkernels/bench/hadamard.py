"""FWHT sweep: rows × n, ours vs the dense Hadamard matmul, `hadamard-transform`, `fast-hadamard-transform`.

Each case moves ≥ 64 MB (``--quick``: 8 MB) so it streams from memory rather than cache, and the
roofline column compares one read + one write of the data to the same-run copy bandwidth at that size, and
the n·log2 n adds to the same-run add rate (half the fp32 GEMM's FLOP/s: see ``harness.ADD_CEILINGS``),
whichever takes longer. Each size runs
twice: allocating its output (what most callers do, paying for fresh memory like ``clone``), and with
``out=`` into a buffer allocated once (what the kernel itself reaches).
"""
from __future__ import annotations

import math

import torch

from symkernels import hadamard_transform
from symkernels.bench.harness import Case, sweep
from symkernels.hadamard import hadamard_matrix

# The dense peer multiplies by an n×n matrix: past this many bytes of H it is neither fair nor finishable.
_DENSE_MAX_BYTES = 64 << 20


def _peer_hadamard_transform_pkg():
    try:
        from hadamard_transform import hadamard_transform as peer
    except ImportError:
        return None
    return peer


def _peer_fast_hadamard_transform(device):
    if device.type != "cuda":
        return "CUDA-only package"
    try:
        from fast_hadamard_transform import hadamard_transform as peer
    except ImportError:
        return "not installed (pip install fast-hadamard-transform, builds from source against torch)"
    return peer


@sweep("hadamard")
def cases(device: torch.device, quick: bool):
    dims = (256, 1024, 4096) if quick else (256, 1024, 4096, 16384, 32768)
    dtypes = [torch.float32] if device.type == "cpu" else [torch.float16, torch.bfloat16, torch.float32]
    total_bytes = (8 << 20) if quick else (64 << 20)
    pkg = _peer_hadamard_transform_pkg()
    fht = _peer_fast_hadamard_transform(device)
    for dtype in dtypes:
        for n in dims:
            elem = torch.finfo(dtype).bits // 8
            rows = max(1, total_bytes // (n * elem))
            x = torch.randn(rows, n, device=device, dtype=dtype)
            scale = 1 / math.sqrt(n)
            out = torch.empty_like(x)  # for the out= rows: a buffer allocated once
            impls = {"symkernels": lambda x=x, s=scale: hadamard_transform(x, s)}
            into = {"symkernels out=": lambda x=x, s=scale, out=out: hadamard_transform(x, s, out=out)}
            if n * n * elem <= _DENSE_MAX_BYTES:
                h = hadamard_matrix(n, dtype=dtype, device=device)
                impls["torch dense matmul"] = lambda x=x, h=h, s=scale: torch.matmul(x, h.T) * s
                into["torch dense matmul out="] = lambda x=x, h=h, s=scale, out=out: torch.matmul(x, h.T, out=out).mul_(s)
            else:
                impls["torch dense matmul"] = into["torch dense matmul out="] = (
                    f"skipped: H_{n} alone is {n * n * elem / 2**30:.1f} GiB")
            if pkg is None:
                impls["hadamard-transform"] = "not installed (pip install hadamard-transform)"
            else:
                impls["hadamard-transform"] = lambda x=x: pkg(x)  # normalized: scale 1/sqrt(n) built in
            impls["fast-hadamard-transform"] = fht if isinstance(fht, str) else (lambda x=x, s=scale: fht(x, s))

            def check(x=x, s=scale):
                ours = hadamard_transform(x[:4], s).float()
                ref = hadamard_transform(x[:4].double(), s, backend="reference").float()
                err = (ours - ref).abs().max().item()
                assert err <= 1e-2 * max(1.0, ref.abs().max().item()), f"symkernels FWHT is off by {err}"

            # The work: log2 n butterfly stages of one add or subtract per value, held to the add rate (not the
            # GEMM's FMA rate, twice as many FLOPs); half types add in fp32.
            work = dict(shape=f"{rows}x{n}", dtype=str(dtype).replace("torch.", ""), bytes_moved=2 * x.numel() * elem,
                        flops=x.numel() * int(math.log2(n)),
                        compute="fp64add" if dtype == torch.float64 else "fp32add", check=check)
            yield Case(op="hadamard_transform", impls=impls, ours="symkernels", **work)
            # The same transform into the buffer: the kernel without the page faults of fresh output memory
            # (on CPU those cost about as much as the transform itself at these sizes).
            yield Case(op="hadamard_transform out=", impls=into, ours="symkernels out=", **work)
