"""Forward gradients (Baydin et al., arXiv:2202.08587) with seeded tangents, and optimizers that regenerate
the tangents for the update instead of storing them.

Estimator: for tangents v_t (t < T) with i.i.d. zero-mean unit-variance entries, d_t = ∇f·v_t is ONE
forward-mode pass, and ĝ = (1/T) Σ_t d_t v_t is unbiased (E[v vᵀ] = I). Per component
Var(ĝ_i) = (‖∇f‖² + ∂_i²)/T for Gaussian v and (‖∇f‖² − ∂_i²)/T for Rademacher (fwdgrad.md §1).

Tangent t of parameter j is ``reference.seeded_tangent`` at flat indices ``t·P + offset_j + [0, numel_j)``
(P = total parameter count): a pure function of (seed, t, j), so the update can regenerate it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from symkernels.jvp import reference

MODES = ("weight",)


def _flat_params(params) -> tuple[list[str] | None, list[torch.Tensor]]:
    if isinstance(params, dict):
        return list(params), list(params.values())
    if isinstance(params, (list, tuple)):
        return None, list(params)
    raise TypeError(f"forward_gradient: params must be a dict or a list of tensors, got {type(params).__name__}")


def _offsets(tensors: Sequence[torch.Tensor]) -> tuple[list[int], int]:
    offsets, total = [], 0
    for p in tensors:
        offsets.append(total)
        total += p.numel()
    return offsets, total


def seeded_param_tangent(p: torch.Tensor, t: int, offset: int, total: int, seed: int, distribution: str) -> torch.Tensor:
    """Tangent t of the parameter at ``offset`` (see module docstring)."""
    return reference.seeded_tangent(tuple(p.shape), seed, distribution, dtype=p.dtype, device=p.device,
                                    offset=t * total + offset)


def _check(num_tangents, distribution, seed, mode, total):
    if not isinstance(num_tangents, int) or isinstance(num_tangents, bool) or num_tangents < 1:
        raise ValueError(f"forward_gradient: num_tangents must be a positive int, got {num_tangents!r}")
    if distribution not in reference.DISTRIBUTIONS:
        raise ValueError(f"forward_gradient: distribution must be one of {reference.DISTRIBUTIONS}, got {distribution!r}")
    if mode not in MODES:
        raise NotImplementedError(f"forward_gradient: mode={mode!r} is not implemented (only {MODES}); activity "
                                  "perturbation (Ren et al.) is future work")
    reference.seed_keys(seed)
    if num_tangents * total >= reference.MAX_SEEDED_ELEMENTS:
        raise ValueError(f"forward_gradient: num_tangents * parameter count must be < 2**31, got {num_tangents * total}")


def seeded_param_tangents(p: torch.Tensor, t0: int, count: int, offset: int, total: int, seed: int,
                          distribution: str) -> torch.Tensor:
    """Tangents t0 .. t0+count−1 of one parameter, stacked: [count, *p.shape]."""
    index = ((t0 + torch.arange(count, device=p.device))[:, None] * total + offset
             + torch.arange(p.numel(), device=p.device)[None, :])
    return reference.seeded_values(index, seed, distribution).to(p.dtype).reshape(count, *p.shape)


def _directional(fn, params, inputs, num_tangents, distribution, seed, mode, tangent_batch, accumulate):
    names, tensors = _flat_params(params)
    offsets, total = _offsets(tensors)
    _check(num_tangents, distribution, seed, mode, total)
    if not isinstance(tangent_batch, int) or tangent_batch < 1:
        raise ValueError(f"forward_gradient: tangent_batch must be a positive int, got {tangent_batch!r}")
    primals = tuple(p.detach() for p in tensors)
    call = (lambda ps: fn(dict(zip(names, ps)), *inputs)) if names is not None else (lambda ps: fn(list(ps), *inputs))

    def one(*v):
        return torch.func.jvp(lambda *ps: call(ps), primals, v)

    ds, grads, loss = [], [torch.zeros_like(p) for p in primals] if accumulate else None, None
    with torch.no_grad():  # so symkernels layers take their fused dual kernels
        for t0 in range(0, num_tangents, tangent_batch):
            count = min(tangent_batch, num_tangents - t0)
            vs = tuple(seeded_param_tangents(p, t0, count, o, total, seed, distribution)
                       for p, o in zip(primals, offsets))
            if count == 1:
                loss_t, d = one(*(v[0] for v in vs))
                loss_t, d = loss_t.reshape(1, *loss_t.shape), d.reshape(1, *d.shape)
            else:  # vmap over jvp: the tangents become the fused kernels' T dim
                loss_t, d = torch.func.vmap(one)(*vs)
            if loss_t[0].numel() != 1:
                raise ValueError(f"forward_gradient: fn must return a scalar loss, got shape {list(loss_t.shape[1:])}")
            loss = loss_t[0].reshape(()) if loss is None else loss
            d = d.reshape(count)
            ds.append(d)
            if accumulate:
                for g, v in zip(grads, vs):
                    g += torch.tensordot(d.to(v.dtype), v, dims=1)
    d = torch.cat(ds)
    if accumulate:
        grads = [g / num_tangents for g in grads]
        grads = dict(zip(names, grads)) if names is not None else grads
    return loss, d, grads


def directional_derivatives(fn: Callable, params, *inputs, num_tangents: int = 1, distribution: str = "gaussian",
                            seed: int = 0, mode: str = "weight", tangent_batch: int = 1):
    """(loss, d [T]) with d_t = ∇_θ fn(θ, *inputs) · v_t by forward mode; ``tangent_batch`` tangents at a time
    (vmap over jvp when > 1: faster, that many tangent sets alive at once)."""
    loss, d, _ = _directional(fn, params, inputs, num_tangents, distribution, seed, mode, tangent_batch, False)
    return loss, d


def forward_gradient(fn: Callable, params, *inputs, num_tangents: int = 1, distribution: str = "gaussian",
                     seed: int = 0, mode: str = "weight", tangent_batch: int = 1):
    """Unbiased forward-gradient estimate of ∇_θ fn(θ, *inputs).

    Args:
        fn: ``fn(params, *inputs) -> scalar loss``; ``params`` is passed back in the form given (dict or list).
        params: dict name → tensor, or a list of tensors.
        num_tangents: T; the estimate averages T directional derivatives (variance / T).
        distribution: "gaussian" or "rademacher" tangent entries.
        seed: in [0, 2^31); tangent t of a parameter is ``seeded_param_tangent(p, t, offset, total, seed, ...)``.
        mode: "weight" (weight perturbation). Activity perturbation is not implemented.
        tangent_batch: tangents evaluated together (vmap over jvp); 1 keeps one tangent set in memory.

    Returns:
        ``(loss, grads)`` with grads in the form of ``params`` (dict or list).
    """
    loss, _, grads = _directional(fn, params, inputs, num_tangents, distribution, seed, mode, tangent_batch, True)
    return loss, grads


def _step_seed(base: int, step: int) -> int:
    # A fresh tangent seed per step, derived (not stored): hash of (base seed, step), kept in [0, 2^31).
    return reference.mix32_int(reference.mix32_int(base) ^ (step & reference.MASK32)) & (reference.MAX_SEED - 1)


class _ForwardGradientOptimizer(torch.optim.Optimizer):
    """Common part: the step estimates d_t by forward mode, keeps only the T scalars, then regenerates each
    parameter's tangents from the seed while applying the update (no tangent is stored across steps)."""

    def __init__(self, params, defaults, num_tangents, distribution, seed, tangent_batch):
        super().__init__(params, defaults)
        _check(num_tangents, distribution, seed, "weight", 0)
        self.num_tangents, self.distribution, self.seed = num_tangents, distribution, seed
        self.tangent_batch = tangent_batch
        self.step_count = 0

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, fn: Callable, *inputs) -> torch.Tensor:
        """One update. ``fn(params_list, *inputs) -> loss`` must use the parameters it is given."""
        params = self._params()
        seed = _step_seed(self.seed, self.step_count)
        self.step_count += 1
        loss, d = directional_derivatives(fn, params, *inputs, num_tangents=self.num_tangents,
                                          distribution=self.distribution, seed=seed,
                                          tangent_batch=self.tangent_batch)
        offsets, total = _offsets(params)
        lookup = {id(p): o for p, o in zip(params, offsets)}
        for group in self.param_groups:
            for p in group["params"]:
                # Regenerate this parameter's T tangents (bit-identical to the ones the JVPs used) and
                # contract with the T scalars; only one parameter's tangents exist at a time.
                v = seeded_param_tangents(p, 0, self.num_tangents, lookup[id(p)], total, seed, self.distribution)
                g = torch.tensordot(d.to(p.dtype), v, dims=1) / self.num_tangents
                self._apply(p, g, group)
        return loss


class ForwardGradientSGD(_ForwardGradientOptimizer):
    """SGD (optional momentum) on forward gradients with seeded tangents."""

    def __init__(self, params, lr: float, momentum: float = 0.0, *, num_tangents: int = 1,
                 distribution: str = "gaussian", seed: int = 0, tangent_batch: int = 1):
        if not lr > 0:
            raise ValueError(f"ForwardGradientSGD: lr must be > 0, got {lr!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum), num_tangents, distribution, seed, tangent_batch)

    def _apply(self, p, g, group):
        if group["momentum"]:
            buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
            buf.mul_(group["momentum"]).add_(g)
            g = buf
        p.add_(g, alpha=-group["lr"])


class ForwardGradientAdam(_ForwardGradientOptimizer):
    """Adam on forward gradients with seeded tangents (moments stored as in Adam; tangents never)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, *, num_tangents: int = 1,
                 distribution: str = "gaussian", seed: int = 0, tangent_batch: int = 1):
        if not lr > 0:
            raise ValueError(f"ForwardGradientAdam: lr must be > 0, got {lr!r}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps), num_tangents, distribution, seed, tangent_batch)

    def _apply(self, p, g, group):
        state = self.state[p]
        if not state:
            state["t"], state["m"], state["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
        b1, b2 = group["betas"]
        state["t"] += 1
        state["m"].mul_(b1).add_(g, alpha=1 - b1)
        state["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
        m_hat = state["m"] / (1 - b1 ** state["t"])
        v_hat = state["v"] / (1 - b2 ** state["t"])
        p.addcdiv_(m_hat, v_hat.sqrt().add_(group["eps"]), value=-group["lr"])
