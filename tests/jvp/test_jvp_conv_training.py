"""Forward-gradient training of CNNs built from symkernels.jvp.Conv2d: the lean seeded path is exact and
never materialises a conv kernel's tangent, the optimizers step, and guess="local" projects correctly."""
import importlib

import pytest
import torch
import torch.nn.functional as F

from symkernels.jvp import Conv2d, ForwardGradientAdam, Linear, forward_gradient, reference
from symkernels.jvp.forward_gradient import directional_derivatives, param_tangent, tangent_seeds
from symkernels.jvp.functional import _FUSED_CALLS

D = torch.float64
fg_module = importlib.import_module("symkernels.jvp.forward_gradient")


class SmallCNN(torch.nn.Module):
    """8×8 inputs: conv+relu, 2×2 max pool, a strided grouped conv+tanh, a linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = Conv2d(1, 4, 3, padding=1, activation="relu")
        self.conv2 = Conv2d(4, 6, 3, stride=2, padding=1, groups=2, activation="tanh")
        self.head = Linear(6 * 2 * 2, 3)

    def forward(self, x):
        h = F.max_pool2d(self.conv1(x), 2)
        return self.head(self.conv2(h).flatten(1))


def _problem(batch=5):
    torch.manual_seed(0)
    net = SmallCNN().double()
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    x, y = torch.randn(batch, 1, 8, 8, dtype=D), torch.randint(0, 3, (batch,))

    def loss_fn(p, x, y):
        return F.cross_entropy(torch.func.functional_call(net, p, (x,)), y)

    return net, params, x, y, loss_fn


@pytest.mark.parametrize("distribution", reference.DISTRIBUTIONS)
def test_lean_path_on_a_cnn_is_exact_and_keeps_conv_tangents_as_seeds(distribution, monkeypatch):
    net, params, x, y, loss_fn = _problem()
    shapes = []
    real = fg_module.param_tangent
    monkeypatch.setattr(fg_module, "param_tangent", lambda p, *a: shapes.append(tuple(p.shape)) or real(p, *a))
    before = dict(_FUSED_CALLS)
    _, d = directional_derivatives(loss_fn, params, x, y, num_tangents=3, seed=11, distribution=distribution)
    assert _FUSED_CALLS["conv2d"] == before["conv2d"] + 3 * 2, "each Conv2d should run the seeded call per tangent"
    assert _FUSED_CALLS["linear"] == before["linear"] + 3
    assert shapes and all(len(s) == 1 for s in shapes), f"a weight tangent was materialised: {shapes}"
    monkeypatch.undo()
    true = torch.func.grad(loss_fn)(params, x, y)
    seeds = tangent_seeds(11, len(params), 3)
    want = torch.stack([sum((true[n] * param_tangent(p, seeds[t][j], distribution)).sum()
                            for j, (n, p) in enumerate(params.items())) for t in range(3)])
    assert want.abs().min() > 1e-4
    torch.testing.assert_close(d, want)
    _, d_materialised = directional_derivatives(loss_fn, params, x, y, num_tangents=3, seed=11,
                                                distribution=distribution, tangent_batch=3)
    torch.testing.assert_close(d_materialised, d)


def test_local_guess_on_a_cnn_projects_the_gradient():
    # With the target loss itself as the local loss the guess is the gradient, so the projection is exact.
    net, params, x, y, loss_fn = _problem()
    blocks = [["conv1.weight", "conv1.bias"], ["conv2.weight", "conv2.bias"], ["head.weight", "head.bias"]]
    loss, grads = forward_gradient(loss_fn, params, x, y, guess="local", local_loss=loss_fn, guess_blocks=blocks)
    true = torch.func.grad(loss_fn)(params, x, y)
    torch.testing.assert_close(loss, loss_fn(params, x, y))
    for name in params:
        torch.testing.assert_close(grads[name], true[name])


def test_forward_gradient_adam_reduces_a_cnn_loss():
    net, params, x, y, loss_fn = _problem(batch=16)
    ps = [p.detach().clone() for p in net.parameters()]
    names = [n for n, _ in net.named_parameters()]

    def list_loss(plist, x, y):
        return loss_fn(dict(zip(names, plist)), x, y)

    opt = ForwardGradientAdam(ps, lr=0.03, num_tangents=4, distribution="rademacher", seed=3)
    first = list_loss(ps, x, y).item()
    for _ in range(25):
        opt.step(list_loss, x, y)
    assert list_loss(ps, x, y).item() < 0.8 * first  # 1.11 -> 0.70 (deterministic: seeded init and tangents)


def test_digits_cnn_example_smoke():
    pytest.importorskip("sklearn")
    from symkernels.jvp.examples import train

    for method, guess in (("backprop", "random"), ("forward_gradient", "random"), ("forward_gradient", "local")):
        r = train(method, steps=3, tangents=2, hidden=8, model_kind="cnn", guess=guess)
        assert r["model"] == "cnn" and r["params"] == 1898
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["median_step_ms"] > 0 and r["peak_memory_kib"] > 0
