"""batch_norm_dual against torch.func.jvp of F.batch_norm (float64): batch and running statistics, T
tangents in x, weight and bias, the running statistics' update, bad inputs."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import jvp

from symkernels._testing import assert_close
from symkernels.jvp import batch_norm_dual

D = torch.float64


def _data(shape, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, dtype=D, generator=g)  # noqa: E731
    C = shape[1]
    lead = (T,) if T else ()
    return dict(x=r(*shape) * 2 + 1, x_t=r(*lead, *shape), w=r(C), w_t=r(*lead, C), b=r(C), b_t=r(*lead, C),
                rm=r(C), rv=r(C).abs() + 0.5)


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (6, 2, 7), (5, 3)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("T", [None, 3])
def test_matches_func_jvp(shape, training, T):
    d = _data(shape, T)
    rm, rv = (d["rm"], d["rv"]) if not training else (None, None)  # training: batch statistics
    y, y_t = batch_norm_dual(d["x"], d["x_t"], d["w"], d["w_t"], d["b"], d["b_t"], rm, rv, training=training)

    def plain(x, w, b):
        return F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)

    pick = lambda t, i: t[i] if T else t  # noqa: E731
    want = [jvp(plain, (d["x"], d["w"], d["b"]), (pick(d["x_t"], i), pick(d["w_t"], i), pick(d["b_t"], i)))
            for i in range(T or 1)]
    assert_close(y, want[0][0])
    assert_close(y_t, torch.stack([w[1] for w in want]) if T else want[0][1])
    assert y_t.abs().max() > 0.1


def test_running_statistics_update_and_shared_tangents():
    d = _data((4, 3, 5, 5), 2)
    rm, rv, rm_ref, rv_ref = d["rm"].clone(), d["rv"].clone(), d["rm"].clone(), d["rv"].clone()
    y, y_t = batch_norm_dual(d["x"], d["x_t"], d["w"], d["w_t"][0], d["b"], None, rm, rv, training=True,
                             momentum=0.3)
    assert_close(y, F.batch_norm(d["x"], rm_ref, rv_ref, d["w"], d["b"], True, 0.3, 1e-5))
    assert_close(rm, rm_ref)
    assert_close(rv, rv_ref)
    # weight_t shared by both x tangents: each tangent is that of its own x_t with the same weight_t.
    one = batch_norm_dual(d["x"], d["x_t"][1], d["w"], d["w_t"][0], d["b"])[1]
    assert y_t.shape == (2, *d["x"].shape)
    assert_close(y_t[1], one)


def test_bad_inputs():
    x = torch.randn(4, 3, 5)
    with pytest.raises(ValueError, match=r"batch_norm_dual: weight must have shape \[C=3\]"):
        batch_norm_dual(x, None, torch.randn(4))
    with pytest.raises(ValueError, match="batch_norm_dual: bias_t was given but bias is None"):
        batch_norm_dual(x, None, bias_t=torch.randn(3))
    with pytest.raises(ValueError, match="batch_norm_dual: tangents disagree on the number of tangents T"):
        batch_norm_dual(x, torch.randn(2, 4, 3, 5), torch.randn(3), torch.randn(3, 3))
    with pytest.raises(TypeError, match=r"batch_norm_dual: running_mean must have the dtype of x"):
        batch_norm_dual(x, None, running_mean=torch.zeros(3, dtype=D), running_var=torch.ones(3))
