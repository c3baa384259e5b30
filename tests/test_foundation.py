"""The house itself: backend registry, build info, import without _C, the comparison helpers."""
import subprocess
import sys
import textwrap

import pytest
import torch

import symkernels
from symkernels import _backend
from symkernels._testing import TOLERANCES, assert_close, assert_within_torch_error


def test_backends_report_every_backend_with_a_reason():
    statuses = symkernels.backends()
    assert tuple(statuses) == symkernels.BACKENDS == ("reference", "cpu", "cuda", "triton")
    assert statuses["reference"].available
    for status in statuses.values():
        assert isinstance(status.reason, str) and status.reason
    if not torch.cuda.is_available():
        assert not statuses["cuda"].available


def test_build_info_describes_the_native_build():
    info = symkernels.build_info()
    assert info["torch"] == torch.__version__
    if info["native"]:
        assert {"cuda", "cuda_arches", "cuda_arches_compiled", "simd", "simd_compiled", "openmp", "compiler",
                "torch_compiled"} <= set(info)
        assert info["simd"] in info["simd_compiled"]
        assert info["torch_compiled"] == torch.__version__, "symkernels._C was built against another torch"
    else:
        assert "native_error" in info


def test_resolve_rejects_unknown_and_unimplemented_backends():
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        _backend.resolve("some_op", cpu, "tpu", ("reference",))
    with pytest.raises(NotImplementedError, match="backend='triton' is not implemented; this op has"):
        _backend.resolve("some_op", cpu, "triton", ("reference",))
    assert _backend.resolve("some_op", cpu, None, ("reference",)) == "reference"


def test_common_device_names_the_arguments():
    a = torch.zeros(1)
    assert _backend.common_device("op", a=a, b=None) == torch.device("cpu")
    meta = torch.zeros(1, device="meta")
    with pytest.raises(ValueError, match="a on cpu, b on meta"):
        _backend.common_device("op", a=a, b=meta)


def test_import_without_native_extension_keeps_the_reference_path():
    """Invariant 1: no _C (no compiler, a broken build) still imports, and the reference runs."""
    code = textwrap.dedent("""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "symkernels._C":
                    raise ImportError("blocked for the test")
        sys.meta_path.insert(0, Block())
        import torch, symkernels
        st = symkernels.backends()
        assert st["reference"].available and not st["cpu"].available, st
        assert "blocked for the test" in st["cpu"].reason
        x = torch.randn(3, 8)
        y = symkernels.hadamard_transform(x)                      # default falls back to the reference
        assert torch.allclose(y, symkernels.hadamard_transform(x, backend="reference"))
        try:
            symkernels.hadamard_transform(x, backend="cpu")
        except RuntimeError as e:
            assert "unavailable" in str(e) and "blocked for the test" in str(e)
        else:
            raise AssertionError("backend='cpu' without _C must raise")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr


def test_tolerance_table_covers_every_float_dtype_and_catches_errors():
    assert set(TOLERANCES) == {torch.float64, torch.float32, torch.float16, torch.bfloat16}
    x = torch.randn(100)
    assert_close(x, x.clone())
    with pytest.raises(AssertionError, match="max \\|diff\\|"):
        assert_close(x, x + 1e-3)
    nan = x.clone()
    nan[3] = float("nan")
    with pytest.raises(AssertionError):
        assert_close(nan, x)
    truth = torch.randn(50, dtype=torch.float64)
    lowp = truth.half()
    assert_within_torch_error(lowp, truth, lowp)
    with pytest.raises(AssertionError, match="exceeds 2.0x PyTorch's own"):
        assert_within_torch_error((truth + 0.1).half(), truth, lowp)
