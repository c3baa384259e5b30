"""attention_dual as a dispatcher op: backward through the primal (gradcheck, double backward), forward mode
through the bare op (no silent zeros), opcheck, torch.compile, and the tangent vs torch.func.jvp of SDPA's
math path, for the reference and (interpreted) Triton kernels."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st
from torch.func import jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from symkernels._testing import assert_close
from symkernels.jvp import attention_dual
from tests.conftest import require_backend, to_backend

D = torch.float64
BACKENDS = ["reference", "triton"]


def _qkv(shape_q, Lk, dv, dtype=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    *lead, Lq, d = shape_q
    return (torch.randn(*lead, Lq, d, generator=g, dtype=dtype), torch.randn(*lead, Lk, d, generator=g, dtype=dtype),
            torch.randn(*lead, Lk, dv, generator=g, dtype=dtype))


def _sdpa(causal):
    def f(q, k, v):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return f


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_backward_through_primal_matches_sdpa(backend, causal):
    require_backend(backend)
    q, k, v, g = to_backend(backend, (*_qkv((2, 3, 5, 4), 7 if not causal else 5, 6), torch.randn(2, 3, 5, 6, dtype=D)))
    ours = torch.autograd.grad(attention_dual(*(t.requires_grad_() for t in (q, k, v)), causal=causal,
                                              backend=backend)[0], (q, k, v), g)
    want = torch.autograd.grad(_sdpa(causal)(q, k, v), (q, k, v), g)
    for a, b in zip(ours, want):
        assert_close(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_forward_and_backward(backend, causal):
    require_backend(backend)
    q, k, v = (t.requires_grad_() for t in to_backend(backend, _qkv((2, 3, 3), 3, 2)))

    def f(q, k, v):
        return attention_dual(q, k, v, causal=causal, backend=backend)[0]

    # The interpreted Triton kernel is slow: fast_mode there (a random projection of the Jacobian), and double
    # backward only once (it is the reference's vjp for every backend).
    interpreted = backend == "triton"
    assert torch.autograd.gradcheck(f, (q, k, v), check_forward_ad=True, fast_mode=interpreted)
    if not interpreted:
        assert torch.autograd.gradgradcheck(f, (q, k, v))


@pytest.mark.parametrize("causal", [False, True])
def test_bare_op_forward_mode_is_not_a_silent_zero(causal):
    q, k, v = _qkv((2, 4, 3), 4, 3)
    qd, kd, vd = _qkv((2, 4, 3), 4, 3, seed=1)

    def bare(q, k, v):
        return torch.ops.symkernels.attention_dual(q, k, v, None, None, None, 1, causal, 3 ** -0.5, "reference")[0]

    _, got = jvp(bare, (q, k, v), (qd, kd, vd))
    _, want = jvp(_sdpa(causal), (q, k, v), (qd, kd, vd))
    assert got.abs().max() > 1e-3
    assert_close(got, want)
    # ... and with the dual-tensor API.
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        out = bare(fwAD.make_dual(q, qd), k, fwAD.make_dual(v, vd))
        t = fwAD.unpack_dual(out).tangent
    assert_close(t, jvp(_sdpa(causal), (q, k, v), (qd, torch.zeros_like(k), vd))[1])


def test_tangent_output_is_not_differentiable():
    q, k, v = (t.requires_grad_() for t in _qkv((1, 3, 2), 3, 2))
    o, o_t = attention_dual(q, k, v, q.detach(), None, None)
    assert o.requires_grad and not o_t.requires_grad


def test_opcheck(causal=True):  # causal only changes the kernel's arithmetic, not the registrations checked
    q, k, v = _qkv((2, 4, 3), 5, 2, dtype=torch.float32)
    qt = torch.randn(3, 2, 4, 3)
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), qt, None, torch.randn(1, 2, 5, 2), 3, causal,
            0.5, "reference")
    torch.library.opcheck(torch.ops.symkernels.attention_dual.default, args)


def test_torch_compile_fullgraph():
    q, k, v = _qkv((2, 4, 3), 4, 3, dtype=torch.float32)
    qt = torch.randn(2, 2, 4, 3)
    f = lambda q, k, v, qt: attention_dual(q, k, v, qt, None, None, causal=True)  # noqa: E731
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v, qt)
    want = f(q, k, v, qt)
    for a, b in zip(got, want):
        assert_close(a, b)


@given(B=st.integers(0, 2), Lq=st.integers(1, 9), Lk=st.integers(1, 9), d=st.integers(1, 5), dv=st.integers(1, 5),
       T=st.integers(1, 3), causal=st.booleans())
def test_random_shapes_vs_sdpa_jvp_and_noncontiguous(B, Lq, Lk, d, dv, T, causal):
    q, k, v = _qkv((B, Lq, d), Lk, dv)
    # Non-contiguous inputs: transposed storage.
    q, k, v = (t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in (q, k, v))
    qt = torch.randn(T, B, Lq, d, dtype=D).transpose(-1, -2).contiguous().transpose(-1, -2)
    kt, vt = torch.randn(T, B, Lk, d, dtype=D), torch.randn(T, B, Lk, dv, dtype=D)
    o, o_t = attention_dual(q, k, v, qt, kt, vt, causal=causal)
    for t in range(T):
        y, y_t = jvp(_sdpa(causal), (q, k, v), (qt[t], kt[t], vt[t]))
        assert_close(o, y)
        assert_close(o_t[t], y_t)
    if B:
        g = torch.randn_like(o)
        qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
        ours = torch.autograd.grad(attention_dual(qq, kk, vv, causal=causal)[0], (qq, kk, vv), g)
        want = torch.autograd.grad(_sdpa(causal)(qq, kk, vv), (qq, kk, vv), g)
        for a, b in zip(ours, want):
            assert_close(a, b)


def test_bad_inputs():
    q = torch.randn(2, 4, 3)
    with pytest.raises(TypeError, match="attention_dual: k must be a torch.Tensor"):
        attention_dual(q, None, q)
    with pytest.raises(TypeError, match="v must have q's dtype"):
        attention_dual(q, q, q.double())
    with pytest.raises(ValueError, match="expected q"):
        attention_dual(q, torch.randn(2, 5, 3), torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="disagree on the number of tangents"):
        attention_dual(q, q, q, torch.randn(2, *q.shape), torch.randn(3, *q.shape))
    with pytest.raises(ValueError, match="q_t must have shape"):
        attention_dual(q, q, q, torch.randn(4, 3))
