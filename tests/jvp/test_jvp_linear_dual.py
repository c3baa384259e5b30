"""linear_dual: every backend vs the reference, the reference vs torch.func.jvp, autograd, opcheck, errors."""
import math

import pytest
import torch
from hypothesis import given, strategies as st

from symkernels import _backend
from symkernels._testing import assert_close, assert_within_torch_error, random_noncontiguous
from symkernels.jvp import linear_dual, reference
from symkernels.jvp.ops import IMPLEMENTED
from tests.conftest import require_implemented, to_backend

ACTS = reference.ACTIVATIONS


# linear_dual has no "cuda" backend by name (CUDA tensors run Triton; see symkernels/jvp/ops.py).
@pytest.fixture
def kernel_backend(kernel_backend):
    return require_implemented(kernel_backend, IMPLEMENTED)


@pytest.fixture
def backend(backend):
    return require_implemented(backend, IMPLEMENTED)


def plain(act):
    """The plain-PyTorch function whose torch.func.jvp is the independent truth."""
    return lambda x, w, b: reference.activation_fn(act, torch.nn.functional.linear(x, w, b))


def truth(act, x, x_t, w, w_t, b, b_t):
    """(y, [y_t per tangent]) by torch.func.jvp, looping over a leading T dim of the tangents (if any)."""
    T = next((t.shape[0] for t, p in ((x_t, x), (w_t, w), (b_t, b)) if t is not None and t.dim() > p.dim()), None)
    def pick(t, p, i):
        if t is None:
            return torch.zeros_like(p)
        return t[i] if t.dim() > p.dim() else t
    if b is None:
        outs = [torch.func.jvp(lambda x, w: plain(act)(x, w, None), (x, w), (pick(x_t, x, i), pick(w_t, w, i)))
                for i in range(T or 1)]
    else:
        outs = [torch.func.jvp(plain(act), (x, w, b), (pick(x_t, x, i), pick(w_t, w, i), pick(b_t, b, i)))
                for i in range(T or 1)]
    y = outs[0][0]
    return y, (torch.stack([o[1] for o in outs]) if T is not None else outs[0][1])


def make(M_shape, K, N, dtype, T=None, seed=0, noncontig=False):
    g = torch.Generator().manual_seed(seed)
    rnd = (lambda s: random_noncontiguous(s, dtype=dtype, generator=g)) if noncontig else \
        (lambda s: torch.randn(s, dtype=dtype, generator=g))
    lead = () if T is None else (T,)
    x = rnd((*M_shape, K))
    return dict(x=x, x_t=rnd((*lead, *M_shape, K)), w=rnd((N, K)) / math.sqrt(max(K, 1)),
                w_t=rnd((*lead, N, K)), b=rnd((N,)), b_t=rnd((*lead, N)))


def call(d, act, backend, **kw):
    return linear_dual(d["x"], d["x_t"], d["w"], d["w_t"], d["b"], d["b_t"], act, backend=backend, **kw)


# ----------------------------------------------------------------------------- the reference vs truth
@pytest.mark.parametrize("act", ACTS)
def test_activation_derivative_matches_autograd(act):
    z = torch.linspace(-6, 6, 241, dtype=torch.float64).requires_grad_()
    (g,) = torch.autograd.grad(reference.activation_fn(act, z).sum(), z)
    assert_close(reference.activation_derivative(act, z.detach()), g, msg=act)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("T", [None, 3])
def test_reference_matches_func_jvp(act, T):
    d = make((2, 3), 5, 4, torch.float64, T=T)
    y, y_t = call(d, act, "reference")
    ty, ty_t = truth(act, d["x"], d["x_t"], d["w"], d["w_t"], d["b"], d["b_t"])
    assert_close(y, ty, msg="y")
    assert_close(y_t, ty_t, msg="y_t")


def test_reference_mixed_broadcast_tangents():
    # x_t carries T, weight_t is shared by all tangents, bias_t absent.
    d = make((4,), 6, 3, torch.float64, T=2)
    d["w_t"], d["b_t"] = d["w_t"][0], None
    y, y_t = call(d, "silu", "reference")
    assert y_t.shape == (2, 4, 3)
    ty, ty_t = truth("silu", d["x"], d["x_t"], d["w"], d["w_t"], d["b"], None)
    assert_close(y_t, ty_t)


# ----------------------------------------------------------------------------- kernels vs the reference
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_reference(kernel_backend, act, dtype):
    d = to_backend(kernel_backend, make((3, 7), 19, 18, dtype, T=3))
    d["w_t"] = d["w_t"][1]  # one shared weight tangent, T-carrying x_t and b_t
    y, y_t = call(d, act, kernel_backend)
    ry, ry_t = call(d, act, "reference")
    assert_close(y, ry, msg=f"{kernel_backend} y")
    assert_close(y_t, ry_t, msg=f"{kernel_backend} y_t")


@pytest.mark.parametrize("case", ["x_only", "w_only", "b_only", "none"])
def test_kernel_partial_tangents(kernel_backend, case):
    d = to_backend(kernel_backend, make((5,), 17, 16, torch.float32))
    keep = {"x_only": "x_t", "w_only": "w_t", "b_only": "b_t", "none": None}[case]
    for k in ("x_t", "w_t", "b_t"):
        if k != keep:
            d[k] = None
    y, y_t = call(d, "gelu", kernel_backend)
    ry, ry_t = call(d, "gelu", "reference")
    assert_close(y, ry)
    assert_close(y_t, ry_t)
    if case == "none":
        assert torch.count_nonzero(y_t) == 0


def test_kernel_noncontiguous_and_no_bias(kernel_backend):
    d = to_backend(kernel_backend, make((2, 5), 18, 17, torch.float32, T=2, noncontig=True))
    d["b"] = d["b_t"] = None
    y, y_t = call(d, "tanh", kernel_backend)
    ty, ty_t = truth("tanh", d["x"].double(), d["x_t"].double(), d["w"].double(), d["w_t"].double(), None, None)
    assert_close(y, ty.float())
    assert_close(y_t, ty_t.float())


# (present tangents, shared ones): which of x_t / w_t / b_t are given, and which of them carry no T dim.
_ROUTES = {
    "x_and_w": (("x_t", "w_t"), ()),
    "x_only": (("x_t",), ()),  # the stacked x-tangent GEMM writes y_t (beta = 0)
    "w_only": (("w_t",), ()),
    "b_only": (("b_t",), ()),
    "all": (("x_t", "w_t", "b_t"), ()),
    "shared_x": (("x_t", "w_t", "b_t"), ("x_t",)),  # x_t W^T once, added to every tangent
    "shared_w": (("x_t", "w_t"), ("w_t",)),  # x W_t^T once, copied to every tangent, then x_t W^T added
    "shared_x_only": (("x_t",), ("x_t",)),
}


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])  # tanh: the chain rule reads y, the others z
@pytest.mark.parametrize("route", list(_ROUTES))
@pytest.mark.parametrize("M", [3, 20])  # (1 + T)·M = 12 rows: primal stacked with x_t in one GEMM; 80: two GEMMs
def test_cpu_tangent_accumulation_routes(route, act, M):
    # The C++ kernel accumulates tangent pre-activations in y_t itself (weight-tangent GEMMs write or add,
    # the stacked x-tangent GEMM adds with beta = 1 or writes with beta = 0 or, for few rows, comes first
    # with the primal, then b_t), so each combination of present and shared tangents is a different sequence
    # of writes. T = 3, odd sizes, non-contiguous inputs, float64, against torch.func.jvp per tangent.
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    present, shared = _ROUTES[route]
    d = make((M,), 7, 5, torch.float64, T=3, noncontig=True)
    for k in ("x_t", "w_t", "b_t"):
        if k not in present:
            d[k] = None
        elif k in shared:
            d[k] = d[k][1]
    y, y_t = call(d, act, "cpu", num_tangents=3)
    ty, ty_t = truth(act, d["x"], d["x_t"], d["w"], d["w_t"], d["b"], d["b_t"])
    if ty_t.dim() == 2:  # every tangent shared: the truth has no T dim
        ty_t = ty_t.expand(3, *ty_t.shape)
    assert y_t.shape == (3, M, 5)
    assert_close(y, ty, msg="y")
    assert_close(y_t, ty_t, msg="y_t")


@given(M=st.integers(0, 9), K=st.integers(0, 20), N=st.integers(1, 19), T=st.sampled_from([None, 1, 2]),
       act=st.sampled_from(ACTS), seed=st.integers(0, 2 ** 16))
def test_cpu_random_shapes(M, K, N, T, act, seed):
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    d = make((M,), K, N, torch.float64, T=T, seed=seed)
    y, y_t = call(d, act, "cpu")
    ty, ty_t = truth(act, d["x"], d["x_t"], d["w"], d["w_t"], d["b"], d["b_t"])
    assert_close(y, ty)
    assert_close(y_t, ty_t)


@given(M=st.integers(0, 5), K=st.integers(1, 9), N=st.integers(1, 9), T=st.sampled_from([None, 2]),
       act=st.sampled_from(ACTS), seed=st.integers(0, 2 ** 16))
def test_triton_random_shapes(M, K, N, T, act, seed):
    if not _backend.backend_status("triton"):
        pytest.skip("triton backend unavailable")
    d = to_backend("triton", make((M,), K, N, torch.float32, T=T, seed=seed))
    y, y_t = call(d, act, "triton")
    ry, ry_t = call(d, act, "reference")
    assert_close(y, ry)
    assert_close(y_t, ry_t)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_half_types_within_torch_error(dtype):
    # The tangent sums are accumulated by BLAS in the tensors' dtype (beta = 1), as PyTorch's own jvp does.
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    d = make((16,), 64, 32, torch.float64, T=2)
    low = {k: v.to(dtype) for k, v in d.items()}
    y, y_t = call(low, "gelu", "cpu")
    ty, ty_t = call(d, "gelu", "reference")
    ly, ly_t = call(low, "gelu", "reference")  # PyTorch itself in that dtype
    assert_within_torch_error(y, ty, ly, msg="y")
    assert_within_torch_error(y_t, ty_t, ly_t, msg="y_t")


def test_nan_propagates(backend):
    d = make((3,), 16, 16, torch.float32)
    d["x"][1, 2] = float("nan")
    y, y_t = call(to_backend(backend, d), "gelu", backend)
    assert y[1].isnan().all() and y_t[1].isnan().all()
    assert y[[0, 2]].isfinite().all() and y_t[[0, 2]].isfinite().all()


# ----------------------------------------------------------------------------- autograd through the primal
@pytest.mark.parametrize("act", ["gelu", "silu", "tanh"])
def test_gradcheck_primal(backend, act):
    if backend == "triton" and act != "gelu":
        pytest.skip("interpreter is slow; backward is backend-independent torch code, one activation suffices")
    d = to_backend(backend, make((3,), 4, 5, torch.float64))
    x, w, b = (d[k].clone().requires_grad_() for k in ("x", "w", "b"))
    f = lambda x, w, b: linear_dual(x, d["x_t"], w, d["w_t"], b, d["b_t"], act, backend=backend)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (x, w, b), fast_mode=True)


def test_backward_matches_plain_autograd(kernel_backend):
    d = to_backend(kernel_backend, make((2, 3), 17, 16, torch.float32))
    x, w, b = (d[k].clone().requires_grad_() for k in ("x", "w", "b"))
    y, y_t = linear_dual(x, d["x_t"], w, d["w_t"], b, d["b_t"], "gelu_tanh", backend=kernel_backend)
    assert not y_t.requires_grad  # the tangent output is non-differentiable by contract
    g = torch.randn_like(y)
    ours = torch.autograd.grad(y, (x, w, b), g)
    ref = torch.autograd.grad(plain("gelu_tanh")(x, w, b), (x, w, b), g)
    for a, r in zip(ours, ref):
        assert_close(a, r)


# ----------------------------------------------------------------------------- the dispatcher op
def test_opcheck():
    if not _backend.has_dispatcher_op("linear_dual"):
        pytest.skip("symkernels._C not built")
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)  # noqa: E731
    op = torch.ops.symkernels.linear_dual
    samples = [
        (r(4, 6).requires_grad_(), r(2, 4, 6), r(5, 6).requires_grad_(), r(1, 5, 6), r(5).requires_grad_(), r(2, 5),
         "gelu", 2),
        (r(3, 6), None, r(5, 6).requires_grad_(), None, None, None, "relu", 1, 7, "rademacher"),
        (r(0, 6), r(1, 0, 6), r(5, 6), None, r(5), None, "silu", 1),
    ]
    for args in samples:
        torch.library.opcheck(op, args)


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("backend_name", ["reference", "cpu"])
def test_bad_inputs(backend_name):
    if not _backend.backend_status(backend_name):
        pytest.skip("backend unavailable")
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    kw = dict(backend=backend_name)
    with pytest.raises(ValueError, match=r"x_t must have the shape of x \[3, 4\] or \[T, 3, 4\]"):
        linear_dual(x, torch.randn(3, 5), w, **kw)
    with pytest.raises(ValueError, match="tangents disagree on the number of tangents T: x_t has T=2, weight_t has T=3"):
        linear_dual(x, torch.randn(2, 3, 4), w, torch.randn(3, 5, 4), **kw)
    with pytest.raises(TypeError, match=r"weight_t must have the dtype of x \(torch.float32\), got torch.float64"):
        linear_dual(x, None, w, torch.randn(5, 4, dtype=torch.float64), **kw)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        linear_dual(x.long(), None, w, **kw)
    with pytest.raises(ValueError, match=r"weight must have shape \[N, K=4\]"):
        linear_dual(x, None, torch.randn(5, 3), **kw)
    with pytest.raises(ValueError, match="activation must be None or one of"):
        linear_dual(x, None, w, activation="softplus", **kw)
    with pytest.raises(ValueError, match="give weight_t or weight_seed, not both"):
        linear_dual(x, None, w, torch.randn(5, 4), weight_seed=1, **kw)
    with pytest.raises(ValueError, match=r"weight_seed must be an int in \[0, 2\*\*31\)"):
        linear_dual(x, None, w, weight_seed=-1, **kw)
    with pytest.raises(ValueError, match="bias_t was given but bias is None"):
        linear_dual(x, None, w, None, None, torch.randn(5), **kw)
    with pytest.raises(ValueError, match="num_tangents must be a positive int"):
        linear_dual(x, None, w, weight_seed=1, num_tangents=0, **kw)


def test_cpp_op_bad_inputs():
    if not _backend.has_dispatcher_op("linear_dual"):
        pytest.skip("symkernels._C not built")
    op = torch.ops.symkernels.linear_dual
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"x_t.shape\[0\] must be 1 or num_tangents=2, got 3"):
        op(x, torch.randn(3, 3, 4), w, None, None, None, "none", 2)
    with pytest.raises(TypeError, match="weight must have the dtype of x"):
        op(x, None, w.double(), None, None, None, "none", 1)
    with pytest.raises(ValueError, match="activation must be one of"):
        op(x, None, w, None, None, None, "swish", 1)
    with pytest.raises(ValueError, match="give weight_t or a seed, not both"):
        op(x, None, w, torch.randn(1, 5, 4), None, None, "none", 1, 3)
    with pytest.raises(ValueError, match="distribution must be 'gaussian' or 'rademacher'"):
        op(x, None, w, None, None, None, "none", 1, 3, "uniform")


def test_dispatcher_op_compiles_fullgraph():
    if not _backend.has_dispatcher_op("linear_dual"):
        pytest.skip("symkernels._C not built")
    d = make((4,), 8, 6, torch.float32, T=2)

    def f(x, x_t, w, w_t):
        y, y_t = torch.ops.symkernels.linear_dual(x, x_t, w, w_t, None, None, "silu", 2)
        return y * 2, y_t

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = (d["x"], d["x_t"], d["w"], d["w_t"])
    for a, e in zip(compiled(*args), f(*args)):
        assert_close(a, e)
    # A non-zero tangent under compile (the silent-zero failure mode of compiled forward AD).
    assert compiled(*args)[1].abs().max() > 1e-3


# ----------------------------------------------------------------------------- forward mode through the bare op
# torch.library.register_autograd gives a bare custom op a silent ZERO tangent under torch.func.jvp; these
# fail on zeros (the truth is checked to be far from 0) and on any wrong tangent.
def _bare(act):
    return lambda x, w, b: torch.ops.symkernels.linear_dual(x, None, w, None, b, None, act, 0)[0]


@pytest.mark.parametrize("act", ["none", "gelu", "silu"])
def test_bare_op_tangent_under_func_jvp(act):
    if not _backend.has_dispatcher_op("linear_dual"):
        pytest.skip("symkernels._C not built")
    d = make((5,), 7, 6, torch.float64)
    primals, tangents = (d["x"], d["w"], d["b"]), (d["x_t"], d["w_t"], d["b_t"])
    y, y_dot = torch.func.jvp(_bare(act), primals, tangents)
    ty, ty_dot = torch.func.jvp(plain(act), primals, tangents)
    assert ty_dot.abs().max() > 0.1
    assert_close(y, ty)
    assert_close(y_dot, ty_dot)


def test_bare_op_tangent_with_dual_tensors_and_vmap():
    if not _backend.has_dispatcher_op("linear_dual"):
        pytest.skip("symkernels._C not built")
    import torch.autograd.forward_ad as fwAD

    d = make((4,), 5, 3, torch.float64, T=3)
    x, w, b = d["x"], d["w"], d["b"]
    with fwAD.dual_level():  # tangent on x and b only; weight is a plain tensor
        y = _bare("tanh")(fwAD.make_dual(x, d["x_t"][0]), w, fwAD.make_dual(b, d["b_t"][0]))
        got = fwAD.unpack_dual(y).tangent
    want = torch.func.jvp(plain("tanh"), (x, w, b), (d["x_t"][0], torch.zeros_like(w), d["b_t"][0]))[1]
    assert got is not None and want.abs().max() > 0.1
    assert_close(got, want)
    # vmap over jvp of the bare op (tangents batched, primals shared).
    jvp_one = lambda xt, wt, bt: torch.func.jvp(_bare("gelu"), (x, w, b), (xt, wt, bt))[1]  # noqa: E731
    got = torch.func.vmap(jvp_one)(d["x_t"], d["w_t"], d["b_t"])
    assert_close(got, truth("gelu", x, d["x_t"], w, d["w_t"], b, d["b_t"])[1])


def test_bare_op_gradcheck_forward_ad():
    if not _backend.has_dispatcher_op("linear_dual"):
        pytest.skip("symkernels._C not built")
    d = make((3,), 4, 5, torch.float64)
    x, w, b = (d[k].clone().requires_grad_() for k in ("x", "w", "b"))
    assert torch.autograd.gradcheck(_bare("gelu_tanh"), (x, w, b), check_forward_ad=True, fast_mode=True)
    # Reverse over forward: the tangent the op's jvp returns is itself differentiable.
    f = lambda x, w, b: torch.func.jvp(_bare("silu"), (x, w, b), (d["x_t"], d["w_t"], d["b_t"]))[1]  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b), fast_mode=True)


def test_triton_offsets_past_2_31_elements():
    """A weight whose rows sit 1.5e8 elements apart (a strided view into a 4.5 GB fp16 buffer, of which
    only the 16 rows are ever touched): row 15 starts past 2^31 elements, where int32 offsets wrap."""
    if not _backend.backend_status("triton"):
        pytest.skip("triton backend unavailable")
    N = K = 16
    row_stride = 150_000_000
    assert (N - 1) * row_stride > 2 ** 31
    try:
        buffer = torch.empty((N - 1) * row_stride + K, dtype=torch.float16)
    except RuntimeError as e:  # address space refused (strict overcommit): not this test's subject
        pytest.skip(f"cannot reserve a 4.5 GB buffer: {e}")
    w = buffer.as_strided((N, K), (row_stride, 1))
    w.copy_(torch.randn(N, K, dtype=torch.float16))
    x, x_t = torch.randn(4, K, dtype=torch.float16), torch.randn(4, K, dtype=torch.float16)
    y, y_t = linear_dual(x, x_t, w, None, None, None, "tanh", backend="triton")
    ry, ry_t = linear_dual(x, x_t, w.contiguous(), None, None, None, "tanh", backend="reference")
    assert_close(y, ry)
    assert_close(y_t, ry_t)
