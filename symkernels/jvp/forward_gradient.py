"""Forward gradients (Baydin et al., arXiv:2202.08587) with seeded tangents that are never stored, activity
perturbation (Ren et al., arXiv:2210.03310), and optimizers that regenerate the tangents for the update.

**Weight perturbation** (``mode="weight"``). For tangents v_t (t < T) with i.i.d. zero-mean unit-variance
entries, d_t = ∇f·v_t is ONE forward-mode pass, and ĝ = (1/T) Σ_t d_t v_t is unbiased (E[v vᵀ] = I). Per
component Var(ĝ_i) = (‖∇f‖² + ∂_i²)/T for Gaussian v and (‖∇f‖² − ∂_i²)/T for Rademacher (fwdgrad.md §1).

Tangent t of parameter j is ``reference.seeded_tangent(p_j.shape, seed_tj)`` with ``seed_tj =
tangent_seeds(seed, J, T)[t][j]`` (distinct per (t, j)): a pure function of the seeds, so nothing has to
be stored. The lean path (``tangent_batch=1``, the default) never materialises the tangent of a matrix
parameter (or a 4-D conv kernel): such parameters enter ``fn`` without a forward-AD tangent, and each
``symkernels.jvp`` Linear that consumes one runs ``linear_dual(..., weight_seed=seed_tj)``, whose kernel
generates W_t tile by tile (each Conv2d runs ``conv2d_dual(..., weight_seed=seed_tj)``; see
``_scope.SeededScope``). Vectors (biases, norm weights) get ordinary dual tangents — they are small.
If ``fn`` uses a matrix parameter any other way, the pass is redone with materialised tangents (a guard
watches every torch call, so the estimate is never silently wrong). The update, in ``forward_gradient``
and in the optimizers, regenerates v chunk by chunk (``_regenerated_chunks``): at most a few chunks of
``_chunk_size(numel)`` values exist at a time, never a whole tangent.

**Activity perturbation** (``mode="activity"``). Every ``symkernels.jvp`` Linear adds noise ż (seeded,
per row, independent per layer) to its pre-activation z = x Wᵀ + b, and ``fn`` returns per-example losses
ℓ_b (shape [B]; the objective is L = mean_b ℓ_b). One forward-mode pass gives d_b = Σ_{layers} ∇_{z_b}ℓ_b·ż_b
for every example at once; the guess ĝ_{z_b} = d_b ż_b / B gives, through the exact local rule,
grad_W = Σ_rows ĝ_zᵀ x and grad_b = Σ_rows ĝ_z. Expectation: E[d_b ż_b] = ∇_{z_b}ℓ_b (E[ż żᵀ] = I), so the
estimate is unbiased for ∇L *when examples do not interact* (no batch statistics; rows of example b are
x[b, ...], and x.shape[0] = B). Variance for Gaussian ż, per weight entry:
Var(grad_W[n, k]) = (1/(T B²)) Σ_b x_{b,k}² (‖a_b‖² + a_{b,n}²) with a_b = ∇ℓ_b wrt *all* perturbed
pre-activations of example b (Rademacher: − instead of +). The guess lives in unit space (sizes N per
layer instead of N·K), which is where the variance drops. Local losses: ``detach()`` between blocks in
``fn`` and return the sum of the blocks' per-example losses; a detach drops the forward-mode tangent, so
each layer's guess then only sees the losses downstream of it up to the next detach — the estimate is
unbiased for the local-loss (stop-gradient) objective of Ren et al. Memory: each Linear's input rows and
noise are kept until the guess is formed (like backprop's saved activations), and the guess is
parameter-sized; activity mode is about variance, the weight mode's lean path about memory.

**Local-loss guesses** (``guess="local"``, Fournier et al., ICML'23, arXiv:2306.06968). The tangent is not
random but a *guess* of the gradient: G̃ = ∇_θ ℓ_local(θ), the gradient of a cheap local loss (e.g. auxiliary
heads behind ``detach()`` between blocks, so its backprop never crosses a block), computed by autograd. The
parameters are split into blocks k (``guess_blocks``; default one block); per block, ONE forward-mode pass of
the target loss L along G̃ restricted to block k (zero elsewhere) gives d_k = ⟨∇_k L, G̃_k⟩, and

    ĝ_k = ⟨∇_k L, G̃_k⟩ / ‖G̃_k‖² · G̃_k,

the orthogonal projection of the target's block gradient onto the guess. It is biased (E ĝ ≠ ∇L unless the
guess is aligned), but never an ascent direction (⟨ĝ_k, ∇_k L⟩ = d_k²/‖G̃_k‖² ≥ 0), and it equals ∇_k L when
the guess does. The paper puts ‖G̃_k‖² + ε in the denominator; here a zero guess gives ĝ_k = 0 (no direction,
no information) and ε = 0 otherwise, so the estimate is the exact projection. The guess is deterministic
(num_tangents must be 1; distribution and seed are unused) and parameter-sized, like a backprop gradient:
this option is about the *direction*'s quality, not about memory.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import torch
import torch.autograd.forward_ad as fwAD
import torch.distributed as dist

from symkernels.jvp import _scope, reference

MODES = ("weight", "activity")
# Parameters whose tangent the lean path leaves as a seed: Linear matrices and Conv2d kernels, the layers
# whose fused dual kernels generate a seeded weight tangent themselves.
SEEDED_DIMS = (2, 4)
GUESSES = ("random", "local")


def derive_seed(seed: int, *salts: int) -> int:
    """A seed in [0, 2^31) hashed from ``seed`` and integer salts (lowbias32 chain; not cryptographic)."""
    h = reference.mix32_int(seed)
    for s in salts:
        h = reference.mix32_int(h ^ (s & reference.MASK32))
    return h & (reference.MAX_SEED - 1)


def tangent_seeds(seed: int, num_params: int, num_tangents: int) -> list[list[int]]:
    """seeds[t][j]: the seed of tangent t of parameter j. Distinct within a step (a repeated seed would make
    two tangents equal, hence correlated, and bias the estimate), deterministic, so regenerable."""
    seen, seeds = set(), []
    for t in range(num_tangents):
        row = []
        for j in range(num_params):
            s, salt = derive_seed(seed, t, j), 0
            while s in seen:  # 31-bit hash collision: rare; re-derive with a salt
                salt += 1
                s = derive_seed(seed, t, j, salt)
            seen.add(s)
            row.append(s)
        seeds.append(row)
    return seeds


def param_tangent(p: torch.Tensor, seed: int, distribution: str) -> torch.Tensor:
    """The (materialised) seeded tangent of one parameter; what the kernels generate in place of it."""
    return reference.seeded_tangent(tuple(p.shape), seed, distribution, dtype=p.dtype, device=p.device)


def _i32(c: int) -> int:
    return c - (1 << 32) if c >= (1 << 31) else c


_C1, _C2 = _i32(reference.MIX_C1), _i32(reference.MIX_C2)


def _mix32_i32_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    # reference.mix32 on an int32 tensor, IN PLACE (``tmp``: scratch of x's shape): multiplication wraps mod
    # 2^32 like uint32, ``>>`` is arithmetic so the logical shift masks the sign-extended bits. ~10x faster on
    # CPU than the int64 emulation; in place so the update's temporaries stay ~3 int32 words per value (a
    # small model's step would otherwise be dominated by hashing temporaries, not by the model).
    for shift, mult in ((16, _C1), (15, _C2), (16, None)):
        torch.bitwise_right_shift(x, shift, out=tmp)
        x.bitwise_xor_(tmp.bitwise_and_((1 << (32 - shift)) - 1))
        if mult is not None:
            x.mul_(mult)
    return x


def _hash_bits(index: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    # mix32(mix32(i + k) ^ k) (reference.seeded_values' counter hash) for keys [S, 1] × index [1, n].
    x = index + key
    tmp = torch.empty_like(x)
    _mix32_i32_(x, tmp).bitwise_xor_(key)
    return _mix32_i32_(x, tmp)


def regenerate_values(start: int, stop: int, seeds: int | Sequence[int], distribution: str, device) -> torch.Tensor:
    """``reference.seeded_values(arange(start, stop), seed, distribution)``, bit-identical (tested), in int32
    arithmetic: the update's hot loop regenerates every tangent value once per step. A list of seeds gives
    one row per seed ([len(seeds), stop − start])."""
    many = not isinstance(seeds, int)
    keys = torch.tensor([[_i32(k) for k in reference.seed_keys(s)] for s in (seeds if many else [seeds])],
                        dtype=torch.int32, device=device)  # [S, 2]
    index = torch.arange(start, stop, dtype=torch.int32, device=device)[None, :]
    b0 = _hash_bits(index, keys[:, :1])
    if distribution == "rademacher":
        del index  # each temporary is dropped as soon as it is dead: this call sets a small model's step peak
        out = b0.lt(0).to(torch.float32).mul_(-2.0).add_(1.0)  # top bit set → −1
    else:
        # u1 = ((b0 >> 8) + 1) · 2^-24 ∈ (0, 1], r = sqrt(−2 log u1), each step in place.
        b0.bitwise_right_shift_(8).bitwise_and_(0xFFFFFF).add_(1)
        out = b0.to(torch.float32).mul_(2.0 ** -24).log_().mul_(-2.0).sqrt_()
        del b0
        b1 = _hash_bits(index, keys[:, 1:])
        u2 = b1.bitwise_right_shift_(8).bitwise_and_(0xFFFFFF).to(torch.float32)
        del b1
        out.mul_(u2.mul_(2.0 ** -24 * (2.0 * math.pi)).cos_())
    return out if many else out[0]


# Values regenerated at once (chunk length x tangents): ~25 bytes of int32/fp32 temporaries each (hashing,
# Box–Muller), so 2^16 of them cost ~1.6 MB whatever the model size. Below ~2^15 per call the ~25 small
# torch ops' fixed cost dominates (measured on CPU: 4096 values 230 ns each, 65536 values 46 ns, Rademacher).
_CHUNK_VALUES = 1 << 16


def _chunk_size(numel: int) -> int:
    # 1/16 of the parameter bounds the temporaries at ~1.6 bytes per parameter value (0.4x its fp32 bytes,
    # for the largest parameter only); at most _CHUNK_VALUES, at least 1024. The floor is what a tiny model's
    # step peak hinges on: once linear_dual kept the forward to its outputs, a 4096 floor made the update's
    # hashing temporaries (~16 bytes per value) the peak of the digits step (32.8 KB vs the forward's 22.1 KB
    # at T=1, 49.3 KB at T=16); at 1024 the forward sets the peak again, for ~10% more update time there.
    return max(1024, min(_CHUNK_VALUES, numel // 16))


def _regenerated_chunks(p: torch.Tensor, seeds: Sequence[int], d: torch.Tensor, distribution: str):
    """Yield (start, stop, g) with g = (1/T) Σ_t d_t v_t[start:stop] over p's flat index, v regenerated
    (several tangents per call when a chunk is short, so small parameters with many tangents stay fast)."""
    n, T = p.numel(), len(seeds)
    step = _chunk_size(n)
    group = max(1, step // min(step, max(n, 1)))
    coef = (d / T).to(p.dtype)
    for start in range(0, n, step):
        stop = min(n, start + step)
        g = torch.zeros(stop - start, dtype=p.dtype, device=p.device)
        for t0 in range(0, T, group):
            v = regenerate_values(start, stop, seeds[t0:t0 + group], distribution, p.device).to(p.dtype)
            g.addmv_(v.T, coef[t0:t0 + group])
            del v  # else the previous group's values live on while the next group is hashed
        yield start, stop, g


def _flat_params(params) -> tuple[list[str] | None, list[torch.Tensor]]:
    if isinstance(params, dict):
        return list(params), list(params.values())
    if isinstance(params, (list, tuple)):
        return None, list(params)
    raise TypeError(f"forward_gradient: params must be a dict or a list of tensors, got {type(params).__name__}")


def _check(num_tangents, distribution, seed, mode, tangent_batch=1):
    if not isinstance(num_tangents, int) or isinstance(num_tangents, bool) or num_tangents < 1:
        raise ValueError(f"forward_gradient: num_tangents must be a positive int, got {num_tangents!r}")
    if distribution not in reference.DISTRIBUTIONS:
        raise ValueError(f"forward_gradient: distribution must be one of {reference.DISTRIBUTIONS}, got {distribution!r}")
    if mode not in MODES:
        raise ValueError(f"forward_gradient: mode must be one of {MODES}, got {mode!r}")
    if not isinstance(tangent_batch, int) or isinstance(tangent_batch, bool) or tangent_batch < 1:
        raise ValueError(f"forward_gradient: tangent_batch must be a positive int, got {tangent_batch!r}")
    reference.seed_keys(seed)


def _scalar(loss: torch.Tensor, what="fn must return a scalar loss") -> torch.Tensor:
    if loss.numel() != 1:
        raise ValueError(f"forward_gradient: {what}, got shape {list(loss.shape)}")
    return loss.reshape(())


def _lean_pass(call, tensors, seeds, distribution):
    """One weight-perturbation pass with matrix tangents left as seeds. Returns (loss, d, foreign): foreign
    lists the torch calls that used a seeded matrix outside symkernels' Linear (then loss and d are None and
    the caller materialises)."""
    weights, args = {}, []
    with fwAD.dual_level():
        for p, s in zip(tensors, seeds):
            q = p.detach()
            if q.dim() in SEEDED_DIMS and q.is_floating_point():
                weights[id(q)] = (q, s, distribution)
                args.append(q)
            else:
                args.append(fwAD.make_dual(q, param_tangent(q, s, distribution)))
        scope = _scope.SeededScope(weights)
        with _scope.activate(scope):
            out = call(args)
        if scope.foreign:
            return None, None, scope.foreign
        loss, d = fwAD.unpack_dual(_scalar(out))
    return loss, (torch.zeros_like(loss) if d is None else d), []


def _materialised(call, primals, seeds, distribution, t0, count):
    """Tangents t0 .. t0+count−1 with materialised tangents: torch.func.jvp, vmapped when count > 1 (the
    tangents then become the fused kernels' T dim). Returns (loss, d [count])."""
    vs = tuple(regenerate_values(0, p.numel(), [seeds[t][j] for t in range(t0, t0 + count)], distribution,
                                 p.device).to(p.dtype).reshape(count, *p.shape) for j, p in enumerate(primals))
    return _jvp_sets(call, primals, vs)


def _jvp_sets(call, primals, vs):
    """(loss, d [count]) for ``count`` tangent sets given materialised: vs[j] is [count, *primals[j].shape]."""
    count = vs[0].shape[0]

    def one(*v):
        return torch.func.jvp(lambda *ps: call(ps), primals, v)

    if count == 1:
        loss, d = one(*(v[0] for v in vs))
        return _scalar(loss), _scalar(d).reshape(1)
    loss, d = torch.func.vmap(one)(*vs)
    _scalar(loss[0])
    return loss[0].reshape(()), d.reshape(count)


_warned_fallback = False


def _directional(fn, params, inputs, num_tangents, distribution, seed, tangent_batch, materialize=False):
    names, tensors = _flat_params(params)
    _check(num_tangents, distribution, seed, "weight", tangent_batch)
    primals = tuple(p.detach() for p in tensors)
    call = (lambda ps: fn(dict(zip(names, ps)), *inputs)) if names is not None else (lambda ps: fn(list(ps), *inputs))
    seeds = tangent_seeds(seed, len(tensors), num_tangents)
    ds, loss, lean = [], None, tangent_batch == 1 and not materialize
    global _warned_fallback
    with torch.no_grad():  # so symkernels layers take their fused dual kernels
        t0 = 0
        while t0 < num_tangents:
            if lean:
                loss_t, d, foreign = _lean_pass(call, primals, seeds[t0], distribution)
                if foreign:
                    lean = False
                    if not _warned_fallback:
                        _warned_fallback = True
                        warnings.warn("forward_gradient: fn uses a matrix parameter outside symkernels.jvp Linear "
                                      f"or Conv2d layers (in {sorted(set(foreign))[:3]}), so its tangent is "
                                      "materialised; the estimate is exact, the memory saving is lost", stacklevel=3)
                    continue
                count, d = 1, d.reshape(1)
            else:
                count = min(tangent_batch, num_tangents - t0)
                loss_t, d = _materialised(call, primals, seeds, distribution, t0, count)
            loss = loss_t if loss is None else loss
            ds.append(d)
            t0 += count
    return names, tensors, loss, torch.cat(ds), seeds


def directional_derivatives(fn: Callable, params, *inputs, num_tangents: int = 1, distribution: str = "gaussian",
                            seed: int = 0, tangent_batch: int = 1, materialize: bool = False):
    """(loss, d [T]) with d_t = ∇_θ fn(θ, *inputs) · v_t by forward mode (v_t: see the module docstring).
    ``tangent_batch=1``: the lean path (unless ``materialize``); > 1: that many materialised tangent sets per
    vmapped jvp."""
    _, _, loss, d, _ = _directional(fn, params, inputs, num_tangents, distribution, seed, tangent_batch, materialize)
    return loss, d


def _weight_gradients(tensors, d, seeds, distribution):
    grads = []
    for j, p in enumerate(tensors):
        g = torch.empty(p.numel(), dtype=p.dtype, device=p.device)
        for start, stop, chunk in _regenerated_chunks(p, [row[j] for row in seeds], d, distribution):
            g[start:stop] = chunk
        grads.append(g.view(p.shape))
    return grads


def _activity(fn, params, inputs, num_tangents, distribution, seed):
    names, tensors = _flat_params(params)
    _check(num_tangents, distribution, seed, "activity")
    primals = [p.detach() for p in tensors]
    args = dict(zip(names, primals)) if names is not None else primals
    grads = [torch.zeros_like(p) for p in primals]
    covered = [False] * len(primals)
    loss = None
    with torch.no_grad():
        for t in range(num_tangents):
            scope = _scope.ActivityScope(derive_seed(seed, t, 0xAC), distribution,
                                         {id(p): (p, j) for j, p in enumerate(primals)})
            with fwAD.dual_level(), _scope.activate(scope):
                out = fn(args, *inputs)
                per_example, d = fwAD.unpack_dual(out)
            if per_example.dim() > 1:
                raise ValueError("forward_gradient: with mode='activity', fn must return per-example losses of shape "
                                 f"[B] (or a scalar), got shape {list(per_example.shape)}")
            B = per_example.numel()
            d = torch.zeros_like(per_example) if d is None else d
            loss = per_example.mean() if loss is None else loss
            for rec in scope.records:
                x, lead = rec["x"], rec["lead"]
                if B > 1 and (not lead or lead[0] != B):
                    raise ValueError(f"forward_gradient: mode='activity' maps rows to examples by the first dim, but a "
                                     f"linear input has leading dims {list(lead)} and fn returned {B} losses")
                if B > 1:  # row m belongs to example m // rows_per_example
                    coef = (d.reshape(-1) / (B * num_tangents)).to(x.dtype).repeat_interleave(x.shape[0] // B)
                else:
                    coef = (d.reshape(()) / num_tangents).to(x.dtype).expand(x.shape[0])
                g_z = coef[:, None] * rec["noise"]
                if rec["weight"] is not None:
                    grads[rec["weight"]] += g_z.T @ x
                    covered[rec["weight"]] = True
                if rec["bias"] is not None:
                    grads[rec["bias"]] += g_z.sum(0)
                    covered[rec["bias"]] = True
    missing = [names[j] if names else j for j, c in enumerate(covered) if not c]
    if missing:
        raise ValueError(f"forward_gradient: mode='activity' perturbs symkernels.jvp Linear layers only; these "
                         f"parameters are not a weight or bias of one: {missing}")
    return names, loss, grads


def _resolve_blocks(guess_blocks, names, num_params) -> list[list[int]]:
    """guess_blocks (keys of ``params``: names for a dict, indices for a list) → index lists, each parameter in
    exactly one block."""
    if guess_blocks is None:
        return [list(range(num_params))]
    if isinstance(guess_blocks, (str, bytes)) or not isinstance(guess_blocks, (list, tuple)):
        raise TypeError("forward_gradient: guess_blocks must be a list of lists of parameter keys, got "
                        f"{type(guess_blocks).__name__}")
    lookup = {n: j for j, n in enumerate(names)} if names is not None else None
    owner, blocks = {}, []
    for k, block in enumerate(guess_blocks):
        if isinstance(block, (str, bytes)) or not isinstance(block, (list, tuple)) or not block:
            raise ValueError(f"forward_gradient: guess_blocks[{k}] must be a non-empty list of parameter keys, "
                             f"got {block!r}")
        idx = []
        for key in block:
            j = lookup.get(key) if lookup is not None else (key if isinstance(key, int) and not isinstance(key, bool)
                                                           and 0 <= key < num_params else None)
            if j is None:
                what = "a name in params" if lookup is not None else f"an index in [0, {num_params})"
                raise ValueError(f"forward_gradient: guess_blocks[{k}] has {key!r}, which is not {what}")
            if j in owner:
                raise ValueError(f"forward_gradient: guess_blocks puts parameter {key!r} in blocks {owner[j]} and {k}")
            owner[j] = k
            idx.append(j)
        blocks.append(idx)
    missing = [names[j] if names is not None else j for j in range(num_params) if j not in owner]
    if missing:
        raise ValueError(f"forward_gradient: guess_blocks leaves parameters {missing} in no block")
    return blocks


def _check_guess(guess, local_loss, mode, num_tangents):
    if guess not in GUESSES:
        raise ValueError(f"forward_gradient: guess must be one of {GUESSES}, got {guess!r}")
    if guess == "random":
        if local_loss is not None:
            raise ValueError("forward_gradient: local_loss is only used with guess='local'")
        return
    if not callable(local_loss):
        raise ValueError("forward_gradient: guess='local' needs local_loss, a callable "
                         f"local_loss(params, *inputs) -> scalar, got {local_loss!r}")
    if mode != "weight":
        raise ValueError(f"forward_gradient: guess='local' projects in weight space (mode='weight'), got mode={mode!r}")
    if num_tangents != 1:
        raise ValueError("forward_gradient: guess='local' is deterministic, so num_tangents must be 1 (more passes "
                         f"would repeat the same estimate), got {num_tangents!r}")


def local_guess(local_loss: Callable, params, *inputs) -> list[torch.Tensor]:
    """G̃ = ∇_θ local_loss(θ, *inputs) by autograd, as a list in ``params``' order (a parameter the local loss
    does not reach gets a zero guess)."""
    names, tensors = _flat_params(params)
    leaves = [p.detach().requires_grad_(True) for p in tensors]
    with torch.enable_grad():
        out = local_loss(dict(zip(names, leaves)) if names is not None else leaves, *inputs)
        loss = _scalar(out, "local_loss must return a scalar loss")
        if not loss.requires_grad:
            return [torch.zeros_like(p) for p in tensors]
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(tensors, grads)]


def _local(fn, params, inputs, local_loss, guess_blocks, tangent_batch):
    """Local-guess estimate (module docstring): (names, loss, grads). Blocks' JVPs run ``tangent_batch`` per
    vmapped jvp (each tangent set is the guess on one block, zeros elsewhere)."""
    names, tensors = _flat_params(params)
    blocks = _resolve_blocks(guess_blocks, names, len(tensors))
    primals = tuple(p.detach() for p in tensors)
    guess = local_guess(local_loss, params, *inputs)
    call = (lambda ps: fn(dict(zip(names, ps)), *inputs)) if names is not None else (lambda ps: fn(list(ps), *inputs))
    ds, loss = [], None
    with torch.no_grad():  # so symkernels layers take their fused dual kernels
        for b0 in range(0, len(blocks), tangent_batch):
            group = blocks[b0:b0 + tangent_batch]
            vs = tuple(torch.stack([guess[j] if j in block else torch.zeros_like(p) for block in group])
                       for j, p in enumerate(primals))
            loss_b, d = _jvp_sets(call, primals, vs)
            loss = loss_b if loss is None else loss
            ds.append(d)
    d = torch.cat(ds)
    grads = [None] * len(tensors)
    for k, block in enumerate(blocks):
        norm2 = sum(guess[j].square().sum() for j in block)
        # Zero guess: no direction to project on; the estimate is zero rather than 0/0.
        scale = torch.where(norm2 > 0, d[k].to(norm2.dtype) / torch.where(norm2 > 0, norm2, 1), 0)
        for j in block:
            grads[j] = scale.to(guess[j].dtype) * guess[j]
    return names, loss, grads


def forward_gradient(fn: Callable, params, *inputs, num_tangents: int = 1, distribution: str = "gaussian",
                     seed: int = 0, mode: str = "weight", tangent_batch: int = 1, materialize: bool = False,
                     guess: str = "random", local_loss: Callable | None = None, guess_blocks=None):
    """Forward-gradient estimate of ∇_θ fn(θ, *inputs) (see the module docstring for the modes and guesses).

    Args:
        fn: ``fn(params, *inputs) -> loss``; ``params`` is passed back in the form given (dict or list).
            mode="weight": a scalar loss. mode="activity": per-example losses [B] (or a scalar).
        params: dict name → tensor, or a list of tensors.
        num_tangents: T; the estimate averages T passes (variance / T).
        distribution: "gaussian" or "rademacher" tangent / noise entries.
        seed: in [0, 2^31); the tangents are a pure function of it (``tangent_seeds``).
        mode: "weight" (unbiased for any fn) or "activity" (unbiased for non-interacting examples through
            symkernels.jvp Linear layers; every parameter must be a weight or bias of one).
        tangent_batch: weight mode only. 1: the lean path (matrix tangents never stored); > 1: that many
            materialised tangent sets per vmapped jvp (faster for many tangents, more memory). With
            guess="local": blocks per vmapped jvp (default 1: one jvp per block).
        materialize: weight mode only: skip the lean path (e.g. when fn's matrices are not consumed by
            symkernels Linear layers, where the lean attempt would only be redone).
        guess: "random" (seeded tangents, unbiased) or "local" (Fournier et al.: project the gradient of fn on
            the gradient of ``local_loss``, per block; biased, well aligned; weight mode, num_tangents=1).
        local_loss: guess="local" only: ``local_loss(params, *inputs) -> scalar`` whose autograd gradient is
            the guess G̃ (typically auxiliary losses behind detach() between blocks).
        guess_blocks: guess="local" only: a list of blocks, each a list of parameter keys (names for a dict,
            indices for a list), every parameter in exactly one; each block is projected on its own guess
            (one forward-mode pass per block). Default: all parameters in one block (one pass).

    Returns:
        ``(loss, grads)``: loss is fn's value (activity: the mean of the per-example losses), grads in the
        form of ``params`` (dict or list).
    """
    _check_guess(guess, local_loss, mode, num_tangents)
    if guess_blocks is not None and guess != "local":
        raise ValueError("forward_gradient: guess_blocks is only used with guess='local'")
    if guess == "local":
        _check(num_tangents, distribution, seed, mode, tangent_batch)
        names, loss, grads = _local(fn, params, inputs, local_loss, guess_blocks, tangent_batch)
    elif mode == "activity":
        names, loss, grads = _activity(fn, params, inputs, num_tangents, distribution, seed)
    else:
        _check(num_tangents, distribution, seed, mode, tangent_batch)
        names, tensors, loss, d, seeds = _directional(fn, params, inputs, num_tangents, distribution, seed,
                                                      tangent_batch, materialize)
        grads = _weight_gradients(tensors, d, seeds, distribution)
    return loss, (dict(zip(names, grads)) if names is not None else grads)


def data_parallel_group(process_group=None):
    """The group whose ranks average their estimates: ``process_group``, else the world group when
    torch.distributed is initialised; None when there is nothing to average (not distributed, or one rank)."""
    if process_group is None:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        process_group = dist.group.WORLD
    return None if dist.get_world_size(process_group) == 1 else process_group


def _step_seed(base: int, step: int) -> int:
    # A fresh seed per step, derived (not stored) from (base seed, step).
    return derive_seed(base, step, 0x57E9)


class _ForwardGradientOptimizer(torch.optim.Optimizer):
    """Common part. Weight mode: the step computes the T scalars d_t by forward mode, keeps only them, then
    regenerates each parameter's tangents from the seeds chunk by chunk while applying the update (no
    tangent exists whole, and none is stored across steps). Activity mode: the guess is formed (it is
    parameter-sized, like a backprop gradient) and applied.

    Data parallel (``process_group``, default: the world group once torch.distributed is initialised): the
    ranks start from rank 0's parameters and seed (broadcast at construction, as DistributedDataParallel
    does), so they draw the same tangents every step. In weight mode each rank computes the T directional
    derivatives of its own batch; ONE all-reduce of those T numbers plus the loss averages them, and every
    rank regenerates the same tangents and applies the same update: the step is that of one process on the
    concatenated batch (equal-sized batches; the loss is a mean), and a step sends T + 1 numbers instead of a
    gradient. The local guess and activity mode produce parameter-sized estimates, so there the all-reduce
    carries the estimate (as DDP carries the gradient). A rank that fails makes the others' collective
    raise (at the latest after the process group's timeout) with an error that says so, instead of hanging.
    """

    def __init__(self, params, defaults, num_tangents, distribution, seed, tangent_batch, mode, guess="random",
                 local_loss=None, guess_blocks=None, process_group=None):
        super().__init__(params, defaults)
        _check(num_tangents, distribution, seed, mode, tangent_batch)
        _check_guess(guess, local_loss, mode, num_tangents)
        if guess_blocks is not None:  # validated now, against the flat parameter list (indices)
            if guess != "local":
                raise ValueError("forward_gradient: guess_blocks is only used with guess='local'")
            _resolve_blocks(guess_blocks, None, len(self._params()))
        self.num_tangents, self.distribution, self.seed = num_tangents, distribution, seed
        self.tangent_batch, self.mode = tangent_batch, mode
        self.guess, self.local_loss, self.guess_blocks = guess, local_loss, guess_blocks
        self.step_count = 0
        self.process_group = data_parallel_group(process_group)
        if self.process_group is not None:
            self._start_from_first_rank()

    def _collective(self, what: str, call: Callable[[], object]) -> None:
        try:
            call()
        except RuntimeError as exc:  # gloo/NCCL raise DistError (a RuntimeError) when a peer dies or times out
            world = dist.get_world_size(self.process_group)
            raise RuntimeError(f"{type(self).__name__}: {what} over {world} ranks failed: another rank raised, exited "
                               f"or did not reach it within the process group's timeout ({exc})") from exc

    def _start_from_first_rank(self) -> None:
        """Every rank takes the group's first rank's parameters and seed (the seed drives every tangent)."""
        src = dist.get_global_rank(self.process_group, 0)
        seed = torch.tensor([self.seed], dtype=torch.int64)
        self._collective("broadcasting the tangent seed", lambda: dist.broadcast(seed, src, self.process_group))
        self.seed = int(seed)
        for p in self._params():
            self._collective("broadcasting the parameters",
                             lambda p=p: dist.broadcast(p.detach(), src, self.process_group))

    def _mean_over_ranks(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The ranks' mean of each tensor, by ONE all-reduce of their concatenation."""
        flat = torch.cat([t.reshape(-1) for t in tensors])
        self._collective("the all-reduce of the forward-gradient estimates",
                         lambda: dist.all_reduce(flat, dist.ReduceOp.SUM, self.process_group))
        flat /= dist.get_world_size(self.process_group)
        return [part.view_as(t).to(t.dtype) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, fn: Callable, *inputs) -> torch.Tensor:
        """One update. ``fn(params_list, *inputs) -> loss`` must use the parameters it is given (and so must
        ``local_loss(params_list, *inputs)`` with guess="local")."""
        params = self._params()
        seed = _step_seed(self.seed, self.step_count)
        self.step_count += 1
        if self.guess == "local" or self.mode == "activity":
            if self.guess == "local":  # the guess is deterministic: no seed
                _, loss, grads = _local(fn, params, inputs, self.local_loss, self.guess_blocks, self.tangent_batch)
            else:
                _, loss, grads = _activity(fn, params, inputs, self.num_tangents, self.distribution, seed)
            if self.process_group is not None:
                loss, *grads = self._mean_over_ranks([loss, *grads])
            chunks = {id(p): [(0, p.numel(), g.reshape(-1))] for p, g in zip(params, grads)}
        else:
            _, _, loss, d, seeds = _directional(fn, params, inputs, self.num_tangents, self.distribution, seed,
                                                self.tangent_batch)
            if self.process_group is not None:  # T + 1 numbers: the tangents themselves are shared by seed
                loss, d = self._mean_over_ranks([loss, d])
            index = {id(p): j for j, p in enumerate(params)}
            chunks = {id(p): _regenerated_chunks(p, [row[index[id(p)]] for row in seeds], d, self.distribution)
                      for p in params}
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                self._begin(p, state, group)
                flat = p.view(-1) if p.is_contiguous() else p.reshape(-1)
                for start, stop, g in chunks[id(p)]:  # regenerated lazily, one chunk at a time
                    self._apply(flat[start:stop], g, group, state, slice(start, stop))
                if not p.is_contiguous():
                    p.copy_(flat.view_as(p))
        return loss

    def _begin(self, p, state, group):
        pass


class ForwardGradientSGD(_ForwardGradientOptimizer):
    """SGD (optional momentum) on forward gradients with seeded tangents (or local-loss guesses:
    ``guess="local", local_loss=...``, ``guess_blocks`` as indices into the flat parameter list).
    ``process_group``: data-parallel ranks (default: the world group when torch.distributed is initialised;
    see ``_ForwardGradientOptimizer``)."""

    def __init__(self, params, lr: float, momentum: float = 0.0, *, num_tangents: int = 1,
                 distribution: str = "gaussian", seed: int = 0, tangent_batch: int = 1, mode: str = "weight",
                 guess: str = "random", local_loss: Callable | None = None, guess_blocks=None,
                 process_group=None):
        if not lr > 0:
            raise ValueError(f"ForwardGradientSGD: lr must be > 0, got {lr!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum), num_tangents, distribution, seed, tangent_batch,
                         mode, guess, local_loss, guess_blocks, process_group)

    def _begin(self, p, state, group):
        if group["momentum"] and "momentum" not in state:
            state["momentum"] = torch.zeros(p.numel(), dtype=p.dtype, device=p.device)

    def _apply(self, p, g, group, state, sl):
        if group["momentum"]:
            buf = state["momentum"][sl]
            buf.mul_(group["momentum"]).add_(g)
            g = buf
        p.add_(g, alpha=-group["lr"])


class ForwardGradientAdam(_ForwardGradientOptimizer):
    """Adam on forward gradients with seeded tangents (moments stored as in Adam; tangents never), or with
    local-loss guesses as in ForwardGradientSGD."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, *, num_tangents: int = 1,
                 distribution: str = "gaussian", seed: int = 0, tangent_batch: int = 1, mode: str = "weight",
                 guess: str = "random", local_loss: Callable | None = None, guess_blocks=None,
                 process_group=None):
        if not lr > 0:
            raise ValueError(f"ForwardGradientAdam: lr must be > 0, got {lr!r}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps), num_tangents, distribution, seed, tangent_batch,
                         mode, guess, local_loss, guess_blocks, process_group)

    def _begin(self, p, state, group):
        if not state:
            state["t"] = 0
            state["m"] = torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
            state["v"] = torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
        state["t"] += 1

    def _apply(self, p, g, group, state, sl):
        b1, b2 = group["betas"]
        m, v = state["m"][sl], state["v"][sl]
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v / (1 - b2 ** state["t"])).sqrt_().add_(group["eps"])
        p.addcdiv_(m, denom, value=-group["lr"] / (1 - b1 ** state["t"]))
