"""4-bit KV cache quantization (QuaRot §4, design note §2 "KV cache"), pure PyTorch.

Unsigned asymmetric 4-bit per group of ``group_size`` consecutive channels of one (token, head) row
(``group_size = head_dim`` is QuaRot's one pair per token and head):

    xmax = clip·max(x),  xmin = clip·min(x)          over the group
    scale = (xmax − xmin) / 15,   zero = −xmin        (fp32; zero is not rounded)
    q = clamp(round_half_even((x + zero) / scale), 0, 15)
    x̂ = q·scale − zero

A constant group (scale 0) keeps scale = 1, so q = 0 and x̂ = xmin exactly. Packing: two unsigned
nibbles per byte, the even channel in the low nibble (the order of ``quantize_int4``).

``QuaRotKVCache`` is the transformers ``Cache`` that holds a model's K/V this way. Mode "real" keeps
only the packed bytes and the fp32 (scale, zero) pairs, so the stored bytes per (token, head) are
head_dim/2 + 8·head_dim/group_size instead of 2·head_dim for fp16 (72 vs 256 at head_dim 128). Mode
"fake" keeps x̂ in the model dtype (the simulation: no memory saved). Each new token is quantized once,
when it is appended; quantization is per token, so this is the same x̂ as re-quantizing the whole
sequence. There is no KV4 attention kernel here (out of scope): every step dequantizes the cache
(``q·scale − zero`` in fp32, rounded once to the model dtype) and hands float K/V to the model's
attention, so "real" saves memory but not bandwidth. Both modes give the same x̂ bit for bit
(packing is a bijection on codes), which ``tests/quarot/test_quarot_model.py`` checks.

The metadata stays fp32 (QuaRot stores fp16): an fp16 ``zero`` would move x̂ off the fake-quant
numbers and make a constant group inexact, for 4 of the 72 bytes.
"""
from __future__ import annotations

import math

import torch

from symkernels.hadamard import hadamard_transform

try:  # transformers is optional (the ``quarot-real`` extra); only the cache classes need it
    from transformers.cache_utils import Cache as _Cache
    from transformers.cache_utils import DynamicLayer as _DynamicLayer
except ImportError:  # pragma: no cover - exercised only without transformers
    _Cache = _DynamicLayer = None


def _check(x: torch.Tensor, group_size: int, clip_ratio: float, op: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0:
        raise TypeError(f"{op}: x must be a floating tensor [..., channels], got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    c = x.shape[-1]
    if not isinstance(group_size, int) or group_size < 2 or group_size % 2 or c % group_size:
        raise ValueError(f"{op}: group_size must be an even divisor of x.shape[-1]={c}, got {group_size!r}")
    if not isinstance(clip_ratio, (int, float)) or not (0.0 < clip_ratio <= 1.0):
        raise ValueError(f"{op}: clip_ratio must be a number in (0, 1], got {clip_ratio!r}")


def _codes(x: torch.Tensor, group_size: int, clip_ratio: float):
    """(codes uint8 in [0, 15] [..., G, g], scale fp32 [..., G, 1], zero fp32 [..., G, 1])."""
    xg = x.float().reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)
    clip = torch.tensor(clip_ratio, dtype=torch.float32)
    xmax = clip * xg.amax(dim=-1, keepdim=True)
    xmin = clip * xg.amin(dim=-1, keepdim=True)
    scale = (xmax - xmin) / 15.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = -xmin
    q = torch.clamp(torch.round((xg + zero) / scale), 0, 15)
    return q.to(torch.uint8), scale, zero


def quantize_kv_int4(x: torch.Tensor, *, group_size: int, clip_ratio: float = 1.0
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x [..., C]`` → (packed uint8 [..., C/2], scale fp32 [..., C/g], zero fp32 [..., C/g])."""
    _check(x, group_size, clip_ratio, "quantize_kv_int4")
    q, scale, zero = _codes(x, group_size, clip_ratio)
    q = q.reshape(*x.shape)
    packed = q[..., 0::2] | (q[..., 1::2] << 4)
    return packed, scale.squeeze(-1), zero.squeeze(-1)


def dequantize_kv_int4(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of ``quantize_kv_int4``: ``q·scale − zero`` in fp32, rounded once to ``dtype``."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError(f"dequantize_kv_int4: packed must be uint8, got {getattr(packed, 'dtype', type(packed))}")
    if scale.shape != zero.shape or scale.shape[:-1] != packed.shape[:-1] or (2 * packed.shape[-1]) % scale.shape[-1]:
        raise ValueError(f"dequantize_kv_int4: scale and zero must both be [..., groups] with the leading dims of "
                         f"packed {tuple(packed.shape)}, got {tuple(scale.shape)} and {tuple(zero.shape)}")
    q = torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(*packed.shape[:-1], -1)
    groups = scale.shape[-1]
    qg = q.reshape(*q.shape[:-1], groups, q.shape[-1] // groups).float()
    x = qg * scale.float()[..., None] - zero.float()[..., None]
    return x.reshape(q.shape).to(dtype)


def fake_quantize_kv_int4(x: torch.Tensor, *, group_size: int, clip_ratio: float = 1.0) -> torch.Tensor:
    """``q·scale − zero`` without materializing the packed bytes (the simulated KV4 cache), in x's dtype."""
    _check(x, group_size, clip_ratio, "fake_quantize_kv_int4")
    q, scale, zero = _codes(x, group_size, clip_ratio)
    return (q.float() * scale - zero).reshape(x.shape).to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# The transformers cache

KV_MODES = ("real", "fake")


def _require_transformers(what: str) -> None:
    if _Cache is None:
        raise ImportError(f"{what} needs transformers (pip install symkernels[quarot-real])")


class QuaRotKVLayer(_DynamicLayer or object):
    """One decoder layer's KV4 cache: keys/values [batch, kv_heads, tokens, head_dim] appended by
    ``update``, stored quantized (see the module note), returned dequantized for attention.

    ``key_hadamard``: rotate the keys by the per-head H_{d_h}/√d_h before quantizing them (QuaRot's
    online key rotation after RoPE; ``rotate_model`` rotates the queries by the same matrix in the
    attention hook, so q·k is unchanged). Values need no online rotation: rotate_model folds theirs
    into W_v. Every stored tensor has the token axis at dim -2 (packed bytes [..., T, D/2], scale and
    zero [..., T, D/g]), so crop / beam reordering / offloading act on all of them alike, and exactly:
    the quantization is per token, so selecting tokens or batch rows never re-quantizes anything.
    """

    def __init__(self, *, group_size: int, clip_ratio: float = 1.0, mode: str = "real",
                 key_hadamard: bool = False):
        _require_transformers("QuaRotKVLayer")
        super().__init__()
        if mode not in KV_MODES:
            raise ValueError(f"QuaRotKVLayer: mode must be one of {KV_MODES}, got {mode!r}")
        if not isinstance(group_size, int) or group_size < 2 or group_size % 2:
            raise ValueError(f"QuaRotKVLayer: group_size must be an even int >= 2, got {group_size!r}")
        if not isinstance(clip_ratio, (int, float)) or not (0.0 < clip_ratio <= 1.0):
            raise ValueError(f"QuaRotKVLayer: clip_ratio must be a number in (0, 1], got {clip_ratio!r}")
        self.group_size, self.clip_ratio, self.mode = group_size, float(clip_ratio), mode
        self.key_hadamard = key_hadamard
        self.store: dict[str, torch.Tensor] = {}

    def __repr__(self):
        return (f"QuaRotKVLayer(mode={self.mode}, group_size={self.group_size}, clip_ratio={self.clip_ratio}, "
                f"key_hadamard={self.key_hadamard}, tokens={self.get_seq_length()})")

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def _encode(self, name: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.mode == "fake":
            return {name: fake_quantize_kv_int4(x, group_size=self.group_size, clip_ratio=self.clip_ratio)}
        packed, scale, zero = quantize_kv_int4(x, group_size=self.group_size, clip_ratio=self.clip_ratio)
        return {name + "_packed": packed, name + "_scale": scale, name + "_zero": zero}

    def _decode(self, name: str) -> torch.Tensor:
        if self.mode == "fake":
            return self.store[name]
        s = self.store
        return dequantize_kv_int4(s[name + "_packed"], s[name + "_scale"], s[name + "_zero"], self.dtype)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize the new tokens once, append them, return all cached K/V dequantized."""
        for name, t in (("key_states", key_states), ("value_states", value_states)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.is_floating_point():
                raise ValueError(f"QuaRotKVLayer.update: {name} must be a floating tensor "
                                 f"[batch, heads, tokens, head_dim], got {getattr(t, 'shape', type(t).__name__)}")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        elif key_states.dtype != self.dtype:
            raise ValueError(f"QuaRotKVLayer.update: key_states dtype {key_states.dtype} differs from the "
                             f"cached {self.dtype}")
        if self.key_hadamard:
            key_states = hadamard_transform(key_states, 1.0 / math.sqrt(key_states.shape[-1]))
        new = {**self._encode("k", key_states), **self._encode("v", value_states)}
        self.store = new if not self.store else {n: torch.cat([t, new[n]], dim=-2) for n, t in self.store.items()}
        return self._decode("k"), self._decode("v")

    def get_seq_length(self) -> int:
        return next(iter(self.store.values())).shape[-2] if self.store else 0

    @property
    def nbytes(self) -> int:
        """Bytes held by this layer's stored tensors (codes + scales + zeros, or x̂ in fake mode)."""
        return sum(t.nbytes for t in self.store.values())

    def _map(self, fn) -> None:
        self.store = {n: fn(t) for n, t in self.store.items()}

    def reset(self) -> None:
        self.store = {}
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:  # DynamicLayer's contract: a negative count of tokens to drop
            raise ValueError(f"QuaRotKVLayer.crop: expected a negative number of tokens to remove, got "
                             f"{tokens_to_remove}")
        if tokens_to_remove < 0:
            self._map(lambda t: t[..., :tokens_to_remove, :])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices, ...])

    def offload(self):
        self._map(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self):
        self._map(lambda t: t.to(self.device, non_blocking=True))


class QuaRotKVCache(_Cache or object):
    """A transformers ``Cache`` of ``QuaRotKVLayer`` s, one per decoder layer (``layers``).

    ``symkernels.quarot.modules.kv_cache(model)`` builds it from a quantized model's settings, and
    ``quantize_model(..., kv_bits=4)`` makes the model use one on every forward (``generate``
    included) in place of the float cache it would create."""

    def __init__(self, layers: list[QuaRotKVLayer]):
        _require_transformers("QuaRotKVCache")
        if not layers or not all(isinstance(layer, QuaRotKVLayer) for layer in layers):
            raise TypeError("QuaRotKVCache: layers must be a non-empty list of QuaRotKVLayer")
        super().__init__(layers=list(layers))

    @property
    def nbytes(self) -> int:
        """Bytes held by all layers' stored tensors."""
        return sum(layer.nbytes for layer in self.layers)
