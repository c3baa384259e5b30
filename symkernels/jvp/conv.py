"""conv2d_dual: primal and T tangents of ``y = act(conv2d(x, W, b))`` in one call, as a dispatcher op.

The same two doors as ``linear_dual`` (see symkernels/jvp/ops.py):

* ``conv2d_dual(x, x_t, weight, ...)`` — explicit: ``(y, y_t)``; y differentiable to any order, y_t not
  (a tangent, stop-gradient by the contract of every fused JVP kernel).
* ``functional.conv2d`` / ``jvp.Conv2d`` — transparent: a plain function of the primals whose forward-mode
  tangent (``torch.func.jvp``, ``vmap(jvp)``, dual tensors, seeded forward-gradient passes) comes from the
  same fused call.

``torch.ops.symkernels.conv2d_dual`` takes canonical shapes (``reference.conv2d_dual``'s docstring). Its schema
is in csrc/jvp/schema.cpp, its kernel here in Python (no C++ kernel): its CPU and CUDA keys are one composition
of ATen convolutions,
  * the primal convolution, and ONE convolution over every x tangent as one batch (they share the weight),
  * ONE grouped convolution for every weight tangent (T·O output channels, x read once; a seeded W_t is
    generated for the call and dropped with it),
  * the chain rule y_t ← act'(z) ⊙ y_t in place over all T tangents by ATen's activation-backward kernels
    (act'(z) is evaluated per element, never stored).
On CUDA that is cuDNN's convolutions; ``backend="triton"`` is the implicit-GEMM Triton kernel
(``conv_triton.py``), not the CUDA default because it could not be benchmarked against cuDNN here.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from symkernels import _backend, _library
from symkernels.jvp import ops, reference
from symkernels.jvp.forward_gradient import regenerate_values

OP_NAME = "conv2d_dual"
QUALNAME = f"symkernels::{OP_NAME}"
IMPLEMENTED = ("reference", "cpu", "cuda", "triton")
_triton_conv2d_dual = _library.TritonLauncher("symkernels.jvp.conv_triton.conv2d_dual")


class Geometry(NamedTuple):
    """F.conv2d's stride, padding, dilation (pairs) and groups."""
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def output_size(self, H: int, W: int, kh: int, kw: int) -> tuple[int, int]:
        return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, k, s, p, d in
                     zip((H, W), (kh, kw), self.stride, self.padding, self.dilation))


def _pair(name: str, value, minimum: int) -> tuple[int, int]:
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    pair = (value, value) if is_int(value) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(is_int(v) for v in pair)):
        raise TypeError(f"{OP_NAME}: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{OP_NAME}: {name} must be >= {minimum}, got {value!r}")
    return tuple(pair)


def geometry(x_shape, weight_shape, stride, padding, dilation, groups) -> Geometry:
    """Validated geometry for x [N, C, H, W] and weight [O, C/groups, kh, kw]; errors name the argument."""
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{OP_NAME}: groups must be a positive int, got {groups!r}")
    geo = Geometry(_pair("stride", stride, 1), _pair("padding", padding, 0), _pair("dilation", dilation, 1), groups)
    C, (O, Cg, kh, kw) = x_shape[-3], weight_shape
    if C % groups or O % groups:
        raise ValueError(f"{OP_NAME}: groups={groups} must divide the input channels C={C} and the output channels "
                         f"O={O}")
    if Cg * groups != C:
        raise ValueError(f"{OP_NAME}: weight must have shape [O, C/groups={C // groups}, kh, kw] for x with C={C} "
                         f"channels and groups={groups}, got {list(weight_shape)}")
    if min(geo.output_size(x_shape[-2], x_shape[-1], kh, kw)) < 1:
        raise ValueError(f"{OP_NAME}: x's spatial size {list(x_shape[-2:])} with padding {geo.padding} is smaller than "
                         f"the dilated kernel ({kh}x{kw}, dilation {geo.dilation})")
    return geo


class _Canonical:
    """User arguments mapped to canonical shapes; every error names the argument (as linear_dual's)."""

    def __init__(self, x, x_t, weight, weight_t, bias, bias_t, stride, padding, dilation, groups, activation,
                 weight_seed, distribution, num_tangents):
        ops._check_tensor("x", x, None, OP_NAME)
        for name, t in (("weight", weight), ("x_t", x_t), ("weight_t", weight_t), ("bias", bias), ("bias_t", bias_t)):
            if t is not None or name == "weight":
                ops._check_tensor(name, t, x.dtype, OP_NAME)
        if x.dim() not in (3, 4):
            raise ValueError(f"{OP_NAME}: x must have shape [N, C, H, W] or [C, H, W], got {list(x.shape)}")
        if weight.dim() != 4:
            raise ValueError(f"{OP_NAME}: weight must have shape [O, C/groups, kh, kw], got {list(weight.shape)}")
        self.geometry = geometry(tuple(x.shape), tuple(weight.shape), stride, padding, dilation, groups)
        O = weight.shape[0]
        if bias is not None and tuple(bias.shape) != (O,):
            raise ValueError(f"{OP_NAME}: bias must have shape [O={O}], got {list(bias.shape)}")
        if bias_t is not None and bias is None:
            raise ValueError(f"{OP_NAME}: bias_t was given but bias is None")
        self.activation = ops._normalize_activation(activation, OP_NAME)
        ops.check_seed(OP_NAME, weight_seed, weight_t, distribution)
        counts = {name: c for name, c in (
            ("x_t", ops._tangent_count("x_t", x_t, tuple(x.shape), "x", OP_NAME)),
            ("weight_t", ops._tangent_count("weight_t", weight_t, tuple(weight.shape), "weight", OP_NAME)),
            ("bias_t", ops._tangent_count("bias_t", bias_t, (O,), "bias", OP_NAME)),
        ) if c is not None}
        self.batched = bool(counts) or num_tangents is not None
        T = ops.tangent_count_with_request(OP_NAME, counts, num_tangents)
        if weight_seed is not None and T * weight.numel() > reference.MAX_SEEDED_ELEMENTS - 1:
            raise ValueError(f"{OP_NAME}: seeded tangents need T*weight.numel() < 2**31, got {T * weight.numel()}")
        self.T, self.unbatched = T, x.dim() == 3
        # Canonical: a batch dim on x, a tangent dim on every tangent (count 1 broadcasts over all T).
        self.x = x.unsqueeze(0) if self.unbatched else x
        self.x_t = None
        if x_t is not None:
            x_t = x_t if "x_t" in counts else x_t.unsqueeze(0)
            self.x_t = x_t.unsqueeze(1) if self.unbatched else x_t
        self.weight, self.bias = weight, bias
        self.weight_t = None if weight_t is None else (weight_t if "weight_t" in counts else weight_t.unsqueeze(0))
        self.bias_t = None if bias_t is None else (bias_t if "bias_t" in counts else bias_t.unsqueeze(0))
        self.seed, self.distribution = weight_seed, distribution

    def primal(self, y: torch.Tensor) -> torch.Tensor:
        return y[0] if self.unbatched else y

    def outputs(self, y: torch.Tensor, y_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y_t = y_t[:, 0] if self.unbatched else y_t
        return self.primal(y), (y_t if self.batched else y_t[0])


def conv2d_dual(x: torch.Tensor, x_t: torch.Tensor | None, weight: torch.Tensor, weight_t: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, bias_t: torch.Tensor | None = None, stride=1, padding=0, dilation=1,
                groups: int = 1, activation: str | None = None, *, weight_seed: int | None = None,
                distribution: str = "gaussian", num_tangents: int | None = None,
                backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused primal and tangent of ``y = act(F.conv2d(x, weight, bias, stride, padding, dilation, groups))``.

    Args:
        x: ``[N, C, H, W]`` or ``[C, H, W]`` (float16/bfloat16/float32/float64; all tensors in x's dtype).
        x_t: tangent of x, ``x.shape`` or ``[T, *x.shape]``; None for a zero tangent.
        weight: ``[O, C/groups, kh, kw]``; weight_t: ``weight.shape`` or ``[T, *weight.shape]``; None for zero.
        bias: ``[O]`` or None; bias_t: ``[O]`` or ``[T, O]`` (needs bias).
        stride, padding, dilation: ints or pairs (zero padding); groups: a divisor of C and O.
        activation: None, "relu", "gelu", "gelu_tanh", "silu" or "tanh", fused into primal and tangent.
        weight_seed: int in [0, 2^31): weight_t is ``reference.seeded_tangent((T, *weight.shape), seed,
            distribution)``, generated by the call, never passed nor kept (forward-gradient passes).
        distribution: "gaussian" or "rademacher" for the seeded tangent.
        num_tangents: T, when no tangent tensor carries it (e.g. only a seed).
        backend: None (the dispatcher op: ATen convolutions, see the module docstring), "reference", "cpu"
            or "triton".

    Returns:
        ``(y, y_t)``: ``y [N, O, Ho, Wo]`` (no N for an unbatched x); ``y_t [T, *y.shape]`` if any tangent
        carries T (or num_tangents is given), else ``y.shape``. Equals ``torch.func.jvp`` of the plain
        function per tangent; y is differentiable (any order), y_t is not.
    """
    c = _Canonical(x, x_t, weight, weight_t, bias, bias_t, stride, padding, dilation, groups, activation, weight_seed,
                   distribution, num_tangents)
    device = _backend.common_device(OP_NAME, x=x, x_t=x_t, weight=weight, weight_t=weight_t, bias=bias, bias_t=bias_t)
    impl = _backend.resolve(OP_NAME, device, backend, IMPLEMENTED)
    y, y_t = _Conv2dDualFunction.apply(c.x, c.weight, c.bias, c.x_t, c.weight_t, c.bias_t, c.geometry, c.activation,
                                       c.T, c.seed, c.distribution, impl, False)
    return c.outputs(y, y_t)


def raw_conv2d_dual(x, weight, bias, x_t, weight_t, bias_t, geo: Geometry, activation, T, seed, distribution, impl):
    """One call on canonical shapes, no autograd recording."""
    if impl == "reference":
        with torch.no_grad():
            return reference.conv2d_dual(x, x_t, weight, weight_t, bias, bias_t, *geo, activation, T, seed,
                                         distribution)
    if impl == "triton":
        return _triton_conv2d_dual(x, x_t, weight, weight_t, bias, bias_t, geo, activation, T, seed, distribution)
    return torch.ops.symkernels.conv2d_dual(x, x_t, weight, weight_t, bias, bias_t, geo.stride, geo.padding,
                                            geo.dilation, geo.groups, activation, T, -1 if seed is None else seed,
                                            distribution)


def _plain(geo: Geometry, activation: str):
    """The plain-PyTorch primal (backward by torch.func.vjp, and the tests' truth)."""
    return lambda x, w, b: reference.activation_fn(activation, F.conv2d(x, w, b, *geo))


def _primal_vjp(geo, activation, x, weight, bias, grad_y):
    """(grad_x, grad_weight, grad_bias) of the plain primal by torch.func.vjp: differentiable (double backward)."""
    f = _plain(geo, activation)
    if bias is None:
        _, vjp_fn = torch.func.vjp(lambda x, w: f(x, w, None), x, weight)
        return (*vjp_fn(grad_y), None)
    _, vjp_fn = torch.func.vjp(f, x, weight, bias)
    return vjp_fn(grad_y)


def _tangent_formula(geo, activation, x, weight, bias, x_dot, w_dot, b_dot):
    """y's tangent from plain torch ops: the fallback that stays correct under every transform nesting."""
    z = F.conv2d(x, weight, bias, *geo)
    z_dot = torch.zeros_like(z)
    if x_dot is not None:
        z_dot = z_dot + F.conv2d(x_dot, weight, None, *geo)
    if w_dot is not None:
        z_dot = z_dot + F.conv2d(x, w_dot, None, *geo)
    if b_dot is not None:
        z_dot = z_dot + b_dot[:, None, None]
    return reference.activation_derivative(activation, z) * z_dot


def _refuse_seeded_vmap(inputs):
    if inputs[9] is not None:
        # Folding B vmapped tangents into T would draw B·T seeded weight tangents instead of sharing T.
        raise NotImplementedError(f"{OP_NAME}: vmap over a call with weight_seed is not supported")


# Autograd in both modes, the contract of ``ops._LinearDualFunction``: (x, weight, bias, x_t, weight_t, bias_t,
# geometry, activation, T, seed, distribution, impl, fused).
_Conv2dDualFunction = ops.dual_function("_Conv2dDualFunction", raw_conv2d_dual, _primal_vjp, _tangent_formula,
                                        check_vmap=_refuse_seeded_vmap)


# ------------------------------------------------------------------------------------------------------
# The dispatcher op: its kernel (CPU and CUDA keys), fake, and autograd in both modes.
# ------------------------------------------------------------------------------------------------------
def _check_op_args(x, x_t, weight, weight_t, bias, bias_t, activation, num_tangents, seed, distribution):
    """The op's own checks (it can be called directly with canonical shapes); the kernel and fake share them."""
    if activation not in reference.ACTIVATIONS:
        raise ValueError(f"{OP_NAME}: activation must be one of {reference.ACTIVATIONS}, got {activation!r}")
    if distribution not in reference.DISTRIBUTIONS:
        raise ValueError(f"{OP_NAME}: distribution must be one of {reference.DISTRIBUTIONS}, got {distribution!r}")
    if seed >= 0 and weight_t is not None:
        raise ValueError(f"{OP_NAME}: give weight_t or a seed, not both")
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"{OP_NAME}: x and weight must be 4-D, got {list(x.shape)} and {list(weight.shape)}")
    for name, t, primal in (("x_t", x_t, x), ("weight_t", weight_t, weight), ("bias_t", bias_t, bias)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"{OP_NAME}: {name} must have the dtype of x ({x.dtype}), got {t.dtype}")
        if primal is None or tuple(t.shape[1:]) != tuple(primal.shape) or t.shape[0] not in (1, num_tangents):
            raise ValueError(f"{OP_NAME}: {name} must have shape [1 or num_tangents={num_tangents}, "
                             f"*{'None' if primal is None else list(primal.shape)}], got {list(t.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{OP_NAME}: {name} must have the dtype of x ({x.dtype}), got {t.dtype}")


def _weight_tangent_conv(x, weight_t, geo: Geometry) -> torch.Tensor:
    """conv(x, W_t[t]) for every t in ONE grouped convolution: group g's output channels become the Tw·O/g
    kernels of all tangents for that group, so x is read once for every tangent. Returns [Tw, N, O, Ho, Wo]."""
    Tw, O = weight_t.shape[:2]
    g = geo.groups
    kernels = weight_t.unflatten(1, (g, O // g)).transpose(0, 1).reshape(g * Tw * (O // g), *weight_t.shape[2:])
    out = F.conv2d(x, kernels, None, *geo)  # [N, g·Tw·O/g, Ho, Wo], channel (g·Tw + t)·O/g + o
    return out.unflatten(1, (g, Tw, O // g)).permute(2, 0, 1, 3, 4, 5).flatten(2, 3)


def _chain_rule_(z_t: torch.Tensor, z: torch.Tensor, y: torch.Tensor, activation: str) -> None:
    """z_t ← act'(z) ⊙ z_t in place over all T tangents (z, y: [N, O, Ho, Wo], broadcast over T). ATen's
    activation-backward kernels evaluate act'(z) per element and never store it."""
    if activation == "relu":
        z_t.masked_fill_(y <= 0, 0)  # relu's JVP convention: 0 where relu(z) <= 0 (reference.activation_derivative)
    elif activation in ("gelu", "gelu_tanh"):
        torch.ops.aten.gelu_backward.grad_input(z_t, z.expand_as(z_t), approximate="tanh" if activation == "gelu_tanh"
                                                else "none", grad_input=z_t)
    elif activation == "silu":
        torch.ops.aten.silu_backward.grad_input(z_t, z.expand_as(z_t), grad_input=z_t)
    elif activation == "tanh":
        torch.ops.aten.tanh_backward.grad_input(z_t, y.expand_as(z_t), grad_input=z_t)


def _kernel(x, x_t, weight, weight_t, bias, bias_t, stride, padding, dilation, groups, activation, num_tangents,
            seed=-1, distribution="gaussian"):
    _check_op_args(x, x_t, weight, weight_t, bias, bias_t, activation, num_tangents, seed, distribution)
    geo, T, N = Geometry(tuple(stride), tuple(padding), tuple(dilation), groups), num_tangents, x.shape[0]
    z = F.conv2d(x, weight, None, *geo)
    z_from_x_t = None
    if x_t is not None and T > 0:
        # Every x tangent shares the weight: ONE convolution over them as a batch of Tx·N images. The primal
        # is not stacked in too: that needs a copy of x and x_t into one batch, and measured slower on CPU
        # (B=64, 64->64 channels, 32x32, 1 thread: cat + conv at batch 128 351 ms, two convs at 64 250 ms).
        z_from_x_t = F.conv2d(x_t.flatten(0, 1), weight, None, *geo).unflatten(0, (x_t.shape[0], N))
    if bias is not None:
        z.add_(bias[:, None, None])
    y = reference.activation_fn(activation, z)
    if T == 0:
        return y, z.new_empty((0, *z.shape))
    if seed >= 0:  # generated for this call only (a conv kernel is small next to the activations)
        weight_t = regenerate_values(0, T * weight.numel(), seed, distribution, x.device).to(x.dtype)
        weight_t = weight_t.view(T, *weight.shape)
    parts = [p for p in (z_from_x_t, None if weight_t is None else _weight_tangent_conv(x, weight_t, geo),
                         None if bias_t is None else bias_t[:, None, :, None, None]) if p is not None]
    if z_from_x_t is not None and z_from_x_t.shape[0] == T:
        # The x-tangent convolution's output already is a fresh [T, N, O, Ho, Wo] buffer: the other terms
        # accumulate into it in place.
        y_t, parts = z_from_x_t, parts[1:]
    else:
        y_t = z.new_zeros((T, *z.shape)) if not parts else parts.pop(0).expand(T, *z.shape).clone()
    for p in parts:
        y_t.add_(p)
    _chain_rule_(y_t, z, y, activation)
    return y, y_t


# Needed so torch.compile / export can trace the op without running a kernel.
def _fake(x, x_t, weight, weight_t, bias, bias_t, stride, padding, dilation, groups, activation, num_tangents,
          seed=-1, distribution="gaussian"):
    _check_op_args(x, x_t, weight, weight_t, bias, bias_t, activation, num_tangents, seed, distribution)
    geo = Geometry(tuple(stride), tuple(padding), tuple(dilation), groups)
    shape = (x.shape[0], weight.shape[0], *geo.output_size(*x.shape[2:], *weight.shape[2:]))
    return x.new_empty(shape), x.new_empty((num_tangents, *shape))


def _setup_context(ctx, inputs, output):
    x, _x_t, weight, _w_t, bias, _b_t, stride, padding, dilation, groups, activation, *_ = inputs
    ctx.geo, ctx.activation = Geometry(tuple(stride), tuple(padding), tuple(dilation), groups), activation
    ops.save_primals(ctx, output, x, weight, bias)


# Backward through the primal only (y_t is a tangent, non-differentiable by contract).
def _backward(ctx, grad_y, _grad_y_t):
    x, weight, bias = ctx.saved_tensors
    gx, gw, gb = _primal_vjp(ctx.geo, ctx.activation, x, weight, bias, grad_y)
    return gx, None, gw, None, gb, *(None,) * 9


# y's tangent from the tangents of (x, weight, bias) by torch ops (differentiable: reverse over forward);
# without it torch.func.jvp over the bare op would return a silent zero.
def _jvp(ctx, x_dot, _xt_dot, w_dot, _wt_dot, b_dot, *_ignored):
    x, weight, bias = ctx.saved_tensors
    return _tangent_formula(ctx.geo, ctx.activation, x, weight, bias, x_dot, w_dot, b_dot), None


# The schema is in csrc/jvp/schema.cpp; both device keys are the ATen composition above (the Triton kernel
# is backend="triton" only, see the module docstring).
_library.register_op(OP_NAME, fake=_fake, setup_context=_setup_context, backward=_backward, jvp=_jvp)
if _backend.has_dispatcher_op(OP_NAME):
    torch.library.register_kernel(QUALNAME, ("cpu", "cuda"), _kernel)
