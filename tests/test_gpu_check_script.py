"""tools/gpu_check.sh, checked without a GPU: its plan, its budgets, its refusals (the GPU run itself cannot be
tried in CI, so shell errors in the parts that decide what runs must show up here)."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.sh"
STAGES = ("build", "smoke", "sanitize", "bench")
GPU_MACHINE_LIMIT_S = 9 * 60  # the whole check must fit one ~10-minute command, start-up included

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def _run(*args, env_extra=None):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), **(env_extra or {})}
    return subprocess.run(["bash", str(SCRIPT), "--python", sys.executable, *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_dry_run_prints_every_stage_within_the_time_limit():
    done = _run("--dry-run")
    assert done.returncode == 0, done.stderr
    budgets = {m[0]: int(m[1]) for m in re.findall(r"^  (\w+)\s+budget\s+(\d+)s", done.stdout, re.M)}
    assert tuple(budgets) == STAGES, done.stdout
    assert sum(budgets.values()) <= GPU_MACHINE_LIMIT_S - 20  # room for the name probe and the report
    assert "pip install --no-build-isolation --no-deps --no-index -e ." in done.stdout
    assert "symkernels.bench --quick --device cuda" in done.stdout
    assert "report    always" in done.stdout


def test_budgets_and_stage_selection_follow_the_arguments():
    done = _run("--dry-run", "--stages", "smoke,bench", env_extra={"GPU_CHECK_SMOKE_S": "77"})
    assert done.returncode == 0, done.stderr
    assert re.search(r"^  smoke\s+budget\s+77s", done.stdout, re.M)
    assert "build" not in re.findall(r"^  (\w+)", done.stdout, re.M)
    # the whole suite's GPU tests: only when asked for, as a command of its own
    suite = _run("--dry-run", "--stages", "suite")
    assert re.search(r"^  suite\s+budget\s+540s", suite.stdout, re.M) and "-k 'cuda or triton'" in suite.stdout


@pytest.mark.parametrize("args", [("--stages", "smoke,bogus"), ("--frobnicate",)])
def test_refuses_unknown_stages_and_arguments(args):
    done = _run("--dry-run", *args)
    assert done.returncode == 2 and "gpu_check:" in done.stderr
