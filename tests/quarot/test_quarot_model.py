"""rotate_model / quantize_model on a tiny random Llama (HF LlamaForCausalLM built offline): the
rotation is exact in float, the 4-bit KV cache is far better with it on a model with outlier
channels, and the fake-quant simulation gives the kernels' numbers."""
import copy
import inspect
import platform
import warnings

import pytest
import torch
from torch import nn

from symkernels.quarot import kv
from symkernels.quarot.modules import (HadamardThenLinear, OnlineHadamard, QuaRotLinear, kv_cache, quantize_model,
                                       rotate_model)

transformers = pytest.importorskip("transformers")
# transformers 5.24 renamed the KV-cache keyword and output field from ``past_key_values`` to ``cache``
# (the old keyword still works, with a deprecation warning); the tests speak the installed version's name
CACHE = "cache" if "cache" in inspect.signature(transformers.LlamaModel.forward).parameters else "past_key_values"


def _tiny_llama(intermediate=192, hidden=64, heads=4, kv_heads=2, attn="sdpa", bias=False):
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=hidden, intermediate_size=intermediate,
                                   num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                   max_position_embeddings=64, tie_word_embeddings=False, attn_implementation=attn,
                                   attention_bias=bias, mlp_bias=bias)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norm scales, so that folding them is tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("intermediate,heads,attn,bias", [(192, 4, "sdpa", False), (256, 4, "eager", True),
                                                         (192, 1, "sdpa", True)])
def test_rotate_model_preserves_float_outputs(intermediate, heads, attn, bias):
    model = _tiny_llama(intermediate, heads=heads, kv_heads=1 if heads == 1 else 2, attn=attn, bias=bias)
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        before = model(ids).logits
        rotate_model(model, seed=3)
        after = model(ids).logits
    torch.testing.assert_close(after, before, atol=2e-4, rtol=2e-4)
    layer = model.model.layers[0]
    assert torch.all(layer.input_layernorm.weight == 1)
    assert isinstance(layer.mlp.down_proj, HadamardThenLinear)  # online H_ff inserted
    o = layer.self_attn.o_proj
    if heads > 1:  # online across-heads Hadamard before o_proj
        assert isinstance(o, HadamardThenLinear) and o[0].heads == heads
    else:
        assert isinstance(o, nn.Linear)
    assert layer.self_attn.quarot.qk_hadamard and model.config._attn_implementation == f"symkernels_quarot_{attn}"
    with pytest.raises(ValueError, match="already rotated"):
        rotate_model(model)


def test_rotated_values_and_o_proj_input_are_hadamard_rotated():
    """The folded per-head H_{d_h} really rotates the values, and o_proj's input ends up rotated by
    H_{n_h} ⊗ H_{d_h} = H_d (Sylvester): checked against the unrotated model's tensors."""
    model = _tiny_llama()
    ids = torch.randint(0, 97, (1, 7))
    seen = {}

    def grab(key):
        return lambda _m, args, out=None: seen.__setitem__(key, (args[0] if out is None else out).detach().clone())

    ref = copy.deepcopy(model)
    ref.model.layers[0].self_attn.o_proj.register_forward_pre_hook(grab("o_in_ref"))
    with torch.no_grad():
        ref(ids)
        rotate_model(model, seed=5)
        model.model.layers[0].self_attn.o_proj[1].register_forward_pre_hook(grab("o_in"))
        model(ids)
    d = 64
    expected = OnlineHadamard(d)(seen["o_in_ref"])  # x·H_dᵀ/√d
    torch.testing.assert_close(seen["o_in"], expected, atol=1e-5, rtol=1e-5)


def _outlier_llama():
    """A Llama whose keys and values have outlier channels (×30), with the float function unchanged:
    a RoPE pair of k_proj rows is scaled up and the same q_proj rows down (RoPE rotates each pair with
    equal scales, so q·k is unchanged); a v_proj row up and the o_proj columns that read it down.
    head_dim 128, as in real models: the Hadamard's gain on a group grows like √d_h."""
    model = _tiny_llama(intermediate=512, hidden=256, heads=2, kv_heads=1)
    m, d_h = 30.0, 128
    with torch.no_grad():
        for layer in model.model.layers:
            a = layer.self_attn
            for c in (3, 3 + d_h // 2):
                a.k_proj.weight[c] *= m
                a.q_proj.weight[[c, d_h + c]] /= m
            a.v_proj.weight[1] *= m
            a.o_proj.weight[:, [1, d_h + 1]] /= m
    return model


def _prefill_decode(model, ids, prefill, cache=None):
    """Logits [batch, seq, vocab] of ``ids`` fed as a prefill of ``prefill`` tokens, then one token per
    step through the cache the model returns (the decode loop of ``generate``)."""
    out = model(ids[:, :prefill], **{CACHE: cache}, use_cache=True)
    logits, cache = [out.logits], out[CACHE]
    for t in range(prefill, ids.shape[1]):
        out = model(ids[:, t:t + 1], **{CACHE: cache}, use_cache=True)
        logits.append(out.logits)
        cache = out[CACHE]
    return torch.cat(logits, dim=1), cache


@pytest.mark.parametrize("mode", ["fake", "real"])
def test_kv4_error_far_lower_with_rotation(mode):
    """KV4 only (float linears), prefill + decode steps through the 4-bit cache."""
    model = _outlier_llama()
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
        err = {}
        for rot in (False, True):
            m = rotate_model(copy.deepcopy(model), seed=1) if rot else copy.deepcopy(model)
            quantize_model(m, mode=mode, kv_bits=4, linears=False)  # KV4 only: the error is the cache's
            logits, cache = _prefill_decode(m, ids, prefill=10)
            assert isinstance(cache, kv.QuaRotKVCache) and cache.get_seq_length() == 16
            err[rot] = ((logits - ref).norm() / ref.norm()).item()
    # measured: 0.47 → 0.18 (2.7×), both modes; without the outlier scaling both are ≈ 0.12
    assert err[True] * 2.5 < err[False], err


def test_kv4_cache_stores_a_quarter_of_fp16():
    """Measured on the tensors the caches hold after the same prefill + decode: the real KV4 cache's
    codes + fp32 scale/zero against the float model's fp16 DynamicCache (head_dim 128: 64 + 8 bytes per
    (token, head) for K and for V, vs 256)."""
    model = _outlier_llama()
    ids = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, fp16 = _prefill_decode(copy.deepcopy(model).half(), ids, prefill=9)
        fp16_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in fp16.layers)
        q = {}
        for mode in ("real", "fake"):
            m = rotate_model(copy.deepcopy(model), seed=1, quantize=mode, linears=False)
            q[mode] = _prefill_decode(m, ids, prefill=9)[1]
    assert type(fp16).__name__ == "DynamicCache" and fp16.layers[0].keys.dtype == torch.float16
    real = q["real"]
    layer = real.layers[0]
    assert layer.store["k_packed"].dtype == torch.uint8 and layer.store["k_packed"].shape == (2, 1, 13, 64)
    assert layer.store["v_scale"].shape == (2, 1, 13, 1)  # one (scale, zero) pair per (token, head)
    assert all(t.dtype in (torch.uint8, torch.float32) for lay in real.layers for t in lay.store.values())
    ratio = real.nbytes / fp16_bytes
    assert ratio == pytest.approx((64 + 8) / 256, rel=1e-12), ratio  # 0.28: 4/16 of fp16 + the scales
    # the simulation keeps x̂ in the model dtype (fp32 here): no memory saved
    assert q["fake"].nbytes == 2 * fp16_bytes


def test_kv4_decode_real_equals_fake_and_matches_full_forward():
    """W4A4 + KV4 after rotation, prefill + 4 decode steps: the real cache (packed codes) and the fake
    one give the same logits; with KV4 alone the cached decode equals one forward over the whole
    sequence (the quantization is per token: appending a token never changes the earlier codes)."""
    model = _tiny_llama()
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = model(ids).logits
        out = {}
        for mode in ("fake", "real"):
            m = rotate_model(copy.deepcopy(model), seed=2, quantize=mode, clip_ratio=0.9, progress=False)
            out[mode] = _prefill_decode(m, ids, prefill=7)[0]
        kv_only = rotate_model(copy.deepcopy(model), seed=2, quantize="real", linears=False)
        attn = kv_only.model.layers[1].self_attn
        seen = []
        hook = attn.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw), with_kwargs=True)
        stepped, cache = _prefill_decode(kv_only, ids, prefill=7)
        hook.remove()
        whole = kv_only(ids, use_cache=False).logits
        # the cached keys are this layer's keys after RoPE and the per-head Hadamard, quantized once
        keys = []
        for kw in seen:
            x = kw["hidden_states"]
            k = attn.k_proj(x).view(*x.shape[:2], -1, attn.head_dim).transpose(1, 2)
            cos, sin = kw["position_embeddings"]
            k = transformers.models.llama.modeling_llama.apply_rotary_pos_emb(k, k, cos, sin)[1]
            keys.append(OnlineHadamard(attn.head_dim)(k))
        want = kv.fake_quantize_kv_int4(torch.cat(keys, dim=2), group_size=attn.head_dim)
        torch.testing.assert_close(cache.layers[1]._decode("k"), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["fake"], out["real"], atol=1e-6 * ref.abs().max().item(), rtol=1e-6)
    if platform.machine() == "x86_64":  # see test_fake_and_real_modes_give_the_same_logits
        assert torch.equal(out["fake"], out["real"])
    torch.testing.assert_close(stepped, whole, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(whole, ref, atol=1e-3)  # the cache really quantized something
    for logits in (out["real"], stepped):
        cos = nn.functional.cosine_similarity(logits.flatten(), ref.flatten(), dim=0)
        assert cos > 0.9, cos


def test_kv4_generate_uses_the_packed_cache():
    model = rotate_model(_tiny_llama(), seed=2)
    ids = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    seqs = {}
    with torch.no_grad():
        for mode in ("fake", "real"):
            m = quantize_model(copy.deepcopy(model), mode=mode, progress=False)
            g = m.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, return_dict_in_generate=True,
                           pad_token_id=0)
            assert isinstance(g[CACHE], kv.QuaRotKVCache) and g[CACHE].get_seq_length() == 9
            assert g[CACHE].layers[0].mode == mode
            seqs[mode] = g.sequences
            # beam search expands (batch_repeat_interleave) and reorders the packed cache every step
            seqs[mode, "beam"] = m.generate(ids, attention_mask=mask, max_new_tokens=4, num_beams=3, do_sample=False,
                                            pad_token_id=0)
            # an explicit cache is used (and kept); a float cache that already holds tokens is refused
            cache = kv_cache(m)
            m(ids, **{CACHE: cache})
            assert cache.get_seq_length() == 6
            full = transformers.DynamicCache(config=m.config)
            copy.deepcopy(model)(ids, **{CACHE: full})
            with pytest.raises(ValueError, match="already holds 6 float tokens"):
                m(ids[:, :1], **{CACHE: full})
            with warnings.catch_warnings(), pytest.raises(ValueError, match="already holds 6 float tokens"):
                warnings.simplefilter("ignore", FutureWarning)  # the deprecated keyword is read too
                m(ids[:, :1], past_key_values=full)
            with pytest.raises(ValueError, match="QuaRotKVCache"):  # a decoder layer called with a float cache
                layer = m.model.layers[0]
                h = torch.randn(2, 3, 64)
                pos = m.model.rotary_emb(h, torch.arange(3)[None])
                layer(h, position_embeddings=pos, **{CACHE: transformers.DynamicCache(config=m.config)})
    assert torch.equal(seqs["fake"], seqs["real"]) and torch.equal(seqs["fake", "beam"], seqs["real", "beam"])
    # a copy of a KV4 model, re-set to the other mode, builds its own caches
    with torch.no_grad():
        m2 = quantize_model(copy.deepcopy(m), mode="fake", linears=False)
        assert m2(ids)[CACHE].layers[0].mode == "fake" and m(ids)[CACHE].layers[0].mode == "real"


def test_kv4_cache_layer_ops_and_errors():
    """crop / beam reordering / batch selection act on codes and scales alike and exactly (no
    re-quantization); bad settings and inputs raise clear errors."""
    gen = torch.Generator().manual_seed(6)
    k, v = torch.randn(3, 2, 5, 32, generator=gen), torch.randn(3, 2, 5, 32, generator=gen)
    layer = kv.QuaRotKVLayer(group_size=16, mode="real")
    k1, v1 = layer.update(k, v)
    torch.testing.assert_close(k1, kv.fake_quantize_kv_int4(k, group_size=16), rtol=0, atol=0)
    k2, _ = layer.update(k[:, :, :2], v[:, :, :2])  # appended, earlier tokens untouched
    assert torch.equal(k2[:, :, :5], k1) and layer.get_seq_length() == 7
    assert layer.nbytes == 2 * 3 * 2 * 7 * (16 + 2 * 4 * 2)
    layer.crop(-2)
    assert layer.get_seq_length() == 5 and torch.equal(layer._decode("k"), k1)
    layer.reorder_cache(torch.tensor([2, 0, 1]))
    assert torch.equal(layer._decode("v"), v1[[2, 0, 1]])
    layer.batch_select_indices(torch.tensor([1]))
    assert torch.equal(layer._decode("v"), v1[[0]])
    layer.reset()
    assert layer.get_seq_length() == 0 and layer.nbytes == 0
    with pytest.raises(ValueError, match="mode"):
        kv.QuaRotKVLayer(group_size=16, mode="int4")
    with pytest.raises(ValueError, match="key_states"):
        layer.update(k[0], v[0])
    with pytest.raises(ValueError, match="group_size"):
        kv.QuaRotKVLayer(group_size=16).update(k[..., :24], v[..., :24])
    with pytest.raises(TypeError, match="QuaRotKVLayer"):
        kv.QuaRotKVCache([])
    with pytest.raises(ValueError, match="kv_group_size"):
        quantize_model(_tiny_llama(), kv_group_size=12, linears=False)
    with pytest.raises(ValueError, match="kv_cache"):
        kv_cache(_tiny_llama())


def test_kv_quantizer_round_trip_and_modes():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 64, generator=gen) * torch.logspace(-1, 1, 64)
    x[0, 0, 0] = 0.25  # a constant group: exact
    for g in (64, 16):
        packed, scale, zero = kv.quantize_kv_int4(x, group_size=g)
        assert packed.shape == (2, 3, 5, 32) and scale.shape == (2, 3, 5, 64 // g)
        real = kv.dequantize_kv_int4(packed, scale, zero)
        assert torch.equal(real, kv.fake_quantize_kv_int4(x, group_size=g))  # the two modes: same numbers
        err = (real - x).abs().reshape(2, 3, 5, 64 // g, g)
        assert bool((err <= scale[..., None] / 2 * (1 + 1e-5)).all())  # round to nearest within [min, max]
        assert torch.equal(real[0, 0, 0], x[0, 0, 0])
    # an independent loop for one group: unsigned codes, q·scale − zero with zero = −min
    row = x[1, 2, 3, :16].tolist()
    lo, hi = min(row), max(row)
    s = (hi - lo) / 15
    want = [max(0, min(15, round((v - lo) / s))) * s + lo for v in row]
    torch.testing.assert_close(kv.fake_quantize_kv_int4(x, group_size=16)[1, 2, 3, :16],
                               torch.tensor(want, dtype=torch.float32), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="group_size"):
        kv.quantize_kv_int4(x, group_size=24)
    with pytest.raises(ValueError, match="clip_ratio"):
        kv.quantize_kv_int4(x, group_size=16, clip_ratio=0.0)


@pytest.mark.parametrize("weight_method", ["rtn", "gptq"])
def test_fake_and_real_modes_give_the_same_logits(weight_method):
    """W4A4 + KV4 after rotation: the simulation reproduces the kernels bit for bit on this build (same
    codes, exact integer sums in fp32, same epilogue order; see QuaRotLinear). A build whose compiler
    contracts the kernel's epilogue into an FMA would differ by one fp32 rounding per layer output,
    which the tolerance below (a few fp32 ulps of the logits) admits."""
    model = _tiny_llama()
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    calib = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(2))
    kw = dict(weight_method=weight_method, calibration_ids=calib, clip_ratio=0.9, progress=False)
    with torch.no_grad():
        ref = model(ids).logits
        out = {mode: rotate_model(copy.deepcopy(model), seed=2, quantize=mode, **kw)(ids).logits
               for mode in ("fake", "real")}
    torch.testing.assert_close(out["fake"], out["real"], atol=1e-6 * ref.abs().max().item(), rtol=1e-6)
    if platform.machine() == "x86_64":  # the kernel's scalar epilogue is built for baseline x86-64: no FMA
        assert torch.equal(out["fake"], out["real"]), "bit-identical expected with a non-FMA epilogue"
    cos = nn.functional.cosine_similarity(out["real"].flatten(), ref.flatten(), dim=0)
    assert cos > 0.9, cos


def test_rotated_llama_w4a4_kv4_end_to_end():
    """Every decoder linear quantized; down_proj's online Hadamard fused into its quantizer."""
    model = _tiny_llama()
    ids = torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        ref = model(ids).logits
        rotate_model(model, quantize="real", progress=False)
        out = model(ids).logits
    layer = model.model.layers[0]
    assert sum(isinstance(m, QuaRotLinear) for m in model.modules()) == 2 * 7
    assert isinstance(layer.mlp.down_proj, QuaRotLinear) and layer.mlp.down_proj.online_hadamard
    assert not layer.self_attn.q_proj.online_hadamard  # its input, the residual stream, is already rotated
    assert layer.self_attn.quarot.kv_bits == 4
    cos = nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert cos > 0.9, cos
    with pytest.raises(ValueError, match="mode"):
        quantize_model(_tiny_llama(), mode="int4")
    with pytest.raises(ValueError, match="calibration_ids"):
        quantize_model(_tiny_llama(), weight_method="gptq")


def test_calibration_ids_as_a_list_of_unpadded_sequences():
    """``calibration_ids`` may be a list of [1, seq] tensors of different lengths, run one by one (no
    padding enters the Hessians): quantizing with [a, b] equals quantizing with the two rows of a batch
    when they have the same length, and ``bias_correction`` (which needs them) changes only the biases."""
    model = _tiny_llama()
    calib = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(3))
    kw = dict(weight_method="gptq", clip_ratio="search", kv_bits=None, progress=False)
    batched = quantize_model(copy.deepcopy(model), calibration_ids=calib, **kw)
    listed = quantize_model(copy.deepcopy(model), calibration_ids=[calib[:1], calib[1:]], **kw)
    corrected = quantize_model(copy.deepcopy(model), calibration_ids=[calib[:1], calib[1:, :7]],
                               bias_correction=True, **kw)
    for a, b, c in zip(*(m.model.layers[0].modules() for m in (batched, listed, corrected))):
        if isinstance(a, QuaRotLinear):
            assert torch.equal(a.w_packed, b.w_packed) and a.clip_ratio == b.clip_ratio
            assert a.bias is None and c.bias is not None and c.bias.abs().max() > 0
    with pytest.raises(ValueError, match="bias_correction"):
        quantize_model(copy.deepcopy(model), bias_correction=True, progress=False)
