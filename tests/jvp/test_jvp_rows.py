"""Row duals (layer norm, RMS norm, softmax) and attention_dual vs torch.func.jvp of plain PyTorch."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st
from torch.nn.attention import SDPBackend, sdpa_kernel

from symkernels import _backend
from symkernels._testing import assert_close, assert_within_torch_error, random_noncontiguous
from symkernels.jvp import attention_dual, layer_norm_dual, rms_norm_dual, softmax_dual
from tests.conftest import require_backend, to_backend

ROW_BACKENDS = ["reference", "cpu", "triton"]


def _data(shape, T, dtype, seed=0, noncontig=False):
    g = torch.Generator().manual_seed(seed)
    r = (lambda s: random_noncontiguous(s, dtype=dtype, generator=g)) if noncontig else \
        (lambda s: torch.randn(s, dtype=dtype, generator=g))
    lead = () if T is None else (T,)
    N = shape[-1]
    return r(shape), r((*lead, *shape)), r((N,)), r((*lead, N)), r((N,)), r((*lead, N))


def _loop_truth(f, primals, tangents, T):
    pick = lambda t, p, i: t[i] if t.dim() > p.dim() else t  # noqa: E731
    outs = [torch.func.jvp(f, primals, tuple(pick(t, p, i) for t, p in zip(tangents, primals))) for i in range(T or 1)]
    return outs[0][0], (torch.stack([o[1] for o in outs]) if T else outs[0][1])


CASES = {
    "layer_norm": (lambda x, xt, w, wt, b, bt, be: layer_norm_dual(x, xt, w, wt, b, bt, backend=be),
                   lambda N: (lambda x, w, b: F.layer_norm(x, (N,), w, b, 1e-5)), 3),
    "rms_norm": (lambda x, xt, w, wt, b, bt, be: rms_norm_dual(x, xt, w, wt, backend=be),
                 lambda N: (lambda x, w: F.rms_norm(x, (N,), w, 1e-6)), 2),
    "softmax": (lambda x, xt, w, wt, b, bt, be: softmax_dual(x, xt, backend=be),
                lambda N: (lambda x: torch.softmax(x, -1)), 1),
}


@pytest.mark.parametrize("kind", CASES)
@pytest.mark.parametrize("backend", ROW_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [None, 3])
def test_row_dual_matches_func_jvp(kind, backend, dtype, T):
    require_backend(backend)
    ours, plain, n_args = CASES[kind]
    x, xt, w, wt, b, bt = to_backend(backend, _data((2, 3, 19), T, dtype, noncontig=(T is None)))
    y, y_t = ours(x, xt, w, wt, b, bt, backend)
    primals, tangents = (x, w, b)[:n_args], (xt, wt, bt)[:n_args]
    ty, ty_t = _loop_truth(plain(19), tuple(p.double() for p in primals), tuple(t.double() for t in tangents), T)
    assert_close(y, ty.to(dtype), msg="y")
    assert_close(y_t, ty_t.to(dtype), msg="y_t")


@given(R=st.integers(0, 6), N=st.integers(1, 40), T=st.sampled_from([None, 2]), kind=st.sampled_from(list(CASES)),
       seed=st.integers(0, 999))
def test_row_dual_random_shapes_triton(R, N, T, kind, seed):
    require_backend("triton")
    ours, _, _ = CASES[kind]
    x, xt, w, wt, b, bt = to_backend("triton", _data((R, N), T, torch.float32, seed=seed))
    got = ours(x, xt, w, wt, b, bt, "triton")
    want = ours(x, xt, w, wt, b, bt, "reference")
    for a, e in zip(got, want):
        assert_close(a, e)


def test_row_dual_backward_and_double_backward():
    x, xt, w, wt, b, bt = _data((3, 5), None, torch.float64)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    f = lambda x, w, b: layer_norm_dual(x, xt, w, wt, b, bt)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (x, w, b), fast_mode=True)


def test_row_dual_bad_inputs():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"x_t must have the shape of x \[3, 4\]"):
        softmax_dual(x, torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"weight must have shape \[4\]"):
        layer_norm_dual(x, None, torch.randn(5))
    with pytest.raises(TypeError, match="weight_t must have the dtype of x"):
        rms_norm_dual(x, None, torch.randn(4), torch.randn(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="tangents disagree on the number of tangents T: x_t has T=2, weight_t has T=3"):
        rms_norm_dual(x, torch.randn(2, 3, 4), torch.randn(4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="weight_t was given but weight is None"):
        rms_norm_dual(x, None, None, torch.randn(4))
    with pytest.raises(NotImplementedError, match="backend='cuda' is not implemented"):
        softmax_dual(x, None, backend="cuda")
    with pytest.raises(ValueError, match="eps must be a non-negative number"):
        layer_norm_dual(x, None, eps=-1.0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T", [None, 2])
def test_attention_dual_matches_math_sdpa_jvp(causal, T):
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)  # noqa: E731
    q, k, v = r(2, 3, 5, 4), r(2, 3, 7, 4), r(2, 3, 7, 6)
    lead = () if T is None else (T,)
    qt, kt, vt = r(*lead, *q.shape), r(*lead, *k.shape), r(*lead, *v.shape)
    o, o_t = attention_dual(q, k, v, qt, kt, vt, causal=causal)
    plain = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
    with sdpa_kernel(SDPBackend.MATH):  # the default CPU SDPA has no forward-AD formula
        ty, ty_t = _loop_truth(plain, (q, k, v), (qt, kt, vt), T)
    assert_close(o, ty)
    assert_close(o_t, ty_t)


def test_attention_dual_bad_inputs():
    q = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="expected q"):
        attention_dual(q, torch.randn(2, 5, 3), torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="tangents disagree"):
        attention_dual(q, q, q, torch.randn(2, *q.shape), torch.randn(3, *q.shape))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shapes", [((2, 3), 5, 21, 4, 6), ((1,), 19, 7, 3, 5), ((0,), 4, 4, 4, 4), ((2,), 3, 0, 4, 4)],
                         ids=["Lq<Lk", "Lq>Lk", "empty-batch", "no-keys"])
def test_attention_dual_triton_matches_reference(causal, dtype, shapes):
    require_backend("triton")
    lead, Lq, Lk, d, dv = shapes
    g = torch.Generator().manual_seed(2)
    r = lambda *s: torch.randn(*s, dtype=dtype, generator=g)  # noqa: E731
    q, k, v = r(*lead, Lq, d), r(*lead, Lk, d), r(*lead, Lk, dv)
    qt, kt, vt = r(2, *q.shape), r(2, *k.shape), r(*v.shape)  # T = 2, v's tangent shared
    q, k, v, qt, kt, vt = to_backend("triton", (q, k, v, qt, kt, vt))
    got = attention_dual(q, k, v, qt, kt, vt, causal=causal, backend="triton")
    want = attention_dual(q, k, v, qt, kt, vt, causal=causal, backend="reference")
    for a, e in zip(got, want):
        assert_close(a, e)
    # Partial tangents (only k): the other statistics must vanish correctly.
    got = attention_dual(q, k, v, None, kt[0], None, causal=causal, backend="triton")
    want = attention_dual(q, k, v, None, kt[0], None, causal=causal, backend="reference")
    assert_close(got[1], want[1])


# ----------------------------------------------------------------------------- the C++ row kernel and the ops
def _need_op(name):
    if not _backend.has_dispatcher_op(name):
        pytest.skip("symkernels._C not built")


# (op, its canonical arguments from (x, x_t, w, w_t, b, b_t, T), the plain function of (x, w, b)).
ROW_OPS = {
    "layer_norm_dual": (lambda x, xt, w, wt, b, bt, T: (x, xt, w, wt, b, bt, 1e-5, T),
                        lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, 1e-5)),
    "rms_norm_dual": (lambda x, xt, w, wt, b, bt, T: (x, xt, w, wt, 1e-6, T),
                      lambda x, w, b: F.rms_norm(x, (x.shape[-1],), w, 1e-6)),
    "softmax_dual": (lambda x, xt, w, wt, b, bt, T: (x, xt, T), lambda x, w, b: torch.softmax(x, -1)),
}


@given(R=st.integers(0, 9), N=st.integers(1, 70), T=st.sampled_from([None, 1, 3]), kind=st.sampled_from(list(CASES)),
       dtype=st.sampled_from([torch.float32, torch.float64]), noncontig=st.booleans(), seed=st.integers(0, 999))
def test_row_dual_cpu_random_shapes(R, N, T, kind, dtype, noncontig, seed):
    """Odd row lengths (SIMD tails), T broadcast and not, non-contiguous inputs: C++ == the reference."""
    require_backend("cpu")
    ours, _, _ = CASES[kind]
    x, xt, w, wt, b, bt = _data((R, N), T, dtype, seed=seed, noncontig=noncontig)
    got = ours(x, xt, w, wt, b, bt, "cpu")
    want = ours(x, xt, w, wt, b, bt, "reference")
    for a, e in zip(got, want):
        assert_close(a, e)


@pytest.mark.parametrize("kind", CASES)
def test_row_dual_cpu_t_tangents_equal_a_loop_and_broadcast(kind):
    require_backend("cpu")
    ours, _, n_args = CASES[kind]
    x, xt, w, wt, b, bt = _data((4, 33), 5, torch.float64, seed=3)
    y, y_t = ours(x, xt, w, wt, b, bt, "cpu")
    for i in range(5):
        yi, yi_t = ours(x, xt[i], w, wt[i], b, bt[i], "cpu")
        assert_close(yi, y)
        assert_close(yi_t, y_t[i])
    # A tangent without the T dim is shared by all T (here x_t, while the parameter tangents vary).
    if n_args > 1:
        _, y_t = ours(x, xt[0], w, wt, b, bt, "cpu")
        for i in range(5):
            assert_close(y_t[i], ours(x, xt[0], w, wt[i], b, bt[i], "cpu")[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", CASES)
def test_row_dual_cpu_low_precision_within_torch_error(kind, dtype):
    """fp16/bf16 accumulate in fp32: at most twice PyTorch's own error in that dtype."""
    require_backend("cpu")
    ours, _, _ = CASES[kind]
    d = _data((6, 300), 2, torch.float64, seed=5)
    y, y_t = ours(*(t.to(dtype) for t in d), "cpu")
    ty, ty_t = ours(*d, "reference")
    ly, ly_t = ours(*(t.to(dtype) for t in d), "reference")  # PyTorch itself in low precision
    assert_within_torch_error(y, ty, ly, msg="y")
    assert_within_torch_error(y_t, ty_t, ly_t, msg="y_t")


def test_row_dual_cpu_empty_and_nan():
    require_backend("cpu")
    x = torch.randn(0, 5)
    y, y_t = layer_norm_dual(x, torch.randn(2, 0, 5), torch.randn(5), None, torch.randn(5), backend="cpu")
    assert y.shape == (0, 5) and y_t.shape == (2, 0, 5)
    x = torch.randn(3, 8)
    x[1, 4] = float("nan")
    for fn in (softmax_dual, rms_norm_dual, layer_norm_dual):
        y, y_t = fn(x, torch.randn(3, 8), backend="cpu")
        assert y[1].isnan().all() and y_t[1].isnan().all()
        assert y[[0, 2]].isfinite().all() and y_t[[0, 2]].isfinite().all()


@pytest.mark.parametrize("name", ROW_OPS)
def test_row_op_opcheck(name):
    _need_op(name)
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)  # noqa: E731
    args_of, _ = ROW_OPS[name]
    op = getattr(torch.ops.symkernels, name)
    for args in (args_of(r(4, 6).requires_grad_(), r(2, 4, 6), r(6).requires_grad_(), r(1, 6), r(6).requires_grad_(),
                         r(2, 6), 2),
                 args_of(r(3, 5), None, r(5), None, None, None, 1),
                 args_of(r(0, 6), r(1, 0, 6), None, None, None, None, 1)):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("name", ROW_OPS)
def test_row_op_bare_tangent_under_func_jvp(name):
    """The bare torch.ops op gives the true tangent (not the silent zero of torch.library.register_autograd)
    under torch.func.jvp and dual tensors, and gradcheck's forward-AD check passes."""
    _need_op(name)
    args_of, plain = ROW_OPS[name]
    op = getattr(torch.ops.symkernels, name)
    x, xt, w, wt, b, bt = _data((3, 7), None, torch.float64, seed=2)
    has_w, has_b = name != "softmax_dual", name == "layer_norm_dual"

    def bare(x, w, b):
        return op(*args_of(x, None, w if has_w else None, None, b if has_b else None, None, 0))[0]

    y, y_dot = torch.func.jvp(bare, (x, w, b), (xt, wt, bt))
    want = torch.func.jvp(lambda x, w, b: plain(x, w if has_w else None, b if has_b else None), (x, w, b),
                          (xt, wt, bt))[1]
    assert want.abs().max() > 0.05
    assert_close(y_dot, want)
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        got = fwAD.unpack_dual(bare(fwAD.make_dual(x, xt), w, b)).tangent
    assert_close(got, torch.func.jvp(lambda x: plain(x, w if has_w else None, b if has_b else None), (x,), (xt,))[1])
    prim = [t.clone().requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(bare, tuple(prim), check_forward_ad=True, fast_mode=True)


def test_row_op_compiles_fullgraph():
    _need_op("layer_norm_dual")
    x, xt, w, wt, b, bt = _data((4, 9), 2, torch.float32)

    def f(x, xt, w, wt, b, bt):
        y, y_t = torch.ops.symkernels.layer_norm_dual(x, xt, w, wt, b, bt, 1e-5, 2)
        return y * 2, y_t

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for a, e in zip(compiled(x, xt, w, wt, b, bt), f(x, xt, w, wt, b, bt)):
        assert_close(a, e)


def test_row_op_bad_inputs():
    _need_op("layer_norm_dual")
    x, w = torch.randn(3, 4), torch.randn(4)
    ln, rms, sm = (torch.ops.symkernels.layer_norm_dual, torch.ops.symkernels.rms_norm_dual,
                   torch.ops.symkernels.softmax_dual)
    with pytest.raises(ValueError, match=r"softmax_dual: x_t.shape\[0\] must be 1 or num_tangents=2, got 3"):
        sm(x, torch.randn(3, 3, 4), 2)
    with pytest.raises(ValueError, match=r"rms_norm_dual: x_t must have shape \[T, \[3, 4\]\]"):
        rms(x, torch.randn(2, 3, 5), w, None, 1e-6, 2)
    with pytest.raises(TypeError, match=r"layer_norm_dual: weight must have the dtype of x"):
        ln(x, None, w.double(), None, None, None, 1e-5, 1)
    with pytest.raises(ValueError, match=r"layer_norm_dual: bias must have shape \[4\]"):
        ln(x, None, w, None, torch.randn(5), None, 1e-5, 1)
    with pytest.raises(ValueError, match="rms_norm_dual: weight_t given without weight"):
        rms(x, None, None, torch.randn(1, 4), 1e-6, 1)
    with pytest.raises(ValueError, match="layer_norm_dual: eps must be >= 0"):
        ln(x, None, None, None, None, None, float("nan"), 1)
    with pytest.raises(ValueError, match=r"softmax_dual: x must have shape \[R, N\]"):
        sm(torch.randn(4), None, 1)
    with pytest.raises(TypeError, match="softmax_dual: x must be float16, bfloat16, float32 or float64"):
        sm(x.long(), None, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_dual_cpu_exp_range(dtype):
    """The C++ softmax's own vectorised exp: wide logit ranges (underflow to 0), -inf masks, all -inf rows
    (NaN, as torch.softmax), every tail length, against torch.softmax and its func.jvp."""
    require_backend("cpu")
    g = torch.Generator().manual_seed(4)
    for N in (1, 7, 16, 17, 40):
        x = torch.randn(5, N, dtype=dtype, generator=g) * torch.tensor([1.0, 30.0, 300.0, 1.0, 1.0],
                                                                       dtype=dtype)[:, None]
        x[3, ::2] = float("-inf")
        x[4] = float("-inf")
        xt = torch.randn(5, N, dtype=dtype, generator=g)
        y, y_t = softmax_dual(x, xt, backend="cpu")
        ty, ty_t = torch.func.jvp(lambda v: torch.softmax(v, -1), (x.double(),), (xt.double(),))
        assert y[4].isnan().all() and y_t[4].isnan().all()
        assert_close(y[:4], ty[:4].to(dtype))
        assert_close(y_t[:4], ty_t[:4].to(dtype))
        if N > 1:  # (N = 1: row 3 is all -inf)
            assert (y[3, ::2] == 0).all()


@pytest.mark.parametrize("kind", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_dual_triton_streamed_rows(kind, dtype, monkeypatch):
    """Rows longer than the register file holds go through the chunked kernel: forced here at N = 77 (three
    chunks of 32, the last partial) by shrinking the resident-row limit."""
    require_backend("triton")
    from symkernels.jvp import triton as triton_impl

    monkeypatch.setattr(triton_impl, "_RESIDENT_ROW_BYTES", 32 * dtype.itemsize)
    calls = []
    wrap_triton = triton_impl.wrap_triton

    def recording_wrap_triton(kernel):  # every launch goes through wrap_triton: note which kernel
        calls.append(kernel)
        return wrap_triton(kernel)

    monkeypatch.setattr(triton_impl, "wrap_triton", recording_wrap_triton)
    ours, _, _ = CASES[kind]
    x, xt, w, wt, b, bt = to_backend("triton", _data((3, 77), 2, dtype, seed=5))
    got = ours(x, xt, w, wt, b, bt, "triton")
    want = ours(x, xt, w, wt, b, bt, "reference")
    assert triton_impl._row_dual_streamed_kernel in calls, "the streamed kernel did not run"
    for a, e in zip(got, want):
        assert_close(a, e)

