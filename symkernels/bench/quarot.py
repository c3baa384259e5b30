"""QuaRot pillar benchmarks: non-power-of-two Hadamard, fused rotate+quantize, W4A4 GEMM.

Peers run side by side: the two-pass Hadamard (QuaRot's route: FWHT + dense K×K matmul) and a dense
n×n matmul; unfused torch ops for rotate+quantize (QuaRot's ≈ 6 launches); torch float32 / bfloat16
matmul and ``torch._int_mm`` (int8×int8→int32, without the dequant epilogue) for the GEMM. On CPU the GEMM
rows also compare with ``torch._int_mm`` under oneDNN capped at AVX512-VNNI (the ISA of our kernel, on CPUs
that have it; timed in a subprocess, since oneDNN reads the cap at start-up) and report % of the measured
int8 dot-product peak (``%int8dot``: vpdpbusd, or AVX2's sequence without VNNI) and of the large ``_int_mm``
rate (``%int8``), in the CSV; the table's "% of limit" is against the faster of the two.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from typing import Iterable

import torch

import symkernels
from symkernels import _backend
from symkernels.bench.harness import Case, sweep
from symkernels.hadamard import decompose, hadamard_matrix_any, hk_for
from symkernels.quarot import reference


def _ours_backend(device: torch.device) -> str | None:
    return None  # the dispatcher: C++ on CPU, CUDA/Triton on GPU


def _two_pass(x: torch.Tensor, hk: torch.Tensor, scale: float) -> torch.Tensor:
    """QuaRot's route: the power-of-two FWHT (symkernels' kernel), then a dense K×K matmul."""
    k = hk.shape[0]
    p = x.shape[-1] // k
    y = symkernels.hadamard_transform(x.reshape(-1, k, p), 1.0) if p > 1 else x.reshape(-1, k, p)
    return (hk @ y).reshape(x.shape) * scale


def _unfused_rotate_quantize(x: torch.Tensor, hk: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """What QuaRot runs: rotation kernel(s), then abs, max, div, round, clamp, cast, pack as torch ops."""
    n = x.shape[-1]
    if hk is None:
        xr = symkernels.hadamard_transform(x, 1.0 / math.sqrt(n))
    else:
        xr = _two_pass(x, hk, 1.0 / math.sqrt(n))
    scale = xr.abs().amax(dim=-1, keepdim=True) / 7.0
    q = torch.clamp(torch.round(xr / scale), -8, 7).to(torch.int8)
    return reference.pack_int4(q), scale


def _hadamard_cases(device, quick) -> Iterable[Case]:
    # Qwen2's 4864 = 76·2^6, 18944 = 148·2^7 and 29568 = 924·2^5: orders past the old table, up to the
    # largest K an LLM width needs (the mix costs K multiply-adds per element).
    shapes = [(64, 3584), (64, 11008), (64, 14336)] if quick else [(256, 3584), (256, 11008), (256, 14336), (64, 28672),
                                                                   (256, 4864), (256, 18944), (64, 29568)]
    for rows, n in shapes:
        k, p = decompose(n)
        x = torch.randn(rows, n, device=device)
        hk = hk_for(n, torch.float32, device)
        scale = 1.0 / math.sqrt(n)
        impls = {"symkernels one-pass": lambda x=x: symkernels.hadamard_transform(x, scale),
                 "two-pass (FWHT + K×K matmul)": lambda x=x, hk=hk: _two_pass(x, hk, scale)}
        if n <= 11008:
            h = hadamard_matrix_any(n, dtype=torch.float32, device=device)
            impls["dense n×n matmul"] = lambda x=x, h=h: x @ h.T * scale
        else:
            impls["dense n×n matmul"] = f"skipped: a {n}×{n} fp32 matrix is {4 * n * n / 2**30:.1f} GiB"
        impls["fast-hadamard-transform"] = "not installed (CUDA-only package; no CPU path, K·2^m only for K≤40)"
        yield Case(op="hadamard_transform", shape=f"{rows}x{n} (K={k})", dtype="float32", impls=impls,
                   ours="symkernels one-pass", bytes_moved=2 * x.nbytes, flops=rows * n * (k + int(math.log2(p))))


def _quantize_cases(device, quick) -> Iterable[Case]:
    shapes = [(256, 4096), (256, 11008)] if quick else [(2048, 4096), (2048, 11008), (16, 4096)]
    for rows, n in shapes:
        x = torch.randn(rows, n, device=device)
        hk = None if n & (n - 1) == 0 else hk_for(n, torch.float32, device)
        yield Case(op="rotate+quantize_int4", shape=f"{rows}x{n}", dtype="float32",
                   impls={"symkernels fused": lambda x=x: symkernels.quantize_int4(x, hadamard=True),
                          "unfused torch ops": lambda x=x, hk=hk: _unfused_rotate_quantize(x, hk)},
                   ours="symkernels fused", bytes_moved=x.nbytes + x.nbytes // 8 + 4 * rows)
        yield Case(op="quantize_int4 (no rotation)", shape=f"{rows}x{n}", dtype="float32",
                   impls={"symkernels": lambda x=x: symkernels.quantize_int4(x),
                          "torch ops": lambda x=x: reference.quantize_int4(x)},
                   ours="symkernels", bytes_moved=x.nbytes + x.nbytes // 8 + 4 * rows)


def _cpu_isa(m: int) -> str | None:
    """The CPU kernel int4_matmul runs for m rows (amx / avx512 / avx2 / scalar), None without the build."""
    try:
        return torch.ops.symkernels.int4_matmul_cpu_isa(m)
    except (AttributeError, RuntimeError):
        return None


# oneDNN's ISA cap for the fair peer: torch._int_mm limited to the instructions our CPU kernel uses
# (AVX512-VNNI, no AMX). oneDNN reads it once, at start-up, so that peer runs in a subprocess.
ISA_CAP = "AVX512_CORE_VNNI"


def _isa_peer_main() -> None:
    """Subprocess body: time ours and torch._int_mm (under the ONEDNN_MAX_CPU_ISA the parent set) side by side,
    interleaved, best round each; print {"m": [ours_s, int_mm_s], ...} as JSON."""
    kn, threads, ms, min_time = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]), float(sys.argv[4])
    torch.set_num_threads(threads)
    from symkernels.bench.harness import time_side_by_side

    w = torch.randint(-8, 8, (kn, kn), dtype=torch.int8)
    w_p, w_s = reference.pack_int4(w), torch.rand(kn, 1)
    w8 = torch.randint(-8, 8, (kn, kn), dtype=torch.int8).T
    out = {}
    for m in ms:
        a_p, a_s = reference.pack_int4(torch.randint(-8, 8, (m, kn), dtype=torch.int8)), torch.rand(m, 1)
        a8 = torch.randint(-8, 8, (m, kn), dtype=torch.int8)
        t = time_side_by_side({"ours": lambda: symkernels.int4_matmul(a_p, a_s, w_p, w_s),
                               "int_mm": lambda: torch._int_mm(a8, w8)}, torch.device("cpu"), min_time_s=min_time)
        out[str(m)] = [t["ours"].median_s, t["int_mm"].median_s]
    print(json.dumps(out))


def _isa_capped_int_mm(kn: int, ms: list[int], quick: bool) -> dict[int, tuple[float, float]] | str:
    """{m: (ours_s, int_mm_s)} timed in a subprocess whose oneDNN is capped at ISA_CAP, or why not."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": ISA_CAP, "DNNL_MAX_CPU_ISA": ISA_CAP}
    code = "from symkernels.bench.quarot import _isa_peer_main; _isa_peer_main()"
    args = [sys.executable, "-c", code, str(kn), str(torch.get_num_threads()), json.dumps(ms),
            str(0.05 if quick else 0.3)]
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, check=True)
        return {int(m): tuple(v) for m, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as exc:
        return f"ISA-capped peer failed: {type(exc).__name__}: {str(exc)[:80]}"


def _gemm_cases(device, quick) -> Iterable[Case]:
    sizes = [4096] if quick else [4096, 11008]
    ms = [1, 16, 256] if quick else [1, 16, 256, 2048]
    for kn in sizes:
        capped = None
        if device.type == "cpu":
            # below AVX512-VNNI the cap changes nothing: the unrestricted peer is already the fair one
            capped = (_isa_capped_int_mm(kn, ms, quick) if "avx512_vnni" in _backend.cpu_flags()
                      else "n/a: no AVX512-VNNI on this CPU (same as the unrestricted _int_mm)")
        w = torch.randn(kn, kn, device=device) / math.sqrt(kn)
        w_p, w_s = symkernels.quantize_int4(w)
        w8 = torch.randint(-8, 8, (kn, kn), dtype=torch.int8, device=device).T  # [K, N] for _int_mm
        w_bf16 = w.to(torch.bfloat16)
        for m in ms:
            x = torch.randn(m, kn, device=device)
            a_p, a_s = symkernels.quantize_int4(x)
            a8 = torch.randint(-8, 8, (m, kn), dtype=torch.int8, device=device)
            x_bf16 = x.to(torch.bfloat16)
            # Every tensor is bound as a default: a closure over the loop variables would see the last size's.
            impls = {"symkernels W4A4": lambda a_p=a_p, a_s=a_s, w_p=w_p, w_s=w_s: symkernels.int4_matmul(a_p, a_s,
                                                                                                          w_p, w_s),
                     "torch fp32 matmul": lambda x=x, w=w: x @ w.T,
                     "torch._int_mm int8 (no epilogue)": lambda a8=a8, w8=w8: torch._int_mm(a8, w8)}
            if not (quick and device.type == "cpu"):
                impls["torch bf16 matmul"] = lambda x=x_bf16, w=w_bf16: x @ w.T
            else:
                impls["torch bf16 matmul"] = "skipped in --quick on CPU (timed in the full sweep)"
            isa = _cpu_isa(m) if device.type == "cpu" else None
            extra = {}
            if isinstance(capped, dict) and m in capped:
                # the fair peer, same ISA as ours: its own process, ours re-timed there beside it
                ours_s, int_mm_s = capped[m]
                extra[f"vs _int_mm@{ISA_CAP}"] = f"{int_mm_s / ours_s:.2f}× ({int_mm_s * 1e3:.3g} ms)"
            elif isinstance(capped, str):
                extra[f"vs _int_mm@{ISA_CAP}"] = capped
            # % of the int8 instruction peak (our vpdpbusd / AVX2 loop) and of torch._int_mm's large-GEMM rate
            yield Case(op="int4_matmul", shape=f"M={m} K=N={kn}",
                       dtype="int4→fp32" + (f" (cpu {isa})" if isa else ""), impls=impls,
                       ours="symkernels W4A4", flops=2 * m * kn * kn, compute="int8",
                       also_vs=("int8dot", "int8") if device.type == "cpu" else (),
                       bytes_moved=m * kn // 2 + kn * kn // 2 + 4 * m * kn + 4 * (m + kn), extra=extra)


@sweep("quarot")
def cases(device: torch.device, quick: bool) -> Iterable[Case]:
    if device.type == "cuda" and not _backend.backend_status("triton") and not _backend.native_has_cuda():
        raise RuntimeError("quarot benchmarks on CUDA need the CUDA build or Triton")
    yield from _hadamard_cases(device, quick)
    yield from _quantize_cases(device, quick)
    yield from _gemm_cases(device, quick)
