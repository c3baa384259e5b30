"""nn.Modules over symkernels.jvp.functional: forward-mode AD through them uses the fused dual kernels."""
from __future__ import annotations

import math

import torch
from torch import nn

from symkernels.jvp import functional as F


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and init) with an optional fused activation."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str | None = None, *,
                 backend: str | None = None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.activation, self.backend = activation, backend

    def forward(self, x):
        return F.linear(x, self.weight, self.bias, self.activation, backend=self.backend)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and init) with an optional fused activation; zero padding only."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, activation: str | None = None, *, backend: str | None = None,
                 device=None, dtype=None):
        if isinstance(padding, str):
            raise ValueError(f"Conv2d: padding must be an int or a pair of ints, got {padding!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         device=device, dtype=dtype)
        self.activation, self.backend = activation, backend

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                        self.activation, backend=self.backend)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and bookkeeping) whose forward-mode tangent inside forward-
    gradient passes comes from batch_norm_dual (``functional.batch_norm``)."""

    def forward(self, x):
        self._check_input_dim(x)
        # nn.BatchNorm2d's own rules: momentum=None is a cumulative average over num_batches_tracked; without
        # tracked statistics, batch statistics are used in eval too.
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or self.running_mean is None
        tracked = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if tracked else None, self.running_var if tracked else None,
                            self.weight, self.bias, use_batch_stats, momentum, self.eps)


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, elementwise_affine: bool = True, *, backend: str | None = None,
                 device=None, dtype=None):
        super().__init__()
        self.eps, self.backend = eps, backend
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.ones(dim, **kw)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(dim, **kw)) if elementwise_affine else None

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps, backend=self.backend)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, *, backend: str | None = None, device=None, dtype=None):
        super().__init__()
        self.eps, self.backend = eps, backend
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x):
        return F.rms_norm(x, self.weight, self.eps, backend=self.backend)


class MLP(nn.Module):
    """Linear layers ``sizes[0] → … → sizes[-1]`` with ``activation`` fused into all but the last."""

    def __init__(self, sizes: list[int], activation: str | None = "gelu", bias: bool = True, *,
                 backend: str | None = None, device=None, dtype=None):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"MLP: sizes needs at least an input and an output size, got {sizes}")
        self.layers = nn.ModuleList(
            Linear(a, b, bias, activation if i < len(sizes) - 2 else None, backend=backend, device=device, dtype=dtype)
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Attention(nn.Module):
    """Multi-head self-attention: fused-JVP qkv/output projections and attention core (attention_dual)."""

    def __init__(self, dim: int, num_heads: int, causal: bool = False, *, backend: str | None = None, device=None,
                 dtype=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads, self.causal, self.backend = num_heads, causal, backend
        self.qkv = Linear(dim, 3 * dim, backend=backend, device=device, dtype=dtype)
        self.proj = Linear(dim, dim, backend=backend, device=device, dtype=dtype)

    def forward(self, x):  # x [..., L, dim]
        *lead, L, dim = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).reshape(*lead, L, 3, h, dim // h).movedim(-3, 0).transpose(-2, -3).unbind(0)
        o = F.attention(q, k, v, causal=self.causal, scale=1 / math.sqrt(dim // h), backend=self.backend)
        return self.proj(o.transpose(-2, -3).reshape(*lead, L, dim))
