"""Public dual ops of the JVP pillar: argument checks, backend choice, fake / autograd registrations.

Two ways in:

* ``linear_dual(x, x_t, weight, ...)`` — explicit: returns ``(y, y_t)`` from one fused kernel call. The
  tangent output is *not* differentiable (like every fused JVP kernel, e.g. flash-attention JVPs: their
  consumers stop-gradient it); ``y`` is, to any order, through ordinary autograd.
* ``symkernels.jvp.functional.linear`` / ``symkernels.jvp.Linear`` — transparent: a plain function of the
  primals whose forward-mode tangent (``torch.func.jvp``, ``vmap(jvp)``, ``forward_ad`` duals) comes from
  the same fused kernel. See ``_LinearDualFunction`` for how.
"""
from __future__ import annotations

import os

import torch

from symkernels import _backend, _library
from symkernels.jvp import reference

OP_NAME = "linear_dual"
IMPLEMENTED = ("reference", "cpu", "triton")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The Triton launchers take their op's arguments (csrc/jvp/schema.cpp).
_triton_linear_dual = _library.TritonLauncher("symkernels.jvp.triton.linear_dual")
NATIVE_CUDA_ENV = "SYMKERNELS_JVP_NATIVE_CUDA"


@torch.compiler.assume_constant_result
def native_cuda_requested() -> bool:
    """``SYMKERNELS_JVP_NATIVE_CUDA=1``, read at call time: the native CUDA kernels of linear_dual and the row
    duals are opt-in (csrc/jvp/linear_dual_cuda.cpp says why)."""
    return os.environ.get(NATIVE_CUDA_ENV) == "1"


def resolve(op: str, device: torch.device, backend: str | None, implemented: tuple[str, ...]) -> str:
    """``_backend.resolve`` for linear_dual and the row duals, with their CUDA choice made here, per call: where
    the op's CUDA kernel is symkernels._C's native one (a CUDA build), the default route runs it only on
    request (native_cuda_requested), else the Triton kernel (the reference where Triton is missing), as
    when the CUDA key is Triton's (builds without CUDA kernels)."""
    impl = _backend.resolve(op, device, backend, implemented)
    if impl != "dispatcher" or device.type != "cuda" or native_cuda_requested():
        return impl
    registration = _library.REGISTERED.get(op)
    if registration is not None and registration.triton is None:  # the op's CUDA kernel is the native one
        return "triton" if _backend.backend_available("triton") else "reference"
    return impl


def _normalize_activation(activation, op: str = OP_NAME) -> str:
    name = "none" if activation is None else activation
    if name not in reference.ACTIVATIONS:
        raise ValueError(f"{op}: activation must be None or one of {reference.ACTIVATIONS[1:]}, got {activation!r}")
    return name


def _check_tensor(name: str, t, dtype: torch.dtype | None, op: str = OP_NAME) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if dtype is None:
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{op}: {name} must have a floating dtype in {SUPPORTED_DTYPES}, got {t.dtype}")
    elif t.dtype != dtype:
        raise TypeError(f"{op}: {name} must have the dtype of x ({dtype}), got {t.dtype}")


def common_tangent_count(op: str, counts: dict[str, int]) -> int:
    """The T shared by every batched tangent (1 when none is batched); ``counts`` maps argument names to their
    leading tangent count. Disagreeing counts are an error naming each argument."""
    if len(set(counts.values())) > 1:
        raise ValueError(f"{op}: tangents disagree on the number of tangents T: "
                         + ", ".join(f"{name} has T={T}" for name, T in counts.items()))
    return next(iter(counts.values())) if counts else 1


def tangent_count_with_request(op: str, counts: dict[str, int], num_tangents) -> int:
    """common_tangent_count, with the caller's explicit ``num_tangents`` (validated) as one more vote."""
    if num_tangents is not None:
        if not isinstance(num_tangents, int) or isinstance(num_tangents, bool) or num_tangents < 1:
            raise ValueError(f"{op}: num_tangents must be a positive int, got {num_tangents!r}")
        counts = {**counts, "num_tangents": num_tangents}
    return common_tangent_count(op, counts)


def check_seed(op: str, weight_seed, weight_t, distribution) -> None:
    """A seeded weight tangent replaces weight_t; the seed's range and the distribution are validated."""
    if weight_seed is None:
        return
    if weight_t is not None:
        raise ValueError(f"{op}: give weight_t or weight_seed, not both")
    reference.seed_keys(weight_seed)  # validates the range
    if distribution not in reference.DISTRIBUTIONS:
        raise ValueError(f"{op}: distribution must be one of {reference.DISTRIBUTIONS}, got {distribution!r}")


def _tangent_count(name: str, t: torch.Tensor | None, primal_shape: tuple[int, ...], primal_name: str,
                   op: str = OP_NAME) -> int | None:
    """None if ``t`` has the primal's shape (no T dim), T if it is ``[T, *primal_shape]``; else an error."""
    if t is None or tuple(t.shape) == primal_shape:
        return None
    if t.dim() == len(primal_shape) + 1 and tuple(t.shape[1:]) == primal_shape:
        return t.shape[0]
    raise ValueError(f"{op}: {name} must have the shape of {primal_name} {list(primal_shape)} or "
                     f"[T, {', '.join(map(str, primal_shape))}], got {list(t.shape)}")


class _Canonical:
    """User arguments mapped to the kernels' canonical shapes (reference.py docstring)."""

    def __init__(self, x, x_t, weight, weight_t, bias, bias_t, activation, weight_seed, distribution,
                 num_tangents):
        _check_tensor("x", x, None)
        dtype = x.dtype
        _check_tensor("weight", weight, dtype)
        for name, t in (("x_t", x_t), ("weight_t", weight_t), ("bias", bias), ("bias_t", bias_t)):
            if t is not None:
                _check_tensor(name, t, dtype)
        if x.dim() < 1:
            raise ValueError(f"{OP_NAME}: x must have shape [..., K], got a scalar")
        if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
            raise ValueError(f"{OP_NAME}: weight must have shape [N, K={x.shape[-1]}], got {list(weight.shape)}")
        N, K = weight.shape
        if bias is not None and tuple(bias.shape) != (N,):
            raise ValueError(f"{OP_NAME}: bias must have shape [N={N}], got {list(bias.shape)}")
        if bias_t is not None and bias is None:
            raise ValueError(f"{OP_NAME}: bias_t was given but bias is None")
        self.activation = _normalize_activation(activation)
        check_seed(OP_NAME, weight_seed, weight_t, distribution)
        counts = {name: c for name, c in (
            ("x_t", _tangent_count("x_t", x_t, tuple(x.shape), "x")),
            ("weight_t", _tangent_count("weight_t", weight_t, (N, K), "weight")),
            ("bias_t", _tangent_count("bias_t", bias_t, (N,), "bias")),
        ) if c is not None}
        self.batched = bool(counts) or num_tangents is not None
        T = tangent_count_with_request(OP_NAME, counts, num_tangents)
        if weight_seed is not None and T * N * K > reference.MAX_SEEDED_ELEMENTS - 1:
            raise ValueError(f"{OP_NAME}: seeded tangents need T*N*K < 2**31, got {T * N * K}")
        self.T, self.N, self.K = T, N, K
        self.lead = tuple(x.shape[:-1])
        M = 1
        for s in self.lead:
            M *= s
        self.M = M
        self.x = x.reshape(M, K)
        self.weight = weight
        self.bias = bias
        # Tangents without a T dim get a T dim of 1: the kernels broadcast it over all T.
        self.x_t = None if x_t is None else (x_t.reshape(T if "x_t" in counts else 1, M, K))
        self.weight_t = None if weight_t is None else (weight_t if weight_t.dim() == 3 else weight_t.unsqueeze(0))
        self.bias_t = None if bias_t is None else (bias_t if bias_t.dim() == 2 else bias_t.unsqueeze(0))
        self.seed = weight_seed
        self.distribution = distribution

    def outputs(self, y: torch.Tensor, y_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = y.reshape(*self.lead, self.N)
        y_t = y_t.reshape(self.T, *self.lead, self.N)
        return y, (y_t if self.batched else y_t[0])


def linear_dual(x: torch.Tensor, x_t: torch.Tensor | None, weight: torch.Tensor, weight_t: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, bias_t: torch.Tensor | None = None, activation: str | None = None, *,
                weight_seed: int | None = None, distribution: str = "gaussian", num_tangents: int | None = None,
                backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused primal and tangent of ``y = act(x @ weight.T + bias)``, one kernel call.

    Args:
        x: ``[..., K]`` (float16/bfloat16/float32/float64; weight, bias and tangents in the same dtype).
        x_t: tangent of x, ``x.shape`` or ``[T, *x.shape]``; None for a zero tangent.
        weight: ``[N, K]``; weight_t: ``[N, K]`` or ``[T, N, K]``; None for zero.
        bias: ``[N]`` or None; bias_t: ``[N]`` or ``[T, N]`` (needs bias).
        activation: None, "relu", "gelu", "gelu_tanh", "silu" or "tanh".
        weight_seed: int in [0, 2^31): generate weight_t from the counter-based RNG instead of passing it
            (``reference.seeded_tangent((T, N, K), seed, distribution)``); the kernels never store it.
        distribution: "gaussian" (N(0, 1)) or "rademacher" (±1) for the seeded tangent.
        num_tangents: T, when no tangent tensor carries it (e.g. only a seed).
        backend: None (C++ on CPU; on CUDA Triton, or the native CUDA kernel with
            SYMKERNELS_JVP_NATIVE_CUDA=1, see ``resolve``), "reference", "cpu" or "triton".

    Returns:
        ``(y, y_t)``: ``y [..., N]``; ``y_t [T, ..., N]`` if any tangent carries T (or num_tangents is
        given), else ``[..., N]``. Equals ``torch.func.jvp`` of the plain function, per tangent. ``y`` is
        differentiable (any order); ``y_t`` is not (see module docstring).
    """
    c = _Canonical(x, x_t, weight, weight_t, bias, bias_t, activation, weight_seed, distribution, num_tangents)
    device = _backend.common_device(OP_NAME, x=x, x_t=x_t, weight=weight, weight_t=weight_t, bias=bias, bias_t=bias_t)
    impl = resolve(OP_NAME, device, backend, IMPLEMENTED)
    y, y_t = _LinearDualFunction.apply(c.x, c.weight, c.bias, c.x_t, c.weight_t, c.bias_t, c.activation, c.T,
                                       c.seed, c.distribution, impl, False)
    return c.outputs(y, y_t)


def _raw_linear_dual(x, weight, bias, x_t, weight_t, bias_t, activation, T, seed, distribution, impl):
    """One kernel call on canonical shapes, no autograd recording."""
    if impl == "reference":
        with torch.no_grad():
            return reference.linear_dual(x, x_t, weight, weight_t, bias, bias_t, activation, T, seed, distribution)
    op_args = (x, x_t, weight, weight_t, bias, bias_t, activation, T, -1 if seed is None else seed, distribution)
    if impl == "triton":
        return _triton_linear_dual(*op_args)
    return torch.ops.symkernels.linear_dual(*op_args)


def _tangent_formula(x, weight, bias, x_dot, w_dot, b_dot, activation):
    """y's tangent from plain torch ops: the fallback that stays correct under every transform nesting."""
    z = torch.nn.functional.linear(x, weight, bias)
    z_dot = torch.zeros_like(z)
    if x_dot is not None:
        z_dot = z_dot + x_dot @ weight.T
    if w_dot is not None:
        z_dot = z_dot + x @ w_dot.T
    if b_dot is not None:
        z_dot = z_dot + b_dot
    return reference.activation_derivative(activation, z) * z_dot


class _LinearDualFunction(_library.KernelFunction):
    """Autograd for the fused kernel, in both modes.

    forward(x, W, b, x_t, W_t, b_t, ...) → (y, y_t) by one kernel call; y_t is marked non-differentiable.

    * ``fused=True`` (the transparent path, ``functional.linear``): the caller unpacked the forward-AD
      tangents of (x, W, b) and passed them as x_t/W_t/b_t (T = 1), so y_t *is* y's tangent and ``jvp``
      just returns it (saved with ``save_for_forward``) — no second GEMM pass.
    * ``fused=False`` (explicit ``linear_dual``, or transforms the fused path cannot serve): ``jvp``
      computes y's tangent from the tangents it is given with plain torch ops.
    ``backward`` recomputes z and applies act'(z) with torch ops on the saved primals, so double backward
    is ordinary autograd.
    """

    @staticmethod
    def forward(x, weight, bias, x_t, weight_t, bias_t, activation, T, seed, distribution, impl, fused):
        return _raw_linear_dual(x, weight, bias, x_t, weight_t, bias_t, activation, T, seed, distribution, impl)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, *_rest = inputs
        ctx.activation, ctx.fused = inputs[6], inputs[11]
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, bias)
        ctx.save_for_forward(x, weight, bias, output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad_y, _grad_y_t):
        x, weight, bias = ctx.saved_tensors
        z = torch.nn.functional.linear(x, weight, bias)
        grad_z = grad_y * reference.activation_derivative(ctx.activation, z)
        grad_x = grad_z @ weight if ctx.needs_input_grad[0] else None
        grad_w = grad_z.T @ x if ctx.needs_input_grad[1] else None
        grad_b = grad_z.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, x_dot, w_dot, b_dot, *_ignored):
        x, weight, bias, y_t = ctx.saved_tensors
        if ctx.fused:
            return y_t[0], None
        return _tangent_formula(x, weight, bias, x_dot, w_dot, b_dot, ctx.activation), None

    @staticmethod
    def vmap(info, in_dims, x, weight, bias, x_t, weight_t, bias_t, activation, T, seed, distribution, impl, fused):
        B = info.batch_size
        primal_dims = in_dims[:3]
        if all(d is None for d in primal_dims) and seed is None:
            # Only tangents are batched (vmap over jvp): fold the vmapped dim into the tangent dim T, so
            # the B·T tangents share one primal GEMM in one kernel call.
            def fold(t, d):
                return _fold_vmapped_tangent(t, d, B, T)

            y, y_t = _LinearDualFunction.apply(x, weight, bias, fold(x_t, in_dims[3]), fold(weight_t, in_dims[4]),
                                               fold(bias_t, in_dims[5]), activation, B * T, seed, distribution,
                                               impl, fused)
            return (y, y_t.reshape(B, T, *y_t.shape[1:])), (None, 0)
        # Anything else (batched primals): one call per batch element. Correct, not fast.
        outs = []
        for i in range(B):
            args = [a if d is None or a is None else a.select(d, i)
                    for a, d in zip((x, weight, bias, x_t, weight_t, bias_t), in_dims[:6])]
            outs.append(_LinearDualFunction.apply(*args, activation, T, seed, distribution, impl, fused))
        return (torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])), (0, 0)


def save_primals(ctx, output, *primals) -> None:
    """The common part of the dual ops' setup_context: the primals saved for backward and for jvp, and the
    tangent output y_t (output[1]) non-differentiable."""
    ctx.save_for_backward(*primals)
    ctx.save_for_forward(*primals)
    ctx.mark_non_differentiable(output[1])


# ------------------------------------------------------------------------------------------------------
# The dispatcher op symkernels::linear_dual (schema, CPU and CUDA kernels in csrc/jvp): fake, autograd in
# both modes, and Triton as its CUDA kernel where symkernels._C has none (_library.register_op).
# ------------------------------------------------------------------------------------------------------
# Needed so torch.compile / export can trace the op without running a kernel.
def _fake(x, x_t, weight, weight_t, bias, bias_t, activation, num_tangents, seed=-1, distribution="gaussian"):
    M, N = x.shape[0], weight.shape[0]
    return x.new_empty((M, N)), x.new_empty((num_tangents, M, N))


# Backward through the primal only (y_t is a tangent, non-differentiable by contract).
def _setup_context(ctx, inputs, output):
    x, _x_t, weight, _w_t, bias, _b_t, activation, *_ = inputs
    ctx.activation = activation
    ctx.has_bias = bias is not None
    save_primals(ctx, output, x, weight, bias)


def _backward(ctx, grad_y, _grad_y_t):
    x, weight, bias = ctx.saved_tensors
    z = torch.nn.functional.linear(x, weight, bias)
    grad_z = grad_y * reference.activation_derivative(ctx.activation, z)
    grad_b = grad_z.sum(0) if ctx.has_bias else None
    return grad_z @ weight, None, grad_z.T @ x, None, grad_b, None, None, None, None, None


# y's tangent from the tangents of (x, weight, bias) by plain torch ops, so that it is itself
# differentiable (jacrev-of-jvp, gradcheck's forward-over-reverse). The tangents of the op's tangent
# *inputs* (x_t, weight_t, bias_t) do not enter y; y_t is non-differentiable, so its tangent is None.
def _jvp(ctx, x_dot, _xt_dot, w_dot, _wt_dot, b_dot, *_ignored):
    x, weight, bias = ctx.saved_tensors
    return _tangent_formula(x, weight, bias, x_dot, w_dot, b_dot, ctx.activation), None


_library.register_op(OP_NAME, fake=_fake, setup_context=_setup_context, backward=_backward, jvp=_jvp,
                     triton=_triton_linear_dual)


# ======================================================================================================
# Row-wise duals: layer_norm_dual, rms_norm_dual, softmax_dual (last dim). Backends: reference, cpu (the
# dispatcher ops torch.ops.symkernels.{layer_norm,rms_norm,softmax}_dual, one templated C++ row kernel),
# triton. The ops take canonical shapes (reference.row_dual); each has exactly its function's arguments.
# ======================================================================================================
ROW_IMPLEMENTED = ("reference", "cpu", "triton")
ROW_OPS = {"layer_norm": "layer_norm_dual", "rms_norm": "rms_norm_dual", "softmax": "softmax_dual"}
_triton_row_dual = _library.TritonLauncher("symkernels.jvp.triton.row_dual")
# The ops' CUDA kernels where symkernels._C has none: launchers with their op's arguments, which refuse
# rows longer than triton.MAX_ROW.
_TRITON_ROW_OPS = {kind: _library.TritonLauncher(f"symkernels.jvp.triton.{name}") for kind, name in ROW_OPS.items()}


def _row_op_args(kind, x, x_t, w, w_t, b, b_t, eps, T):
    """Canonical row-dual arguments as the dispatcher op of ``kind`` takes them."""
    if kind == "layer_norm":
        return x, x_t, w, w_t, b, b_t, eps, T
    if kind == "rms_norm":
        return x, x_t, w, w_t, eps, T
    return x, x_t, T


def _row_from_op_args(kind, args):
    """Inverse of _row_op_args: (x, x_t, w, w_t, b, b_t, eps, T)."""
    if kind == "layer_norm":
        return tuple(args)
    if kind == "rms_norm":
        x, x_t, w, w_t, eps, T = args
        return x, x_t, w, w_t, None, None, eps, T
    x, x_t, T = args
    return x, x_t, None, None, None, None, 0.0, T


def _row_canonical(op, x, x_t, params):
    """Checks and canonical shapes for the row duals. params: [(name, primal, tangent)] of [N] vectors."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: x must have a floating dtype in {SUPPORTED_DTYPES}, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have at least one dimension, got a scalar")
    N = x.shape[-1]
    counts = {}
    tensors = [("x_t", x_t)] + [(n, p) for n, p, _ in params] + [(n + "_t", t) for n, _, t in params]
    for name, t in tensors:
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} must have the dtype of x ({x.dtype}), got {t.dtype}")
    if x_t is not None:
        if tuple(x_t.shape) == tuple(x.shape):
            pass
        elif x_t.dim() == x.dim() + 1 and tuple(x_t.shape[1:]) == tuple(x.shape):
            counts["x_t"] = x_t.shape[0]
        else:
            raise ValueError(f"{op}: x_t must have the shape of x {list(x.shape)} or [T, {', '.join(map(str, x.shape))}]"
                             f", got {list(x_t.shape)}")
    for name, p, t in params:
        if p is not None and tuple(p.shape) != (N,):
            raise ValueError(f"{op}: {name} must have shape [{N}] (x.shape[-1]), got {list(p.shape)}")
        if t is not None:
            if p is None:
                raise ValueError(f"{op}: {name}_t was given but {name} is None")
            if tuple(t.shape) == (N,):
                pass
            elif t.dim() == 2 and t.shape[1] == N:
                counts[name + "_t"] = t.shape[0]
            else:
                raise ValueError(f"{op}: {name}_t must have shape [{N}] or [T, {N}], got {list(t.shape)}")
    T = common_tangent_count(op, counts)
    lead = tuple(x.shape[:-1])
    R = 1
    for s in lead:
        R *= s
    xc = x.reshape(R, N)
    xt = None if x_t is None else x_t.reshape(T if "x_t" in counts else 1, R, N)
    canon = [(p, None if t is None else (t if t.dim() == 2 else t.unsqueeze(0))) for _, p, t in params]

    def outputs(y, y_t):
        y = y.reshape(x.shape)
        y_t = y_t.reshape(T, *x.shape)
        return y, (y_t if counts else y_t[0])

    return xc, xt, canon, T, outputs


def _raw_row_dual(kind, x, x_t, w, w_t, b, b_t, eps, T, impl):
    if impl == "reference":
        with torch.no_grad():
            return reference.row_dual(kind, x, x_t, w, w_t, b, b_t, eps, T)
    if impl == "triton":
        return _triton_row_dual(kind, x, x_t, w, w_t, b, b_t, eps, T)
    op = getattr(torch.ops.symkernels, ROW_OPS[kind])
    return op(*_row_op_args(kind, x, x_t, w, w_t, b, b_t, eps, T))


def _row_vjp(kind, eps, x, w, b, grad_y):
    """(grad_x, grad_w, grad_b) of the plain primal by torch.func.vjp (differentiable: double backward)."""
    f = _row_primal(kind, eps)
    present = [t for t in (x, w, b) if t is not None]

    def primal(*ts):
        it = iter(ts)
        return f(*(None if t is None else next(it) for t in (x, w, b)))

    _, vjp_fn = torch.func.vjp(primal, *present)
    grads = iter(vjp_fn(grad_y))
    return tuple(None if t is None else next(grads) for t in (x, w, b))


def _row_tangent(kind, eps, x, w, b, x_dot, w_dot, b_dot):
    """y's tangent from plain torch ops (reference.row_dual with T = 1): differentiable, transform-safe."""
    tan = lambda d: None if d is None else d.unsqueeze(0)  # noqa: E731
    return reference.row_dual(kind, x, tan(x_dot), w, tan(w_dot), b, tan(b_dot), eps, 1)[1][0]


def _row_primal(kind, eps):
    """The plain-PyTorch primal (for backward by torch.func.vjp and the transform-safe tangent)."""
    def f(x, w, b):
        return reference.row_dual(kind, x, None, w, None, b, None, eps, 0)[0]
    return f


def _raw_row_dual_in_order(x, w, b, x_t, w_t, b_t, kind, eps, T, impl):
    return _raw_row_dual(kind, x, x_t, w, w_t, b, b_t, eps, T, impl)


def _fold_vmapped_tangent(t, d, B, T):
    """A tangent [T, ...] vmapped over B at dim d (None: shared) as [B·T, ...]; a T-broadcast tangent (its
    tangent dim of size 1) is expanded to T first. None stays None."""
    if t is None:
        return None
    if d is None:
        return t if t.shape[0] == 1 else t.unsqueeze(0).expand(B, *t.shape).reshape(B * T, *t.shape[1:])
    t = t.movedim(d, 0)
    if t.shape[1] == 1 and T > 1:
        t = t.expand(B, T, *t.shape[2:])
    return t.reshape(B * T, *t.shape[2:])


def _vmap_rule(fn, info, in_dims, primals, tangents, T, make_args):
    """Shared vmap rule of the dual Functions: if only tangents are batched (vmap over jvp), fold the
    vmapped dim into the tangent dim T — B·T tangents in one kernel call sharing one primal; otherwise
    (batched primals) one call per batch element."""
    B = info.batch_size
    if all(d is None for d in in_dims[:len(primals)]):
        def fold(t, d):
            return _fold_vmapped_tangent(t, d, B, T)

        tdims = in_dims[len(primals):len(primals) + len(tangents)]
        y, y_t = fn.apply(*make_args(*(fold(t, d) for t, d in zip(tangents, tdims)), B * T))
        return (y, y_t.reshape(B, T, *y_t.shape[1:])), (None, 0)
    outs = []
    for i in range(B):
        sel = [a if d is None or a is None else a.select(d, i) for a, d in zip((*primals, *tangents), in_dims)]
        p, t = sel[:len(primals)], sel[len(primals):]
        args = list(make_args(*t, T))
        args[:len(primals)] = p
        outs.append(fn.apply(*args))
    return (torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])), (0, 0)


def dual_function(name: str, kernel, primal_vjp, tangent, check_vmap=None) -> type[torch.autograd.Function]:
    """The autograd.Function of a fused dual op that, like ``_LinearDualFunction``, takes
    (x, w, b, x_t, w_t, b_t, c0, c1, T, *options, fused) and returns (y, y_t) from one call of
    ``kernel(*inputs without fused)``, y_t non-differentiable:

    * ``fused=True``: x_t/w_t/b_t are the forward-AD tangents of x, w, b (T = 1), so y_t is y's own tangent
      and ``jvp`` returns it; otherwise ``jvp`` computes it as ``tangent(c0, c1, x, w, b, ẋ, ẇ, ḃ)``;
    * ``backward`` is ``primal_vjp(c0, c1, x, w, b, grad_y)`` on the saved primals, with plain torch ops
      (so double backward is ordinary autograd);
    * ``vmap``: ``_vmap_rule`` (vmapped tangents fold into T), after ``check_vmap(inputs)`` may refuse.
    (c0, c1) is what the plain primal needs besides the tensors: (kind, eps), (geometry, activation)."""

    class DualFunction(_library.KernelFunction):
        @staticmethod
        def forward(*inputs):
            return kernel(*inputs[:-1])

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.config, ctx.fused, ctx.n_inputs = inputs[6:8], inputs[-1], len(inputs)
            ctx.save_for_backward(*inputs[:3])
            ctx.save_for_forward(*inputs[:3], output[1])
            ctx.mark_non_differentiable(output[1])

        @staticmethod
        def backward(ctx, grad_y, _grad_y_t):
            return (*primal_vjp(*ctx.config, *ctx.saved_tensors, grad_y), *(None,) * (ctx.n_inputs - 3))

        @staticmethod
        def jvp(ctx, x_dot, w_dot, b_dot, *_ignored):
            x, w, b, y_t = ctx.saved_tensors
            if ctx.fused:
                return y_t[0], None
            return tangent(*ctx.config, x, w, b, x_dot, w_dot, b_dot), None

        @staticmethod
        def vmap(info, in_dims, *inputs):
            if check_vmap is not None:
                check_vmap(inputs)
            return _vmap_rule(DualFunction, info, in_dims, inputs[:3], inputs[3:6], inputs[8],
                              lambda xt, wt, bt, TT: (*inputs[:3], xt, wt, bt, *inputs[6:8], TT, *inputs[9:]))

    DualFunction.__name__ = DualFunction.__qualname__ = name
    return DualFunction


# The row duals: (x, w, b, x_t, w_t, b_t, kind, eps, T, impl, fused).
_RowDualFunction = dual_function("_RowDualFunction", _raw_row_dual_in_order, _row_vjp, _row_tangent)


def _row_dual(op, kind, x, x_t, params, eps, backend):
    xc, xt, canon, T, outputs = _row_canonical(op, x, x_t, params)
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"{op}: eps must be a non-negative number, got {eps!r}")
    tensors = {"x": x, "x_t": x_t, **{n: p for n, p, _ in params}, **{n + "_t": t for n, _, t in params}}
    device = _backend.common_device(op, **tensors)
    impl = resolve(op, device, backend, ROW_IMPLEMENTED)
    if impl == "triton" and x.shape[-1] > (1 << 16):
        raise ValueError(f"{op}: x.shape[-1] must be at most 65536 for backend 'triton' (a row is held in "
                         f"registers), got {x.shape[-1]}")
    (w, w_t), (b, b_t) = (canon + [(None, None), (None, None)])[:2]
    y, y_t = _RowDualFunction.apply(xc, w, b, xt, w_t, b_t, kind, float(eps), T, impl, False)
    return outputs(y, y_t)


def layer_norm_dual(x, x_t, weight=None, weight_t=None, bias=None, bias_t=None, *, eps: float = 1e-5,
                    backend: str | None = None):
    """Primal and tangent of ``F.layer_norm(x, (N,), weight, bias, eps)`` over the last dim, one pass.

    Shapes: x ``[..., N]``; x_t ``x.shape`` or ``[T, *x.shape]``; weight/bias ``[N]``; their tangents
    ``[N]`` or ``[T, N]``. Returns ``(y, y_t)`` like ``linear_dual`` (y_t non-differentiable).
    Backends: "reference", "cpu" (C++ row kernel, the default on CPU), "triton" (None: the dispatcher op on
    CPU, Triton on GPU or the native CUDA kernel with SYMKERNELS_JVP_NATIVE_CUDA=1, see ``resolve``; the
    reference when symkernels._C is not built).
    """
    return _row_dual("layer_norm_dual", "layer_norm", x, x_t, [("weight", weight, weight_t), ("bias", bias, bias_t)],
                     eps, backend)


def rms_norm_dual(x, x_t, weight=None, weight_t=None, *, eps: float = 1e-6, backend: str | None = None):
    """Primal and tangent of ``x / sqrt(mean(x²) + eps) * weight`` over the last dim (as layer_norm_dual)."""
    return _row_dual("rms_norm_dual", "rms_norm", x, x_t, [("weight", weight, weight_t)], eps, backend)


def softmax_dual(x, x_t, *, backend: str | None = None):
    """Primal and tangent of ``softmax(x, dim=-1)``: ṡ = s ⊙ (ẋ − ⟨s, ẋ⟩) (as layer_norm_dual)."""
    return _row_dual("softmax_dual", "softmax", x, x_t, [], 0.0, backend)


def _register_row_dispatcher_ops() -> None:
    """Fake kernels, autograd (reverse *and* forward mode) and the Triton CUDA kernel of the three row ops."""
    for kind, name in ROW_OPS.items():
        def _fake(*args, _kind=kind):
            x, *_, T = _row_from_op_args(_kind, args)
            return x.new_empty(x.shape), x.new_empty((T, *x.shape))

        def _setup_context(ctx, inputs, output, _kind=kind):
            x, _x_t, w, _w_t, b, _b_t, eps, _T = _row_from_op_args(_kind, inputs)
            ctx.kind, ctx.eps = _kind, eps
            save_primals(ctx, output, x, w, b)

        # Gradients land in the op's own argument order; the tangent inputs and scalars get None.
        def _backward(ctx, grad_y, _grad_y_t):
            x, w, b = ctx.saved_tensors
            gx, gw, gb = _row_vjp(ctx.kind, ctx.eps, x, w, b, grad_y)
            return _row_op_args(ctx.kind, gx, None, gw, None, gb, None, None, None)

        # y's tangent from the tangents of (x, weight, bias) with plain torch ops (differentiable, so
        # reverse-over-forward works); y_t is non-differentiable by contract, its tangent None.
        def _jvp(ctx, *tangents):
            x, w, b = ctx.saved_tensors
            x_dot, _, w_dot, _, b_dot, *_ = _row_from_op_args(ctx.kind, tangents)
            return _row_tangent(ctx.kind, ctx.eps, x, w, b, x_dot, w_dot, b_dot), None

        _library.register_op(name, fake=_fake, setup_context=_setup_context, backward=_backward, jvp=_jvp,
                             triton=_TRITON_ROW_OPS[kind])


_register_row_dispatcher_ops()
