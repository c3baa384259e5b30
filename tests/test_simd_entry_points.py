"""The narrower per-ISA entry points of the CPU kernels (csrc/common/simd.h), on a CPU that would not pick them.

Each entry point is its own compilation of the kernels: at its register width where a kernel sizes its blocks to
it (gaunt's transposes and vectors, the Hadamard sign-class tiles), with its own instruction set everywhere. So
each must pass the tests that probe those seams. SYMKERNELS_MAX_SIMD caps the choice; it is read once per
process, so every level runs the suites in a fresh one.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from symkernels import _backend

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ["sse2", "avx2", "avx512"]  # narrowest first, as simd.h orders them
SUITES = [
    ["tests/gaunt/test_gaunt_cpu_layout.py", "-k", "row_counts or read_in_place or nan_poisons or empty_batch"],
    ["tests/hadamard/test_hadamard_transform_k.py", "tests/hadamard/test_hadamard_cpu_kernel.py"],
    ["tests/quarot/test_quantize.py", "tests/jvp/test_jvp_rows.py", "tests/jacobi/test_rnn.py"],
]


def _narrower_levels() -> list[str]:
    if not _backend.backend_status("cpu"):
        return []
    level = _backend.build_info().get("simd")
    return LEVELS[:LEVELS.index(level)] if level in LEVELS else []


@pytest.mark.parametrize("suite", SUITES, ids=lambda suite: Path(suite[0]).parent.name)
@pytest.mark.parametrize("level", _narrower_levels() or [pytest.param("none", marks=pytest.mark.skip(
    reason="this CPU runs the narrowest entry point (or there is no native build)"))])
def test_narrower_entry_point_passes_the_kernel_tests(level, suite):
    env = dict(os.environ, SYMKERNELS_MAX_SIMD=level)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *suite], env=env,
                         capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    # the subprocess really ran at that level
    probe = subprocess.run([sys.executable, "-c", "import symkernels; print(symkernels.build_info()['simd'])"],
                           env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert probe.stdout.strip() == level, probe.stdout + probe.stderr
