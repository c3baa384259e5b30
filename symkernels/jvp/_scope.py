"""Scopes a forward-gradient pass opens around ``fn``, read by ``functional.linear`` and ``functional.conv2d``.

* ``SeededScope`` (weight perturbation without materialised tangents): the listed 2-D (and 4-D conv)
  parameters enter ``fn`` as plain tensors with *no* forward-AD tangent; their tangent exists only as a
  seed. A ``functional.linear`` (``functional.conv2d``) that receives one as its weight runs
  ``linear_dual`` (``conv2d_dual``) with ``weight_seed=...``, whose kernel generates the tangent and never
  keeps it. Any *other* use of such a weight would
  silently miss its tangent, so the scope is also a ``TorchFunctionMode`` that watches every torch call:
  one that takes a seeded weight and returns a tensor, outside those two, is recorded in
  ``foreign`` and the caller redoes the pass with materialised tangents (correct, just not lean).
* ``ActivityScope`` (activity perturbation, Ren et al.): every ``functional.linear`` adds a seeded noise
  tangent to its pre-activation and records its input rows and the noise, from which the caller forms
  the weight-gradient guess.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

_ACTIVE: contextvars.ContextVar[object | None] = contextvars.ContextVar("symkernels_jvp_scope", default=None)


def active():
    return _ACTIVE.get()


@contextlib.contextmanager
def activate(scope):
    token = _ACTIVE.set(scope)
    try:
        if isinstance(scope, TorchFunctionMode):
            with scope:
                yield scope
        else:
            yield scope
    finally:
        _ACTIVE.reset(token)


class SeededScope(TorchFunctionMode):
    def __init__(self, weights: dict[int, tuple[torch.Tensor, int, str]]):
        super().__init__()
        self.weights = weights  # id(tensor) -> (tensor, seed, distribution); the tensors are kept alive
        self.used: set[int] = set()
        self.foreign: list[str] = []
        self._sanctioned = 0

    def lookup(self, w) -> tuple[int, str] | None:
        entry = self.weights.get(id(w))
        if entry is None or entry[0] is not w:
            return None
        return entry[1], entry[2]

    @contextlib.contextmanager
    def sanctioned(self):
        """Torch calls inside (the seeded linear itself) are not foreign uses."""
        self._sanctioned += 1
        try:
            yield
        finally:
            self._sanctioned -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self._sanctioned:
            if any(isinstance(a, torch.Tensor) and self.lookup(a) is not None for a in pytree.tree_leaves((args, kwargs))) \
                    and any(isinstance(o, torch.Tensor) for o in pytree.tree_leaves(out)):
                # Metadata reads (shape, dtype, device, requires_grad) return no tensor and are harmless;
                # anything returning a tensor could carry the (absent) tangent onward.
                self.foreign.append(getattr(func, "__qualname__", getattr(func, "__name__", repr(func))))
        return out


class ActivityScope:
    def __init__(self, seed: int, distribution: str, params: dict[int, tuple[torch.Tensor, int]]):
        self.seed, self.distribution = seed, distribution
        self.params = params  # id(tensor) -> (tensor, parameter index)
        self.records: list[dict] = []
        self.generator: torch.Generator | None = None

    def noise(self, rows: int, cols: int, dtype, device) -> torch.Tensor:
        """The next linear call's noise ż [rows, cols], i.i.d. across rows (examples), units and layers. It is
        kept in the record for the gradient guess, so it need not be regenerable: one torch.Generator seeded
        with the pass seed (reproducible, and one op per layer instead of a hash chain)."""
        if self.generator is None:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        if self.distribution == "rademacher":
            bits = torch.randint(0, 2, (rows, cols), generator=self.generator, device=device)
            return (2 * bits - 1).to(dtype)
        return torch.randn(rows, cols, generator=self.generator, device=device, dtype=dtype)

    def index(self, t) -> int | None:
        entry = self.params.get(id(t)) if t is not None else None
        return None if entry is None or entry[0] is not t else entry[1]
