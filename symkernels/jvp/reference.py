"""Pure-PyTorch truth for the JVP pillar: the dual (primal + tangent) ops and the seeded tangent RNG.

Conventions shared by every implementation (reference, C++, Triton):

* ``linear_dual``: ``z = x @ W.T + b``, ``y = act(z)`` and the tangent
  ``y_t = act'(z) * (x_t @ W.T + x @ W_t.T + b_t)``. Tangents may carry a leading dim T (T tangents
  share one primal); a tangent without it is the same for every t. Absent tangents are zero.
* Canonical (kernel) shapes: ``x [M, K]``, ``x_t [Tx, M, K]``, ``weight [N, K]``, ``weight_t [Tw, N, K]``,
  ``bias [N]``, ``bias_t [Tb, N]`` with Tx, Tw, Tb in {1, T}; outputs ``y [M, N]``, ``y_t [T, M, N]``.
  ``symkernels.jvp.ops`` maps user shapes (any leading dims) to these.
* Seeded weight tangents (``weight_seed``): element ``W_t[t, n, k]`` is a pure function of
  (seed, i = (t·N + n)·K + k), see ``seeded_bits`` — identical integers in every backend, so the
  tangent never has to be stored: the update step regenerates it.
"""
from __future__ import annotations

import math

import torch

ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu", "tanh")
DISTRIBUTIONS = ("gaussian", "rademacher")

# ---------------------------------------------------------------------------------------------------
# Counter-based RNG. A stateless hash of (seed, stream, index) instead of Philox: it needs only 32-bit
# xor/shift/multiply, which PyTorch (int64 tensors), C++ and Triton (uint32) all compute bit-identically,
# and one call per random number. The mixer is Chris Wellons' "lowbias32" (a bijection of uint32 with
# low avalanche bias; constants from his published search). Not cryptographic; good enough for
# tangent directions, which the statistical tests check (mean, variance, independence across seeds).
#   key_s(seed)   = mix32(2·seed + s)                    s ∈ {0, 1}: two streams (Box–Muller needs two)
#   bits(s, i)    = mix32(mix32(i + key_s) XOR key_s)    (all arithmetic mod 2^32)
#   gaussian(i)   = sqrt(−2 ln u1) · cos(2π u2),  u1 = (bits(0,i) >> 8 + 1)·2^-24 ∈ (0, 1],
#                                                  u2 = (bits(1,i) >> 8)·2^-24 ∈ [0, 1)   (in fp32)
#   rademacher(i) = +1 if the top bit of bits(0, i) is 0, else −1
# The seed must be in [0, 2^31) and indices below 2^31 (int32 index arithmetic in the kernels).
# ---------------------------------------------------------------------------------------------------
MIX_C1 = 0x7FEB352D
MIX_C2 = 0x846CA68B
MASK32 = 0xFFFFFFFF
MAX_SEED = 1 << 31
MAX_SEEDED_ELEMENTS = 1 << 31


def mix32_int(x: int) -> int:
    """lowbias32 on a Python int (used to derive the per-seed keys on the host)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * MIX_C1) & MASK32
    x ^= x >> 15
    x = (x * MIX_C2) & MASK32
    x ^= x >> 16
    return x


def seed_keys(seed: int) -> tuple[int, int]:
    """The two stream keys of a seed (the only thing the kernels receive)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < MAX_SEED:
        raise ValueError(f"weight_seed must be an int in [0, 2**31), got {seed!r}")
    return mix32_int(2 * seed), mix32_int(2 * seed + 1)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x·c) mod 2^32 for int64 x in [0, 2^32) without int64 overflow: split x into 16-bit halves.
    lo = (x & 0xFFFF) * c
    hi = (((x >> 16) * c) & 0xFFFF) << 16
    return (lo + hi) & MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, MIX_C1)
    x = x ^ (x >> 15)
    x = _mul32(x, MIX_C2)
    return x ^ (x >> 16)


def seeded_bits(index: torch.Tensor, key: int) -> torch.Tensor:
    """bits(s, i) for an int64 tensor of indices (values in [0, 2^32)), as int64 in [0, 2^32)."""
    return _mix32(_mix32((index + key) & MASK32) ^ key)


def seeded_values(index: torch.Tensor, seed: int, distribution: str) -> torch.Tensor:
    """The seeded tangent values (fp32) at the given flat indices."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    key0, key1 = seed_keys(seed)
    b0 = seeded_bits(index, key0)
    if distribution == "rademacher":
        return 1.0 - 2.0 * (b0 >> 31).to(torch.float32)
    b1 = seeded_bits(index, key1)
    u1 = ((b0 >> 8) + 1).to(torch.float32) * 2.0 ** -24
    u2 = (b1 >> 8).to(torch.float32) * 2.0 ** -24
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)


def seeded_tangent(shape: tuple[int, ...], seed: int, distribution: str, *, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu", offset: int = 0) -> torch.Tensor:
    """Materialise the seeded tangent of ``shape`` (row-major flat index + ``offset``), in ``dtype``.

    The kernels never do this; the reference and the optimizers' tests do.
    """
    numel = math.prod(shape)
    if offset + numel > MAX_SEEDED_ELEMENTS:
        raise ValueError(f"seeded tangents support at most 2**31 elements, got {offset + numel}")
    index = torch.arange(offset, offset + numel, dtype=torch.int64, device=device)
    return seeded_values(index, seed, distribution).to(dtype).reshape(shape)


# ---------------------------------------------------------------------------------------------------
# Activations and their derivatives (the fused epilogue's math, written plainly).
# ---------------------------------------------------------------------------------------------------
def activation_fn(name: str, z: torch.Tensor) -> torch.Tensor:
    if name == "none":
        return z
    if name == "relu":
        return torch.relu(z)
    if name == "gelu":
        return torch.nn.functional.gelu(z)
    if name == "gelu_tanh":
        return torch.nn.functional.gelu(z, approximate="tanh")
    if name == "silu":
        return torch.nn.functional.silu(z)
    if name == "tanh":
        return torch.tanh(z)
    raise ValueError(f"activation must be one of {ACTIVATIONS} or None, got {name!r}")


def activation_derivative(name: str, z: torch.Tensor) -> torch.Tensor:
    """act'(z) in closed form (tested against autograd)."""
    if name == "none":
        return torch.ones_like(z)
    if name == "relu":
        # Same convention as PyTorch's relu JVP (threshold_backward on the output): 0 where relu(z) <= 0.
        return (~(torch.relu(z) <= 0)).to(z.dtype)
    if name == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(z * math.sqrt(0.5)))
        pdf = torch.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
        return cdf + z * pdf
    if name == "gelu_tanh":
        c = math.sqrt(2.0 / math.pi)
        th = torch.tanh(c * (z + 0.044715 * z ** 3))
        return 0.5 * (1.0 + th) + 0.5 * z * (1.0 - th * th) * c * (1.0 + 3.0 * 0.044715 * z * z)
    if name == "silu":
        s = torch.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    if name == "tanh":
        th = torch.tanh(z)
        return 1.0 - th * th
    raise ValueError(f"activation must be one of {ACTIVATIONS} or None, got {name!r}")


def linear_dual(x: torch.Tensor, x_t: torch.Tensor | None, weight: torch.Tensor, weight_t: torch.Tensor | None,
                bias: torch.Tensor | None, bias_t: torch.Tensor | None, activation: str, num_tangents: int,
                seed: int | None = None, distribution: str = "gaussian") -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical-shape reference (see module docstring). Returns ``(y [M, N], y_t [T, M, N])``.

    Differentiable in the primal inputs with ordinary autograd (used for backward by the kernels).
    """
    z = torch.nn.functional.linear(x, weight, bias)
    y = activation_fn(activation, z)
    T = num_tangents
    M, N = z.shape
    if T == 0:
        return y, z.new_zeros((0, M, N))
    if seed is not None:
        weight_t = seeded_tangent((T, N, weight.shape[1]), seed, distribution, dtype=weight.dtype, device=weight.device)
    z_t = z.new_zeros((T, M, N))
    if x_t is not None:
        z_t = z_t + x_t @ weight.T
    if weight_t is not None:
        z_t = z_t + x @ weight_t.transpose(-1, -2)
    if bias_t is not None:
        z_t = z_t + bias_t[:, None, :]
    return y, activation_derivative(activation, z) * z_t


# ---------------------------------------------------------------------------------------------------
# Row-wise duals (normalisations and softmax) over the last dim. Canonical shapes: x [R, N],
# x_t [Tx, R, N], weight/bias [N], weight_t/bias_t [Tw|Tb, N] with Tx, Tw, Tb in {1, T}; returns
# (y [R, N], y_t [T, R, N]). Tangent rules (derived in /work/shared/design/fwdgrad.md §4):
#   layer norm: x̂ = (x − μ)/σ, ẋ̂ = (ẋ − mean ẋ − x̂·mean(x̂ ẋ))/σ, ẏ = γ ẋ̂ + γ̇ x̂ + β̇
#   rms norm:   x̂ = x/r,       ẋ̂ = (ẋ − x̂·mean(x̂ ẋ))/r,          ẏ = γ ẋ̂ + γ̇ x̂
#   softmax:    s = softmax(x), ṡ = s (ẋ − ⟨s, ẋ⟩)
# ---------------------------------------------------------------------------------------------------
ROW_KINDS = ("layer_norm", "rms_norm", "softmax")


def row_dual(kind: str, x, x_t, weight, weight_t, bias, bias_t, eps: float, T: int):
    if kind == "softmax":
        s = torch.softmax(x, dim=-1)
        if x_t is None or T == 0:
            return s, x.new_zeros((T, *x.shape))
        s_t = s * (x_t - (s * x_t).sum(-1, keepdim=True))
        return s, s_t.expand(T, *x.shape).clone()
    if kind == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        xc = x - mu
        inv = torch.rsqrt((xc * xc).mean(-1, keepdim=True) + eps)
    else:
        xc = x
        inv = torch.rsqrt((x * x).mean(-1, keepdim=True) + eps)
    xh = xc * inv
    y = xh if weight is None else xh * weight
    if bias is not None:
        y = y + bias
    y_t = x.new_zeros((T, *x.shape))
    if T == 0:
        return y, y_t
    if x_t is not None:
        centred = x_t - x_t.mean(-1, keepdim=True) if kind == "layer_norm" else x_t
        xh_t = (centred - xh * (xh * x_t).mean(-1, keepdim=True)) * inv
        y_t = y_t + (xh_t if weight is None else xh_t * weight)
    if weight_t is not None:
        y_t = y_t + xh * weight_t[:, None, :]
    if bias_t is not None:
        y_t = y_t + bias_t[:, None, :]
    return y, y_t


def attention(q, k, v, causal: bool, scale: float):
    """softmax(q kᵀ·scale [+ causal mask]) v over [..., L, d]."""
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        Lq, Lk = s.shape[-2], s.shape[-1]
        mask = torch.ones(Lq, Lk, dtype=torch.bool, device=s.device).tril(0)  # top-left aligned, as torch SDPA is_causal
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def attention_dual(q, k, v, q_t, k_t, v_t, causal: bool, scale: float):
    """Primal and tangent of attention by the closed form (fwdgrad.md §4): with P = softmax(S),
    Ṡ = (q̇ kᵀ + q k̇ᵀ)·scale, Ȯ = P(Ṡ ⊙ ... ) written as Ȯ = (P ⊙ Ṡ) v − rowsum(P ⊙ Ṡ)·O + P v̇.
    Tangents are [T, *q.shape] etc. (or None for zero); returns (o, o_t [T, ...])."""
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        Lq, Lk = s.shape[-2], s.shape[-1]
        mask = torch.ones(Lq, Lk, dtype=torch.bool, device=s.device).tril(0)  # top-left aligned, as torch SDPA is_causal
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    o = p @ v
    s_t = 0
    if q_t is not None:
        s_t = s_t + q_t @ k.transpose(-1, -2) * scale
    if k_t is not None:
        s_t = s_t + q @ k_t.transpose(-1, -2) * scale
    o_t = 0
    if q_t is not None or k_t is not None:
        ps = p * s_t  # masked entries have p = 0, so their (finite) Ṡ drops out
        o_t = ps @ v - ps.sum(-1, keepdim=True) * o
    if v_t is not None:
        o_t = o_t + p @ v_t
    if isinstance(o_t, int):
        o_t = torch.zeros_like(o).unsqueeze(0)
    return o, o_t


# ---------------------------------------------------------------------------------------------------
# conv2d dual. Canonical shapes: x [N, C, H, W], x_t [Tx, N, C, H, W], weight [O, C/groups, kh, kw],
# weight_t [Tw, O, C/groups, kh, kw], bias [O], bias_t [Tb, O] with Tx, Tw, Tb in {1, T}; returns
# (y [N, O, Ho, Wo], y_t [T, N, O, Ho, Wo]). z = conv(x, W) + b, y = act(z), and the tangent is linear in
# each argument: y_t = act'(z) ⊙ (conv(x_t, W) + conv(x, W_t) + b_t). A seeded W_t has element
# [t, o, c, i, j] at flat index (((t·O + o)·C/groups + c)·kh + i)·kw + j, the same rule as linear_dual's
# (t·N + n)·K + k with K = C/groups·kh·kw: a conv kernel is a matrix of O rows.
# ---------------------------------------------------------------------------------------------------
def conv2d_dual(x, x_t, weight, weight_t, bias, bias_t, stride, padding, dilation, groups: int, activation: str,
                num_tangents: int, seed: int | None = None, distribution: str = "gaussian"):
    def conv(inp, w, b=None):
        return torch.nn.functional.conv2d(inp, w, b, stride, padding, dilation, groups)

    z = conv(x, weight, bias)
    y = activation_fn(activation, z)
    T = num_tangents
    if T == 0:
        return y, z.new_zeros((0, *z.shape))
    if seed is not None:
        weight_t = seeded_tangent((T, *weight.shape), seed, distribution, dtype=weight.dtype, device=weight.device)
    pick = lambda t, i: t[i if t.shape[0] > 1 else 0]  # noqa: E731  a tangent of count 1 serves every t
    z_t = []
    for t in range(T):
        zt = torch.zeros_like(z)
        if x_t is not None:
            zt = zt + conv(pick(x_t, t), weight)
        if weight_t is not None:
            zt = zt + conv(x, pick(weight_t, t))
        if bias_t is not None:
            zt = zt + pick(bias_t, t)[:, None, None]
        z_t.append(zt)
    return y, activation_derivative(activation, z) * torch.stack(z_t)
