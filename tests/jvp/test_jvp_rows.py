"""Row duals (layer norm, RMS norm, softmax) and attention_dual vs torch.func.jvp of plain PyTorch."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st
from torch.nn.attention import SDPBackend, sdpa_kernel

from symkernels import _backend
from symkernels._testing import assert_close, random_noncontiguous
from symkernels.jvp import attention_dual, layer_norm_dual, rms_norm_dual, softmax_dual

ROW_BACKENDS = ["reference", "triton"]


def _need(backend):
    status = _backend.backend_status(backend)
    if not status:
        pytest.skip(f"backend {backend!r} unavailable: {status.reason}")


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
    _need(backend)
    ours, plain, n_args = CASES[kind]
    x, xt, w, wt, b, bt = _data((2, 3, 19), T, dtype, noncontig=(T is None))
    y, y_t = ours(x, xt, w, wt, b, bt, backend)
    primals, tangents = (x, w, b)[:n_args], (xt, wt, bt)[:n_args]
    ty, ty_t = _loop_truth(plain(19), tuple(p.double() for p in primals), tuple(t.double() for t in tangents), T)
    assert_close(y, ty.to(dtype), msg="y")
    assert_close(y_t, ty_t.to(dtype), msg="y_t")


@given(R=st.integers(0, 6), N=st.integers(1, 40), T=st.sampled_from([None, 2]), kind=st.sampled_from(list(CASES)),
       seed=st.integers(0, 999))
def test_row_dual_random_shapes_triton(R, N, T, kind, seed):
    _need("triton")
    ours, _, _ = CASES[kind]
    x, xt, w, wt, b, bt = _data((R, N), T, torch.float32, seed=seed)
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
    with pytest.raises(NotImplementedError, match="backend='cpu' is not implemented"):
        softmax_dual(x, None, backend="cpu")


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
    _need("triton")
    lead, Lq, Lk, d, dv = shapes
    g = torch.Generator().manual_seed(2)
    r = lambda *s: torch.randn(*s, dtype=dtype, generator=g)  # noqa: E731
    q, k, v = r(*lead, Lq, d), r(*lead, Lk, d), r(*lead, Lk, dv)
    qt, kt, vt = r(2, *q.shape), r(2, *k.shape), r(*v.shape)  # T = 2, v's tangent shared
    got = attention_dual(q, k, v, qt, kt, vt, causal=causal, backend="triton")
    want = attention_dual(q, k, v, qt, kt, vt, causal=causal, backend="reference")
    for a, e in zip(got, want):
        assert_close(a, e)
    # Partial tangents (only k): the other statistics must vanish correctly.
    got = attention_dual(q, k, v, None, kt[0], None, causal=causal, backend="triton")
    want = attention_dual(q, k, v, None, kt[0], None, causal=causal, backend="reference")
    assert_close(got[1], want[1])
