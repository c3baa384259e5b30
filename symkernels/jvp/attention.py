"""attention_dual: primal and tangent of ``softmax(q kᵀ·scale [causal]) v`` in one call, as a dispatcher op.

``torch.ops.symkernels.attention_dual`` (schema in csrc/jvp/schema.cpp; its kernels are Python) takes
canonical shapes q [BH, Lq, D], k [BH, Lk, D], v [BH, Lk, DV], tangents [Tx, BH, ...] with Tx in {1, T}
or None, and returns (o [BH, Lq, DV], o_t [T, BH, Lq, DV]). ``impl`` picks the kernel: "reference" (the
closed form of fwdgrad.md §4 with the L×L matrices) or "triton" (flash-style online softmax with the
tangent statistics, nothing L×L stored). ``op_kernel`` serves the CPU and CUDA keys; on CUDA it goes
through a ``TritonLauncher`` (``symkernels._library.register_op``), so torch.compile sees the Triton kernel.

Autograd, registered through ``register_op`` so that the bare op is right in both modes:
  * backward: o's gradient wrt q, k, v by ``torch.func.vjp`` of the plain-PyTorch primal on the saved
    inputs (O(L²) memory per head, differentiable again, so double backward works); o_t is a tangent and
    non-differentiable, by the contract of every fused JVP kernel (sCM, MeanFlow stop-gradient it);
  * jvp: o's tangent from the input tangents by the same closed form in torch ops (so ``torch.func.jvp``
    over the bare op never returns a silent zero).
Without symkernels._C the op is not declared; the public functions then compute the reference closed form
in torch ops.
"""
from __future__ import annotations

import torch

from symkernels import _backend, _library
from symkernels.jvp import reference
from symkernels.jvp.ops import common_tangent_count, save_primals

OP_NAME = "attention_dual"
QUALNAME = f"symkernels::{OP_NAME}"
IMPLEMENTED = ("reference", "triton")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_triton_attention = _library.TritonLauncher("symkernels.jvp.triton.attention_dual")


def op_kernel(q, k, v, q_t, k_t, v_t, num_tangents: int, causal: bool, scale: float, impl: str):
    """The op's kernel (CPU and CUDA keys). It runs inside the CUDA key's TritonLauncher, which sets how the
    Triton kernel launches (directly, or recorded under torch.compile): hence the launcher's bare function."""
    BH, Lq, DV = q.shape[0], q.shape[1], v.shape[2]
    if impl == "triton":
        o, o_t = _triton_attention.function(q, k, v, q_t, k_t, v_t, causal, scale)
    elif impl == "reference":
        with torch.no_grad():
            o, o_t = reference.attention_dual(q, k, v, q_t, k_t, v_t, causal, scale)
    else:
        raise ValueError(f"{OP_NAME}: impl must be one of {IMPLEMENTED}, got {impl!r}")
    # Tangents broadcast over T (tangent dim 1, or none at all) give one o_t row: every tangent equals it.
    return o.contiguous(), o_t.expand(num_tangents, BH, Lq, DV).contiguous()


# Needed so torch.compile / export can trace the op without running a kernel.
def _fake(q, k, v, q_t, k_t, v_t, num_tangents, causal, scale, impl):
    BH, Lq, DV = q.shape[0], q.shape[1], v.shape[2]
    return q.new_empty((BH, Lq, DV)), q.new_empty((num_tangents, BH, Lq, DV))


def _setup_context(ctx, inputs, output):
    q, k, v = inputs[:3]
    ctx.causal, ctx.scale = inputs[7], inputs[8]
    save_primals(ctx, output, q, k, v)


def _backward(ctx, grad_o, _grad_o_t):
    q, k, v = ctx.saved_tensors
    _, vjp_fn = torch.func.vjp(lambda q, k, v: reference.attention(q, k, v, ctx.causal, ctx.scale), q, k, v)
    return (*vjp_fn(grad_o), None, None, None, None, None, None, None)


def _jvp(ctx, q_dot, k_dot, v_dot, *_ignored):
    q, k, v = ctx.saved_tensors
    tan = lambda t: None if t is None else t.unsqueeze(0)  # noqa: E731
    o_dot = reference.attention_dual(q, k, v, tan(q_dot), tan(k_dot), tan(v_dot), ctx.causal, ctx.scale)[1][0]
    return o_dot, None


_library.register_op(OP_NAME, fake=_fake, setup_context=_setup_context, backward=_backward, jvp=_jvp,
                     triton=_library.TritonLauncher("symkernels.jvp.attention.op_kernel"))
if _backend.has_dispatcher_op(OP_NAME):
    # CPU, and CUDA where register_op did not give that key to the launcher (Triton not installed).
    torch.library.register_kernel(QUALNAME, ("cpu",) if _library.REGISTERED[OP_NAME].triton else ("cpu", "cuda"),
                                  op_kernel)


def resolve_impl(backend: str | None, **tensors) -> str:
    """The op's ``impl`` argument for a call: the named backend, or per device (Triton on CUDA)."""
    device = _backend.common_device(OP_NAME, **tensors)
    impl = _backend.resolve(OP_NAME, device, backend, IMPLEMENTED)
    if not _backend.has_dispatcher_op(OP_NAME):  # symkernels._C not built: the reference, in torch ops
        if backend is None or impl == "reference":
            return "reference"
        raise RuntimeError(f"{OP_NAME}: backend={backend!r} needs the op, declared by symkernels._C: "
                           f"{_backend.backend_status('cpu').reason}")
    if impl == "dispatcher":  # backend=None: the op is registered for CPU and CUDA; choose its kernel here
        impl = "triton" if device.type == "cuda" and _backend.backend_available("triton") else "reference"
    return impl


def check_primals(q, k, v) -> None:
    """q [..., Lq, d], k [..., Lk, d], v [..., Lk, dv] of one floating dtype; clear errors otherwise."""
    op = OP_NAME
    for name, t in (("q", q), ("k", k), ("v", v)):
        _backend.check_float_tensor(op, name, t, "d", SUPPORTED_DTYPES)
        if t.dtype != q.dtype:
            raise TypeError(f"{op}: {name} must have q's dtype {q.dtype}, got {t.dtype}")
        if t.dim() < 2:
            raise ValueError(f"{op}: {name} must have shape [..., L, d], got {list(t.shape)}")
    if k.shape[-1] != q.shape[-1] or k.shape[:-2] != q.shape[:-2] or v.shape[:-2] != q.shape[:-2] \
            or v.shape[-2] != k.shape[-2]:
        raise ValueError(f"{op}: expected q [..., Lq, d], k [..., Lk, d], v [..., Lk, dv], got "
                         f"{list(q.shape)}, {list(k.shape)}, {list(v.shape)}")


def attention_dual(q, k, v, q_t=None, k_t=None, v_t=None, *, causal: bool = False, scale: float | None = None,
                   backend: str | None = None):
    """Primal and tangent of ``softmax(q kᵀ·scale [causal]) v`` over ``[..., L, d]`` tensors, one call.

    Tangents have the primal's shape or a leading T; returns ``(o, o_t)`` (``o_t`` with the T dim iff a
    tangent has one). Backends: "reference" and "triton" (None: triton for CUDA tensors, else the
    reference). Causal masking is top-left aligned like SDPA's ``is_causal``. ``o`` is differentiable in
    q, k, v in reverse and forward mode (any backend); ``o_t`` is not (a tangent output).
    """
    op = OP_NAME
    check_primals(q, k, v)
    lead = tuple(q.shape[:-2])
    BH = 1
    for s in lead:
        BH *= s
    counts, canon = {}, []
    for name, p, t in (("q_t", q, q_t), ("k_t", k, k_t), ("v_t", v, v_t)):
        if t is None:
            canon.append(None)
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.dtype != q.dtype:
            raise TypeError(f"{op}: {name} must have q's dtype {q.dtype}, got {t.dtype}")
        if t.shape == p.shape:
            canon.append(t.reshape(1, BH, *p.shape[-2:]))
        elif t.dim() == p.dim() + 1 and t.shape[1:] == p.shape:
            counts[name] = t.shape[0]
            canon.append(t.reshape(t.shape[0], BH, *p.shape[-2:]))
        else:
            raise ValueError(f"{op}: {name} must have shape {list(p.shape)} or [T, ...], got {list(t.shape)}")
    T = common_tangent_count(op, counts)
    impl = resolve_impl(backend, q=q, k=k, v=v, q_t=q_t, k_t=k_t, v_t=v_t)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    flat = lambda t: t.reshape(BH, *t.shape[-2:])  # noqa: E731
    if _backend.has_dispatcher_op(OP_NAME):
        o, o_t = torch.ops.symkernels.attention_dual(flat(q), flat(k), flat(v), *canon, T, bool(causal), scale, impl)
    else:  # symkernels._C not built (resolve_impl chose the reference): the closed form in torch ops
        o, o_t = reference.attention_dual(flat(q), flat(k), flat(v), *canon, bool(causal), scale)
        o_t = o_t.expand(T, *o.shape)
    o, o_t = o.reshape(*lead, *o.shape[-2:]), o_t.reshape(T, *lead, *o.shape[-2:])
    return o, (o_t if counts else o_t[0])
