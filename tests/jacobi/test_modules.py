"""MADE / PixelCNN samplers and DenseNet evaluation: Jacobi fixed point == sequential, exactly."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from symkernels.jacobi import MADE, PixelCNN, densenet_eval, made_sample, modules, pixelcnn_sample, reference
from symkernels.jacobi.modules import MaskedConv2d
from symkernels.jacobi.solver import _first_true, _row_changed, _row_residual


def textbook_made_sample(model, noise):
    """Independent truth: the sequential sampler written out, not through the solver."""
    x = torch.zeros_like(noise)
    # x_d = 1 iff u_d < sigmoid(logit_d), decided as logit_d > logit(u_d) (the samplers' definition: the same
    # event, without a sigmoid per pass).
    threshold = torch.logit(noise)
    with torch.no_grad():
        for d in range(model.dim):
            out = model(x)
            if model.kind == "bernoulli":
                x[:, d] = (out[:, d] > threshold[:, d]).to(x.dtype)
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


def test_bernoulli_threshold_is_the_sigmoid_event():
    # The samplers decide u < sigmoid(logit) as logit > logit(u) (reference.sampling_noise): the same event in
    # exact arithmetic, so in float64 the two can disagree only within rounding of the boundary (probability
    # ~1e-16 per draw) — and a flipped comparison or a wrong transform disagrees on about half of them.
    g = torch.Generator().manual_seed(0)
    u = torch.rand(100_000, dtype=torch.float64, generator=g)
    logit = 4 * torch.randn(100_000, dtype=torch.float64, generator=g)
    want = u < torch.sigmoid(logit)
    assert torch.equal(logit > reference.sampling_noise(u, "bernoulli"), want)
    assert 0.3 < want.double().mean() < 0.7


needs_sample_commit = pytest.mark.skipif(not hasattr(torch.ops.symkernels, "jacobi_sample_commit"),
                                         reason="symkernels._C not built")


def _sample_case(kind, dtype, B=37, D=21, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = (3 * torch.randn(B, D * (2 if kind == "gaussian" else 1), generator=g)).to(dtype)
    noise = (torch.rand(B, D, generator=g) if kind == "bernoulli" else torch.randn(B, D, generator=g)).to(dtype)
    return out, reference.sampling_noise(noise, kind)


@needs_sample_commit
@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B", [37, 301])  # one tile task; tiles shared by the threads (when there are several)
def test_sample_commit_is_the_reference_sampler_and_commit(kind, dtype, B):
    out, noise = _sample_case(kind, dtype, B=B)
    B, D = noise.shape
    every_column = reference.sample_rows(out, noise, torch.arange(1, D + 1), kind)
    # Rows the solver asks for: all (Jacobi from the start), an unfrozen tail, one (a sequential step), none.
    for start, stop in ((0, D), (5, D), (6, 7), (3, 3)):
        t = torch.arange(start + 1, stop + 1)
        want = reference.sample_rows(out, noise, t, kind)
        # A column's sample does not depend on which other columns are asked for.
        assert torch.equal(want.view(torch.uint8), every_column[start:stop].view(torch.uint8))
        for case in ("unchanged", "changed_inside", "all_changed"):
            hist = torch.randn(D + 1, B).to(dtype)
            hist[start + 1:stop + 1] = want
            if case == "changed_inside" and stop - start > 4:
                hist[start + 5, 2] += 1
                hist[start + 3, B - 1] -= 1  # the first change, in the last tile (another thread's, B = 301)
                hist[start + 7:stop + 1] = 0.25
            elif case == "all_changed":
                hist[start + 1:stop + 1] = torch.nan
            # The generic path: the solver's commit of the reference rows.
            expected_hist, old = hist.clone(), hist[start + 1:stop + 1]
            want_first = _first_true(_row_changed(want, old))
            want_resid = float(_row_residual(want, old, 0.0).max()) if stop > start else 0.0
            expected_hist[start + 1:stop + 1] = want
            resid, first = torch.ops.symkernels.jacobi_sample_commit(hist, out, noise, start, stop, kind).tolist()
            assert torch.equal(hist.view(torch.uint8), expected_hist.view(torch.uint8)), (kind, dtype, start, case)
            assert int(first) == want_first and (resid == want_resid or math.isnan(want_resid)), \
                (case, first, want_first, resid, want_resid)


@needs_sample_commit
def test_sample_commit_checks_and_opcheck():
    out, noise = _sample_case("bernoulli", torch.float32, B=4, D=6)
    op = torch.ops.symkernels.jacobi_sample_commit
    torch.library.opcheck(op, (torch.zeros(7, 4), out, noise, 2, 6, "bernoulli"))
    with pytest.raises(ValueError, match="kind must be 'bernoulli' or 'gaussian'"):
        op(torch.zeros(7, 4), out, noise, 0, 6, "poisson")
    with pytest.raises(ValueError, match=r"need 0 <= start <= stop <= D = 6, got start 2, stop 7"):
        op(torch.zeros(7, 4), out, noise, 2, 7, "bernoulli")
    with pytest.raises(ValueError, match=r"out must be \[B, 2D\]"):
        op(torch.zeros(7, 4), out, noise, 0, 6, "gaussian")
    with pytest.raises(ValueError, match=r"hist must be a contiguous \[D \+ 1, B\]"):
        op(torch.zeros(4, 7).t(), out, noise, 0, 6, "bernoulli")
    with pytest.raises(TypeError, match="noise and hist must have out's dtype"):
        op(torch.zeros(7, 4), out, noise.double(), 0, 6, "bernoulli")


@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
def test_made_sampler_without_the_fused_op_gives_the_same_samples(monkeypatch, kind):
    # The tensor-op path (other devices, other dtypes, or no _C) and the fused op draw the same samples.
    model = MADE(24, (48, 48), kind=kind, seed=4)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    noise = (torch.rand if kind == "bernoulli" else torch.randn)(9, 24, generator=torch.Generator().manual_seed(5))
    fused, info = made_sample(model, noise, return_info=True)
    fused_seq = made_sample(model, noise, method="gauss_seidel")
    monkeypatch.setattr(modules._backend, "has_dispatcher_op", lambda name: False)
    tensor_ops, tensor_info = made_sample(model, noise, return_info=True)
    assert torch.equal(tensor_ops, fused) and torch.equal(fused_seq, fused)
    assert torch.equal(made_sample(model, noise, method="gauss_seidel"), fused)
    assert tensor_info.prefix == info.prefix and tensor_info.residuals == info.residuals
