"""Kernels the GPU compile gate must reject (and one it must accept), run through the gate's own
record → specialise → compile path. A script, not a test module: the gate compiles for GPUs, so it needs
triton imported without TRITON_INTERPRET, which tests/conftest.py sets for the pytest process.
Prints the gate's failure messages as JSON; see tests/test_gpu_compile_gate.py."""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tools"), str(REPO)]
import gpu_compile_gate as gate  # noqa: E402  (imports triton for compiling, not interpreting)

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from tests.gpu_cases import cuda  # noqa: E402


@triton.jit
def _copy_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + i, tl.load(x_ptr + i, mask=i < n), mask=i < n)


@triton.jit
def _reassigned_constexpr_kernel(x_ptr, LOG_N: tl.constexpr):
    # The interpreter runs this; the compiler rejects the second binding of `width`.
    for stage in tl.static_range(LOG_N):
        width: tl.constexpr = 1 << stage
        tl.store(x_ptr + width, 1.0)


@triton.jit
def _big_pipeline_kernel(a_ptr, b_ptr, c_ptr, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # (BM + BN)·BK fp16 staged per pipeline stage: 4 stages × (256 + 256) × 128 × 2 B = 512 KB of shared memory,
    # and a 256×256 fp32 accumulator over 8 warps (256 values per thread) spills.
    rm, rn, rk = tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        a = tl.load(a_ptr + rm[:, None] * K + (k0 + rk)[None, :])
        b = tl.load(b_ptr + (k0 + rk)[:, None] * BN + rn[None, :])
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rm[:, None] * BN + rn[None, :], acc)


def _cases():
    x = lambda n, dtype=torch.float32: cuda(n, dtype=dtype)  # noqa: E731
    return [
        ("copy", lambda: _copy_kernel[(4,)](x(4096), x(4096), 4096, BLOCK=1024)),
        ("reassigned constexpr", lambda: _reassigned_constexpr_kernel[(1,)](x(16), LOG_N=3)),
        ("big pipeline", lambda: _big_pipeline_kernel[(1,)](x(256 * 1024, torch.float16), x(1024 * 256, torch.float16),
                                                            x(256 * 256), 1024, BM=256, BN=256, BK=128,
                                                            num_warps=8, num_stages=4)),
    ]


if __name__ == "__main__":
    results, failures = gate.run_gate(_cases(), archs=(90,), jobs=1)
    print(json.dumps({"failures": failures, "compiled": {r.cases[0]: r.compiled for r in results},
                      "shared": {r.cases[0]: r.shared for r in results}}))
