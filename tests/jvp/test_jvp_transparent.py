"""Forward-mode AD through symkernels.jvp.functional / modules: torch.func.jvp, vmap(jvp), forward_ad
duals, nesting and reverse-over-forward all equal plain PyTorch, the fused kernels are really used, and
no op ever returns a silent zero tangent."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap

from symkernels._testing import assert_close
from symkernels.jvp import MLP, Attention, LayerNorm, Linear, RMSNorm, functional as SF, reference
from symkernels.jvp.functional import _FUSED_CALLS
from tests.conftest import require_backend, to_backend

D = torch.float64


def _manual_layer_norm(x, w, b):
    # Independent truth for nested forward mode: F.layer_norm's own second-order forward AD is wrong in
    # torch 2.13 (checked against finite differences in test_nested_jvp_against_finite_differences).
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-5) * w + b


# (name, ours(backend), plain, primal shapes, fused counter, backends)
OPS = [
    *[(f"linear-{a}", (lambda a: lambda be: lambda x, w, b: SF.linear(x, w, b, a, backend=be))(a),
       (lambda a: lambda x, w, b: reference.activation_fn(a, F.linear(x, w, b)))(a), [(3, 2, 17), (16, 17), (16,)],
       "linear", ["reference", "cpu", "triton"]) for a in reference.ACTIVATIONS],
    ("layer_norm", lambda be: lambda x, w, b: SF.layer_norm(x, w, b, backend=be), _manual_layer_norm,
     [(3, 2, 17), (17,), (17,)], "row", ["reference", "triton"]),
    ("rms_norm", lambda be: lambda x, w: SF.rms_norm(x, w, backend=be), lambda x, w: F.rms_norm(x, (17,), w, 1e-6),
     [(3, 17), (17,)], "row", ["reference", "triton"]),
    ("softmax", lambda be: lambda x: SF.softmax(x, backend=be), lambda x: torch.softmax(x, -1), [(3, 17)], "row",
     ["reference", "triton"]),
    *[(f"attention{'-causal' * c}", (lambda c: lambda be: lambda q, k, v: SF.attention(q, k, v, causal=c, backend=be))(c),
       (lambda c: lambda q, k, v: reference.attention(q, k, v, c, 4 ** -0.5))(c), [(2, 5, 4), (2, 6, 4), (2, 6, 3)],
       "attention", ["reference", "triton"]) for c in (False, True)],
]
PARAMS = [pytest.param(op, be, id=f"{op[0]}-{be}") for op in OPS for be in op[5]
          if not (be == "triton" and op[0].startswith("linear-") and op[0] not in ("linear-gelu", "linear-relu"))]


def _args(shapes, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, dtype=D, generator=g) * scale for s in shapes)


@pytest.mark.parametrize("op,backend", PARAMS)
def test_func_jvp_fused_and_equal(op, backend):
    require_backend(backend)
    name, ours, plain, shapes, counter, _ = op
    primals, tangents = to_backend(backend, (_args(shapes, 0), _args(shapes, 1)))
    before = _FUSED_CALLS[counter]
    y, y_t = jvp(ours(backend), primals, tangents)
    assert _FUSED_CALLS[counter] == before + 1, "the fused dual kernel was not used"
    ty, ty_t = jvp(plain, primals, tangents)
    assert_close(y, ty)
    assert_close(y_t, ty_t)
    # No silent zeros: a generic random tangent gives a non-zero output tangent (and it equals the truth).
    assert y_t.abs().max() > 1e-3


@pytest.mark.parametrize("op,backend", PARAMS)
def test_vmap_jvp_and_duals(op, backend):
    require_backend(backend)
    name, ours, plain, shapes, counter, _ = op
    primals, batched = to_backend(backend, (_args(shapes, 0), _args([(3, *s) for s in shapes], 2)))
    f = lambda *ts: jvp(ours(backend), primals, ts)[1]  # noqa: E731
    g = lambda *ts: jvp(plain, primals, ts)[1]  # noqa: E731
    before = _FUSED_CALLS[counter]
    got = vmap(f)(*batched)
    assert _FUSED_CALLS[counter] == before + 1, "vmap(jvp) should be ONE fused call with T = 3"
    assert_close(got, vmap(g)(*batched))
    tangents = to_backend(backend, _args(shapes, 3))
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
        y_t = fwAD.unpack_dual(ours(backend)(*duals)).tangent
    assert y_t is not None and y_t.abs().max() > 1e-3
    assert_close(y_t, jvp(plain, primals, tangents)[1])


@pytest.mark.parametrize("op", OPS, ids=[o[0] for o in OPS])
def test_unfused_paths_nested_and_reverse_over_forward(op):
    name, ours, plain, shapes, counter, _ = op
    f = ours("reference")
    primals, t1, t2 = _args(shapes, 0), _args(shapes, 1), _args(shapes, 2)
    # jvp of jvp (runs as plain torch ops: autograd.Function jvp rules lose the outer tangent).
    got = jvp(lambda *p: jvp(f, p, t1)[1], primals, t2)[1]
    want = jvp(lambda *p: jvp(plain, p, t1)[1], primals, t2)[1]
    assert_close(got, want)
    assert got.abs().max() > 1e-6
    # grad of a jvp (the tangent must be differentiable: the fused path is not taken).
    gg = grad(lambda p0: jvp(f, (p0, *primals[1:]), t1)[1].square().sum())(primals[0])
    gw = grad(lambda p0: jvp(plain, (p0, *primals[1:]), t1)[1].square().sum())(primals[0])
    assert_close(gg, gw)
    # Parameters requiring grad under grad mode: correct (unfused) tangents as well.
    req = tuple(p.clone().requires_grad_() for p in primals)
    assert_close(jvp(f, req, t1)[1], jvp(plain, primals, t1)[1])


def test_nested_jvp_against_finite_differences():
    x, w, b = _args([(4, 6), (6,), (6,)])
    t1, t2 = _args([(4, 6)], 5)[0], _args([(4, 6)], 6)[0]
    inner = lambda f: (lambda x: jvp(lambda x: f(x, w, b), (x,), (t1,))[1])  # noqa: E731
    h = 1e-6
    fd = (inner(_manual_layer_norm)(x + h * t2) - inner(_manual_layer_norm)(x - h * t2)) / (2 * h)
    ours = jvp(inner(lambda x, w, b: SF.layer_norm(x, w, b)), (x,), (t2,))[1]
    torch.testing.assert_close(ours, fd, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_forward_ad(backend):
    require_backend(backend)
    for name, ours, plain, shapes, counter, backends in OPS:
        if backend not in backends:
            continue
        args = tuple(a.requires_grad_() for a in _args([tuple(max(1, d // 4) for d in s) for s in shapes]))
        # check_batched_forward_grad stays off: it uses the legacy torch._vmap_internals batching, which
        # rejects custom ops ("Only the 'batched grad' use case is supported"); torch.func.vmap over jvp is
        # tested in test_vmap_jvp_and_duals.
        assert torch.autograd.gradcheck(ours(backend), args, check_forward_ad=True, fast_mode=True), name


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_modules_equal_plain_pytorch(backend):
    require_backend(backend)
    torch.manual_seed(0)
    mlp = MLP([6, 8, 8, 3], activation="silu", backend=backend).double()
    plain_mlp = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.SiLU(), torch.nn.Linear(8, 8), torch.nn.SiLU(),
                                    torch.nn.Linear(8, 3)).double()
    plain_mlp.load_state_dict({k.replace("layers.", "").replace("1.", "2.", 1) if k.startswith("layers.1") else
                               k.replace("layers.", "").replace("2.", "4.", 1) if k.startswith("layers.2") else
                               k.replace("layers.", ""): v for k, v in mlp.state_dict().items()})
    params = {k: v.detach() for k, v in mlp.named_parameters()}
    tangents = {k: torch.randn_like(v) for k, v in params.items()}
    x = torch.randn(5, 6, dtype=D)
    plain_params = dict(zip([k for k, _ in plain_mlp.named_parameters()], params.values()))
    plain_tangents = dict(zip(plain_params, tangents.values()))
    y, y_t = jvp(lambda p: functional_call(mlp, p, (x,)), (params,), (tangents,))
    ty, ty_t = jvp(lambda p: functional_call(plain_mlp, p, (x,)), (plain_params,), (plain_tangents,))
    assert_close(y, ty)
    assert_close(y_t, ty_t)
    for module, shape in ((LayerNorm(6, backend=None), (2, 6)), (RMSNorm(6), (2, 6)), (Linear(6, 4, activation="tanh"),
                                                                                          (2, 6))):
        module = module.double()
        x, x_t = torch.randn(shape, dtype=D), torch.randn(shape, dtype=D)
        y, y_t = jvp(module, (x,), (x_t,))
        assert y_t.abs().max() > 1e-6


def test_attention_module_jvp():
    torch.manual_seed(0)
    attn = Attention(8, 2, causal=True).double()
    x, x_t = torch.randn(2, 5, 8, dtype=D), torch.randn(2, 5, 8, dtype=D)
    y, y_t = jvp(attn, (x,), (x_t,))
    h = 1e-6
    fd = (attn(x + h * x_t) - attn(x - h * x_t)) / (2 * h)
    torch.testing.assert_close(y_t, fd, atol=1e-6, rtol=1e-6)


def test_silent_zero_guard_catches_a_bare_custom_op():
    # The failure mode the tests above guard against: a bare torch.library op gives a zero tangent,
    # no warning. If PyTorch ever changes this, the guard assertions above still hold; this documents why.
    @torch.library.custom_op("symkernels_test::bare_sin", mutates_args=())
    def bare_sin(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)

    bare_sin.register_autograd(lambda ctx, g: g * torch.cos(ctx.x),
                               setup_context=lambda ctx, i, o: setattr(ctx, "x", i[0]))
    x = torch.randn(4, dtype=D)
    try:
        _, t = jvp(bare_sin, (x,), (torch.ones_like(x),))
    except (RuntimeError, NotImplementedError):
        return  # a loud failure is fine too
    assert t.abs().max() == 0, "bare custom op no longer gives silent zeros"


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_vmap_over_batched_primals(backend):
    require_backend(backend)
    x, w, b = _args([(4, 3, 6), (5, 6), (5,)])
    xt = _args([(4, 3, 6)], 1)[0]
    f = lambda x: SF.linear(x, w, b, "gelu", backend=backend)  # noqa: E731
    plain = lambda x: F.gelu(F.linear(x, w, b))  # noqa: E731
    assert_close(vmap(f)(x), plain(x))
    # Per-example jvp (primal and tangent both vmapped) and jacfwd.
    got = vmap(lambda x, t: jvp(f, (x,), (t,))[1])(x, xt)
    assert_close(got, vmap(lambda x, t: jvp(plain, (x,), (t,))[1])(x, xt))
    assert_close(torch.func.jacfwd(f)(x[0]), torch.func.jacfwd(plain)(x[0]))
    g = lambda x: SF.layer_norm(x, backend="reference")  # noqa: E731
    assert_close(vmap(lambda x, t: jvp(g, (x,), (t,))[1])(x, xt),
                 vmap(lambda x, t: jvp(lambda x: F.layer_norm(x, (6,)), (x,), (t,))[1])(x, xt))


def test_explicit_dual_ops_primal_tangent_under_jvp():
    # The explicit APIs' primal output y is differentiable in forward mode too (never a silent zero).
    x, w, b = _args([(3, 6), (4, 6), (4,)])
    xt = _args([(3, 6)], 1)[0]
    from symkernels.jvp import layer_norm_dual, linear_dual
    got = jvp(lambda x: linear_dual(x, None, w, None, b, None, "gelu", backend="cpu")[0], (x,), (xt,))[1]
    assert_close(got, jvp(lambda x: F.gelu(F.linear(x, w, b)), (x,), (xt,))[1])
    got = jvp(lambda x: layer_norm_dual(x, None)[0], (x,), (xt,))[1]
    assert_close(got, jvp(lambda x: _manual_layer_norm(x, 1.0, 0.0), (x,), (xt,))[1])
    assert got.abs().max() > 1e-3


def test_attention_dual_triton_is_differentiable_through_the_primal():
    # The Triton kernel is opaque to autograd, but attention_dual is a dispatcher op with registered backward
    # and jvp: no silent zero tangent, no missing gradient.
    require_backend("triton")
    from symkernels.jvp import attention_dual
    q, qd = to_backend("triton", (torch.randn(1, 4, 4, dtype=D), torch.randn(1, 4, 4, dtype=D)))
    got = jvp(lambda q: attention_dual(q, q, q, backend="triton")[0], (q,), (qd,))[1]
    want = jvp(lambda q: reference.attention(q, q, q, False, 0.5), (q,), (qd,))[1]
    assert got.abs().max() > 1e-3
    assert_close(got, want)
    qg = q.clone().requires_grad_()
    (g,) = torch.autograd.grad(attention_dual(qg, qg, qg, backend="triton")[0].sum(), qg)
    qr = q.clone().requires_grad_()
    assert_close(g, torch.autograd.grad(reference.attention(qr, qr, qr, False, 0.5).sum(), qr)[0])
