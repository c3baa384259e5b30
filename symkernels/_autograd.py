"""``register_autograd`` with forward mode: reverse- *and* forward-mode AD for a dispatcher op.

``torch.library.register_autograd`` only knows backward: under ``torch.func.jvp`` or
``torch.autograd.forward_ad`` such an op silently returns a ZERO tangent. Every symkernels op that is
differentiable registers through ``register_autograd`` below instead, which installs the op's Autograd
kernel as an ``autograd.Function`` with ``backward`` *and* ``jvp``, so ``torch.ops.symkernels.*`` called
directly is correct in both modes (tests/test_autograd_registration.py checks every op).
"""
from __future__ import annotations

from typing import Callable

import torch

_LIBRARIES: dict[str, torch.library.Library] = {}


def register_autograd(qualname: str, backward: Callable, *, setup_context: Callable, jvp: Callable) -> None:
    """Like ``torch.library.register_autograd(qualname, backward, setup_context=...)``, plus ``jvp``.

    ``setup_context(ctx, inputs, output)`` and ``backward(ctx, *grads)`` have torch.library's meaning;
    ``jvp(ctx, *input_tangents)`` returns the output tangent(s); an input without a tangent gets ``None``.
    Tensors that ``jvp`` needs must be saved with ``ctx.save_for_forward`` (autograd.Function's rule).
    Higher orders work when ``backward``/``jvp`` are written with differentiable ops (e.g. the op itself).
    """
    namespace, name = qualname.split("::")
    op = getattr(getattr(torch.ops, namespace), name).default

    # The dispatcher keyset travels as the *last* argument (as in torch.library's own generated
    # Function) and is hidden from the user's callbacks, including ctx.needs_input_grad.
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
        if torch._C._are_functorch_transforms_active():
            # Tell functorch this single-level Function call is deliberate (it is one level's autograd).
            with torch._functorch.utils.enable_single_level_autograd_function():
                return base_apply(*args, keyset)
        return base_apply(*args, keyset)

    lib = _LIBRARIES.setdefault(namespace, torch.library.Library(namespace, "IMPL"))
    lib.impl(name, autograd_kernel, "Autograd", with_keyset=True)
