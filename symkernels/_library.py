"""One way to register a symkernels op: ``register_op`` does what every pillar used to write by hand.

An op's schema lives in C++ (``csrc/<pillar>/schema.cpp``, ``TORCH_LIBRARY_FRAGMENT``) and its native
kernels in ``csrc/<pillar>/<op>_{cpu,cuda}.cpp`` (``TORCH_LIBRARY_IMPL``). What is left for Python is
the same for every op, and done here once:

* the **fake** kernel (shapes only), so torch.compile / export trace the op without running it;
* **autograd in both modes**. ``torch.library.register_autograd`` only knows backward: under
  ``torch.func.jvp`` or ``torch.autograd.forward_ad`` such an op silently returns a ZERO tangent. Here the
  op's Autograd kernel is an ``autograd.Function`` with ``backward`` *and* ``jvp``, so
  ``torch.ops.symkernels.*`` called directly is right in both modes (tests/test_op_registration.py
  checks every op);
* the **vmap** rule, where the op has one;
* the **Triton kernel** as the op's CUDA kernel where ``symkernels._C`` has no CUDA kernel for it, and,
  for those calls, a decomposition under AOTAutograd's ``FunctionalTensorMode`` into the launcher, whose
  kernels go through ``torch.library.wrap_triton``: ``torch.compile`` then sees the Triton kernel itself
  (a ``triton_kernel_wrapper`` node Inductor can schedule and fuse around) rather than an opaque op. This
  is ``torch.library.triton_op``'s mechanism, applied to an op whose schema is already defined in C++.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Callable

import torch
from torch.autograd import forward_ad
from torch._library.triton import set_wrap_triton_enabled
from torch._subclasses.functional_tensor import FunctionalTensorMode

from symkernels import _backend

NAMESPACE = "symkernels"
_LIBRARY = torch.library.Library(NAMESPACE, "IMPL")


@dataclasses.dataclass(frozen=True)
class Registration:
    """What ``register_op`` registered for one op that callers need to know (tests/test_op_registration.py,
    symkernels.jvp.ops.resolve)."""
    triton: str | None  # the launcher serving the op's CUDA key, None where a native kernel (or none) does


REGISTERED: dict[str, Registration] = {}


def register_op(name: str, *, fake: Callable, setup_context: Callable | None = None,
                backward: Callable | None = None, jvp: Callable | None = None, vmap: Callable | None = None,
                triton: TritonLauncher | None = None) -> None:
    """Register everything Python adds to the dispatcher op ``symkernels::<name>``.

    Args:
        name: the op, as declared in ``csrc/<pillar>/schema.cpp``. Without ``symkernels._C`` (not built)
            the op does not exist and this does nothing: the public functions then use the reference.
        fake: ``fake(*op_args)`` returns empty outputs of the right shape, dtype and device.
        setup_context, backward, jvp: autograd, given together (or not at all). ``setup_context(ctx,
            inputs, output)`` and ``backward(ctx, *grads)`` have torch.library's meaning; ``jvp(ctx,
            *input_tangents)`` returns the output tangent(s), an input without a tangent gets ``None``.
            Tensors ``jvp`` needs are saved with ``ctx.save_for_forward``. Write both with differentiable
            ops (usually the op itself) and every higher order is recorded as well.
        vmap: ``vmap(info, in_dims, *op_args)``, torch.library's vmap rule.
        triton: the op's Triton launcher (``TritonLauncher``), which serves the op's CUDA key where the
            native build has no CUDA kernel for it.
    """
    autograd = (setup_context, backward, jvp)
    if any(f is None for f in autograd) and any(f is not None for f in autograd):
        raise TypeError(f"register_op({name!r}): setup_context, backward and jvp go together")
    if not _backend.has_dispatcher_op(name):
        return
    qualname = f"{NAMESPACE}::{name}"
    # Asked before anything below registers a CUDA kernel: does the native build carry one?
    native_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA")

    torch.library.register_fake(qualname, fake)
    if backward is not None:
        _register_autograd(qualname, backward, setup_context=setup_context, jvp=jvp)
    if vmap is not None:
        torch.library.register_vmap(qualname, vmap)
    # Registered wherever Triton imports: CUDA tensors (real, or fake ones while tracing) only exist where
    # it can run them.
    serve_cuda_by_triton = triton is not None and not native_cuda and _backend.triton_importable()
    if serve_cuda_by_triton:
        torch.library.register_kernel(qualname, "cuda", triton)
        _register_triton_decomposition(qualname, triton)
    REGISTERED[name] = Registration(triton=triton.dotted if serve_cuda_by_triton else None)


class KernelFunction(torch.autograd.Function):
    """Base of the ``autograd.Function`` wrappers around our kernels, for a cheaper ``apply``.

    ``torch.autograd.Function.apply`` binds its arguments to ``forward``'s signature with ``inspect`` on every
    call, which costs more than a small kernel (~50 µs of a 130 µs Gaunt call on 4 rows). A subclass's
    ``forward`` takes every argument positionally, without defaults (checked when the class is defined), so
    the binding is a no-op and is skipped. Under functorch transforms the full ``apply`` runs (it routes to
    ``custom_function_call``); Dynamo intercepts ``apply`` by name and never runs this one.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        parameters = inspect.signature(cls.forward).parameters.values()
        if any(p.default is not p.empty or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in parameters):
            raise TypeError(f"{cls.__name__}.forward: a KernelFunction's arguments are positional, without "
                            "defaults (apply does not bind them)")

    @classmethod
    def apply(cls, *args):
        if torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        return super(torch.autograd.Function, cls).apply(*torch._functorch.utils.unwrap_dead_wrappers(args))


class TritonLauncher:
    """A Triton launcher named by its dotted path (``"pkg.module.function"``), imported on first use since
    Triton is optional. The launcher takes its op's arguments and launches its kernels through
    ``torch.library.wrap_triton``.

    Called in eager mode it turns ``wrap_triton`` off, so the kernels launch directly (the traceable wrapper
    only adds dispatch cost there); under ``torch.compile`` it leaves it on, so Dynamo and AOTAutograd
    record the kernel launches themselves.
    """

    def __init__(self, dotted: str):
        self.dotted = dotted
        self._function: Callable | None = None

    @property
    def function(self) -> Callable:
        if self._function is None:
            module_name, _, attr = self.dotted.rpartition(".")
            self._function = getattr(importlib.import_module(module_name), attr)
        return self._function

    def __call__(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            return self.function(*args, **kwargs)
        with set_wrap_triton_enabled(False):
            return self.function(*args, **kwargs)

    def __repr__(self) -> str:
        return f"TritonLauncher({self.dotted!r})"


def _register_triton_decomposition(qualname: str, launcher: TritonLauncher) -> None:
    """Under ``FunctionalTensorMode`` (AOTAutograd's tracing), a call on CUDA tensors becomes the
    launcher's body, so the graph holds the ``wrap_triton`` kernel launches; anything else stays the op."""
    def decompose(mode, op, types, args, kwargs):
        on_cuda = any(isinstance(a, torch.Tensor) and a.device.type == "cuda"
                      for a in (*args, *kwargs.values()))
        if not on_cuda:
            return mode.__torch_dispatch__(op, types, args, kwargs)
        with mode:  # wrap_triton on (its default): the launches are recorded, not run
            return launcher.function(*args, **kwargs)

    torch.library.register_torch_dispatch(qualname, FunctionalTensorMode, decompose, lib=_LIBRARY)


def _register_autograd(qualname: str, backward: Callable, *, setup_context: Callable, jvp: Callable) -> None:
    """``torch.library.register_autograd(qualname, backward, setup_context=...)`` plus ``jvp``."""
    op = torch._library.utils.lookup_op(qualname)
    name = qualname.split("::")[1]

    # The dispatcher keyset travels as the *last* argument (as in torch.library's own generated
    # Function) and is hidden from the callbacks, including ctx.needs_input_grad.
    class _OpFunction(torch.autograd.Function):
        @staticmethod
        def forward(*args_and_keyset):
            *args, keyset = args_and_keyset
            # Run the kernels below Autograd (CPU/CUDA/Meta keys) without re-entering this function.
            with torch._C._AutoDispatchBelowAutograd():
                return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

        @staticmethod
        def setup_context(ctx, inputs, output):
            setup_context(ctx, inputs[:-1], output)

        @staticmethod
        def backward(ctx, *grads):
            needs = ctx.needs_input_grad
            try:
                ctx.needs_input_grad = needs[:-1]
                result = backward(ctx, *grads)
            finally:
                ctx.needs_input_grad = needs
            return (*(result if isinstance(result, tuple) else (result,)), None)

        @staticmethod
        def jvp(ctx, *tangents_and_keyset_tangent):
            return jvp(ctx, *tangents_and_keyset_tangent[:-1])

    _OpFunction.__name__ = _OpFunction.__qualname__ = f"{name}_autograd"

    # Function.apply would hand the call to functorch's custom_function_call when torch.func transforms
    # are active; but this kernel already runs inside the dispatcher, *below* functorch's layers (which
    # have unwrapped the tensors for us), so the plain C++ apply is the right entry point here.
    base_apply = super(torch.autograd.Function, _OpFunction).apply

    def autograd_kernel(keyset, *args):
        # Nothing to record (no input requires grad, no forward-mode level is open, no functorch transform):
        # run the kernel directly, as torch.library's own autograd kernels do, without the Function's cost.
        if not (torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0
                or (torch.is_grad_enabled() and torch._C._any_requires_grad(*args))):
            with torch._C._AutoDispatchBelowAutograd():
                return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)
        if torch._C._are_functorch_transforms_active():
            # Tell functorch this single-level Function call is deliberate (it is one level's autograd).
            with torch._functorch.utils.enable_single_level_autograd_function():
                return base_apply(*args, keyset)
        return base_apply(*args, keyset)

    _LIBRARY.impl(name, autograd_kernel, "Autograd", with_keyset=True)
