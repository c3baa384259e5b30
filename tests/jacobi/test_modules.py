"""MADE / PixelCNN samplers and DenseNet evaluation: Jacobi fixed point == sequential, exactly."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from symkernels.jacobi import MADE, PixelCNN, densenet_eval, made_sample, pixelcnn_sample
from symkernels.jacobi.modules import MaskedConv2d


def textbook_made_sample(model, noise):
    """Independent truth: the sequential sampler written out, not through the solver."""
    x = torch.zeros_like(noise)
    with torch.no_grad():
        for d in range(model.dim):
            out = model(x)
            if model.kind == "bernoulli":
                x[:, d] = (noise[:, d] < torch.sigmoid(out[:, d])).to(x.dtype)
            else:
                x[:, d] = out[:, d] + torch.exp(out[:, model.dim + d]) * noise[:, d]
    return x


@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
def test_made_is_autoregressive(kind):
    model = MADE(12, (20, 20), kind=kind, seed=3)
    J = torch.autograd.functional.jacobian(model, torch.rand(1, 12))[0, :, 0, :]  # [out, in]
    for block in J.split(12, dim=0):
        assert torch.equal(block.triu(), torch.zeros_like(block)), "output d depends on some x_{>=d}"
    assert block.tril(-1).abs().sum() > 0  # and it does depend on the past


@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
def test_made_jacobi_equals_sequential(kind):
    torch.manual_seed(0)
    model = MADE(32, (64, 64), kind=kind, seed=1)
    with torch.no_grad():  # sharpen the conditionals so that samples really depend on the past
        for p in model.parameters():
            p.mul_(3.0)
    noise = torch.rand(16, 32) if kind == "bernoulli" else torch.randn(16, 32)
    truth = textbook_made_sample(model, noise)
    seq, seq_info = made_sample(model, noise, method="gauss_seidel", return_info=True)
    jac, info = made_sample(model, noise, return_info=True)
    assert torch.equal(seq, truth)
    assert torch.equal(jac, truth)
    assert seq_info.iterations == 32 and info.iterations <= 32 and info.exact


@given(D=st.integers(1, 20), B=st.integers(0, 4), hidden=st.integers(1, 24), seed=st.integers(0, 500),
       method=st.sampled_from(["jacobi", "hybrid", "window"]))
def test_made_random_shapes(D, B, hidden, seed, method):
    model = MADE(D, (hidden,), seed=seed)
    noise = torch.rand(B, D, generator=torch.Generator().manual_seed(seed))
    x = made_sample(model, noise, method=method, block_size=3, window=4)
    assert x.shape == (B, D)
    assert torch.equal(x, textbook_made_sample(model, noise))


def test_masked_conv_matches_conv2d_and_is_causal():
    torch.manual_seed(0)
    for mask_type in "AB":
        conv = MaskedConv2d(2, 3, 5, mask_type)
        x = torch.randn(2, 2, 6, 7)
        ref = F.conv2d(x, conv.weight * conv.mask, conv.bias, padding=2)
        torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)
    model = PixelCNN(4, 2, 3)
    x = torch.rand(1, 1, 5, 5)
    J = torch.autograd.functional.jacobian(model, x).reshape(25, 25)  # [out pixel, in pixel], raster order
    assert torch.equal(J.triu(), torch.zeros_like(J))


def test_pixelcnn_jacobi_equals_sequential():
    torch.manual_seed(1)
    model = PixelCNN(8, 3, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    noise = torch.rand(3, 6, 6)
    seq, seq_info = pixelcnn_sample(model, noise, method="gauss_seidel", return_info=True)
    jac, info = pixelcnn_sample(model, noise, return_info=True)
    assert torch.equal(seq, jac)
    assert seq_info.iterations == 36 and info.iterations <= 36


def test_densenet_equals_forward_loop():
    torch.manual_seed(2)
    C, L = 5, 12
    layers = [torch.nn.Sequential(torch.nn.Linear(C * (i + 1), C), torch.nn.Tanh()).double() for i in range(L)]
    x0 = torch.randn(4, C, dtype=torch.float64)
    feats, truth = [x0], []
    with torch.no_grad():
        for layer in layers:  # the textbook DenseNet loop
            y = layer(torch.cat(feats, dim=-1))
            feats.append(y)
            truth.append(y)
    truth = torch.stack(truth)
    for method in ("jacobi", "hybrid", "window"):
        y, info = densenet_eval(layers, x0, method=method, block_size=4, window=5, return_info=True)
        assert torch.equal(y, truth), method
        assert info.exact and info.iterations <= L
    y_tol, info_tol = densenet_eval(layers, x0, tol=1e-8, return_info=True)
    assert (y_tol - truth).abs().max() < 1e-6


def test_bad_inputs():
    model = MADE(8, (8,))
    with pytest.raises(ValueError, match=r"noise must be \[B, D=8\]"):
        made_sample(model, torch.rand(3, 7))
    with pytest.raises(TypeError, match="model must be a symkernels.jacobi.MADE"):
        made_sample(torch.nn.Linear(8, 8), torch.rand(3, 8))
    with pytest.raises(ValueError, match="kind must be"):
        MADE(8, kind="poisson")
    with pytest.raises(ValueError, match="dim must be an int >= 1"):
        MADE(0)
    with pytest.raises(ValueError, match=r"noise must be \[B, H, W\]"):
        pixelcnn_sample(PixelCNN(2, 1, 3), torch.rand(4, 4))
    with pytest.raises(ValueError, match="tol must be"):
        made_sample(model, torch.rand(2, 8), tol=-1.0)


def test_made_auto_is_jacobi_without_probes():
    # A sampler's step is one whole-batch forward whatever the rows: auto knows Jacobi is never slower.
    model = MADE(16, (32,), seed=2)
    noise = torch.rand(5, 16, generator=torch.Generator().manual_seed(3))
    x, info = made_sample(model, noise, method="auto", return_info=True)
    _, jac = made_sample(model, noise, return_info=True)
    assert info.method == "auto:jacobi" and info.iterations == jac.iterations
    assert torch.equal(x, textbook_made_sample(model, noise))
