"""The GPU compile gate (tools/gpu_compile_gate.py) fails on what it exists to catch: a kernel only the
interpreter accepts, shared memory over the limit, spills; and passes a kernel that is fine."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
# Run in a subprocess: the gate imports triton for compiling, this process has it interpreting.
ROOT = Path(__file__).resolve().parent.parent


def test_gate_rejects_broken_kernels_and_accepts_a_good_one(tmp_path):
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton-cache"))
    env.pop("TRITON_INTERPRET", None)
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "gpu_compile_gate_probe.py")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    failures = report["failures"]
    assert report["compiled"] == {"copy": True, "reassigned constexpr": False, "big pipeline": True}
    assert not any("_copy_kernel" in f for f in failures), failures
    assert any("_reassigned_constexpr_kernel" in f and "constexpr cannot be reassigned" in f for f in failures)
    assert any("_big_pipeline_kernel" in f and "shared memory 524288 B > 232448 B" in f for f in failures)
    assert any("_big_pipeline_kernel" in f and "spills" in f for f in failures)

