"""Autoregressive models and their Jacobi samplers: MADE, a masked-convolution (PixelCNN-style) net, and
DenseNet-style layer evaluation as a Jacobi system.

**Why the Jacobi samples are identical to the sequential ones.** With the noise drawn up front, sample d is
a deterministic function of the model's output d, which depends on x_{<d} only through masked weights: every
weight connecting an input ≥ d to output d is exactly 0, so those inputs contribute exactly 0·x = 0 to every
sum (x finite), and the GEMM's shape — hence its summation order — is the same in every pass. So output d
computed from any iterate whose first d−1 entries are right is bitwise the sequential one, and the solver's
bitwise frozen prefix makes the Jacobi fixed point the sequential sample (with ``tol=0``). The masked
convolution is computed as unfold + GEMM for the same reason: a Winograd/FFT convolution mixes inputs
before weighting them, and masked inputs would then leak rounding into other outputs.

**Why the samplers re-run the network on the frozen prefix.** Each iteration is one whole-batch forward: the
work for the frozen columns could be cut only by a GEMM of another shape (the output layer's columns ≥ the
pointer, the hidden units of degree > the pointer, the unconverged images), and a BLAS GEMM of another shape
may sum in another order — the samples would then no longer be bitwise the sequential ones. The solver's own
bookkeeping per iteration is one fused op after the forward (``torch.ops.symkernels.jacobi_sample_commit``:
sampling, convergence test and write-back), so an iteration costs about one sequential step;
``densenet_eval``, whose layers are separate calls, evaluates unfrozen layers only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from symkernels import _backend
from symkernels.jacobi import reference
from symkernels.jacobi.solver import CostModel, SolveInfo, solve

# method="auto" for the samplers: every call of their step is one whole-batch forward, whatever the number of
# rows asked for, so a Jacobi iteration costs what a sequential step does and Jacobi (at most T iterations) is
# never the slower choice; the structure gives the model, no probe calls needed.
_WHOLE_PASS_COST = CostModel(seq_fixed=1.0, seq_per_unit=0.0, jac_fixed=1.0, jac_per_unit=0.0)


class MaskedLinear(nn.Linear):
    """Linear layer whose weight is multiplied by a fixed 0/1 mask (exact zeros where masked)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al., 2015), natural ordering 0..D−1.

    ``kind="bernoulli"``: output ``[B, D]`` logits of p(x_d = 1 | x_<d).
    ``kind="gaussian"``: output ``[B, 2D]``, (μ_d, log σ_d) of x_d | x_<d.
    """

    def __init__(self, dim: int, hidden: tuple[int, ...] = (128, 128), kind: str = "bernoulli", seed: int = 0):
        super().__init__()
        if kind not in ("bernoulli", "gaussian"):
            raise ValueError(f"MADE: kind must be 'bernoulli' or 'gaussian', got {kind!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"MADE: dim must be an int >= 1, got {dim!r}")
        self.dim, self.kind = dim, kind
        g = torch.Generator().manual_seed(seed)
        # Connectivity degrees: input d has degree d+1; a hidden unit of degree m sees inputs with degree ≤ m;
        # output d (degree d+1) sees hidden units with degree < d+1, i.e. only inputs x_<d.
        degrees = [torch.arange(1, dim + 1)]
        for h in hidden:
            if dim > 1:  # hidden degrees in [min degree of the layer below, D − 1]
                degrees.append(torch.randint(int(degrees[-1].min()), dim, (h,), generator=g))
            else:  # D = 1: the single output sees no input at all (a learned bias)
                degrees.append(torch.zeros(h, dtype=torch.long))
        layers = []
        for d_in, d_out in zip(degrees[:-1], degrees[1:]):
            layers.append(MaskedLinear(len(d_in), len(d_out), (d_out[:, None] >= d_in[None, :])))
        out_deg = torch.arange(1, dim + 1)
        reps = 2 if kind == "gaussian" else 1
        out_mask = (out_deg[:, None] > degrees[-1][None, :]).repeat(reps, 1)
        self.hidden_layers = nn.ModuleList(layers)
        self.out = MaskedLinear(len(degrees[-1]), reps * dim, out_mask)

    def forward(self, x):
        h = x
        for layer in self.hidden_layers:
            h = torch.relu(layer(h))
        return self.out(h)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        out = self(x)
        if self.kind == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
        mu, log_sigma = out[..., :self.dim], out[..., self.dim:]
        z = (x - mu) * torch.exp(-log_sigma)
        return (-0.5 * z * z - log_sigma - 0.5 * math.log(2 * math.pi)).sum(-1)


def _autoregressive_sample(net_out, kind: str, noise: torch.Tensor, dim: int, out_dtype: torch.dtype, method: str,
                           tol: float, **solve_kwargs) -> tuple[torch.Tensor, SolveInfo]:
    """Solve x_d = sample_d(net(x), noise) for d = 0..dim−1 with the general solver (state: one column), the
    samples drawn from the network output ``net_out(x)`` (dtype ``out_dtype``) as ``kind`` says
    (:func:`reference.sample_rows`).

    On CPU the solver gets a ``fused_step`` too: the forward, then one op (``torch.ops.symkernels.
    jacobi_sample_commit``) that samples, compares with the iterate and writes back — the same bits as the
    step plus the commit, which as tensor ops cost an iteration ~4× the commit itself. The choice depends
    only on the device and the dtypes, so the sequential and the Jacobi solves of the same call make the same."""
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
        raise TypeError(f"sampler: noise must be a floating torch.Tensor, got "
                        f"{type(noise).__name__ if not isinstance(noise, torch.Tensor) else noise.dtype}")
    B = noise.shape[0]
    noise = reference.sampling_noise(noise.contiguous(), kind)

    view = None  # (hist, the network's input [B, D]: a view of hist's rows), made once per solve

    def network(hist):  # the network on the current iterate
        nonlocal view
        if view is None or view[0] is not hist:
            view = hist, hist[1:].transpose(0, 1)
        return net_out(view[1])

    def step(hist, t):
        return reference.sample_rows(network(hist), noise, t, kind)

    fused_step = None
    if (noise.device.type == "cpu" and noise.dtype == out_dtype
            and _backend.has_dispatcher_op("jacobi_sample_commit")):
        sample_commit = torch.ops.symkernels.jacobi_sample_commit.default

        def fused_step(hist, start, stop):
            return sample_commit(hist, network(hist), noise, start, stop, kind)

    init = torch.zeros(B, dtype=noise.dtype, device=noise.device)
    if method == "auto":
        solve_kwargs.setdefault("cost_model", _WHOLE_PASS_COST)
    with torch.no_grad():
        x, info = solve(step, init, dim, method=method, tol=tol, fused_step=fused_step, **solve_kwargs)
    return x.transpose(0, 1).contiguous(), info


def made_sample(model: MADE, noise: torch.Tensor, *, method: str = "jacobi", tol: float = 0.0,
                return_info: bool = False, **solve_kwargs):
    """Sample a MADE with pre-drawn ``noise [B, D]`` (uniform(0,1) for Bernoulli, N(0,1) for Gaussian).
    A Bernoulli sample is 1 where u < sigmoid(logit), decided as logit > logit(u) (:func:`reference.sampling_noise`).

    ``method="gauss_seidel"`` is the ordinary sequential sampler (D passes); ``"jacobi"`` (default) iterates
    whole passes to the fixed point, which with ``tol=0`` is the sequential sample exactly (module docstring).
    """
    if not isinstance(model, MADE):
        raise TypeError(f"made_sample: model must be a symkernels.jacobi.MADE, got {type(model).__name__}")
    if not isinstance(noise, torch.Tensor) or noise.dim() != 2 or noise.shape[1] != model.dim:
        raise ValueError(f"made_sample: noise must be [B, D={model.dim}], got "
                         f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}")

    x, info = _autoregressive_sample(model, model.kind, noise, model.dim, model.out.weight.dtype, method, tol,
                                     **solve_kwargs)
    return (x, info) if return_info else x


class MaskedConv2d(nn.Conv2d):
    """PixelCNN masked convolution (type "A": excludes the centre pixel; "B": includes it), single channel
    group, computed as unfold + GEMM so masked pixels contribute exact zeros (see module docstring)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, mask_type: str):
        super().__init__(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
        k = kernel_size
        mask = torch.ones(k, k)
        mask[k // 2, k // 2 + (mask_type == "B"):] = 0
        mask[k // 2 + 1:] = 0
        self.register_buffer("mask", mask)

    def forward(self, x):
        B, _, H, W = x.shape
        cols = F.unfold(x, self.kernel_size, padding=self.padding)  # [B, C·k·k, H·W]
        w = (self.weight * self.mask).flatten(1)  # [out, C·k·k]
        return (torch.matmul(w, cols) + self.bias[:, None]).view(B, -1, H, W)


class PixelCNN(nn.Module):
    """A small binary PixelCNN: one type-A masked conv, then type-B masked convs with ReLU; logits per pixel."""

    def __init__(self, channels: int = 16, layers: int = 3, kernel_size: int = 5):
        super().__init__()
        convs = [MaskedConv2d(1, channels, kernel_size, "A")]
        convs += [MaskedConv2d(channels, channels, kernel_size, "B") for _ in range(layers - 1)]
        self.convs = nn.ModuleList(convs)
        self.head = MaskedConv2d(channels, 1, 1, "B")

    def forward(self, x):  # x: [B, 1, H, W] → logits [B, 1, H, W]
        h = x
        for conv in self.convs:
            h = torch.relu(conv(h))
        return self.head(h)


def pixelcnn_sample(model: PixelCNN, noise: torch.Tensor, *, method: str = "jacobi", tol: float = 0.0,
                    return_info: bool = False, **solve_kwargs):
    """Binary raster-order sampling of ``model`` with pre-drawn uniform ``noise [B, H, W]``."""
    if not isinstance(noise, torch.Tensor) or noise.dim() != 3:
        raise ValueError(f"pixelcnn_sample: noise must be [B, H, W], got "
                         f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}")
    B, H, W = noise.shape
    flat_noise = noise.reshape(B, H * W)

    def net(x):
        return model(x.view(B, 1, H, W)).view(B, H * W)

    x, info = _autoregressive_sample(net, "bernoulli", flat_noise, H * W, model.head.weight.dtype, method, tol,
                                     **solve_kwargs)
    x = x.view(B, H, W)
    return (x, info) if return_info else x


def densenet_eval(layers, x0: torch.Tensor, *, method: str = "jacobi", tol: float = 0.0, return_info: bool = False,
                  **solve_kwargs):
    """Evaluate a DenseNet-style stack as a Jacobi system: y_l = layers[l](cat(x0, y_1, …, y_{l−1})).

    Every layer output must have x0's shape (growth handled by the layers' own projections), so the iterate is
    one ``[L, *x0.shape]`` tensor. With ``tol=0`` the result equals the plain forward loop
    (``method="gauss_seidel"``), bitwise when each layer's arithmetic does not depend on the values of the
    inputs it has not yet seen (true for any layer: the inputs are always the same tensors, only their values
    change between iterations).
    """
    L = len(layers)

    def step(hist, t):
        outs = []
        for i in t.tolist():
            outs.append(layers[i - 1](torch.cat(list(hist[:i]), dim=-1)))
        return torch.stack(outs) if outs else hist[:0]

    with torch.no_grad():
        y, info = solve(step, x0, L, method=method, tol=tol, **solve_kwargs)
    return (y, info) if return_info else y
