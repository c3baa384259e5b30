"""hadamard_transform: every backend vs the reference, the reference vs independent truths."""
import math

import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from symkernels import hadamard_transform
from symkernels._testing import assert_close, assert_within_torch_error, random_noncontiguous
from symkernels.hadamard import hadamard_matrix
from tests.conftest import require_backend

ALL_LOG2 = list(range(1, 16))
# The interpreter runs Triton kernels through NumPy one program at a time: keep its sizes modest.
TRITON_INTERPRETED_MAX_LOG2 = 12


def _max_log2(backend, device):
    return TRITON_INTERPRETED_MAX_LOG2 if backend == "triton" and device.type == "cpu" else 15


def _scipy_h(n, dtype=torch.float64):
    return torch.from_numpy(scipy.linalg.hadamard(n)).to(dtype)


def _truth(x, scale, dtype=torch.float64):
    """x @ H_n.T * scale from scipy's Hadamard matrices — an implementation independent of ours.

    A dense H_32768 would take 8 GB, so n = a·b is split with the Sylvester identity H_ab = H_a ⊗ H_b:
    viewing a row as an a×b matrix X (index ia·b + ib), the transform is H_a X H_bᵀ. In a low-precision
    ``dtype`` this is PyTorch's own two-matmul answer, each matmul rounded to ``dtype``.
    """
    n = x.shape[-1]
    a = 1 << ((n.bit_length() - 1) // 2)
    b = n // a
    rows = x.to(dtype).reshape(-1, a, b)
    y = _scipy_h(a, dtype) @ rows @ _scipy_h(b, dtype).T
    return (y.reshape(x.shape) * scale).to(dtype)


# ---------------------------------------------------------------- the reference vs independent truths
@pytest.mark.parametrize("log2_n", ALL_LOG2)
def test_reference_equals_scipy_product(log2_n):
    n = 1 << log2_n
    x = torch.randn(3, n, dtype=torch.float64)
    assert_close(hadamard_transform(x, 0.5, backend="reference"), _truth(x, 0.5))
    if n <= 1024:  # and the plain dense product, for the sizes where it is cheap
        assert_close(hadamard_transform(x, 0.5, backend="reference"), x @ _scipy_h(n).T * 0.5)


@pytest.mark.parametrize("log2_n", range(1, 11))
def test_hadamard_matrix_is_scipys_and_orthogonal(log2_n):
    n = 1 << log2_n
    h = hadamard_matrix(n)
    assert torch.equal(h, torch.from_numpy(scipy.linalg.hadamard(n)).double())
    assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64))


# ---------------------------------------------------------------- every backend vs the reference
@pytest.mark.parametrize("log2_n", ALL_LOG2)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(backend, log2_n, dtype):
    device = require_backend(backend)
    if log2_n > _max_log2(backend, device):
        pytest.skip("interpreted Triton: sizes above 2^12 are covered on GPU runs")
    n = 1 << log2_n
    x = torch.randn(5, n, dtype=dtype, device=device)
    scale = 1 / math.sqrt(n)
    out = hadamard_transform(x, scale, backend=backend)
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous()
    assert_close(out, hadamard_transform(x, scale, backend="reference"), msg=f"{backend} n={n}")
    assert_close(out.double(), _truth(x.cpu(), scale).to(device), dtype=dtype, msg=f"{backend} n={n} vs scipy")


def test_triton_two_pass_fp64_rows():
    """An fp64 row of 2^15 does not fit one SM's registers: the Triton launcher splits it into two passes
    (H_n = H_a ⊗ H_b). Interpreted here at its one size (the rows-in-one-program path is tested above)."""
    device = require_backend("triton")
    from symkernels.hadamard import triton as triton_impl

    n = 1 << 15
    assert n * 8 > triton_impl._MAX_ROW_BYTES  # the two-pass path, not the single-program one
    x = torch.randn(2, n, dtype=torch.float64, device=device)
    out = hadamard_transform(x, 1 / math.sqrt(n), backend="triton")
    assert_close(out.double().cpu(), _truth(x.cpu(), 1 / math.sqrt(n)), dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("log2_n", [1, 4, 7, 10, 12, 15])
def test_half_precision_within_twice_torch_error(backend, dtype, log2_n):
    device = require_backend(backend)
    if log2_n > _max_log2(backend, device):
        pytest.skip("interpreted Triton: sizes above 2^12 are covered on GPU runs")
    if backend == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16 (NumPy); bf16 Triton runs on GPU, bf16 C++ here")
    n = 1 << log2_n
    x = torch.randn(4, n, device=device).to(dtype)
    scale = 1 / math.sqrt(n)
    truth = _truth(x.cpu(), scale)
    torch_lowp = _truth(x.cpu(), scale, dtype)  # PyTorch's own answer computed in `dtype`
    out = hadamard_transform(x, scale, backend=backend)
    assert out.dtype == dtype
    assert_within_torch_error(out.cpu(), truth, torch_lowp, msg=f"{backend} {dtype} n={n}")


def test_identity_rows_give_the_matrix(backend):
    device = require_backend(backend)
    n = 64
    eye = torch.eye(n, dtype=torch.float64, device=device)
    assert torch.equal(hadamard_transform(eye, backend=backend).cpu(), hadamard_matrix(n))


def test_involution_with_orthonormal_scale(backend):
    device = require_backend(backend)
    n = 1024
    x = torch.randn(7, n, dtype=torch.float64, device=device)
    twice = hadamard_transform(hadamard_transform(x, n ** -0.5, backend=backend), n ** -0.5, backend=backend)
    assert_close(twice, x)


@pytest.mark.parametrize("shape", [(0, 16), (2, 0, 16), (16,), (2, 3, 4, 32), (1, 1, 2)])
def test_leading_shapes_and_empty_batches(backend, shape):
    device = require_backend(backend)
    x = torch.randn(shape, dtype=torch.float32, device=device)
    out = hadamard_transform(x, 0.25, backend=backend)
    assert out.shape == x.shape
    assert_close(out, hadamard_transform(x, 0.25, backend="reference"))


def test_non_contiguous_input(backend):
    device = require_backend(backend)
    x = random_noncontiguous((6, 256), dtype=torch.float32, device=device)
    assert not x.is_contiguous()
    assert_close(hadamard_transform(x, 0.1, backend=backend), hadamard_transform(x.contiguous(), 0.1, backend="reference"))
    transposed = torch.randn(128, 5, device=device).T  # last dim strided
    assert_close(hadamard_transform(transposed, backend=backend), hadamard_transform(transposed.contiguous(), backend="reference"))


def test_nan_and_inf_propagate_like_the_reference(backend):
    device = require_backend(backend)
    x = torch.randn(3, 32, device=device)
    x[0, 5] = float("nan")
    x[1, 7] = float("inf")
    out, ref = hadamard_transform(x, backend=backend), hadamard_transform(x, backend="reference")
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())
    assert out[0].isnan().all() and torch.isfinite(out[2]).all()


@given(lead=st.lists(st.integers(0, 5), min_size=0, max_size=3), log2_n=st.integers(1, 11),
       scale=st.floats(-4, 4, allow_nan=False), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_random_shapes(backend, lead, log2_n, scale, dtype):
    device = require_backend(backend)
    x = torch.randn(*lead, 1 << log2_n, dtype=dtype, device=device)
    assert_close(hadamard_transform(x, scale, backend=backend), hadamard_transform(x, scale, backend="reference"))


# ---------------------------------------------------------------- derivatives
def test_gradcheck_and_gradgradcheck_float64(backend):
    device = require_backend(backend)
    # Small: gradcheck runs the op once per input element, and interpreted Triton launches are slow.
    x = torch.randn(2, 8, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda t: hadamard_transform(t, 0.3, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_backward_is_the_transform_of_the_gradient(backend):
    device = require_backend(backend)
    x = torch.randn(4, 512, device=device, requires_grad=True)
    g = torch.randn(4, 512, device=device)
    hadamard_transform(x, 0.5, backend=backend).backward(g)
    assert_close(x.grad, hadamard_transform(g, 0.5, backend="reference"))


def test_jvp_and_vmap_of_jvp_match_reference(backend):
    device = require_backend(backend)
    x = torch.randn(2, 64, dtype=torch.float64, device=device)
    tangents = torch.randn(5, 2, 64, dtype=torch.float64, device=device)
    fn = lambda t: hadamard_transform(t, 0.7, backend=backend)  # noqa: E731
    out, tangent = torch.func.jvp(fn, (x,), (tangents[0],))
    assert_close(out, hadamard_transform(x, 0.7, backend="reference"))
    assert_close(tangent, hadamard_transform(tangents[0], 0.7, backend="reference"))
    batched = torch.func.vmap(lambda t: torch.func.jvp(fn, (x,), (t,))[1])(tangents)
    assert_close(batched, hadamard_transform(tangents, 0.7, backend="reference"))


# ---------------------------------------------------------------- the dispatcher op itself
def _dispatcher_op():
    require_backend("cpu")
    return torch.ops.symkernels.hadamard_transform


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_opcheck(requires_grad, dtype):
    op = _dispatcher_op()
    for shape in [(4, 32), (0, 8), (2, 3, 2)]:
        x = torch.randn(shape, dtype=dtype, requires_grad=requires_grad and dtype in (torch.float32, torch.float64))
        torch.library.opcheck(op.default, (x, 0.5))


def test_bare_dispatcher_op_has_real_tangents():
    """A torch.library op without a forward formula gives silent ZERO tangents; ours must not."""
    op = _dispatcher_op()
    x, t = torch.randn(3, 16, dtype=torch.float64), torch.randn(3, 16, dtype=torch.float64)
    _, tangent = torch.func.jvp(lambda v: op(v, 0.5), (x,), (t,))
    expected = hadamard_transform(t, 0.5, backend="reference")
    assert tangent.abs().max() > 0
    assert_close(tangent, expected)
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        out = op(fwAD.make_dual(x, t), 0.5)
        assert_close(fwAD.unpack_dual(out).tangent, expected)
    assert_close(torch.func.jacfwd(lambda v: op(v, 1.0))(x[0]), hadamard_matrix(16))
    assert torch.autograd.gradcheck(lambda v: op(v, 0.5), (x.requires_grad_(),), check_forward_ad=True)


def test_torch_compile_fullgraph():
    x = torch.randn(4, 256)
    compiled = torch.compile(lambda t: hadamard_transform(t, 0.5) * 2 + 1, fullgraph=True)
    assert_close(compiled(x), hadamard_transform(x, 0.5, backend="reference") * 2 + 1)


def test_default_backend_uses_the_native_kernel_when_built():
    require_backend("cpu")
    x = torch.randn(2, 16)
    with torch.autograd.profiler.profile() as prof:
        hadamard_transform(x)
    assert any("symkernels::hadamard_transform" in e.name for e in prof.function_events)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("n", [3, 1, 65536, 98, 13696])
def test_unsupported_sizes_raise_value_error(backend, n):
    device = require_backend(backend)
    with pytest.raises(ValueError, match=r"x\.shape\[-1\] must be a power of two between 2 and 32768, or "
                                         r"K·2\^m ≤ 65536 for K in .*, got %d \(nearest supported sizes: \[" % n):
        hadamard_transform(torch.randn(2, n, device=device), backend=backend)


def test_unsupported_size_names_nearest_supported():
    # 64 and 128 = the powers of two around 98; 88 = 44·2, 96 = 12·2^3 below; 100 = 100·1, 104 = 52·2 above
    with pytest.raises(ValueError, match=r"nearest supported sizes: \[64, 88, 96, 100, 104, 128\]"):
        hadamard_transform(torch.randn(98))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64, torch.uint8])
def test_non_float_dtypes_raise_type_error(backend, dtype):
    device = require_backend(backend)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        hadamard_transform(torch.zeros(2, 8, dtype=dtype, device=device), backend=backend)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="at least one dimension"):
        hadamard_transform(torch.tensor(1.0))
    with pytest.raises(ValueError, match="scale must be a finite"):
        hadamard_transform(torch.randn(4), float("nan"))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        hadamard_transform([1.0, 2.0])
    with pytest.raises(ValueError, match="backend must be one of"):
        hadamard_transform(torch.randn(4), backend="metal")


def test_backend_device_mismatch_is_a_clear_error():
    x = torch.randn(2, 8)
    if require_backend("reference") and not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend='cuda' is unavailable"):
            hadamard_transform(x, backend="cuda")
    else:
        with pytest.raises(ValueError, match="needs tensors on a cuda device"):
            hadamard_transform(x, backend="cuda")


def test_native_op_checks_its_own_arguments():
    op = _dispatcher_op()
    with pytest.raises(ValueError, match="power of two between 2 and 32768, got 12"):
        op(torch.randn(2, 12), 1.0)
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        op(torch.zeros(2, 8, dtype=torch.int32), 1.0)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        op(torch.tensor(2.0), 1.0)
