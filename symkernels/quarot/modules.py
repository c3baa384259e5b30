"""QuaRotLinear (rotate → quantize → W4A4 GEMM), and rotate_model / quantize_model for the Hugging Face
model families of ``quarot.families`` (Llama-style decoders, BERT encoders)."""
from __future__ import annotations

import inspect
import itertools
import math
import sys
from collections.abc import Callable

import torch
from torch import nn

from symkernels.hadamard import hadamard_transform, random_hadamard, random_signs, supported_size
from symkernels.quarot import ops, reference
from symkernels.quarot.families import ModelFamily, blocks, model_family
from symkernels.quarot.kv import QuaRotKVCache, QuaRotKVLayer
from symkernels.quarot.weights import (corrective_bias, dequantize_weight, gptq_hessian, quantize_weight_gptq,
                                       quantize_weight_rtn, search_activation_clip)


MODES = ("real", "fake")
# fake mode multiplies the integer codes as fp32 numbers: exact while every partial sum, at most 8·8·K in
# magnitude, is an integer below 2^24
FAKE_MAX_K = 1 << 18


class QuaRotLinear(nn.Module):
    """Drop-in W4A4 ``nn.Linear``: y = int4_matmul(quantize_int4(x [·H/√n]), W_q [·H/√n]) + b.

    With ``online_hadamard`` the activation row is rotated by H_n/√n inside the quantization kernel and
    the same rotation was folded into the weight offline (``x Wᵀ = (xQ)(WQ)ᵀ``, Q orthogonal), which
    spreads outlier channels before the per-token INT4 rounding. With ``sign_seed`` the rotation is the
    randomized Hadamard diag(s)·Hᵀ/√n (seeded signs s, one elementwise multiply before the kernel):
    the plain H maps a row's mean onto a few coordinates (H's first row is all ones), which is itself an
    outlier for inputs with a large mean, such as GELU outputs; the random signs spread it too.

    ``mode="real"`` runs the ``int4_matmul`` kernel (int32 accumulation, fp32 epilogue
    ``acc·s_a·s_w + b``). ``mode="fake"`` is the simulation: the same activation codes, the integer
    codes multiplied as fp32 numbers by a plain float matmul (exact: every partial sum is an integer
    below 2^24 for K ≤ 2^18, so any summation order gives the kernel's int32 result), then the same
    epilogue in the same order. The two modes therefore agree to the rounding of that epilogue (bit for
    bit unless the compiler contracts the kernel's ``acc·s_a·s_w + b`` into an FMA: then one fp32
    rounding, ≤ 2^-24·|acc·s_a·s_w|). Group-wise weights (``group_size``) have no kernel (its epilogue
    takes one scale per channel) and always run in fake mode, summing the exact per-group integer dot
    products times their group scales.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool, online_hadamard: bool,
                 clip_ratio: float, group_size: int | None, mode: str = "real", sign_seed: int | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"QuaRotLinear: mode must be one of {MODES}, got {mode!r}")
        if mode == "fake" and in_features > FAKE_MAX_K:
            raise ValueError(f"QuaRotLinear: mode='fake' is exact only for in_features <= {FAKE_MAX_K}, "
                             f"got {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.online_hadamard, self.clip_ratio, self.group_size = online_hadamard, clip_ratio, group_size
        self.mode = "fake" if group_size is not None else mode
        self.register_buffer("w_packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        groups = 1 if group_size is None else in_features // group_size
        self.register_buffer("w_scale", torch.ones(out_features, groups, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.sign_seed = sign_seed
        self.register_buffer("signs", None if sign_seed is None else random_signs(in_features, sign_seed,
                                                                                   dtype=torch.float32))

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, weight_method: str = "rtn", online_hadamard: bool = True,
                    weight_rotated: bool = False, clip_ratio: float | str = 1.0, weight_clip_ratio: float = 1.0,
                    mse_clip: bool = False, act_order: bool = False, group_size: int | None = None,
                    calibration: torch.Tensor | None = None, mode: str = "real",
                    sign_seed: int | None = None, bias_correction: bool = False) -> "QuaRotLinear":
        """Quantize ``linear``'s weight (``"rtn"``, or ``"gptq"`` with ``calibration`` inputs [..., in]).

        ``calibration`` holds inputs of ``linear`` as it stands. ``weight_rotated``: the online
        Hadamard's rotation (with ``sign_seed``'s signs) is already folded into ``linear``
        (``rotate_model``'s down_proj), so it is not folded again. ``clip_ratio="search"`` picks the
        activation clip ratio on ``calibration`` (``search_activation_clip``); ``mse_clip`` searches the
        weight clip per output channel; ``act_order`` is GPTQ's descending-Hessian-diagonal column order.
        ``sign_seed``: randomized online Hadamard (see the class note).
        ``bias_correction``: add to the bias the mean W4A4 output error on ``calibration``,
        mean(x·Wᵀ − Q(x)·Ŵᵀ): the part of the error shared by all tokens, which mean pooling (and every
        later layer) would otherwise accumulate; still W4A4, the bias is the fp32 epilogue's.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QuaRotLinear.from_linear: expected nn.Linear, got {type(linear).__name__}")
        k = linear.in_features
        if k % 2:
            raise ValueError(f"QuaRotLinear.from_linear: in_features must be even, got {k}")
        if online_hadamard and not supported_size(k):
            raise ValueError(f"QuaRotLinear.from_linear: no Hadamard of size in_features={k}; use "
                             f"online_hadamard=False")
        if weight_method not in ("rtn", "gptq"):
            raise ValueError(f"QuaRotLinear.from_linear: weight_method must be 'rtn' or 'gptq', got {weight_method!r}")
        if calibration is None and (weight_method == "gptq" or clip_ratio == "search"):
            raise ValueError(f"QuaRotLinear.from_linear: weight_method={weight_method!r}, clip_ratio={clip_ratio!r} "
                             f"needs calibration inputs")
        if act_order and weight_method != "gptq":
            raise ValueError("QuaRotLinear.from_linear: act_order=True is a GPTQ option (weight_method='gptq')")
        if bias_correction and calibration is None:
            raise ValueError("QuaRotLinear.from_linear: bias_correction=True needs calibration inputs")
        if sign_seed is not None and not online_hadamard:
            raise ValueError("QuaRotLinear.from_linear: sign_seed needs online_hadamard=True")
        if not (clip_ratio == "search" or isinstance(clip_ratio, (int, float))):
            raise ValueError(f"QuaRotLinear.from_linear: clip_ratio must be a number in (0, 1] or 'search', "
                             f"got {clip_ratio!r}")
        w = linear.weight.detach().double()
        x = None if calibration is None else calibration.detach().reshape(-1, k).double()
        if online_hadamard and not weight_rotated:  # W ← W·Hᵀ/√k: the rows of W get the activations' rotation
            if sign_seed is not None:  # W ← W·diag(s)·Hᵀ/√k
                s = random_signs(k, sign_seed)
                w = w * s
                x = None if x is None else x * s
            w = hadamard_transform(w, 1.0 / math.sqrt(k))
            x = None if x is None else hadamard_transform(x, 1.0 / math.sqrt(k))
        if weight_method == "rtn":
            q, scale = quantize_weight_rtn(w, group_size=group_size, clip_ratio=weight_clip_ratio, mse_clip=mse_clip)
        else:
            q, scale = quantize_weight_gptq(w, gptq_hessian(x), group_size=group_size, clip_ratio=weight_clip_ratio,
                                            mse_clip=mse_clip, act_order=act_order)
        # Ŵ, the weight the GEMM multiplies by: the calibrated choices below measure the error the layer will
        # really make with it
        w_hat = None if x is None else dequantize_weight(q, scale)
        if clip_ratio == "search":
            clip_ratio = search_activation_clip(x, w_hat)
        has_bias = linear.bias is not None or bias_correction
        mod = cls(k, linear.out_features, bias=has_bias, online_hadamard=online_hadamard,
                  clip_ratio=float(clip_ratio), group_size=group_size, mode=mode, sign_seed=sign_seed)
        if linear.bias is not None:
            mod.bias.copy_(linear.bias.detach().float())
        if bias_correction:
            mod.bias += corrective_bias(x, w, w_hat, float(clip_ratio))
        mod.w_packed.copy_(reference.pack_int4(q))
        mod.w_scale.copy_(scale)
        return mod.to(linear.weight.device)

    def dequantized_weight(self) -> torch.Tensor:
        """Ŵ in the rotated basis (what the GEMM multiplies by)."""
        return dequantize_weight(reference.unpack_int4(self.w_packed), self.w_scale)

    def _fake_matmul(self, a_packed: torch.Tensor, a_scale: torch.Tensor) -> torch.Tensor:
        qa = reference.unpack_int4(a_packed).float()
        qw = reference.unpack_int4(self.w_packed).float()
        groups = self.w_scale.shape[1]
        if groups == 1:
            y = (qa @ qw.T) * a_scale * self.w_scale.T  # the kernel's epilogue order: (acc·s_a)·s_w
        else:
            acc = torch.einsum("mgk,ngk->mng", qa.reshape(qa.shape[0], groups, -1), qw.reshape(qw.shape[0], groups, -1))
            y = (acc * self.w_scale).sum(-1) * a_scale
        return y + self.bias.float() if self.bias is not None else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.signs is not None:
            x2 = x2 * self.signs.to(x2.dtype)  # exact: a sign flip
        a_packed, a_scale = ops.quantize_int4(x2, clip_ratio=self.clip_ratio, hadamard=self.online_hadamard)
        if self.mode == "fake":
            y = self._fake_matmul(a_packed, a_scale)
        else:
            y = ops.int4_matmul(a_packed, a_scale, self.w_packed, self.w_scale.reshape(-1), self.bias)
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, online_hadamard="
                f"{self.online_hadamard}, sign_seed={self.sign_seed}, clip_ratio={self.clip_ratio}, "
                f"group_size={self.group_size}, mode={self.mode}")


class OnlineHadamard(nn.Module):
    """x ↦ x·H_nᵀ/√n along the last dim (an un-foldable rotation: the one before down_proj).

    With ``sign_seed`` it is the randomized x ↦ x·diag(s)·H_nᵀ/√n (seeded signs s; see ``QuaRotLinear``
    on why a GELU output wants them). With ``heads`` the last dim is [heads, n/heads] and the transform
    runs across the heads, i.e. x ↦ x·(H_headsᵀ/√heads ⊗ I): QuaRot's online half of the o_proj
    rotation (the per-head half is folded into W_v and W_o)."""

    def __init__(self, n: int, heads: int | None = None, sign_seed: int | None = None):
        super().__init__()
        if heads is not None and (heads < 1 or n % heads):
            raise ValueError(f"OnlineHadamard: heads must divide n={n}, got {heads}")
        if heads is not None and sign_seed is not None:
            raise ValueError("OnlineHadamard: sign_seed applies to the full transform, not the across-heads one")
        self.n, self.heads, self.sign_seed = n, heads, sign_seed
        self.register_buffer("signs", None if sign_seed is None else random_signs(n, sign_seed, dtype=torch.float32))

    def forward(self, x):
        if self.heads is not None:
            return _across_heads(x, self.heads)
        if self.signs is not None:
            x = x * self.signs.to(x.dtype)  # exact: a sign flip
        return hadamard_transform(x, 1.0 / math.sqrt(self.n))

    def extra_repr(self) -> str:
        return f"n={self.n}, heads={self.heads}, sign_seed={self.sign_seed}"


def _across_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """x [..., heads·d] ↦ x·(H_headsᵀ/√heads ⊗ I_d)."""
    lead, n = x.shape[:-1], x.shape[-1]
    xt = x.reshape(*lead, heads, n // heads).transpose(-1, -2)
    return hadamard_transform(xt, 1.0 / math.sqrt(heads)).transpose(-1, -2).reshape(*lead, n)


class HadamardThenLinear(nn.Sequential):
    """A linear after rotate_model whose input needs an online rotation (down_proj, o_proj): the
    ``OnlineHadamard``, then the linear with the matching rotation folded into its weight."""


# ---------------------------------------------------------------------------------------------------
# Attention: online Q/K Hadamard and the 4-bit KV cache

_ATTN_PREFIX = "symkernels_quarot_"


class AttentionQuaRot:
    """What the QuaRot attention hook does to one attention module's Q, K, V (after RoPE, before the
    attention kernel). Set as ``attn.quarot`` by ``rotate_model`` / ``quantize_model``.

    ``qk_hadamard``: Q, K ← Q·H/√d_h, K·H/√d_h per head (QKᵀ is unchanged; RoPE is position-dependent,
    so this rotation cannot be folded into W_q/W_k and runs online). It spreads the outlier channels of
    the keys before their 4-bit quantization. The values need no online rotation: rotate_model folds
    H_{d_h} into W_v per head (and undoes it in W_o).
    ``kv_bits=4``: K and V are quantized to unsigned asymmetric 4-bit per (token, head, group of
    ``kv_group_size`` channels) by the model's cache, a ``kv.QuaRotKVCache`` ("real": packed bytes,
    "fake": simulated), which is then the one place that quantizes them: the keys must be rotated
    before they are cached, so with a KV4 cache the key half of ``qk_hadamard`` runs in the cache's
    ``update`` (``cache_layer``), and this hook rotates only the queries. Without one the keys arrive
    here in float (whatever cache, or none, holds them) and are rotated here.
    """

    def __init__(self, head_dim: int, inner: str):
        self.head_dim, self.inner = head_dim, inner
        self.qk_hadamard = False
        self.kv_bits: int | None = None
        self.kv_group_size, self.kv_clip_ratio, self.mode = head_dim, 1.0, "real"

    def cache_layer(self):
        """This layer's KV4 cache layer (``kv_bits=4``)."""
        g = self.kv_group_size
        if not isinstance(g, int) or g < 2 or g % 2 or self.head_dim % g:
            raise ValueError(f"quantize_model: kv_group_size must be an even divisor of head_dim={self.head_dim}, "
                             f"got {g!r}")
        return QuaRotKVLayer(group_size=self.kv_group_size, clip_ratio=self.kv_clip_ratio, mode=self.mode,
                             key_hadamard=self.qk_hadamard)

    def __call__(self, q, k, v):
        if self.qk_hadamard:
            s = 1.0 / math.sqrt(self.head_dim)
            q = hadamard_transform(q, s)
            if self.kv_bits is None:  # else the KV4 cache rotated the keys before quantizing them
                k = hadamard_transform(k, s)
        return q, k, v


def kv_cache(model: nn.Module):
    """A fresh ``kv.QuaRotKVCache`` for a decoder quantized with ``kv_bits=4`` (its per-layer settings).

    ``quantize_model`` makes the model create one by itself on every forward without a cache (and in
    place of ``generate``'s empty default cache); build one explicitly to keep it, e.g. to measure it."""
    return _kv_cache(_attentions(model, model_family(model, "kv_cache")))


def _attentions(model: nn.Module, family: ModelFamily) -> list[nn.Module]:
    return [block.get_submodule(family.attention) for block in blocks(model, family)]


def _kv_cache(attentions):
    hooks = [getattr(attn, "quarot", None) for attn in attentions]
    if not all(h is not None and h.kv_bits is not None for h in hooks):
        raise ValueError("kv_cache: the model has no 4-bit KV cache (quantize_model(..., kv_bits=4) first)")
    return QuaRotKVCache([h.cache_layer() for h in hooks])


# The keyword under which transformers passes the KV cache down the decoder: ``cache`` from 5.24 on
# (``past_key_values`` is still accepted from callers, with a deprecation warning), ``past_key_values``
# before. A hook runs before the renaming decorator on ``forward``, so it must read both.
_CACHE_KWARGS = ("cache", "past_key_values")


def _install_kv_cache_hooks(model: nn.Module, family: ModelFamily) -> None:
    """Make every forward of the decoder stack (``model.base_model``) run on a ``QuaRotKVCache`` (once
    per model).

    A pre-hook on the decoder stack swaps in a fresh KV4 cache where the call has none (a forward
    without a cache still quantizes K/V: its one "step" goes through the cache) or an empty one of
    another type (``generate`` creates an empty ``DynamicCache`` before the first step and carries on
    with the cache the model returns, i.e. ours). A cache of another type that already holds tokens
    is an error: its float K/V were never quantized. Each attention module also checks that it got
    the KV4 cache, so calling a decoder layer directly with a float cache fails instead of silently
    attending over unquantized K/V."""
    inner = model.base_model
    if getattr(inner, "_quarot_kv_hooks", False):
        return
    params = list(inspect.signature(inner.forward).parameters)
    cache_name = next((name for name in _CACHE_KWARGS if name in params), _CACHE_KWARGS[-1])
    pos = params.index(cache_name) if cache_name in params else None

    # the hooks read the module they are called on, not this model: a deepcopy of the model shares
    # these functions but must build caches from its own (possibly re-quantized) settings
    def swap_cache(mod, args, kwargs):
        positional = pos is not None and len(args) > pos
        given_name = next((name for name in _CACHE_KWARGS if name in kwargs), cache_name)
        past = args[pos] if positional else kwargs.get(given_name)
        if isinstance(past, QuaRotKVCache):
            return None
        if past is not None and past.get_seq_length() > 0:
            raise ValueError(f"quantize_model(kv_bits=4): {given_name} is a {type(past).__name__} that already "
                             f"holds {past.get_seq_length()} float tokens; pass a symkernels.quarot.modules."
                             f"kv_cache(model) (or none) instead")
        cache = _kv_cache(_attentions(mod, family))
        if positional:
            args = (*args[:pos], cache, *args[pos + 1:])
        else:
            kwargs = {**kwargs, given_name: cache}
        return args, kwargs

    def check_cache(mod, _args, kwargs):
        given = next((kwargs[name] for name in _CACHE_KWARGS if name in kwargs), None)
        if mod.quarot.kv_bits is not None and not isinstance(given, QuaRotKVCache):
            raise ValueError(f"{type(mod).__name__}: this layer has a 4-bit KV cache (kv_bits=4) but was called "
                             f"with {cache_name}={type(given).__name__}, not a "
                             f"QuaRotKVCache (symkernels.quarot.modules.kv_cache(model))")

    inner.register_forward_pre_hook(swap_cache, with_kwargs=True)
    for attn in _attentions(inner, family):
        attn.register_forward_pre_hook(check_cache, with_kwargs=True)
    inner._quarot_kv_hooks = True


def _check_attention_implementation(model: nn.Module, op: str) -> None:
    impl = model.config._attn_implementation
    if not impl.startswith(_ATTN_PREFIX) and impl not in ("sdpa", "eager"):
        raise ValueError(f"{op}: attention implementation {impl!r} is not supported (use 'sdpa' or 'eager')")


def _install_attention_hook(model: nn.Module, family: ModelFamily) -> list[AttentionQuaRot]:
    """Route a decoder's attention through ``_quarot_attention`` (once) and return each layer's config.

    Uses transformers' AttentionInterface: the registered function receives Q/K after RoPE and V, then
    calls the implementation the model had (sdpa/eager), with that implementation's mask format.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    config = model.config
    impl = config._attn_implementation
    attentions = _attentions(model, family)
    if not impl.startswith(_ATTN_PREFIX):
        _check_attention_implementation(model, "rotate_model")
        eager = sys.modules[type(attentions[0]).__module__].eager_attention_forward

        def _quarot_attention(module, query, key, value, attention_mask, **kwargs):
            query, key, value = module.quarot(query, key, value)
            inner = eager if module.quarot.inner == "eager" else ALL_ATTENTION_FUNCTIONS[module.quarot.inner]
            return inner(module, query, key, value, attention_mask, **kwargs)

        name = _ATTN_PREFIX + impl
        AttentionInterface.register(name, _quarot_attention)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])
        config._attn_implementation = name
        for attn in attentions:
            attn.quarot = AttentionQuaRot(attn.head_dim, impl)
    return [attn.quarot for attn in attentions]


# ---------------------------------------------------------------------------------------------------
# Whole models: one path for every family of ``families.FAMILIES``


def _set(t: torch.Tensor, value: torch.Tensor) -> None:
    t.copy_(value.to(t.dtype))


def _rotate_input(linear: nn.Linear, q: torch.Tensor, gamma: torch.Tensor | None = None) -> None:
    """The linear now reads x·Q instead of γ⊙x: W ← W·diag(γ)·Q (a bias is added after, unchanged)."""
    w = linear.weight.double()
    if gamma is not None:
        w = w * gamma.double()[None, :]
    _set(linear.weight, w @ q)


def _rotate_output(linear: nn.Linear, q: torch.Tensor) -> None:
    """The linear now writes y·Q: W ← Qᵀ·W, b ← b·Q."""
    _set(linear.weight, q.T @ linear.weight.double())
    if linear.bias is not None:
        _set(linear.bias, linear.bias.double() @ q)


def _per_head(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    """t [..., heads·d_h] ↦ each head's block of the last dim times M = H_{d_h}ᵀ/√d_h."""
    return hadamard_transform(t.reshape(*t.shape[:-1], -1, head_dim), 1.0 / math.sqrt(head_dim)).reshape(t.shape)


def _with_online_hadamard(linear: nn.Linear, sign_seed: int | None = None) -> HadamardThenLinear:
    """An online rotation R = [diag(s)·]H_nᵀ/√n of the linear's input, undone in its weight (W ← W·R): the
    same function, with Hadamard-rotated activations for the quantizer (which then applies R itself)."""
    n = linear.in_features
    w = linear.weight.double()
    if sign_seed is not None:
        w = w * random_signs(n, sign_seed)
    _set(linear.weight, hadamard_transform(w, 1.0 / math.sqrt(n)))
    return HadamardThenLinear(OnlineHadamard(n, sign_seed=sign_seed), linear)


def _unwrap(module: nn.Module) -> nn.Module:
    return module[1] if isinstance(module, HadamardThenLinear) else module


def _attention_shape(model: nn.Module, family: ModelFamily) -> tuple[int, int, int]:
    """(heads, kv_heads, head_dim) from the config and the first block's o_proj."""
    cfg = model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    out = _unwrap(blocks(model, family)[0].get_submodule(family.attention_out))
    return heads, kv_heads, out.in_features // heads


def _rotate_residual_stream(model: nn.Module, family: ModelFamily, q: torch.Tensor) -> None:
    """Steps 1–2 of ``rotate_model`` (pre-norm only): fold every norm scale γ into the linears that read
    the normalized stream and set γ = 1 (scale-free RMSNorm commutes with Q); rotate the embeddings, the
    readers (W ← W·Q) and the writers (W ← Qᵀ·W), and undo Q in the LM head."""
    emb = model.get_input_embeddings()
    _set(emb.weight, emb.weight.double() @ q)
    for block in blocks(model, family):
        for norm_name, readers in ((family.attention_norm, family.attention_in), (family.mlp_norm, family.mlp_in)):
            norm = block.get_submodule(norm_name)
            for name in readers:
                _rotate_input(block.get_submodule(name), q, norm.weight)
            norm.weight.fill_(1.0)
        for name in (family.attention_out, family.mlp_out):  # unwrapped: learn_rotation runs after rotate_model
            _rotate_output(_unwrap(block.get_submodule(name)), q)
    final = model.base_model.get_submodule(family.final_norm)
    _rotate_input(model.get_output_embeddings(), q, final.weight)
    final.weight.fill_(1.0)


def _rotate_values(value: nn.Linear, out: nn.Linear, kv_heads: int, head_dim: int) -> None:
    """Step 4's folded half: W_v,h ← Mᵀ·W_v,h on the V rows of ``value`` (its last kv_heads·d_h rows: all
    of v_proj, the tail of a fused qkv_proj), W_o,h ← W_o,h·M on o_proj's columns."""
    rows = slice(value.out_features - kv_heads * head_dim, None)
    w = value.weight.double().clone()
    w[rows] = _per_head(w[rows].T, head_dim).T
    _set(value.weight, w)
    if value.bias is not None:
        b = value.bias.double().clone()
        b[rows] = _per_head(b[rows], head_dim)
        _set(value.bias, b)
    _set(out.weight, _per_head(out.weight.double(), head_dim))


def _check_not_quantized(model: nn.Module, op: str) -> None:
    if any(isinstance(m, QuaRotLinear) for m in model.modules()):
        raise ValueError(f"{op}: the model is already quantized (it holds QuaRotLinear modules); "
                         f"rotate the float model first, then quantize it")


@torch.no_grad()
def rotate_model(model: nn.Module, *, seed: int = 0, quantize: str | None = None, **quantize_kwargs) -> nn.Module:
    """QuaRot's rotation of a Hugging Face model, in place; returns it. The family comes from
    ``config.model_type`` (``families.FAMILIES``: Llama, Mistral, Qwen2, Qwen3, Phi-3 decoders as
    ``*ForCausalLM``; BERT encoders); anything else is a ``ValueError`` naming the supported types.

    Pre-norm decoders (QuaRot §4):

    1. Fold every RMSNorm scale γ into the linears that read the normalized stream (q/k/v, gate/up,
       lm_head; or the fused qkv_proj, gate_up_proj) and set γ = 1: RMSNorm without γ commutes with any
       orthogonal Q.
    2. Rotate the residual stream by Q = diag(s)·Hᵀ/√d (``random_hadamard(d, seed)``): embeddings
       E ← E·Q; readers W ← W·Q; writers (o_proj, down_proj) W ← Qᵀ·W (and b ← b·Q).
    3. down_proj: fold Q_ff = H_ffᵀ/√d_ff into its weight and run H_ff online on its input (the
       ``OnlineHadamard`` before it), so its activations are Hadamard-rotated for quantization.
    4. o_proj (QuaRot eq. 7–9): its input is rotated by H_{n_h} ⊗ H_{d_h}, split in two. The per-head
       M = H_{d_h}ᵀ/√d_h is folded into the V rows (each head's output rows: W_v,h ← Mᵀ·W_v,h, and its
       bias, so the values, and the 4-bit KV cache, are rotated too; attention mixes tokens, not
       channels, so each head's output is rotated by M) and undone in W_o's columns. With a fused
       qkv_proj only its V rows are rotated. The across-heads H_{n_h} runs online before o_proj (a
       strided transform over the heads, ``OnlineHadamard(heads=n_h)``), folded into W_o. Skipped when
       n_h has no Hadamard matrix (e.g. 14 heads): then o_proj sees only the per-head part.
    5. Q and K get an online per-head H_{d_h} after RoPE (``AttentionQuaRot.qk_hadamard``), for the
       KV cache quantization of the keys (with a 4-bit KV cache the keys' half runs in the cache, before
       they are quantized and stored; see ``AttentionQuaRot``). Qwen3's per-head q_norm/k_norm act
       before RoPE on the unrotated q and k, and stay as they are.

    Post-norm encoders (BERT): each block computes LayerNorm(x + sublayer(x)), and LayerNorm (its mean
    subtraction) does not commute with a rotation, so the residual stream cannot be rotated (steps 1–2
    and 5, which only serves the KV cache, do not apply). What applies, all exact: step 4 (the per-head
    V→O rotation folded, the across-heads Hadamard online), step 3 (H_{d_ff} online before the FFN
    output projection), and an online H_d before each linear that reads the residual stream (query,
    key, value, the FFN input projection), each undone in its linear's weight. These full online
    rotations are randomized, diag(s)·Hᵀ/√n with seeded signs (``seed``, ``seed + 1``, … one per
    linear): LayerNorm and GELU outputs have a large mean, which a plain H concentrates into one
    coordinate, an outlier of its own (MiniLM W4A4 hidden-state error: 0.565 with plain online
    Hadamards, 0.467 randomized, 0.818 without; ``bench.quarot_accuracy``). ``quantize_model`` fuses
    each into its linear's quantization kernel (the signs are one elementwise multiply before it). A
    decoder's down_proj keeps QuaRot's plain H_ff.

    The float model's outputs are unchanged up to rounding (computed in fp64, stored in the model dtype).
    ``quantize="real"|"fake"`` then calls ``quantize_model(model, mode=quantize, **quantize_kwargs)``
    (whose settings are checked before anything is rotated). An already rotated or quantized model,
    tied input/output embeddings, or a decoder without its LM head raise a ``ValueError``; on every
    error the model is left unchanged.
    """
    family = model_family(model, "rotate_model")
    base = model.base_model
    if getattr(base, "_quarot_rotated", False):
        raise ValueError("rotate_model: the model is already rotated")
    _check_not_quantized(model, "rotate_model")
    heads, kv_heads, head_dim = _attention_shape(model, family)
    head_rot = supported_size(head_dim)
    heads_rot = heads > 1 and supported_size(heads)
    if family.decoder and head_rot:  # the Q/K Hadamard goes through the attention interface
        _check_attention_implementation(model, "rotate_model")
    if family.pre_norm:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None:
            raise ValueError(f"rotate_model: a {family.name} model's residual rotation is undone in its LM head; "
                             f"pass the *ForCausalLM model, not {type(model).__name__}")
        if getattr(model.config, "tie_word_embeddings", False) or head.weight is model.get_input_embeddings().weight:
            raise ValueError("rotate_model: tied input/output embeddings are not supported (untie them first)")
    if quantize is not None:
        _check_quantize_options(model, family, mode=quantize, **quantize_kwargs)

    if family.pre_norm:
        _rotate_residual_stream(model, family, random_hadamard(model.config.hidden_size, seed))
    # an encoder's online rotations are randomized, each with its own signs (see the docstring)
    sign_seeds = None if family.pre_norm else itertools.count(seed)
    for block in blocks(model, family):
        if not family.pre_norm:  # the residual stream is not rotated: rotate its readers' inputs online
            for name in (*family.attention_in, *family.mlp_in):
                if supported_size(block.get_submodule(name).in_features):
                    _replace(block, name, _with_online_hadamard(block.get_submodule(name), next(sign_seeds)))
        out = block.get_submodule(family.attention_out)
        if head_rot:
            _rotate_values(_unwrap(block.get_submodule(family.value)), out, kv_heads, head_dim)
        if heads_rot:
            _set(out.weight, _across_heads(out.weight.double(), heads))
            _replace(block, family.attention_out, HadamardThenLinear(OnlineHadamard(out.in_features, heads=heads), out))
        down = block.get_submodule(family.mlp_out)
        if supported_size(down.in_features):
            _replace(block, family.mlp_out, _with_online_hadamard(down, sign_seeds and next(sign_seeds)))
    if family.decoder and head_rot:
        for hook in _install_attention_hook(model, family):
            hook.qk_hadamard = True
    base._quarot_rotated = True
    if quantize is not None:
        quantize_model(model, mode=quantize, **quantize_kwargs)
    return model


def _progress(items, desc: str, enabled: bool):
    try:
        from tqdm import tqdm

        return tqdm(items, desc=desc, unit="layer", disable=not enabled)
    except ImportError:
        return items


@torch.no_grad()
def linear_inputs(model: nn.Module, run, names: list[str], max_tokens: int = 4096) -> dict[str, torch.Tensor]:
    """The inputs [tokens, in] that the ``nn.Linear`` modules ``names`` receive while ``run(model)`` runs
    (forward pre-hooks; at most ``max_tokens`` rows each): calibration data for GPTQ and clip search."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = []
    for n in names:
        def hook(_mod, args, n=n):
            x = args[0].detach()
            seen[n].append(x.reshape(-1, x.shape[-1]).float().cpu())
        hooks.append(model.get_submodule(n).register_forward_pre_hook(hook))
    try:
        run(model)
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v)[:max_tokens] for n, v in seen.items() if v}


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], module)


def _check_quantize_options(model: nn.Module, family: ModelFamily, *, mode: str = "real", weight_method: str = "rtn",
                            clip_ratio: float | str = 1.0, kv_bits: int | None = 4, kv_group_size: int | None = None,
                            calibration_ids: torch.Tensor | list[torch.Tensor] | None = None, act_order: bool = False,
                            **linear_kwargs) -> None:
    """The checks ``quantize_model`` makes before it changes anything (``rotate_model(quantize=…)`` makes
    them before rotating)."""
    if mode not in MODES:
        raise ValueError(f"quantize_model: mode must be one of {MODES}, got {mode!r}")
    if kv_bits not in (None, 4):
        raise ValueError(f"quantize_model: kv_bits must be 4 or None, got {kv_bits!r}")
    if weight_method not in ("rtn", "gptq"):
        raise ValueError(f"quantize_model: weight_method must be 'rtn' or 'gptq', got {weight_method!r}")
    if act_order and weight_method != "gptq":
        raise ValueError("quantize_model: act_order=True is a GPTQ option (weight_method='gptq')")
    if not (clip_ratio == "search" or isinstance(clip_ratio, (int, float))):
        raise ValueError(f"quantize_model: clip_ratio must be a number in (0, 1] or 'search', got {clip_ratio!r}")
    if (weight_method == "gptq" or clip_ratio == "search") and calibration_ids is None:
        raise ValueError("quantize_model: weight_method='gptq' or clip_ratio='search' needs calibration_ids")
    if linear_kwargs.get("bias_correction") and calibration_ids is None:
        raise ValueError("quantize_model: bias_correction=True needs calibration_ids")
    own = set(inspect.signature(quantize_model).parameters)
    # the online rotations (and their signs) are rotate_model's business, or online_hadamard's
    known = set(inspect.signature(QuaRotLinear.from_linear).parameters) - {"cls", "linear", "calibration",
                                                                          "weight_rotated", "sign_seed"}
    unknown = sorted(set(linear_kwargs) - own - known)
    if unknown:
        raise TypeError(f"quantize_model: unexpected keyword arguments {unknown}")
    if family.decoder and kv_bits is not None:
        _check_attention_implementation(model, "quantize_model")
        head_dim = _attention_shape(model, family)[2]
        g = head_dim if kv_group_size is None else kv_group_size
        if not isinstance(g, int) or g < 2 or g % 2 or head_dim % g:
            raise ValueError(f"quantize_model: kv_group_size must be an even divisor of head_dim={head_dim}, "
                             f"got {g!r}")


@torch.no_grad()
def quantize_model(model: nn.Module, *, mode: str = "real", weight_method: str = "rtn",
                   clip_ratio: float | str = 1.0, kv_bits: int | None = 4, kv_group_size: int | None = None,
                   kv_clip_ratio: float = 1.0, online_hadamard: bool = False,
                   calibration_ids: torch.Tensor | list[torch.Tensor] | None = None, linears: bool = True,
                   progress: bool = True,
                   **linear_kwargs) -> nn.Module:
    """W4A4 (+ KV4 for decoders) quantization of a Hugging Face model of a supported family
    (``rotate_model``), in place (after ``rotate_model`` for QuaRot; on an unrotated model it is the
    no-rotation baseline). Returns the model.

    Every linear of the transformer blocks becomes a ``QuaRotLinear`` in ``mode`` ("real": the int4
    kernels; "fake": the simulation, same numbers, see ``QuaRotLinear``); embeddings and whatever
    follows the blocks (lm_head, a BERT pooler or classifier) stay in float (as in QuaRot). A linear
    after a full online Hadamard (``rotate_model``'s down_proj, and an encoder's residual readers)
    becomes one ``QuaRotLinear`` whose quantization kernel applies H_n itself (fused), its weight
    already rotated; the across-heads Hadamard before o_proj stays a module of its own.
    ``online_hadamard`` adds a Hadamard in front of the other linears (for the unrotated baseline; after
    ``rotate_model`` their inputs are already rotated).

    ``kv_bits=4`` (decoders) quantizes keys and values in a ``kv.QuaRotKVCache`` that the model then
    uses on every forward and in ``generate`` ("real": packed 4-bit codes, "fake": simulated), groups
    of ``kv_group_size`` channels (default: head_dim); ``None`` leaves the cache in float. An encoder
    keeps no KV cache, so ``kv_bits`` does not apply to it. ``linears=False`` quantizes only the KV
    cache (to study its error alone, or to re-set the KV settings of a quantized model).
    ``weight_method="gptq"``, ``clip_ratio="search"`` and ``bias_correction`` need ``calibration_ids``
    [batch, seq], or a list of such tensors run one by one (e.g. one [1, seq] per sentence: sentences of
    different lengths then need no padding, whose positions would enter the Hessians): every layer's inputs are recorded in float forward passes first (not layer-sequentially
    as GPTQ's reference code does). ``linear_kwargs`` go to ``QuaRotLinear.from_linear`` (group_size,
    mse_clip, act_order, weight_clip_ratio, bias_correction).

    An unsupported model type, a model whose linears are already quantized, or bad settings raise
    before anything changes: every replacement is built before the first one is swapped in.
    """
    family = model_family(model, "quantize_model")
    _check_quantize_options(model, family, mode=mode, weight_method=weight_method, clip_ratio=clip_ratio,
                            kv_bits=kv_bits, kv_group_size=kv_group_size, calibration_ids=calibration_ids,
                            **linear_kwargs)
    layers = blocks(model, family)
    prefix = next(name for name, mod in model.named_modules() if mod is layers)
    targets = [(f"{prefix}.{i}.{name}", block.get_submodule(name))
               for i, block in enumerate(layers if linears else ()) for name in family.linears]
    if any(isinstance(_unwrap(mod), QuaRotLinear) for _, mod in targets):
        raise ValueError("quantize_model: the model is already quantized (its linears are QuaRotLinear); "
                         "quantize the float model (linears=False re-sets only the KV cache)")
    calib = {}
    if weight_method == "gptq" or clip_ratio == "search" or linear_kwargs.get("bias_correction"):
        inner_names = [n + ".1" if isinstance(m, HadamardThenLinear) else n for n, m in targets]
        batches = calibration_ids if isinstance(calibration_ids, (list, tuple)) else [calibration_ids]
        calib = linear_inputs(model, lambda m: [m(ids) for ids in batches], inner_names)
    replacements = []
    for name, mod in _progress(targets, f"quantize ({weight_method}, {mode})", progress):
        fused = isinstance(mod, HadamardThenLinear) and mod[0].heads is None
        lin = _unwrap(mod)
        x = calib.get(name + ".1" if isinstance(mod, HadamardThenLinear) else name)
        new = QuaRotLinear.from_linear(lin, weight_method=weight_method, clip_ratio=clip_ratio, calibration=x,
                                       online_hadamard=fused or (online_hadamard and supported_size(lin.in_features)),
                                       weight_rotated=fused, sign_seed=mod[0].sign_seed if fused else None,
                                       mode=mode, **linear_kwargs)
        replacements.append((name, mod, new))
    for name, mod, new in replacements:
        if isinstance(mod, HadamardThenLinear) and mod[0].heads is not None:
            mod[1] = new  # the across-heads transform stays a module of its own in front of o_proj
        else:
            _replace(model, name, new)
    if family.decoder and kv_bits is not None:
        for hook in _install_attention_hook(model, family):
            hook.kv_bits, hook.mode, hook.kv_clip_ratio = kv_bits, mode, kv_clip_ratio
            hook.kv_group_size = kv_group_size or hook.head_dim
        _install_kv_cache_hooks(model, family)
    return model


def quantize_linears(model: nn.Module, *, weight_method: str = "rtn", clip_ratio: float | str = 1.0,
                     online_hadamard: bool = True,
                     calibration: dict[str, torch.Tensor] | Callable[[str], torch.Tensor | None] | None = None,
                     skip: tuple[str, ...] = ("lm_head",), sign_seed: int | None = None, progress: bool = True,
                     **kwargs) -> nn.Module:
    """Replace every ``nn.Linear`` (except names containing an entry of ``skip``) by ``QuaRotLinear``,
    in place, with a progress bar over layers: any model (e.g. a BERT encoder). ``calibration`` maps
    module names to their inputs (``linear_inputs``), for GPTQ and clip search; layers without
    calibration fall back to RTN / clip 1.0. ``calibration`` may instead be a function of the module name,
    called just before that layer is quantized, when every earlier layer (in ``named_modules`` order)
    already is: sequential calibration, GPTQ's own procedure, where each layer is fitted to the inputs
    the quantized layers before it produce. Layers whose in_features has no Hadamard fall back to
    online_hadamard=False. ``sign_seed``: randomized online Hadamards (layer i uses seed sign_seed + i)."""
    names = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and not any(s in n for s in skip)]
    for i, (name, lin) in enumerate(_progress(names, f"quantize ({weight_method})", progress)):
        rot = online_hadamard and supported_size(lin.in_features)
        calib = calibration(name) if callable(calibration) else calibration.get(name) if calibration else None
        method = weight_method if calib is not None else "rtn"
        clip = clip_ratio if calib is not None or clip_ratio != "search" else 1.0
        extra = dict(kwargs)
        if method != "gptq":
            extra.pop("act_order", None)
        if calib is None:
            extra.pop("bias_correction", None)
        seed = None if sign_seed is None or not rot else sign_seed + i
        new = QuaRotLinear.from_linear(lin, weight_method=method, online_hadamard=rot, clip_ratio=clip,
                                       calibration=calib, sign_seed=seed, **extra)
        _replace(model, name, new)
    return model
