"""Functional forms whose forward-mode tangents come from the fused dual kernels.

``linear(x, W, b, activation)``, ``layer_norm``, ``rms_norm`` and ``softmax`` compute the plain primal, but
under ``torch.func.jvp``, ``torch.func.vmap(jvp)`` or ``torch.autograd.forward_ad`` dual tensors they
take the tangents of their inputs (``forward_ad.unpack_dual``), run ONE fused kernel for primal and tangent,
and hand the tangent back through ``autograd.Function.jvp``. Under ``vmap(jvp)`` the vmapped tangents
become the kernel's T dim (one primal for all of them).

When the fused path could give a wrong answer it is not taken, and the tangent is computed from plain
torch ops inside ``jvp`` instead (correct under any nesting, just unfused):
  * reverse mode will differentiate the tangent (a ``torch.func.grad``/``vjp`` transform is active, or
    grad mode is on and a primal requires grad — the fused tangent is not differentiable);
  * forward mode is nested (jvp of jvp): there even the tangent rule of an ``autograd.Function`` loses the
    outer tangent (PyTorch gives silent zeros; see tests), so the whole op runs as plain torch ops.
So for speed run forward-gradient code under ``torch.no_grad()`` or with parameters that do not require
grad (``symkernels.forward_gradient`` does this).
"""
from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as fwAD
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

from symkernels import _backend, _library
from symkernels.jvp import _scope, conv, ops, reference
from symkernels.jvp import attention as attention_op
from symkernels.jvp.batch_norm import batch_norm_dual

# Counters the tests use to prove the fused path ran.
_FUSED_CALLS = {"linear": 0, "row": 0, "attention": 0, "conv2d": 0, "batch_norm": 0}


def _nested_forward_ad() -> bool:
    return [i.key() for i in retrieve_all_functorch_interpreters()].count(TransformType.Jvp) > 1


def _fusable(*primals: torch.Tensor | None) -> bool:
    keys = [i.key() for i in retrieve_all_functorch_interpreters()]
    if any(k not in (TransformType.Jvp, TransformType.Vmap) for k in keys):
        return False
    if torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in primals):
        return False
    return True


def _tangent(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else fwAD.unpack_dual(t).tangent


def _primal(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else fwAD.unpack_dual(t).primal


def _seeded_linear(scope: _scope.SeededScope, c, x, weight, bias, impl) -> torch.Tensor | None:
    """The weight's tangent is a seed (a forward-gradient pass): one seeded-tangent kernel call, W_t never
    stored; the output becomes a dual tensor carrying the kernel's tangent. None if this call is not one."""
    seeded = scope.lookup(weight)
    if seeded is None or not _fusable(x, weight, bias):
        return None
    with scope.sanctioned():
        x_dot, b_dot = _tangent(c.x), _tangent(bias)
        y, y_t = ops._raw_linear_dual(_primal(c.x), weight, _primal(bias),
                                      None if x_dot is None else x_dot.reshape(1, c.M, c.K), None,
                                      None if b_dot is None else b_dot.unsqueeze(0), c.activation, 1, seeded[0],
                                      seeded[1], impl)
        scope.used.add(id(weight))
        _FUSED_CALLS["linear"] += 1
        return fwAD.make_dual(y, y_t[0])


def _activity_linear(scope: _scope.ActivityScope, c, x, weight, bias, impl) -> torch.Tensor | None:
    """Activity perturbation (Ren et al.): the pre-activation z gets its input's tangent plus fresh seeded
    noise ż; the call is recorded (input rows, noise seed, which parameters) for the weight-gradient guess."""
    if not _fusable(x, weight, bias):
        return None
    x_dot = _tangent(c.x)
    xp, wp, bp = _primal(c.x), _primal(weight), _primal(bias)
    z, z_t = ops._raw_linear_dual(xp, wp, bp, None if x_dot is None else x_dot.reshape(1, c.M, c.K), None, None,
                                  "none", 1, None, "gaussian", impl)
    noise = scope.noise(c.M, c.N, z.dtype, z.device)
    scope.records.append({"x": xp, "noise": noise, "lead": c.lead, "weight": scope.index(weight),
                          "bias": scope.index(bias)})
    z_t = z_t[0] + noise
    _FUSED_CALLS["linear"] += 1
    return fwAD.make_dual(reference.activation_fn(c.activation, z),
                          reference.activation_derivative(c.activation, z) * z_t)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None, *,
           backend: str | None = None) -> torch.Tensor:
    """``act(x @ weight.T + bias)`` with fused forward-mode tangents (see module docstring)."""
    c = ops._Canonical(x, None, weight, None, bias, None, activation, None, "gaussian", None)
    device = _backend.common_device(ops.OP_NAME, x=x, weight=weight, bias=bias)
    impl = ops.resolve(ops.OP_NAME, device, backend, ops.IMPLEMENTED)
    if _nested_forward_ad():
        return reference.activation_fn(c.activation, torch.nn.functional.linear(x, weight, bias))
    scope = _scope.active()
    if scope is not None:  # inside symkernels.forward_gradient
        scoped = (_seeded_linear if isinstance(scope, _scope.SeededScope) else _activity_linear)(
            scope, c, x, weight, bias, impl)
        if scoped is not None:
            return scoped.reshape(*c.lead, c.N)
        if isinstance(scope, _scope.SeededScope) and scope.lookup(weight) is not None:
            scope.foreign.append("functional.linear (unfusable here: grad mode or a transform is active)")
    x_dot, w_dot, b_dot = _tangent(x), _tangent(weight), _tangent(bias)
    if (x_dot is not None or w_dot is not None or b_dot is not None) and _fusable(x, weight, bias):
        _FUSED_CALLS["linear"] += 1
        y, _ = ops._LinearDualFunction.apply(
            c.x, weight, bias, None if x_dot is None else x_dot.reshape(1, c.M, c.K),
            None if w_dot is None else w_dot.unsqueeze(0), None if b_dot is None else b_dot.unsqueeze(0),
            c.activation, 1, None, "gaussian", impl, True)
    else:
        y, _ = ops._LinearDualFunction.apply(c.x, weight, bias, None, None, None, c.activation, 0, None, "gaussian",
                                             impl, False)
    return y.reshape(*c.lead, c.N)


def _one_tangent(d: torch.Tensor | None) -> torch.Tensor | None:
    """A forward-AD tangent with the kernels' leading tangent dim (T = 1)."""
    return None if d is None else d.unsqueeze(0)


def _seeded_conv2d(scope: _scope.SeededScope, c, x, weight, bias, impl) -> torch.Tensor | None:
    """As _seeded_linear, for a conv kernel whose tangent is a seed: one seeded conv2d_dual call."""
    seeded = scope.lookup(weight)
    if seeded is None or not _fusable(x, weight, bias):
        return None
    with scope.sanctioned():
        x_dot, b_dot = _tangent(c.x), _tangent(bias)
        y, y_t = conv.raw_conv2d_dual(_primal(c.x), weight, _primal(bias), _one_tangent(x_dot), None,
                                      _one_tangent(b_dot), c.geometry, c.activation, 1, seeded[0], seeded[1], impl)
        scope.used.add(id(weight))
        _FUSED_CALLS["conv2d"] += 1
        return fwAD.make_dual(y, y_t[0])


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1, activation: str | None = None, *, backend: str | None = None) -> torch.Tensor:
    """``act(F.conv2d(x, weight, bias, stride, padding, dilation, groups))`` with fused forward-mode tangents
    (see the module docstring). Inside a seeded forward-gradient pass a conv kernel's tangent is a seed; with
    mode="activity" conv layers are not perturbed (the estimator then reports their parameters as uncovered)."""
    c = conv._Canonical(x, None, weight, None, bias, None, stride, padding, dilation, groups, activation, None,
                        "gaussian", None)
    device = _backend.common_device(conv.OP_NAME, x=x, weight=weight, bias=bias)
    impl = _backend.resolve(conv.OP_NAME, device, backend, conv.IMPLEMENTED)
    if _nested_forward_ad():
        return conv._plain(c.geometry, c.activation)(x, weight, bias)
    scope = _scope.active()
    if isinstance(scope, _scope.SeededScope):
        scoped = _seeded_conv2d(scope, c, x, weight, bias, impl)
        if scoped is not None:
            return c.primal(scoped)
        if scope.lookup(weight) is not None:
            scope.foreign.append("functional.conv2d (unfusable here: grad mode or a transform is active)")
    x_dot, w_dot, b_dot = _tangent(c.x), _tangent(weight), _tangent(bias)
    if (x_dot is not None or w_dot is not None or b_dot is not None) and _fusable(x, weight, bias):
        _FUSED_CALLS["conv2d"] += 1
        y, _ = conv._Conv2dDualFunction.apply(c.x, weight, bias, _one_tangent(x_dot), _one_tangent(w_dot),
                                              _one_tangent(b_dot), c.geometry, c.activation, 1, None, "gaussian", impl,
                                              True)
    else:
        y, _ = conv._Conv2dDualFunction.apply(c.x, weight, bias, None, None, None, c.geometry, c.activation, 0, None,
                                              "gaussian", impl, False)
    return c.primal(y)


def batch_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """``F.batch_norm``. With ``forward_ad`` dual tensors and no torch.func transform active (the passes of
    ``symkernels.forward_gradient``), primal and tangent come from one ``batch_norm_dual`` call sharing the
    statistics, and the result is a dual tensor. Elsewhere (torch.func.jvp, vmap, reverse mode) it is
    F.batch_norm itself, whose own forward AD is exact: batch_norm_dual has no autograd.Function around it,
    so it only serves the one case where no transform needs one."""
    dots = [_tangent(t) for t in (x, weight, bias)]
    if any(d is not None for d in dots) and not retrieve_all_functorch_interpreters() and _fusable(x, weight, bias):
        _FUSED_CALLS["batch_norm"] += 1
        y, y_t = batch_norm_dual(_primal(x), dots[0], _primal(weight), dots[1], _primal(bias), dots[2], running_mean,
                                 running_var, training, momentum, eps)
        return fwAD.make_dual(y, y_t)
    return torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)


def _row(op, kind, x, weight, bias, eps, backend):
    n_params = {"layer_norm": 2, "rms_norm": 1, "softmax": 0}[kind]
    params = [("weight", weight, None), ("bias", bias, None)][:n_params]
    xc, _, canon, _, _ = ops._row_canonical(op, x, None, params)
    device = _backend.common_device(op, x=x, weight=weight, bias=bias)
    impl = ops.resolve(op, device, backend, ops.ROW_IMPLEMENTED)
    if _nested_forward_ad():
        return reference.row_dual(kind, x, None, weight, None, bias, None, float(eps), 0)[0]
    x_dot, w_dot, b_dot = _tangent(x), _tangent(weight), _tangent(bias)
    R, N = xc.shape
    if (x_dot is not None or w_dot is not None or b_dot is not None) and _fusable(x, weight, bias):
        _FUSED_CALLS["row"] += 1
        y, _ = ops._RowDualFunction.apply(
            xc, weight, bias, None if x_dot is None else x_dot.reshape(1, R, N),
            None if w_dot is None else w_dot.unsqueeze(0), None if b_dot is None else b_dot.unsqueeze(0),
            kind, float(eps), 1, impl, True)
    else:
        y, _ = ops._RowDualFunction.apply(xc, weight, bias, None, None, None, kind, float(eps), 0, impl, False)
    return y.reshape(x.shape)


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5, *, backend: str | None = None) -> torch.Tensor:
    """``F.layer_norm(x, (x.shape[-1],), weight, bias, eps)`` with fused forward-mode tangents."""
    return _row("layer_norm", "layer_norm", x, weight, bias, eps, backend)


def rms_norm(x, weight=None, eps: float = 1e-6, *, backend: str | None = None) -> torch.Tensor:
    """``F.rms_norm(x, (x.shape[-1],), weight, eps)`` with fused forward-mode tangents."""
    return _row("rms_norm", "rms_norm", x, weight, None, eps, backend)


def softmax(x, *, backend: str | None = None) -> torch.Tensor:
    """``torch.softmax(x, -1)`` with fused forward-mode tangents."""
    return _row("softmax", "softmax", x, None, None, 0.0, backend)


class _AttentionDualFunction(_library.KernelFunction):
    """The transparent path of ``attention``: forward runs ``symkernels::attention_dual`` once with the
    unpacked input tangents ([T, ...] each, or None), ``jvp`` returns the saved fused tangent (T = 1), and
    the vmap rule folds vmapped tangents into T (one kernel call for vmap(jvp)). Only taken when the
    tangent will not be differentiated (see the module docstring); backward is there for completeness."""

    @staticmethod
    def forward(q, k, v, q_t, k_t, v_t, causal, scale, T, impl):
        lead = q.shape[:-2]
        BH = math.prod(lead)
        flat = lambda t, pre: None if t is None else t.reshape(*pre, BH, *t.shape[-2:])  # noqa: E731
        o, o_t = torch.ops.symkernels.attention_dual(flat(q, ()), flat(k, ()), flat(v, ()), flat(q_t, (T,)),
                                                     flat(k_t, (T,)), flat(v_t, (T,)), T, causal, scale, impl)
        return o.reshape(*lead, *o.shape[-2:]), o_t.reshape(T, *lead, *o.shape[-2:])

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.causal, ctx.scale = inputs[6], inputs[7]
        ctx.save_for_backward(*inputs[:3])
        ctx.save_for_forward(output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad_o, _grad_o_t):
        q, k, v = ctx.saved_tensors
        _, vjp_fn = torch.func.vjp(lambda q, k, v: reference.attention(q, k, v, ctx.causal, ctx.scale), q, k, v)
        return (*vjp_fn(grad_o), None, None, None, None, None, None, None)

    @staticmethod
    def jvp(ctx, *_tangents):
        (o_t,) = ctx.saved_tensors
        return o_t[0], None

    @staticmethod
    def vmap(info, in_dims, q, k, v, q_t, k_t, v_t, causal, scale, T, impl):
        return ops._vmap_rule(_AttentionDualFunction, info, in_dims, (q, k, v), (q_t, k_t, v_t), T,
                              lambda qt, kt, vt, TT: (q, k, v, qt, kt, vt, causal, scale, TT, impl))


def attention(q, k, v, *, causal: bool = False, scale: float | None = None, backend: str | None = None) -> torch.Tensor:
    """``softmax(q kᵀ·scale [causal]) v`` over ``[..., L, d]``; under forward mode the tangent comes from the
    fused ``attention_dual`` kernel (one call for primal and tangent; see the module docstring)."""
    attention_op.check_primals(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if _nested_forward_ad():
        return reference.attention(q, k, v, causal, scale)
    dots = [_tangent(t) for t in (q, k, v)]
    # (Without symkernels._C the op is not declared: then the plain path below.)
    if any(d is not None for d in dots) and _fusable(q, k, v) and _backend.has_dispatcher_op(attention_op.OP_NAME):
        impl = attention_op.resolve_impl(backend, q=q, k=k, v=v)
        _FUSED_CALLS["attention"] += 1
        o, _ = _AttentionDualFunction.apply(q, k, v, *(None if d is None else d.unsqueeze(0) for d in dots),
                                            bool(causal), scale, 1, impl)
        return o
    # Plain torch ops: correct under every transform and for reverse mode through the tangent.
    return reference.attention(q, k, v, causal, scale)
