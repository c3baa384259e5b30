"""Every op is registered one way (``symkernels._library.register_op``), and torch.compile sees the Triton
kernels of the ops whose CUDA kernel is Triton, not an opaque op."""
import pytest
import torch

from symkernels import _backend, _library
from tests.conftest import run_compiling_script

needs_native = pytest.mark.skipif(not _backend.backend_available("cpu"), reason="symkernels._C is not built")


def _tensor_ops() -> list[str]:
    """The symkernels ops (``"<op>"``, or ``"<op>.<overload>"`` past the default) that compute tensors: they
    return one or write one (``out=``). A query op such as int4_matmul_cpu_isa has nothing to register: no
    fake, no autograd."""
    names = []
    for qualname in torch._C._dispatch_get_all_op_names():  # "symkernels::<op>" or "symkernels::<op>.<overload>"
        namespace, _, name = qualname.partition("::")
        if namespace != "symkernels":
            continue
        packet, _, overload = name.partition(".")
        schema = getattr(getattr(torch.ops.symkernels, packet), overload or "default")._schema
        if schema.is_mutable or any(isinstance(r.type, torch.TensorType) or "Tensor" in str(r.type)
                                    for r in schema.returns):
            names.append(name)
    return sorted(names)


@needs_native
def test_every_op_goes_through_register_op():
    missing = [name for name in _tensor_ops() if name not in _library.REGISTERED]
    assert not missing, f"registered by hand, not by _library.register_op: {missing}"


@needs_native
@pytest.mark.parametrize("name", _tensor_ops() if _backend.backend_available("cpu") else [])
def test_every_op_has_a_fake_kernel(name):
    fake = torch._library.simple_registry.singleton.find(f"symkernels::{name}").fake_impl
    assert fake.kernel is not None, f"symkernels::{name} has no fake kernel: torch.compile cannot trace it"


def test_kernel_function_refuses_arguments_apply_would_have_to_bind():
    with pytest.raises(TypeError, match="positional, without defaults"):
        class _WithDefault(_library.KernelFunction):  # noqa: F841
            @staticmethod
            def forward(x, scale=1.0):
                return x * scale


@needs_native
def test_autograd_kernel_records_only_what_needs_recording():
    op = torch.ops.symkernels.hadamard_transform
    x = torch.randn(2, 8, dtype=torch.float64)
    assert op(x, 1.0).grad_fn is None  # nothing to record: the kernel ran directly
    assert op(x.requires_grad_(), 1.0).grad_fn is not None
    with torch.no_grad():
        assert op(x, 1.0).grad_fn is None
    with torch.autograd.forward_ad.dual_level():
        y = op(torch.autograd.forward_ad.make_dual(x.detach(), torch.ones_like(x)), 1.0)
        assert torch.autograd.forward_ad.unpack_dual(y).tangent is not None


def test_autograd_callbacks_go_together():
    with pytest.raises(TypeError, match="setup_context, backward and jvp go together"):
        _library.register_op("hadamard_transform", fake=lambda *a: None, backward=lambda ctx, g: g)


@needs_native
@pytest.mark.skipif(not _backend.triton_importable(), reason="triton is not installed")
def test_compile_traces_into_the_triton_kernels(tmp_path):
    # In a subprocess: wrap_triton traces real triton.jit kernels, which this process has interpreted.
    report = run_compiling_script("triton_decomposition_probe.py", tmp_path)
    served_by_triton = {name for name, r in _library.REGISTERED.items() if r.triton}
    traced = {case.split("/")[0] for case in report}
    assert served_by_triton <= traced, f"no trace case for {served_by_triton - traced}"
    for case, targets in report.items():
        op, device = case.split("/")
        assert isinstance(targets, list), f"{case}: {targets}"
        ours = [t for t in targets if t.startswith("symkernels.")]
        if device == "cuda" and op in served_by_triton:
            # Inductor gets the kernel launch itself, and no opaque op around it.
            assert "triton_kernel_wrapper_functional" in targets, f"{case}: {targets}"
            assert not ours, f"{case}: the op stayed opaque: {targets}"
        else:
            # A C++ kernel serves this call: the op stays one node.
            assert ours == [f"symkernels.{op}" + ("" if "." in op else ".default")], f"{case}: {targets}"
