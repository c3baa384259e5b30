"""QuaRotLinear (rotate → quantize → W4A4 GEMM) and rotate_model for Llama-architecture models."""
from __future__ import annotations

import math

import torch
from torch import nn

from symkernels.hadamard.hadamard_k import decompose, random_hadamard
from symkernels.hadamard.ops import hadamard_transform
from symkernels.quarot import ops, reference
from symkernels.quarot.weights import (dequantize_weight, gptq_hessian, quantize_weight_gptq,
                                       quantize_weight_rtn)


def _rotatable(n: int) -> bool:
    return (n >= 2 and n & (n - 1) == 0 and n <= 1 << 15) or decompose(n) is not None


class QuaRotLinear(nn.Module):
    """Drop-in W4A4 ``nn.Linear``: y = int4_matmul(quantize_int4(x [·H/√n]), W_q [·H/√n]) + b.

    With ``online_hadamard`` the activation row is rotated by H_n/√n inside the quantization kernel and
    the same rotation was folded into the weight offline (``x Wᵀ = (xQ)(WQ)ᵀ``, Q orthogonal), which
    spreads outlier channels before the per-token INT4 rounding. Per-channel weights run on the
    ``int4_matmul`` kernel; group-wise weights (``group_size``) are evaluated by dequantizing them
    (``simulate=True`` also forces that path: the same numbers up to fp32 rounding order).
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool, online_hadamard: bool,
                 clip_ratio: float, group_size: int | None, simulate: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.online_hadamard, self.clip_ratio, self.group_size = online_hadamard, clip_ratio, group_size
        self.simulate = simulate or group_size is not None
        self.register_buffer("w_packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        groups = 1 if group_size is None else in_features // group_size
        self.register_buffer("w_scale", torch.ones(out_features, groups, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, weight_method: str = "rtn", online_hadamard: bool = True,
                    clip_ratio: float = 1.0, weight_clip_ratio: float = 1.0, group_size: int | None = None,
                    calibration: torch.Tensor | None = None, simulate: bool = False) -> "QuaRotLinear":
        """Quantize ``linear``'s weight (``"rtn"``, or ``"gptq"`` with ``calibration`` inputs [..., in])."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QuaRotLinear.from_linear: expected nn.Linear, got {type(linear).__name__}")
        k = linear.in_features
        if k % 2:
            raise ValueError(f"QuaRotLinear.from_linear: in_features must be even, got {k}")
        if online_hadamard and not _rotatable(k):
            raise ValueError(f"QuaRotLinear.from_linear: no Hadamard of size in_features={k}; use "
                             f"online_hadamard=False")
        if weight_method not in ("rtn", "gptq"):
            raise ValueError(f"QuaRotLinear.from_linear: weight_method must be 'rtn' or 'gptq', got {weight_method!r}")
        if weight_method == "gptq" and calibration is None:
            raise ValueError("QuaRotLinear.from_linear: weight_method='gptq' needs calibration inputs")
        mod = cls(k, linear.out_features, bias=linear.bias is not None, online_hadamard=online_hadamard,
                  clip_ratio=clip_ratio, group_size=group_size, simulate=simulate)
        w = linear.weight.detach().double()
        if online_hadamard:  # W ← W·Hᵀ/√k: the rows of W get the activations' rotation
            w = hadamard_transform(w, 1.0 / math.sqrt(k))
        if weight_method == "rtn":
            q, scale = quantize_weight_rtn(w, group_size=group_size, clip_ratio=weight_clip_ratio)
        else:
            x = calibration.detach().double()
            if online_hadamard:
                x = hadamard_transform(x, 1.0 / math.sqrt(k))
            q, scale = quantize_weight_gptq(w, gptq_hessian(x), group_size=group_size, clip_ratio=weight_clip_ratio)
        mod.w_packed.copy_(reference.pack_int4(q))
        mod.w_scale.copy_(scale)
        if linear.bias is not None:
            mod.bias.copy_(linear.bias.detach().float())
        return mod

    def dequantized_weight(self) -> torch.Tensor:
        """Ŵ in the rotated basis (what the GEMM multiplies by)."""
        return dequantize_weight(reference.unpack_int4(self.w_packed), self.w_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        a_packed, a_scale = ops.quantize_int4(x2, clip_ratio=self.clip_ratio, hadamard=self.online_hadamard)
        if self.simulate:
            y = ops.dequantize_int4(a_packed, a_scale) @ self.dequantized_weight().T
            if self.bias is not None:
                y = y + self.bias
        else:
            y = ops.int4_matmul(a_packed, a_scale, self.w_packed, self.w_scale.reshape(-1), self.bias)
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, online_hadamard="
                f"{self.online_hadamard}, clip_ratio={self.clip_ratio}, group_size={self.group_size}")


class OnlineHadamard(nn.Module):
    """x ↦ x·H_nᵀ/√n along the last dim (the un-foldable rotation before down_proj)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return hadamard_transform(x, 1.0 / math.sqrt(self.n))


class HadamardThenLinear(nn.Sequential):
    """down_proj after rotate_model: the online Hadamard, then the linear with Hᵀ/√n folded in."""


@torch.no_grad()
def rotate_model(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """QuaRot's rotation of a Llama-architecture HF model (``LlamaForCausalLM``), in place; returns it.

    1. Fold every RMSNorm scale γ into the linears that read the normalized stream (q/k/v, gate/up,
       lm_head) and set γ = 1: RMSNorm without γ commutes with any orthogonal Q.
    2. Rotate the residual stream by Q = diag(s)·Hᵀ/√d (``random_hadamard(d, seed)``): embeddings
       E ← E·Q; readers W ← W·Q; writers (o_proj, down_proj) W ← Qᵀ·W.
    3. down_proj: fold Q_ff = H_ffᵀ/√d_ff into its weight and run H_ff online on its input (the
       ``OnlineHadamard`` before it), so its activations are Hadamard-rotated for quantization.
    The float model's outputs are unchanged up to rounding (computed in fp64, stored in the model dtype).
    Not done here: the per-head Hadamard before o_proj and the 4-bit KV cache.
    """
    inner = model.model
    d = model.config.hidden_size
    if getattr(model.config, "tie_word_embeddings", False):
        raise ValueError("rotate_model: tied input/output embeddings are not supported (untie them first)")
    q = random_hadamard(d, seed)  # fp64 [d, d], orthogonal

    def read(lin: nn.Linear, gamma: torch.Tensor | None = None):
        w = lin.weight.double()
        if gamma is not None:
            w = w * gamma.double()[None, :]
        lin.weight.copy_((w @ q).to(lin.weight.dtype))

    def write(lin: nn.Linear):
        lin.weight.copy_((q.T @ lin.weight.double()).to(lin.weight.dtype))
        if lin.bias is not None:
            lin.bias.copy_((lin.bias.double() @ q).to(lin.bias.dtype))

    emb = inner.embed_tokens
    emb.weight.copy_((emb.weight.double() @ q).to(emb.weight.dtype))
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        g1, g2 = layer.input_layernorm.weight.clone(), layer.post_attention_layernorm.weight.clone()
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
            read(lin, g1)
        for lin in (mlp.gate_proj, mlp.up_proj):
            read(lin, g2)
        layer.input_layernorm.weight.fill_(1.0)
        layer.post_attention_layernorm.weight.fill_(1.0)
        write(attn.o_proj)
        down = mlp.down_proj
        write(down)
        d_ff = down.in_features
        if _rotatable(d_ff):
            down.weight.copy_(hadamard_transform(down.weight.double(), 1.0 / math.sqrt(d_ff)).to(down.weight.dtype))
            mlp.down_proj = HadamardThenLinear(OnlineHadamard(d_ff), down)
    read(model.lm_head, inner.norm.weight.clone())
    inner.norm.weight.fill_(1.0)
    return model


def quantize_linears(model: nn.Module, *, weight_method: str = "rtn", clip_ratio: float = 1.0,
                     online_hadamard: bool = True, calibration: dict[str, torch.Tensor] | None = None,
                     skip: tuple[str, ...] = ("lm_head",), progress: bool = True, **kwargs) -> nn.Module:
    """Replace every ``nn.Linear`` (except names containing an entry of ``skip``) by ``QuaRotLinear``,
    in place, with a progress bar over layers. ``calibration`` maps module names to their inputs (GPTQ).
    Layers whose in_features has no Hadamard fall back to online_hadamard=False."""
    names = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and not any(s in n for s in skip)]
    try:
        from tqdm import tqdm

        it = tqdm(names, desc=f"quantize ({weight_method})", unit="layer", disable=not progress)
    except ImportError:
        it = names
    for name, lin in it:
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        rot = online_hadamard and _rotatable(lin.in_features)
        calib = calibration.get(name) if calibration else None
        method = weight_method if calib is not None or weight_method == "rtn" else "rtn"
        new = QuaRotLinear.from_linear(lin, weight_method=method, online_hadamard=rot, clip_ratio=clip_ratio,
                                       calibration=calib, **kwargs)
        setattr(parent, name.rsplit(".", 1)[-1], new)
    return model
