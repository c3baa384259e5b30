"""gaunt_tensor_product: every backend vs the dense reference; the reference vs e3nn; invariants; autograd."""
import contextlib
import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from symkernels import _backend
from symkernels._testing import assert_close, random_noncontiguous
from symkernels.gaunt import coefficients as C
from symkernels.gaunt import gaunt_tensor_product as gtp
from symkernels.gaunt import ops as gaunt_ops
from symkernels.gaunt import reference
from tests.gaunt.conftest import F64, rand, size
from tests.conftest import require_backend, to_backend



# --------------------------------------------------------------------------------------------
# Kernels vs the reference.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("l1,l2", list(itertools.product(range(7), repeat=2)))
def test_cpu_matches_reference_all_degrees(l1, l2, cpu_route):
    a = rand(19, size(l1), seed=l1)
    b = rand(19, size(l2), seed=10 + l2)
    for lo in range(l1 + l2 + 1):  # every truncation, including Lo < max(L1, L2)
        assert_close(gtp(a, b, lo, backend="cpu"), reference.gaunt_tensor_product(a, b, lo), msg=f"{l1},{l2},{lo}")


@pytest.mark.parametrize("l1,l2,lo", [(0, 2, 2), (1, 1, 2), (2, 3, 3), (3, 2, 5), (4, 4, 8), (6, 1, 4)])
def test_triton_matches_reference(l1, l2, lo):
    device = require_backend("triton")
    a = rand(21, size(l1), seed=1).to(device)
    b = rand(21, size(l2), seed=2).to(device)
    assert_close(gtp(a, b, lo, backend="triton"), reference.gaunt_tensor_product(a, b, lo))
    assert_close(gtp(a.float(), b.float(), lo, backend="triton"), reference.gaunt_tensor_product(a, b, lo).float())


@pytest.mark.parametrize("l1,l2,lo", [(12, 3, 12), (12, 12, 2), (10, 2, 12), (7, 8, 15), (12, 12, 24)])
def test_cpu_spot_checks_high_degree(l1, l2, lo, cpu_route):
    a, b = rand(9, size(l1), seed=3), rand(9, size(l2), seed=4)
    assert_close(gtp(a, b, lo, backend="cpu"), reference.gaunt_tensor_product(a, b, lo))


def test_triton_spot_check_high_degree():
    device = require_backend("triton")
    a, b = rand(5, size(12), seed=5).to(device), rand(5, size(3), seed=6).to(device)
    assert_close(gtp(a, b, 10, backend="triton"), reference.gaunt_tensor_product(a, b, 10))


@pytest.mark.parametrize("l", [1, 4, 8, 12])
def test_float32_relative_accuracy(kernel_backend, l):
    """fp32 max error ≤ 1e-5 relative to max|truth| (float64 dense contraction), for L ≤ 12."""
    if kernel_backend == "triton" and l > 4:
        pytest.skip("interpreter: the Triton kernel is checked at L ≤ 4 here (L = 12 in fp64 above)")
    device = require_backend(kernel_backend)
    for lo in (l, 2 * l):
        rows = 16 if l == 12 else 64  # the dense float64 truth at (12, 12, 24) is 1.1 GFLOP per 64 rows
        a, b = rand(rows, size(l), seed=7), rand(rows, size(l), seed=8)
        truth = reference.gaunt_tensor_product(a, b, lo)
        routes = ("sparse", "grid") if kernel_backend == "cpu" else (None,)
        for route in routes:
            with _cpu_route(route):
                out = gtp(a.float().to(device), b.float().to(device), lo, backend=kernel_backend).cpu().double()
            rel = ((out - truth).abs().max() / truth.abs().max()).item()
            assert rel <= 1e-5, (route, lo, rel)


@contextlib.contextmanager
def _cpu_route(route):
    previous = gaunt_ops._CPU_ROUTE
    gaunt_ops._CPU_ROUTE = route
    try:
        yield
    finally:
        gaunt_ops._CPU_ROUTE = previous


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_widen_to_float32(dtype):
    require_backend("cpu")
    a, b = rand(8, 9, dtype=dtype), rand(8, 4, dtype=dtype, seed=1)
    out = gtp(a, b, backend="cpu")
    assert out.dtype == dtype
    assert_close(out, reference.gaunt_tensor_product(a, b, 3))


def test_nan_row_poisons_only_its_row(backend):
    device = require_backend(backend)
    a, b = rand(3, 9).to(device), rand(3, 4, seed=1).to(device)
    a[1, 5] = float("nan")
    b[2, 0] = float("inf")
    for route in ("sparse", "grid") if backend == "cpu" else (None,):
        with _cpu_route(route):
            out, ref = gtp(a, b, backend=backend), reference.gaunt_tensor_product(a, b, 3)
        assert out[1].isnan().all() and ref[1].isnan().all()
        assert out[2].isnan().all() and ref[2].isnan().all()
        assert_close(out[0], ref[0])


# --------------------------------------------------------------------------------------------
# The reference vs e3nn (independent constructions of the same product).
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _float64_default():
    """e3nn builds its 3j / grid buffers in the default dtype; .double() afterwards would keep their float32
    rounding (3e-8), so build them under a float64 default."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _to_e3nn_layout(x, lmax):
    """[B, C, (L+1)²] → e3nn mul_ir [B, Σ_l C·(2l+1)]."""
    return torch.cat([x[..., l * l:(l + 1) ** 2].reshape(x.shape[0], -1) for l in range(lmax + 1)], dim=-1)


def test_reference_matches_e3nn_tensor_product_uuu():
    o3 = pytest.importorskip("e3nn.o3")
    l1, l2, lo, ch = 2, 3, 4, 3
    irreps = lambda lmax: o3.Irreps([(ch, (l, (-1) ** l)) for l in range(lmax + 1)])  # noqa: E731
    instructions = [(i1, i2, io, "uuu", False, C.gaunt_constant(i1, i2, io) ** 2)
                    for i1 in range(l1 + 1) for i2 in range(l2 + 1) for io in range(lo + 1)
                    if abs(i1 - i2) <= io <= i1 + i2 and (i1 + i2 + io) % 2 == 0]
    with _float64_default():
        tp = o3.TensorProduct(irreps(l1), irreps(l2), irreps(lo), instructions, irrep_normalization="none",
                              path_normalization="none")
    a, b = rand(5, ch, size(l1), seed=1), rand(5, ch, size(l2), seed=2)
    expected = tp(_to_e3nn_layout(a, l1), _to_e3nn_layout(b, l2))
    got = _to_e3nn_layout(reference.gaunt_tensor_product(a, b, lo), lo)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


def test_reference_matches_e3nn_s2_grid():
    # Only 'integral': e3nn's S² grid 'component' scales by 1/√(lmax+1) (it normalizes over all degrees),
    # unlike o3.spherical_harmonics' 'component', which the pointwise test below covers.
    normalization = "integral"
    o3 = pytest.importorskip("e3nn.o3")
    l1, l2, lo = 3, 2, 4
    res = (2 * (l1 + l2 + 1), 2 * (l1 + l2 + lo) + 1)  # fine enough for the product, degree L1+L2
    with _float64_default():
        to1 = o3.ToS2Grid(l1, res, normalization=normalization)
        to2 = o3.ToS2Grid(l2, res, normalization=normalization)
        back = o3.FromS2Grid(res, lo, normalization=normalization)
    a, b = rand(4, size(l1), seed=3), rand(4, size(l2), seed=4)
    expected = back(to1(a) * to2(b))
    got = reference.gaunt_tensor_product(a, b, lo, normalization)
    torch.testing.assert_close(got, expected, atol=1e-11, rtol=1e-10)


@pytest.mark.parametrize("normalization", ["integral", "component"])
def test_full_product_is_pointwise_product_of_e3nn_sh(normalization):
    """With Lo = L1+L2 nothing is truncated: f3(r) = f1(r)·f2(r) at every point, evaluating the coefficient
    vectors with e3nn's own spherical harmonics (so this checks e3nn's basis, order and normalization)."""
    o3 = pytest.importorskip("e3nn.o3")
    l1, l2 = 3, 2
    points = rand(50, 3, seed=9)
    sh = lambda lmax: o3.spherical_harmonics(list(range(lmax + 1)), points, normalize=True,  # noqa: E731
                                             normalization=normalization)
    a, b = rand(size(l1), seed=1), rand(size(l2), seed=2)
    c = reference.gaunt_tensor_product(a, b, l1 + l2, normalization)
    torch.testing.assert_close(sh(l1 + l2) @ c, (sh(l1) @ a) * (sh(l2) @ b), atol=1e-11, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# Invariants.
# --------------------------------------------------------------------------------------------
def test_equivariance_under_rotations(backend):
    o3 = pytest.importorskip("e3nn.o3")
    device = require_backend(backend)
    l1, l2, lo = 3, 2, 4
    d = lambda lmax, r: o3.Irreps([(1, (l, (-1) ** l)) for l in range(lmax + 1)]).D_from_matrix(r)  # noqa: E731
    torch.manual_seed(0)
    rot = o3.rand_matrix(dtype=torch.float32)
    a, b = rand(7, size(l1), dtype=torch.float32, seed=5), rand(7, size(l2), dtype=torch.float32, seed=6)
    lhs = gtp((a @ d(l1, rot).T).to(device), (b @ d(l2, rot).T).to(device), lo, backend=backend).cpu()
    rhs = gtp(a.to(device), b.to(device), lo, backend=backend).cpu() @ d(lo, rot).T
    assert_close(lhs, rhs)


def test_constant_function_is_identity_and_commutativity(backend):
    device = require_backend(backend)
    a, b = rand(6, 16, seed=1).to(device), rand(6, 9, seed=2).to(device)
    one = torch.zeros(1, 1, dtype=F64, device=device)
    one[..., 0] = math.sqrt(4 * math.pi)  # the constant function 1 in 'integral' normalization
    assert_close(gtp(a, one, backend=backend), a)
    e00 = torch.ones(1, dtype=F64, device=device)  # and in 'component' normalization
    assert_close(gtp(e00, a, normalization="component", backend=backend), a.expand(6, 16))
    assert_close(gtp(a, b, 4, backend=backend), gtp(b, a, 4, backend=backend))


def test_adjointness(backend):
    device = require_backend(backend)
    a, b, g = rand(5, 9, seed=1).to(device), rand(5, 16, seed=2).to(device), rand(5, 25, seed=3).to(device)
    lhs = (gtp(a, b, 4, backend=backend) * g).sum()
    rhs = (a * gtp(b, g, 2, backend=backend)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-12)


# --------------------------------------------------------------------------------------------
# Shapes, strides, broadcasting (hypothesis).
# --------------------------------------------------------------------------------------------
@given(l1=st.integers(0, 4), l2=st.integers(0, 4), lead=st.lists(st.integers(0, 5), min_size=0, max_size=3),
       bcast=st.booleans(), noncontig=st.booleans(), data=st.data())
def test_random_shapes_cpu(l1, l2, lead, bcast, noncontig, data, cpu_route):
    lo = data.draw(st.integers(0, l1 + l2))
    shape2 = [1] * len(lead) if bcast else list(lead)
    make = random_noncontiguous if noncontig else (lambda s, dtype: torch.randn(*s, dtype=dtype))
    a = make(tuple(lead) + (size(l1),), dtype=F64)
    b = make(tuple(shape2) + (size(l2),), dtype=F64)
    out = gtp(a, b, lo, backend="cpu")
    assert out.shape == tuple(lead) + (size(lo),)
    assert_close(out, reference.gaunt_tensor_product(a, b, lo))


def test_triton_broadcast_noncontiguous_and_empty():
    device = require_backend("triton")
    from symkernels.gaunt import triton as triton_impl

    a = to_backend("triton", random_noncontiguous((3, 4, 9), dtype=F64))  # strides kept on a GPU too
    b = rand(3, 1, 4).to(device)
    assert_close(gtp(a, b, 3, backend="triton"), reference.gaunt_tensor_product(a, b, 3))
    # the broadcast operand is read in place through stride 0 (no expanded copy), as are strided rows
    lead = torch.Size([3, 4])
    view, (inner, outer_stride, inner_stride, _) = triton_impl._row_layout(b, lead)
    assert view.data_ptr() == b.data_ptr() and inner == 4 and inner_stride == 0 and outer_stride == 4
    view, _ = triton_impl._row_layout(a, lead)
    assert view.data_ptr() == a.data_ptr()
    # three leading dims that do not coalesce into two fall back to a contiguous copy, still correct
    c = to_backend("triton", random_noncontiguous((2, 3, 2, 4), dtype=F64))
    d = rand(2, 1, 2, 1, seed=4).to(device)
    assert_close(gtp(c, d, 1, backend="triton"), reference.gaunt_tensor_product(c, d, 1))
    empty = gtp(torch.zeros(0, 9, dtype=F64, device=device), b[0], backend="triton")
    assert empty.shape == (0, 16)


# --------------------------------------------------------------------------------------------
# Autograd: gradcheck / gradgradcheck in float64, JVP, vmap; the VJP identity of the design note.
# --------------------------------------------------------------------------------------------
def test_gradcheck_and_gradgradcheck(backend):
    device = require_backend(backend)
    if backend == "triton":  # the interpreter is slow: fewer elements (double backward vs reference below)
        a = rand(2, 4, seed=1).to(device).requires_grad_()
        b = rand(1, 1, seed=2).to(device).requires_grad_()
    else:
        a = rand(2, 3, 9, seed=1).to(device).requires_grad_()
        b = rand(1, 4, seed=2).to(device).requires_grad_()  # broadcast along the leading dims
    fn = lambda x, y: gtp(x, y, 1, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, b), check_forward_ad=True)
    if backend != "triton":
        assert torch.autograd.gradgradcheck(fn, (a, b))


def test_double_backward_matches_reference(kernel_backend):
    device = require_backend(kernel_backend)
    a = rand(3, 9, seed=1).to(device).requires_grad_()
    b = rand(3, 4, seed=2).to(device).requires_grad_()
    g = rand(3, 9, seed=3).to(device)
    results = []
    for fn in (lambda x, y: gtp(x, y, 2, backend=kernel_backend), lambda x, y: reference.gaunt_tensor_product(x, y, 2)):
        ga, gb = torch.autograd.grad(fn(a, b), (a, b), g, create_graph=True)
        results.append(torch.autograd.grad((ga.square().sum() + (gb * gb.flip(-1)).sum()), (a, b)))
    for got, expected in zip(*results):
        assert_close(got, expected)


def test_backward_is_gaunt_product_with_degree_above_l2_plus_lo(backend):
    """∂/∂x1 = GTP(x2, g) truncated to L1, here with L1 = 6 > L2 + Lo = 3."""
    device = require_backend(backend)
    a = rand(4, size(6), seed=1).to(device).requires_grad_()
    b = rand(4, size(1), seed=2).to(device).requires_grad_()
    g = rand(4, size(2), seed=3).to(device)
    ga, gb = torch.autograd.grad(gtp(a, b, 2, backend=backend), (a, b), g)
    ra, rb = torch.autograd.grad(reference.gaunt_tensor_product(a, b, 2), (a, b), g)
    assert_close(ga, ra)
    assert_close(gb, rb)
    assert_close(ga, reference.gaunt_tensor_product(b, g, 6))


def test_jvp_and_vmap(kernel_backend):
    device = require_backend(kernel_backend)
    a, b = rand(3, 9, seed=1).to(device), rand(3, 4, seed=2).to(device)
    da, db = rand(3, 9, seed=3).to(device), rand(3, 4, seed=4).to(device)
    fn = lambda x, y: gtp(x, y, 3, backend=kernel_backend)  # noqa: E731
    out, tangent = torch.func.jvp(fn, (a, b), (da, db))
    _, expected = torch.func.jvp(lambda x, y: reference.gaunt_tensor_product(x, y, 3), (a, b), (da, db))
    assert_close(tangent, expected)
    batched = torch.vmap(fn, in_dims=(0, None))(torch.stack([a, 2 * a]), b)
    assert_close(batched, torch.stack([fn(a, b), fn(2 * a, b)]))


def test_torch_ops_autograd_registration_double_backward():
    """The raw dispatcher op's register_autograd (permuted tables) matches the reference to second order."""
    require_backend("cpu")
    paths, coeffs = C.sparse_gaunt_table(2, 1, 2)
    a = rand(3, 9, seed=1).requires_grad_()
    b = rand(3, 4, seed=2).requires_grad_()
    fn = lambda x, y: torch.ops.symkernels.gaunt_tensor_product(x, y, paths, coeffs, 2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, b))
    assert torch.autograd.gradgradcheck(fn, (a, b))


def test_opcheck():
    require_backend("cpu")
    for l1, l2, lo, dtype in [(2, 1, 3, torch.float32), (1, 2, 1, F64)]:
        paths, coeffs = C.sparse_gaunt_table(l1, l2, lo)
        a = rand(4, size(l1), dtype=dtype).requires_grad_()
        b = rand(2, 1, size(l2), dtype=dtype, seed=1).requires_grad_()
        torch.library.opcheck(torch.ops.symkernels.gaunt_tensor_product.default, (a, b, paths, coeffs.to(dtype), lo))


def test_torch_compile_fullgraph():
    require_backend("cpu")
    a = rand(4, 3, 9, dtype=torch.float32).requires_grad_()
    b = rand(4, 1, 4, dtype=torch.float32, seed=1).requires_grad_()

    def loss(x, y):
        return gtp(x, y, 3).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    out = compiled(a, b)
    grads = torch.autograd.grad(out, (a, b))
    expected = torch.autograd.grad(loss(a, b), (a, b))
    for g, e in zip(grads, expected):
        assert_close(g, e)


# --------------------------------------------------------------------------------------------
# Bad input: clear errors naming the argument.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend_name", ["reference", "cpu"])
def test_bad_inputs(backend_name):
    require_backend(backend_name)
    a, b = torch.randn(2, 9), torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"x1.shape\[-1\] must be a perfect square .* got 8 \(nearest: 4 or 9\)"):
        gtp(torch.randn(2, 8), b, backend=backend_name)
    with pytest.raises(ValueError, match=r"lmax_out must be between 0 and L1\+L2 = 3"):
        gtp(a, b, 4, backend=backend_name)
    with pytest.raises(ValueError, match="lmax_out must be between 0 and"):
        gtp(a, b, -1, backend=backend_name)
    with pytest.raises(TypeError, match="lmax_out must be an int"):
        gtp(a, b, 2.0, backend=backend_name)
    with pytest.raises(TypeError, match="x1 must have a floating dtype"):
        gtp(torch.ones(2, 9, dtype=torch.int64), b, backend=backend_name)
    with pytest.raises(TypeError, match="same dtype"):
        gtp(a, b.double(), backend=backend_name)
    with pytest.raises(ValueError, match="do not broadcast"):
        gtp(torch.randn(3, 9), b, backend=backend_name)
    with pytest.raises(ValueError, match="all tensors must be on one device"):
        gtp(a, b.to("meta"), backend=backend_name)
    with pytest.raises(ValueError, match="normalization must be one of"):
        gtp(a, b, normalization="schmidt", backend=backend_name)
    with pytest.raises(TypeError, match="x2 must be a torch.Tensor"):
        gtp(a, [1.0], backend=backend_name)


def test_raw_op_rejects_out_of_range_tables():
    require_backend("cpu")
    a, b = torch.randn(2, 9), torch.randn(2, 4)
    paths = torch.tensor([[0, 0, 0], [9, 0, 0]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"paths\[1\] = \(9, 0, 0\) is out of range"):
        torch.ops.symkernels.gaunt_tensor_product(a, b, paths, torch.ones(2), 1)
    with pytest.raises(ValueError, match="coeffs must have shape"):
        torch.ops.symkernels.gaunt_tensor_product(a, b, paths[:1], torch.ones(2), 1)
    with pytest.raises(TypeError, match="paths must be int32"):
        torch.ops.symkernels.gaunt_tensor_product(a, b, paths.long(), torch.ones(2), 1)
    with pytest.raises(TypeError, match="x1 must be float32 or float64"):
        torch.ops.symkernels.gaunt_tensor_product(a.long(), b, paths, torch.ones(2), 1)


def test_backend_resolution():
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    if _backend.backend_status("cpu"):
        assert _backend.resolve("gaunt_tensor_product", a.device, None, ("reference", "cpu")) == "dispatcher"
    with pytest.raises(ValueError, match="backend must be one of"):
        gtp(a, b, backend="fortran")


def test_bare_dispatcher_op_has_real_tangents():
    """torch.ops.symkernels.gaunt_tensor_product called directly: tangents in forward mode are not zero."""
    from symkernels.gaunt import ops as gaunt_ops
    from tests.conftest import require_backend

    require_backend("cpu")
    torch.manual_seed(0)
    x1, x2 = torch.randn(3, 9, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    t1, t2 = torch.randn_like(x1), torch.randn_like(x2)
    paths, coeffs = gaunt_ops._sparse_tables(2, 1, 3, "integral", x1.device, x1.dtype)
    op = lambda a, b: torch.ops.symkernels.gaunt_tensor_product(a, b, paths, coeffs, 3)  # noqa: E731
    _, tangent = torch.func.jvp(op, (x1, x2), (t1, t2))
    ref = lambda a, b: gaunt_ops.gaunt_tensor_product(a, b, 3, backend="reference")  # noqa: E731
    _, expected = torch.func.jvp(ref, (x1, x2), (t1, t2))
    assert tangent.abs().max() > 0
    assert_close(tangent, expected)
    assert torch.autograd.gradcheck(op, (x1.requires_grad_(), x2.requires_grad_()), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(op, (x1, x2))


# --------------------------------------------------------------------------------------------
# The CPU sphere-grid route: its own op, autograd, compile; route choice; broadcast without copies.
# --------------------------------------------------------------------------------------------
def test_grid_route_autograd_all_orders(monkeypatch):
    require_backend("cpu")
    monkeypatch.setattr(gaunt_ops, "_CPU_ROUTE", "grid")
    a = rand(2, 3, 16, seed=1).requires_grad_()
    b = rand(1, 9, seed=2).requires_grad_()  # broadcast along the leading dims
    fn = lambda x, y: gtp(x, y, 3, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, b), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn, (a, b))
    # and against the reference, through double backward (degree 3 > L2 + Lo - ... exercised by lo = 1)
    g = rand(2, 3, 4, seed=3)
    results = []
    for f in (lambda x, y: gtp(x, y, 1, backend="cpu"), lambda x, y: reference.gaunt_tensor_product(x, y, 1)):
        ga, gb = torch.autograd.grad(f(a, b), (a, b), g, create_graph=True)
        results.append(torch.autograd.grad(ga.square().sum() + gb.sin().sum(), (a, b)))
    for got, expected in zip(*results):
        assert_close(got, expected)


def test_grid_op_autograd_registration_opcheck_and_tangents():
    """torch.ops.symkernels.gaunt_tensor_product_grid called directly: opcheck, gradients to second order,
    real forward-mode tangents."""
    require_backend("cpu")
    op = torch.ops.symkernels.gaunt_tensor_product_grid
    for l1, l2, lo, dtype in [(2, 1, 3, torch.float32), (1, 2, 1, F64), (3, 3, 0, F64)]:
        theta, weights = C.grid_pair_tables(l1 + l2 + lo, max(l1, l2, lo))
        a = rand(4, size(l1), dtype=dtype).requires_grad_()
        b = rand(2, 1, size(l2), dtype=dtype, seed=1).requires_grad_()
        torch.library.opcheck(op.default, (a, b, theta.to(dtype), weights.to(dtype), lo))
        assert_close(op(a, b, theta.to(dtype), weights.to(dtype), lo), reference.gaunt_tensor_product(a, b, lo))
    theta, weights = C.grid_pair_tables(2 + 1 + 2, 2)
    x1, x2 = rand(3, 9, seed=1).requires_grad_(), rand(3, 4, seed=2).requires_grad_()
    fn = lambda p, q: op(p, q, theta, weights, 2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x1, x2), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn, (x1, x2))
    _, tangent = torch.func.jvp(fn, (x1.detach(), x2.detach()), (torch.ones_like(x1), torch.ones_like(x2)))
    assert tangent.abs().max() > 0


def test_grid_op_rejects_bad_tables():
    require_backend("cpu")
    op = torch.ops.symkernels.gaunt_tensor_product_grid
    a, b = torch.randn(2, 9), torch.randn(2, 4)
    theta, weights = C.grid_pair_tables(2 + 1 + 3, 3)
    theta, weights = theta.float(), weights.float()
    with pytest.raises(ValueError, match="theta has 9 columns; degrees \\(2, 1, 3\\) need 16"):
        op(a, b, theta[:, :9], weights, 3)
    with pytest.raises(ValueError, match="node pairs; degrees \\(2, 1, 3\\) need 2 for an exact quadrature"):
        op(a, b, theta[:1], weights[:1], 3)
    with pytest.raises(ValueError, match="theta must be \\[P, N\\] and weights \\[P\\]"):
        op(a, b, theta, weights[:1], 3)
    with pytest.raises(TypeError, match="x2 must have x1's dtype"):
        op(a, b.double(), theta, weights, 3)
    with pytest.raises(ValueError, match=r"x1.shape\[-1\] must be a perfect square"):
        op(torch.randn(2, 8), b, theta, weights, 3)


def test_torch_compile_fullgraph_grid_route(monkeypatch):
    require_backend("cpu")
    monkeypatch.setattr(gaunt_ops, "_CPU_ROUTE", "grid")
    a = rand(4, 3, 16, dtype=torch.float32).requires_grad_()
    b = rand(4, 1, 9, dtype=torch.float32, seed=1).requires_grad_()

    def loss(x, y):
        return gtp(x, y, 4).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(a, b), (a, b))
    expected = torch.autograd.grad(reference.gaunt_tensor_product(a, b, 4).square().sum(), (a, b))
    for g, e in zip(grads, expected):
        assert_close(g, e)


def test_cpu_route_choice_follows_the_measured_crossover():
    assert gaunt_ops.cpu_route(2, 2, 2) == "sparse"
    assert gaunt_ops.cpu_route(3, 3, 6) == "sparse"
    assert gaunt_ops.cpu_route(8, 8, 8) == "grid"
    assert gaunt_ops.cpu_route(10, 10, 10) == "grid"
    assert gaunt_ops.cpu_route(8, 1, 8) == "sparse"  # conv-style with a low-degree edge SH: few nonzeros


@pytest.mark.parametrize("level,grid_from", [("avx512", 5), ("avx2", 7)])
def test_cpu_route_crossover_per_simd_level(monkeypatch, level, grid_from):
    # The measured crossovers (cpu_route's docstring): the grid from L = 5 with AVX-512, from 7 with AVX2.
    monkeypatch.setattr(gaunt_ops, "grid_cost_factor", lambda: gaunt_ops._GRID_COST_FACTOR[level])
    for lmax in range(2, 11):
        assert gaunt_ops.cpu_route(lmax, lmax, lmax) == ("grid" if lmax >= grid_from else "sparse"), lmax


def _allocated_bytes(fn) -> int:
    """Bytes allocated on the CPU while fn runs (each op's own allocations; frees not subtracted)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0)


@pytest.mark.parametrize("l1,l2", [(2, 3), (6, 6)])
def test_broadcast_operand_is_read_in_place(l1, l2, cpu_route):
    """Convolution use: x1 [E, C, n1] times an edge SH x2 [E, 1, n2] shared by the C channels. The kernel reads
    x2 through stride-0 rows: the only allocation is the output (an expanded x2 would be C times larger).
    Gradients reduce over the broadcast dim."""
    e, c, lo = 16, 64, 3
    a = rand(e, c, size(l1), seed=1).float()
    b = rand(e, 1, size(l2), seed=2).float()
    gtp(a, b, lo, backend="cpu")  # tables built and cached outside the measurement
    out_bytes = e * c * size(lo) * 4
    expanded_b_bytes = e * c * size(l2) * 4
    allocated = _allocated_bytes(lambda: gtp(a, b, lo, backend="cpu"))
    assert out_bytes <= allocated < out_bytes + expanded_b_bytes // 2, (allocated, out_bytes, expanded_b_bytes)
    # non-contiguous x1 (a transposed view) is read in place too
    at = a.transpose(0, 1).contiguous().transpose(0, 1)
    assert _allocated_bytes(lambda: gtp(at, b, lo, backend="cpu")) < out_bytes + expanded_b_bytes // 2
    assert_close(gtp(at, b, lo, backend="cpu"), reference.gaunt_tensor_product(a.double(), b.double(), lo).float())
    a64, b64 = a.double().requires_grad_(), b.double().requires_grad_()
    g = rand(e, c, size(lo), seed=3)
    ga, gb = torch.autograd.grad(gtp(a64, b64, lo, backend="cpu"), (a64, b64), g)
    ra, rb = torch.autograd.grad(reference.gaunt_tensor_product(a64, b64, lo), (a64, b64), g)
    assert gb.shape == b.shape
    assert_close(ga, ra)
    assert_close(gb, rb)
