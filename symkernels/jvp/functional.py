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

import torch
import torch.autograd.forward_ad as fwAD
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

from symkernels import _backend
from symkernels.jvp import _scope, ops, reference

_FUSED_CALLS = {"linear": 0, "row": 0}  # counters the tests use to prove the fused path ran


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
    impl = _backend.resolve(ops.OP_NAME, device, backend, ops.IMPLEMENTED)
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


def _row(op, kind, x, weight, bias, eps, backend):
    n_params = {"layer_norm": 2, "rms_norm": 1, "softmax": 0}[kind]
    params = [("weight", weight, None), ("bias", bias, None)][:n_params]
    xc, _, canon, _, _ = ops._row_canonical(op, x, None, params)
    device = _backend.common_device(op, x=x, weight=weight, bias=bias)
    impl = _backend.resolve(op, device, backend, ops.ROW_IMPLEMENTED)
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


def attention(q, k, v, *, causal: bool = False, scale: float | None = None) -> torch.Tensor:
    """``softmax(q kᵀ·scale) v`` in plain torch ops (forward AD works natively; no fused kernel yet)."""
    return reference.attention(q, k, v, causal, q.shape[-1] ** -0.5 if scale is None else scale)
