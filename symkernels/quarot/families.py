"""Where each supported Hugging Face model family keeps the modules that QuaRot rotates and quantizes.

One ``ModelFamily`` per layout, looked up by ``config.model_type``; ``rotate_model`` and ``quantize_model``
(``quarot.modules``) read only this description, so a new family with a known layout is one table
entry. Paths are attribute paths (``get_submodule``): ``layers`` from the base model (``model.base_model``:
``model.model`` of a ``*ForCausalLM``, the ``BertModel`` itself), the rest from one block.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn


@dataclass(frozen=True)
class ModelFamily:
    """The rotation-relevant layout of one model family.

    ``pre_norm``: each sub-block reads ``norm(x)`` and adds its output to the residual stream x
    (Llama-style decoders, RMSNorm). Only then can a rotation Q of the residual stream be folded into
    the weights: RMSNorm without its scale commutes with Q. A post-norm block (BERT) normalizes
    ``x + sublayer(x)`` with a LayerNorm, which subtracts the mean over channels and so does not
    commute with Q; its residual stream stays unrotated.
    """

    name: str
    layers: str  # the ModuleList of blocks, from the base model
    attention: str  # the attention module of a block (carries the QuaRot attention hook)
    attention_in: tuple[str, ...]  # the linears that read the attention's input: q, k, v or a fused qkv
    # the linear whose last num_key_value_heads·head_dim output rows are V: v_proj, or the tail of a
    # fused qkv_proj (Phi-3 concatenates [Q; K; V]), so the per-head V→O rotation touches those rows only
    value: str
    attention_out: str  # o_proj
    mlp_in: tuple[str, ...]  # gate and up, or a fused gate_up
    mlp_out: str  # down_proj
    pre_norm: bool
    # pre-norm only: the norms whose scales γ fold into the linears after them, and the final norm
    # (folded into the LM head)
    attention_norm: str | None = None
    mlp_norm: str | None = None
    final_norm: str | None = None
    decoder: bool = True  # causal LM with a KV cache: KV4, the Q/K online Hadamard, an LM head

    @property
    def linears(self) -> tuple[str, ...]:
        """Every linear of a block, in execution order: what ``quantize_model`` quantizes."""
        return (*self.attention_in, self.attention_out, *self.mlp_in, self.mlp_out)


LLAMA = ModelFamily(
    name="llama", layers="layers", attention="self_attn",
    attention_in=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), value="self_attn.v_proj",
    attention_out="self_attn.o_proj", mlp_in=("mlp.gate_proj", "mlp.up_proj"), mlp_out="mlp.down_proj",
    pre_norm=True, attention_norm="input_layernorm", mlp_norm="post_attention_layernorm", final_norm="norm")

FAMILIES: dict[str, ModelFamily] = {
    "llama": LLAMA,
    "mistral": replace(LLAMA, name="mistral"),
    # q/k/v biases: a bias is added after the weight, so the input rotation W ← W·Q leaves it as is;
    # v's bias gets the per-head V rotation like v's rows
    "qwen2": replace(LLAMA, name="qwen2"),
    # Qwen3's per-head q_norm/k_norm (RMSNorm over head_dim, before RoPE) see exactly the float q and k:
    # the residual rotation is undone inside W_q/W_k (W ← W·Q), the online Q/K Hadamard runs after RoPE,
    # and the V→O rotation never touches q or k. Nothing to fold there, and nothing may be (RoPE sits
    # between the norm and the Hadamard).
    "qwen3": replace(LLAMA, name="qwen3"),
    "phi3": replace(LLAMA, name="phi3", attention_in=("self_attn.qkv_proj",), value="self_attn.qkv_proj",
                    mlp_in=("mlp.gate_up_proj",)),
    "bert": ModelFamily(
        name="bert", layers="encoder.layer", attention="attention.self",
        attention_in=("attention.self.query", "attention.self.key", "attention.self.value"),
        value="attention.self.value", attention_out="attention.output.dense", mlp_in=("intermediate.dense",),
        mlp_out="output.dense", pre_norm=False, decoder=False),
}


def model_family(model: nn.Module, op: str) -> ModelFamily:
    """The family of a Hugging Face model, from ``model.config.model_type``; a ``ValueError`` naming the
    supported model types otherwise (``op`` prefixes the message)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(f"{op}: model_type {model_type!r} ({type(model).__name__}) is not supported; supported "
                         f"model types: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]


def blocks(model: nn.Module, family: ModelFamily) -> nn.ModuleList:
    """The transformer blocks of ``model`` (a task model or its base model)."""
    return getattr(model, "base_model", model).get_submodule(family.layers)
