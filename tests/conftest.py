"""Backend/device parametrization shared by every pillar's tests.

Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when its module is imported, so the
variable is set here, before any test module imports symkernels' Triton code. Without a CUDA device the
Triton kernels then run in the NumPy interpreter on CPU tensors (slow: keep their shapes tiny).

Where a backend's tensors live is decided here only: ``require_backend``/``backend_device`` give the device
(CUDA for "cuda", and for "triton" when a GPU exists), ``to_backend`` moves CPU-built test data there. A test
never builds CPU tensors for a GPU backend itself.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("triton was imported before tests/conftest.py could set TRITON_INTERPRET=1")
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import symkernels  # noqa: E402
from symkernels import _backend  # noqa: E402

# CI profile: few, fast examples; HYPOTHESIS_PROFILE=deep explores further. The backend fixtures are
# plain strings (no state to reset between examples), so function-scoped fixtures are safe with @given.
_HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("ci", max_examples=20, deadline=None, suppress_health_check=_HEALTH)
settings.register_profile("deep", max_examples=500, deadline=None, suppress_health_check=_HEALTH)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()


def backend_device(backend: str) -> torch.device:
    """Where a backend's tensors live in tests: CUDA for 'cuda' (and for Triton when a GPU exists)."""
    if backend == "cuda" or (backend == "triton" and HAS_CUDA):
        return torch.device("cuda")
    return torch.device("cpu")


def to_backend(backend: str, tensors):
    """``tensors`` (a tensor, or a dict/tuple/list of them and None) on ``backend``'s test device.

    Tests build their data on CPU, most from seeded CPU generators, so every device sees the same numbers;
    this moves it where the backend computes (the identity on CPU).
    """
    return to_device(tensors, backend_device(backend))


def to_device(tensors, device: torch.device):
    """``tensors`` on ``device``; strided views stay strided (same strides, not a contiguous copy), so a
    test of non-contiguous input tests that on every device."""
    def move(t):
        if not isinstance(t, torch.Tensor) or t.device == device:
            return t
        if t.is_contiguous():
            return t.to(device)
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device).copy_(t)

    return torch.utils._pytree.tree_map(move, tensors)


def require_backend(backend: str) -> torch.device:
    """Skip (with the registry's reason) when the backend is unavailable here; return its test device."""
    status = _backend.backend_status(backend)
    if not status.available:
        pytest.skip(f"backend {backend!r} unavailable: {status.reason}")
    return backend_device(backend)


def require_implemented(backend: str, implemented: tuple[str, ...]) -> str:
    """Skip when the op under test has no ``backend`` by that name (its module's IMPLEMENTED tuple), e.g.
    linear_dual, whose CUDA tensors run the Triton kernel. A test module overrides a backend fixture with
    it: ``def kernel_backend(kernel_backend): return require_implemented(kernel_backend, IMPLEMENTED)``."""
    if backend not in implemented:
        pytest.skip(f"the op has no {backend!r} backend (it has {', '.join(implemented)})")
    return backend


@pytest.fixture(params=symkernels.BACKENDS)
def backend(request) -> str:
    """Every backend; unavailable ones skip with their reason (reference always runs)."""
    require_backend(request.param)
    return request.param


@pytest.fixture
def device(backend) -> torch.device:
    return backend_device(backend)


@pytest.fixture(params=[b for b in symkernels.BACKENDS if b != "reference"])
def kernel_backend(request) -> str:
    """Every non-reference backend (the ones compared against the reference)."""
    require_backend(request.param)
    return request.param


def pytest_report_header(config):
    lines = [f"symkernels build: {_backend.build_info()}"]
    for name, status in _backend.backends().items():
        lines.append(f"  backend {name:9s} {'available' if status.available else 'UNAVAILABLE'}: {status.reason}")
    return lines


def run_compiling_script(name: str, tmp_path) -> dict:
    """Runs ``tests/<name>`` in a subprocess without TRITON_INTERPRET (its Triton kernels are real
    ``triton.jit`` functions, compiled or traced, where this process has them interpreted) and returns
    the JSON report it prints last."""
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton-cache"))
    env.pop("TRITON_INTERPRET", None)
    run = subprocess.run([sys.executable, str(Path(__file__).resolve().parent / name)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])
