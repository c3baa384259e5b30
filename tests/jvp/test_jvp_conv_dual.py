"""conv2d_dual: the reference vs torch.func.jvp, every backend vs the reference, the transparent path
(functional.conv2d / Conv2d under func.jvp, vmap(jvp), dual tensors), autograd in both modes, opcheck,
torch.compile, seeded tangents, bad inputs, and forward-gradient training of a CNN."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.func import jvp, vmap

from symkernels import _backend
from symkernels._testing import assert_close, assert_within_torch_error, random_noncontiguous
from symkernels.jvp import Conv2d, conv, conv2d_dual, functional as SF, reference
from symkernels.jvp.functional import _FUSED_CALLS

ACTS = reference.ACTIVATIONS
D = torch.float64
# (name, geometry, C, O, kernel): odd sizes, strides, padding, dilation, groups, non-square kernels.
GEOMETRIES = {
    "plain": (dict(), 3, 5, (3, 3)),
    "stride2_pad1": (dict(stride=2, padding=1), 3, 5, (3, 2)),
    "mixed_dilated_groups2": (dict(stride=(2, 1), padding=(0, 2), dilation=(2, 1), groups=2), 4, 6, (2, 3)),
    "depthwise": (dict(padding=1, groups=4), 4, 8, (3, 3)),
}


def _need(backend):
    status = _backend.backend_status(backend)
    if not status:
        pytest.skip(f"backend {backend!r} unavailable: {status.reason}")


@pytest.fixture(params=[b for b in conv.IMPLEMENTED if b != "reference"])
def kernel_backend(request) -> str:
    """conv2d_dual's non-reference backends available here (the conftest's fixture, limited to this op)."""
    _need(request.param)
    return request.param


def plain(act, geo):
    """The plain-PyTorch function whose torch.func.jvp is the independent truth."""
    return lambda x, w, b: reference.activation_fn(act, F.conv2d(x, w, b, **geo))


def truth(act, geo, x, x_t, w, w_t, b, b_t):
    """(y, [y_t per tangent]) by torch.func.jvp, looping over a leading T dim of the tangents (if any)."""
    T = next((t.shape[0] for t, p in ((x_t, x), (w_t, w), (b_t, b)) if t is not None and t.dim() > p.dim()), None)

    def pick(t, p, i):
        return torch.zeros_like(p) if t is None else (t[i] if t.dim() > p.dim() else t)

    if b is None:
        outs = [jvp(lambda x, w: plain(act, geo)(x, w, None), (x, w), (pick(x_t, x, i), pick(w_t, w, i)))
                for i in range(T or 1)]
    else:
        outs = [jvp(plain(act, geo), (x, w, b), (pick(x_t, x, i), pick(w_t, w, i), pick(b_t, b, i)))
                for i in range(T or 1)]
    return outs[0][0], (torch.stack([o[1] for o in outs]) if T is not None else outs[0][1])


def make(name, dtype=D, T=None, N=2, HW=(7, 6), seed=0, noncontig=False):
    geo, C, O, (kh, kw) = GEOMETRIES[name]
    g = torch.Generator().manual_seed(seed)
    rnd = (lambda s: random_noncontiguous(s, dtype=dtype, generator=g)) if noncontig else \
        (lambda s: torch.randn(s, dtype=dtype, generator=g))
    lead = () if T is None else (T,)
    wshape = (O, C // geo.get("groups", 1), kh, kw)
    scale = (wshape[1] * kh * kw) ** -0.5
    d = dict(x=rnd((N, C, *HW)), x_t=rnd((*lead, N, C, *HW)), w=rnd(wshape) * scale, w_t=rnd((*lead, *wshape)),
             b=rnd((O,)), b_t=rnd((*lead, O)))
    return d, geo


def call(d, geo, act, backend, **kw):
    return conv2d_dual(d["x"], d["x_t"], d["w"], d["w_t"], d["b"], d["b_t"], activation=act, backend=backend,
                       **geo, **kw)


# ----------------------------------------------------------------------------- the reference vs truth
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("T", [None, 3])
def test_reference_matches_func_jvp(act, T):
    d, geo = make("mixed_dilated_groups2", T=T)
    y, y_t = call(d, geo, act, "reference")
    ty, ty_t = truth(act, geo, d["x"], d["x_t"], d["w"], d["w_t"], d["b"], d["b_t"])
    assert ty_t.abs().max() > 0.1
    assert_close(y, ty, msg="y")
    assert_close(y_t, ty_t, msg="y_t")


# ----------------------------------------------------------------------------- kernels vs the truth
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("act", ["none", "relu", "gelu", "gelu_tanh", "silu", "tanh"])
def test_cpu_matches_func_jvp(geometry, act):
    _need("cpu")
    d, geo = make(geometry, T=3)
    d["w_t"] = d["w_t"][1]  # one weight tangent shared by the three, T-carrying x_t and b_t
    y, y_t = call(d, geo, act, "cpu")
    ty, ty_t = truth(act, geo, d["x"], d["x_t"], d["w"], d["w_t"], d["b"], d["b_t"])
    assert_close(y, ty, msg="y")
    assert_close(y_t, ty_t, msg="y_t")


# (present tangents, shared ones): each is a different sum in the CPU kernel (stacked conv, grouped conv, b_t).
ROUTES = {
    "x_only": (("x_t",), ()),
    "w_only": (("w_t",), ()),
    "b_only": (("b_t",), ()),
    "all": (("x_t", "w_t", "b_t"), ()),
    "shared_x": (("x_t", "w_t"), ("x_t",)),
    "shared_all": (("x_t", "w_t", "b_t"), ("x_t", "w_t", "b_t")),
    "none": ((), ()),
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_kernel_tangent_routes(kernel_backend, route):
    present, shared = ROUTES[route]
    d, geo = make("mixed_dilated_groups2", T=2, noncontig=True)
    for k in ("x_t", "w_t", "b_t"):
        if k not in present:
            d[k] = None
        elif k in shared:
            d[k] = d[k][0]
    y, y_t = call(d, geo, "tanh", kernel_backend, num_tangents=2)
    ty, ty_t = truth("tanh", geo, d["x"], d["x_t"], d["w"], d["w_t"], d["b"], d["b_t"])
    if ty_t.dim() == 4:  # every tangent shared: the truth has no T dim
        ty_t = ty_t.expand(2, *ty_t.shape)
    assert y_t.shape == (2, *y.shape)
    assert_close(y, ty)
    assert_close(y_t, ty_t)
    if route == "none":
        assert torch.count_nonzero(y_t) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matches_reference(kernel_backend, dtype):
    for name in GEOMETRIES:
        d, geo = make(name, dtype=dtype, T=2)
        y, y_t = call(d, geo, "gelu", kernel_backend)
        ry, ry_t = call(d, geo, "gelu", "reference")
        assert_close(y, ry, msg=f"{name} y")
        assert_close(y_t, ry_t, msg=f"{name} y_t")


def test_kernel_empty_batch_unbatched_and_no_bias(kernel_backend):
    d, geo = make("stride2_pad1", N=0)
    y, y_t = call(d, geo, "silu", kernel_backend)
    assert y.shape == (0, 5, 4, 4) and y_t.shape == (0, 5, 4, 4)
    d, geo = make("stride2_pad1", T=2)
    d["b"] = d["b_t"] = None
    x, x_t = d["x"][1], d["x_t"][:, 1]  # unbatched [C, H, W] input, as F.conv2d accepts
    y, y_t = conv2d_dual(x, x_t, d["w"], d["w_t"], activation="relu", backend=kernel_backend, **geo)
    ty, ty_t = truth("relu", geo, d["x"], d["x_t"], d["w"], d["w_t"], None, None)
    assert y.shape == ty.shape[1:] and y_t.shape == (2, *ty.shape[1:])
    assert_close(y, ty[1])
    assert_close(y_t, ty_t[:, 1])


@pytest.mark.parametrize("distribution", reference.DISTRIBUTIONS)
def test_seeded_weight_tangent(kernel_backend, distribution):
    # float32: Gaussian tangent values are fp32 in every backend and may differ in the last ulp of log/cos
    # (csrc/jvp/jvp.h), which float64 tolerances would flag.
    d, geo = make("mixed_dilated_groups2", dtype=torch.float32, T=2)
    explicit_w_t = reference.seeded_tangent((3, *d["w"].shape), 1234, distribution)
    y, y_t = conv2d_dual(d["x"], d["x_t"][0], d["w"], None, d["b"], None, activation="gelu", weight_seed=1234,
                         distribution=distribution, num_tangents=3, backend=kernel_backend, **geo)
    ty, ty_t = truth("gelu", geo, d["x"], d["x_t"][0], d["w"], explicit_w_t, d["b"], None)
    assert_close(y, ty)
    assert_close(y_t, ty_t)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_half_types_within_torch_error(dtype):
    _need("cpu")
    d, geo = make("stride2_pad1", T=2, N=3, HW=(9, 9))
    low = {k: v.to(dtype) for k, v in d.items()}
    y, y_t = call(low, geo, "gelu", "cpu")
    ty, ty_t = call(d, geo, "gelu", "reference")
    ly, ly_t = call(low, geo, "gelu", "reference")  # PyTorch itself in that dtype
    assert_within_torch_error(y, ty, ly, msg="y")
    assert_within_torch_error(y_t, ty_t, ly_t, msg="y_t")


@pytest.mark.parametrize("backend", conv.IMPLEMENTED)
def test_nan_propagates(backend):
    _need(backend)
    d, geo = make("plain", dtype=torch.float32)
    d["x"][1, 0, 3, 3] = float("nan")
    y, y_t = call(d, geo, "gelu", backend)
    assert y[1].isnan().any() and y_t[1].isnan().any()
    assert y[0].isfinite().all() and y_t[0].isfinite().all()


# ----------------------------------------------------------------------------- autograd through the primal
@pytest.mark.parametrize("backend", conv.IMPLEMENTED)
def test_gradcheck_primal(backend):
    _need(backend)
    d, geo = make("mixed_dilated_groups2", N=1, HW=(5, 5))
    x, w, b = (d[k].clone().requires_grad_() for k in ("x", "w", "b"))
    def f(x, w, b):
        return conv2d_dual(x, d["x_t"], w, d["w_t"], b, d["b_t"], activation="silu", backend=backend, **geo)[0]

    assert torch.autograd.gradcheck(f, (x, w, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (x, w, b), fast_mode=True)
    y, y_t = f(x, w, b), conv2d_dual(x, d["x_t"], w, backend=backend, **geo)[1]
    assert y.requires_grad and not y_t.requires_grad  # the tangent output is non-differentiable by contract


# ----------------------------------------------------------------------------- the dispatcher op
def _op_samples():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, dtype=D, generator=g)  # noqa: E731
    return [
        (r(2, 4, 6, 5).requires_grad_(), r(2, 2, 4, 6, 5), r(6, 2, 3, 2).requires_grad_(), r(1, 6, 2, 3, 2),
         r(6).requires_grad_(), r(2, 6), [2, 1], [1, 0], [1, 2], 2, "gelu", 2),
        (r(1, 3, 5, 5), None, r(4, 3, 3, 3).requires_grad_(), None, None, None, [1, 1], [1, 1], [1, 1], 1, "relu", 1,
         7, "rademacher"),
        (r(0, 3, 5, 5), r(1, 0, 3, 5, 5), r(4, 3, 3, 3), None, r(4), None, [1, 1], [0, 0], [1, 1], 1, "silu", 1),
    ]


def test_opcheck():
    for args in _op_samples():
        torch.library.opcheck(torch.ops.symkernels.conv2d_dual, args)


def test_bare_op_forward_mode():
    # Without the registered jvp rule a bare custom op gives torch.func.jvp a silent ZERO tangent.
    d, geo = make("mixed_dilated_groups2", N=1, HW=(5, 5))
    op_geo = ([2, 1], [0, 2], [2, 1], 2)

    def bare(x, w, b):
        return torch.ops.symkernels.conv2d_dual(x, None, w, None, b, None, *op_geo, "tanh", 0)[0]

    primals, tangents = (d["x"], d["w"], d["b"]), (d["x_t"], d["w_t"], d["b_t"])
    got, want = jvp(bare, primals, tangents)[1], jvp(plain("tanh", geo), primals, tangents)[1]
    assert want.abs().max() > 0.1
    assert_close(got, want)
    with fwAD.dual_level():
        y = bare(fwAD.make_dual(d["x"], d["x_t"]), d["w"], d["b"])
        dual_t = fwAD.unpack_dual(y).tangent
    assert_close(dual_t, jvp(plain("tanh", geo), primals, (d["x_t"], torch.zeros_like(d["w"]),
                                                           torch.zeros_like(d["b"])))[1])
    args = tuple(t.clone().requires_grad_() for t in primals)
    assert torch.autograd.gradcheck(bare, args, check_forward_ad=True, fast_mode=True)
    # Reverse over forward: the op's tangent is itself differentiable.
    f = lambda x, w, b: jvp(bare, (x, w, b), tangents)[1]  # noqa: E731
    assert torch.autograd.gradcheck(f, args, fast_mode=True)


def test_dispatcher_op_compiles_fullgraph():
    d, geo = make("stride2_pad1", dtype=torch.float32, T=2)

    def f(x, x_t, w, w_t):
        y, y_t = torch.ops.symkernels.conv2d_dual(x, x_t, w, w_t, None, None, [2, 2], [1, 1], [1, 1], 1, "silu", 2)
        return y * 2, y_t

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = (d["x"], d["x_t"], d["w"], d["w_t"])
    for a, e in zip(compiled(*args), f(*args)):
        assert_close(a, e)
    assert compiled(*args)[1].abs().max() > 1e-3  # a non-zero tangent under compile


# ----------------------------------------------------------------------------- the transparent path
@pytest.mark.parametrize("backend", conv.IMPLEMENTED)
def test_functional_conv2d_fused_under_jvp_vmap_and_duals(backend):
    _need(backend)
    d, geo = make("mixed_dilated_groups2", N=1, HW=(5, 5), T=3)
    f = lambda x, w, b: SF.conv2d(x, w, b, **geo, activation="gelu", backend=backend)  # noqa: E731
    primals = (d["x"], d["w"], d["b"])
    tangents = (d["x_t"][0], d["w_t"][0], d["b_t"][0])
    before = _FUSED_CALLS["conv2d"]
    y, y_t = jvp(f, primals, tangents)
    assert _FUSED_CALLS["conv2d"] == before + 1, "the fused dual call was not used"
    ty, ty_t = jvp(plain("gelu", geo), primals, tangents)
    assert ty_t.abs().max() > 0.1
    assert_close(y, ty)
    assert_close(y_t, ty_t)
    got = vmap(lambda *ts: jvp(f, primals, ts)[1])(d["x_t"], d["w_t"], d["b_t"])
    assert _FUSED_CALLS["conv2d"] == before + 2, "vmap(jvp) should be ONE fused call with T = 3"
    assert_close(got, truth("gelu", geo, *primals[:1], d["x_t"], d["w"], d["w_t"], d["b"], d["b_t"])[1])
    with fwAD.dual_level():
        out = f(*(fwAD.make_dual(p, t) for p, t in zip(primals, tangents)))
        assert_close(fwAD.unpack_dual(out).tangent, ty_t)


def test_functional_conv2d_unfused_paths():
    d, geo = make("stride2_pad1", N=1, HW=(5, 5))
    f = lambda x, w, b: SF.conv2d(x, w, b, **geo, activation="silu")  # noqa: E731
    g = plain("silu", geo)
    primals, t1 = (d["x"], d["w"], d["b"]), (d["x_t"], d["w_t"], d["b_t"])
    t2 = tuple(torch.randn_like(t) for t in t1)
    # jvp of jvp, grad of a jvp, and primals requiring grad: plain torch ops, still exact.
    got = jvp(lambda *p: jvp(f, p, t1)[1], primals, t2)[1]
    assert_close(got, jvp(lambda *p: jvp(g, p, t1)[1], primals, t2)[1])
    gg = torch.func.grad(lambda x: jvp(f, (x, *primals[1:]), t1)[1].square().sum())(primals[0])
    assert_close(gg, torch.func.grad(lambda x: jvp(g, (x, *primals[1:]), t1)[1].square().sum())(primals[0]))
    req = tuple(p.clone().requires_grad_() for p in primals)
    assert_close(jvp(f, req, t1)[1], jvp(g, primals, t1)[1])
    args = tuple(p.clone().requires_grad_() for p in primals)
    assert torch.autograd.gradcheck(f, args, check_forward_ad=True, fast_mode=True)
    # vmap over batched primals (per-example jvp).
    xs, ts = torch.randn(3, *d["x"].shape, dtype=D), torch.randn(3, *d["x"].shape, dtype=D)
    per_example = lambda h: vmap(lambda x, t: jvp(lambda x: h(x, d["w"], d["b"]), (x,), (t,))[1])(xs, ts)  # noqa: E731
    assert_close(per_example(f), per_example(g))


def test_conv2d_module_equals_nn_conv2d_under_jvp():
    torch.manual_seed(0)
    ours = Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, groups=2, activation="relu").double()
    ref = torch.nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, groups=2).double()
    ref.load_state_dict(ours.state_dict())
    params = {k: v.detach() for k, v in ours.named_parameters()}
    tangents = {k: torch.randn_like(v) for k, v in params.items()}
    x = torch.randn(2, 4, 7, 6, dtype=D)
    y, y_t = jvp(lambda p: torch.func.functional_call(ours, p, (x,)), (params,), (tangents,))
    ty, ty_t = jvp(lambda p: torch.relu(torch.func.functional_call(ref, p, (x,))), (params,), (tangents,))
    assert_close(y, ty)
    assert_close(y_t, ty_t)
    with pytest.raises(ValueError, match="Conv2d: padding must be an int or a pair of ints"):
        Conv2d(4, 6, 3, padding="same")


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs():
    x, w = torch.randn(2, 4, 6, 6), torch.randn(6, 4, 3, 3)
    cases = [
        (ValueError, r"conv2d_dual: x_t must have the shape of x \[2, 4, 6, 6\] or \[T, 2, 4, 6, 6\]",
         dict(x_t=torch.randn(2, 4, 6, 5))),
        (ValueError, "conv2d_dual: tangents disagree on the number of tangents T: x_t has T=2, weight_t has T=3",
         dict(x_t=torch.randn(2, 2, 4, 6, 6), weight_t=torch.randn(3, 6, 4, 3, 3))),
        (TypeError, r"conv2d_dual: weight_t must have the dtype of x \(torch.float32\)",
         dict(weight_t=torch.randn(6, 4, 3, 3, dtype=D))),
        (TypeError, "conv2d_dual: x must have a floating dtype", dict(x=x.long())),
        (ValueError, r"conv2d_dual: x must have shape \[N, C, H, W\] or \[C, H, W\]", dict(x=torch.randn(4, 6))),
        (ValueError, r"conv2d_dual: weight must have shape \[O, C/groups=2, kh, kw\]", dict(groups=2)),
        (ValueError, "conv2d_dual: groups=4 must divide", dict(groups=4, weight=torch.randn(6, 1, 3, 3))),
        (ValueError, "conv2d_dual: groups must be a positive int", dict(groups=0)),
        (ValueError, r"conv2d_dual: stride must be >= 1", dict(stride=0)),
        (ValueError, r"conv2d_dual: padding must be >= 0", dict(padding=(1, -1))),
        (TypeError, r"conv2d_dual: dilation must be an int or a pair of ints", dict(dilation=(1, 1, 1))),
        (TypeError, r"conv2d_dual: padding must be an int or a pair of ints", dict(padding="same")),
        (ValueError, r"conv2d_dual: x's spatial size \[6, 6\] .* is smaller than the dilated kernel",
         dict(dilation=3)),
        (ValueError, r"conv2d_dual: bias must have shape \[O=6\]", dict(bias=torch.randn(5))),
        (ValueError, "conv2d_dual: bias_t was given but bias is None", dict(bias_t=torch.randn(6))),
        (ValueError, "conv2d_dual: activation must be None or one of", dict(activation="softplus")),
        (ValueError, "conv2d_dual: give weight_t or weight_seed, not both",
         dict(weight_t=torch.randn(6, 4, 3, 3), weight_seed=1)),
        (ValueError, r"weight_seed must be an int in \[0, 2\*\*31\)", dict(weight_seed=-1)),
        (ValueError, "conv2d_dual: num_tangents must be a positive int", dict(weight_seed=1, num_tangents=0)),
        (ValueError, "conv2d_dual: all tensors must be on one device", dict(bias=torch.randn(6, device="meta"))),
    ]
    for error, match, kw in cases:
        args = dict(x=x, x_t=None, weight=w) | kw
        with pytest.raises(error, match=match):
            conv2d_dual(**args)


def test_op_bad_inputs():
    op = torch.ops.symkernels.conv2d_dual
    x, w, geo = torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3), ([1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(ValueError, match=r"conv2d_dual: x_t must have shape \[1 or num_tangents=2"):
        op(x, torch.randn(3, 1, 3, 5, 5), w, None, None, None, *geo, "none", 2)
    with pytest.raises(TypeError, match="conv2d_dual: weight must have the dtype of x"):
        op(x, None, w.double(), None, None, None, *geo, "none", 1)
    with pytest.raises(ValueError, match="conv2d_dual: activation must be one of"):
        op(x, None, w, None, None, None, *geo, "swish", 1)
    with pytest.raises(ValueError, match="conv2d_dual: give weight_t or a seed, not both"):
        op(x, None, w, torch.randn(1, 4, 3, 3, 3), None, None, *geo, "none", 1, 3)


def test_vmap_over_a_seeded_call_is_refused():
    """Folding B vmapped x tangents into the tangent dim would draw B·T seeded weight tangents instead of the
    T shared ones: the vmap rule refuses rather than silently changing the directions."""
    d, geo = make("mixed_dilated_groups2", N=1, HW=(5, 5), T=3)
    seeded = lambda xt: conv2d_dual(d["x"], xt, d["w"], None, d["b"], None, **geo, activation="gelu",  # noqa: E731
                                    weight_seed=5, backend="reference")[1]
    seeded(d["x_t"][0])  # the call itself is fine
    with pytest.raises(NotImplementedError, match="weight_seed"):
        vmap(seeded)(d["x_t"])
