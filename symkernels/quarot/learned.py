"""Learned residual rotations (as SpinQuant, Liu et al. 2024, does beyond QuaRot's random Hadamard).

After ``rotate_model`` the residual stream of a pre-norm decoder is x·Q with Q a random Hadamard, and
any further orthogonal R keeps the float model exact: the norms are scale-free (RMSNorm(x·R) =
RMSNorm(x)·R), the readers take W ← W·R, the writers W ← Rᵀ·W (b ← b·R), the embeddings E ← E·R and
the LM head W ← W·R. Only the 4-bit error depends on R. ``learn_rotation`` chooses R on calibration
text:

    minimise  ‖ h_W4A4(R)·Rᵀ − h_float ‖² / ‖ h_float ‖²     over R ∈ O(d),

h the base model's last hidden state (in the rotated basis for the quantized run, hence the Rᵀ), with
every block linear in the W4A4 simulation ``quantize_model`` runs (RTN, per-channel symmetric INT4
weights, per-token symmetric INT4 activations, clip 1), rounding differentiated straight through. The
optimiser is Cayley SGD on the orthogonal group (Li, Li & Todorovic, ICLR 2020; the one SpinQuant
uses): with G = ∂loss/∂R the skew matrix A = G·Rᵀ − R·Gᵀ is the Riemannian gradient moved to the
identity, and

    R ← (I + α/2·A)⁻¹ (I − α/2·A) R,       α = min(lr, 1/‖A‖_F),

which stays exactly orthogonal (the Cayley transform of a skew matrix is orthogonal) and for small α
is R − α(G − R·Gᵀ·R), a descent step. The bound on α keeps one step from overshooting where the
straight-through gradient is large. R starts at I (QuaRot's rotation) and the best R seen is kept, so
the loss on the calibration set never ends above QuaRot's.

The per-head rotation (SpinQuant's R2) stays QuaRot's Hadamard. Post-norm encoders (BERT) have no
residual rotation to learn (LayerNorm does not commute with R; see ``rotate_model``).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from symkernels.quarot.families import blocks, model_family
from symkernels.quarot.modules import (_check_not_quantized, _progress, _rotate_residual_stream, _unwrap,
                                       rotate_model)


@dataclasses.dataclass
class LearnedRotation:
    """What ``learn_rotation`` found: the rotation folded into the model (fp64 [d, d], applied after
    QuaRot's Q) and the calibration loss at each step (``losses[0]``: QuaRot's rotation alone)."""

    rotation: torch.Tensor
    losses: list[float]
    best_step: int

    @property
    def initial_loss(self) -> float:
        return self.losses[0]

    @property
    def best_loss(self) -> float:
        return self.losses[self.best_step]


def _fake_quantize_rows(x: torch.Tensor) -> torch.Tensor:
    """Per-row symmetric INT4 round trip (scale = max|row|/7, codes in [−8, 7], half to even) whose
    gradient is the identity (straight-through): the forward is what ``quantize_model`` computes."""
    scale = x.detach().abs().amax(dim=-1, keepdim=True) / 7.0
    q = torch.clamp(torch.round(x / scale), -8, 7).nan_to_num(0.0) * scale
    return x + (q - x).detach()


def _check_calibration(ids, vocab_size: int) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64) \
            or ids.numel() == 0:
        raise ValueError(f"learn_rotation: calibration_ids must be a non-empty integer tensor [batch, seq] of "
                         f"token ids, got {getattr(ids, 'dtype', type(ids).__name__)} "
                         f"{tuple(getattr(ids, 'shape', ()))}")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise ValueError(f"learn_rotation: calibration_ids must lie in [0, vocab_size={vocab_size}), got "
                         f"[{int(ids.min())}, {int(ids.max())}]")
    return ids


def learn_rotation(model: nn.Module, calibration_ids: torch.Tensor, *, steps: int = 100, lr: float = 1.5,
                   seed: int = 0, progress: bool = True) -> LearnedRotation:
    """Learn a residual rotation for W4A4 on ``calibration_ids`` [batch, seq] and fold it into ``model``
    (in place; see the module note). A float model is first rotated by ``rotate_model(model, seed=seed)``;
    an already rotated one keeps its rotation and gets R on top. Quantize afterwards with
    ``quantize_model``. Pre-norm decoders only (``families.FAMILIES`` with ``pre_norm``); a post-norm
    model, a quantized model or a malformed calibration set raise a ``ValueError`` and leave the model
    unchanged."""
    family = model_family(model, "learn_rotation")
    if not family.pre_norm:
        raise ValueError(f"learn_rotation: a {family.name} model is post-norm: LayerNorm does not commute with a "
                         f"rotation of the residual stream, so there is none to learn (rotate_model applies the "
                         f"online rotations such a model allows)")
    _check_not_quantized(model, "learn_rotation")
    ids = _check_calibration(calibration_ids, model.config.vocab_size)
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"learn_rotation: steps must be an int >= 0, got {steps!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"learn_rotation: lr must be a positive number, got {lr!r}")
    if not getattr(model.base_model, "_quarot_rotated", False):
        rotate_model(model, seed=seed)

    base = model.base_model
    names = {module: name for name, module in base.named_modules()}
    layers = list(blocks(model, family))
    readers = [_unwrap(block.get_submodule(n)) for block in layers for n in (*family.attention_in, *family.mlp_in)]
    writers = [_unwrap(block.get_submodule(n)) for block in layers for n in (family.attention_out, family.mlp_out)]
    embedding = model.get_input_embeddings()
    dtype = embedding.weight.dtype
    d = embedding.weight.shape[1]

    def rotated_parameters(r: torch.Tensor) -> dict[str, torch.Tensor]:
        """The base model's parameters with R folded in and the block weights 4-bit round-tripped."""
        params = {f"{names[embedding]}.weight": embedding.weight @ r}
        for lin in readers:
            params[f"{names[lin]}.weight"] = _fake_quantize_rows(lin.weight @ r)
        for lin in writers:
            params[f"{names[lin]}.weight"] = _fake_quantize_rows(r.T @ lin.weight)
            if lin.bias is not None:
                params[f"{names[lin]}.bias"] = lin.bias @ r
        return params

    def quantize_input(_module, args):
        return (_fake_quantize_rows(args[0]), *args[1:])

    was_training = model.training
    model.eval()
    with torch.no_grad():  # the float model's output (the rotation so far changes it only by rounding)
        target = base(ids).last_hidden_state
    target_norm = target.pow(2).sum()
    hooks = [lin.register_forward_pre_hook(quantize_input) for lin in (*readers, *writers)]
    try:
        rotation = torch.eye(d, dtype=torch.float64, device=embedding.weight.device)
        best, losses, best_step = rotation, [], 0
        for step in _progress(range(steps + 1), "learn rotation (Cayley SGD)", progress):
            r = rotation.to(dtype).requires_grad_()
            hidden = torch.func.functional_call(base, rotated_parameters(r), (ids,)).last_hidden_state
            loss = (hidden @ r.T - target).pow(2).sum() / target_norm
            losses.append(loss.item())
            if losses[-1] < losses[best_step]:
                best, best_step = rotation, step
            if step == steps:
                break
            (grad,) = torch.autograd.grad(loss, r)  # R alone: no parameter's .grad is touched
            rotation = _cayley_step(rotation, grad.double(), lr)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    with torch.no_grad():
        _rotate_residual_stream(model, family, best)
    return LearnedRotation(rotation=best, losses=losses, best_step=best_step)


def _cayley_step(rotation: torch.Tensor, grad: torch.Tensor, lr: float) -> torch.Tensor:
    """One Cayley SGD step on O(d) (module note): orthogonal in, orthogonal out."""
    skew = grad @ rotation.T - rotation @ grad.T
    alpha = min(lr, 1.0 / (skew.norm().item() + 1e-12))
    eye = torch.eye(skew.shape[0], dtype=skew.dtype, device=skew.device)
    return torch.linalg.solve(eye + 0.5 * alpha * skew, (eye - 0.5 * alpha * skew) @ rotation)
