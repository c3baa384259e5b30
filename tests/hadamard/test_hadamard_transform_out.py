"""hadamard_transform(..., out=): the same kernels writing into a caller's buffer, for both size families
(powers of two: ``hadamard_transform.out``; n = K·2^m: ``hadamard_transform_k.out``)."""
import pytest
import torch

from symkernels import hadamard_transform
from symkernels._testing import random_noncontiguous
from symkernels.hadamard import hk_for
from tests.conftest import require_backend

# 16: one register row on CPU; 4096: the multi-pass rows; 768 = 12·64 and 11008 = 172·64: the Kronecker op.
SIZES = [16, 4096, 768, 11008]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _skip_slow_interpreted(backend, device, dtype, n):
    # The interpreter runs Triton through NumPy program by program, and has no bf16 arithmetic.
    if backend == "triton" and device.type == "cpu" and (n > 4096 or dtype == torch.bfloat16):
        pytest.skip("interpreted Triton: kept to small fp32/fp16/fp64 rows")


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_out_is_bitwise_the_allocating_call(backend, n, dtype):
    device = require_backend(backend)
    _skip_slow_interpreted(backend, device, dtype, n)
    x = torch.randn(3, 5, n, device=device).to(dtype)
    out = torch.full_like(x, float("nan"))  # every element must be written
    result = hadamard_transform(x, 0.125, backend=backend, out=out)
    assert result is out
    assert torch.equal(out, hadamard_transform(x, 0.125, backend=backend))


@pytest.mark.parametrize("n", [256, 768])
def test_transpose_and_strided_input(backend, n):
    device = require_backend(backend)
    x = random_noncontiguous((6, n), dtype=torch.float32, device=device)
    out = torch.empty(6, n, device=device)
    hadamard_transform(x, 0.5, transpose=True, backend=backend, out=out)
    assert torch.equal(out, hadamard_transform(x, 0.5, transpose=True, backend=backend))


@pytest.mark.parametrize("shape", [(0, 256), (2, 0, 768), (256,)])
def test_leading_shapes_and_empty_batches(backend, shape):
    device = require_backend(backend)
    x = torch.randn(shape, device=device)
    out = torch.empty(shape, device=device)
    assert hadamard_transform(x, backend=backend, out=out) is out
    assert torch.equal(out, hadamard_transform(x, backend=backend))


def test_strided_view_of_out_storage_is_allowed(backend):
    # x strided is copied before the kernel reads it, so x may view the very memory out is written to.
    device = require_backend(backend)
    buf = torch.randn(8, 64, device=device)
    x = buf.T  # 64 × 8, not contiguous
    expected = hadamard_transform(x.contiguous(), backend=backend)
    out = buf.view(64, 8)
    hadamard_transform(x, backend=backend, out=out)
    assert torch.equal(out, expected)


BAD_OUTS = {
    "shape": (lambda x: x.new_empty(4, 128), ValueError, "out must have x's shape"),
    "dtype": (lambda x: x.new_empty(4, 256, dtype=torch.float64), TypeError, "out must have x's dtype"),
    "strided": (lambda x: x.new_empty(256, 4).T, ValueError, "out must be contiguous"),
    "x itself": (lambda x: x, ValueError, "out must not share memory with x"),
    "not a tensor": (lambda x: x.tolist(), TypeError, "out must be a torch.Tensor"),
}


@pytest.mark.parametrize("case", BAD_OUTS)
def test_bad_out_names_the_argument(backend, case):
    device = require_backend(backend)
    x = torch.randn(4, 256, device=device)
    make_out, error, message = BAD_OUTS[case]
    with pytest.raises(error, match=message):
        hadamard_transform(x, backend=backend, out=make_out(x))


def test_out_overlapping_part_of_x_is_refused(backend):
    device = require_backend(backend)
    buf = torch.randn(5, 256, device=device)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        hadamard_transform(buf[:4], backend=backend, out=buf[1:])


def test_out_is_not_differentiable(backend):
    device = require_backend(backend)
    x = torch.randn(2, 64, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="out= does not record autograd"):
        hadamard_transform(x, backend=backend, out=torch.empty(2, 64, device=device))
    with torch.no_grad():
        out = hadamard_transform(x, backend=backend, out=torch.empty(2, 64, device=device))
    assert torch.equal(out, hadamard_transform(x.detach(), backend=backend))


# ---------------------------------------------------------------- the dispatcher overloads
def _ops():
    require_backend("cpu")
    return torch.ops.symkernels.hadamard_transform.out, torch.ops.symkernels.hadamard_transform_k.out


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype):
    power_of_two, kronecker = _ops()
    for shape in [(4, 32), (0, 8), (2, 3, 2)]:
        x = torch.randn(shape, dtype=dtype)
        torch.library.opcheck(power_of_two, (x, 0.5), {"out": torch.empty_like(x)})
    for n in (12, 20 * 4):
        x = torch.randn(3, n, dtype=dtype)
        torch.library.opcheck(kronecker, (x, hk_for(n, dtype, x.device), 0.5), {"out": torch.empty_like(x)})


def test_dispatcher_overloads_check_out():
    power_of_two, kronecker = _ops()
    x = torch.randn(4, 12 * 4)
    hk = hk_for(x.shape[-1], x.dtype, x.device)
    with pytest.raises(ValueError, match="hadamard_transform_k: out must have x's shape"):
        kronecker(x, hk, 1.0, out=torch.empty(4, 12))
    with pytest.raises(ValueError, match="hadamard_transform_k: out must not share memory with x"):
        kronecker(x, hk, 1.0, out=x)
    y = torch.randn(4, 64)
    with pytest.raises(TypeError, match="hadamard_transform: out must have x's dtype"):
        power_of_two(y, 1.0, out=torch.empty(4, 64, dtype=torch.float16))
    with pytest.raises(ValueError, match="hadamard_transform: out must be contiguous"):
        power_of_two(y, 1.0, out=torch.empty(64, 4).T)


def test_compiled_out_call_matches_eager():
    power_of_two, _ = _ops()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def rotate_then_shift(x, out):
        power_of_two(x, 0.25, out=out)
        return out + 1

    x = torch.randn(3, 64)
    assert torch.equal(rotate_then_shift(x, torch.empty_like(x)), hadamard_transform(x, 0.25, backend="cpu") + 1)
