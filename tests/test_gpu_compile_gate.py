"""The GPU compile gate (tools/gpu_compile_gate.py) fails on what it exists to catch: a kernel only the
interpreter accepts, shared memory over the limit, spills; and passes a kernel that is fine."""
import pytest

from tests.conftest import run_compiling_script

pytest.importorskip("triton")
# Run in a subprocess: the gate imports triton for compiling, this process has it interpreting.


def test_gate_rejects_broken_kernels_and_accepts_a_good_one(tmp_path):
    report = run_compiling_script("gpu_compile_gate_probe.py", tmp_path)
    failures = report["failures"]
    assert report["compiled"] == {"copy": True, "reassigned constexpr": False, "big pipeline": True}
    assert not any("_copy_kernel" in f for f in failures), failures
    assert any("_reassigned_constexpr_kernel" in f and "constexpr cannot be reassigned" in f for f in failures)
    assert any("_big_pipeline_kernel" in f and "shared memory 524288 B > 232448 B" in f for f in failures)
    assert any("_big_pipeline_kernel" in f and "spills" in f for f in failures)

