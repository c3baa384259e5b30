"""Local-loss gradient guesses (Fournier et al., arXiv:2306.06968): the estimate is the exact projection of the
true (autograd) gradient onto the guess, per block; it is the true gradient when the guess is; optimizers apply
it; bad arguments give clear errors."""
import pytest
import torch
import torch.nn.functional as F

from symkernels.jvp import ForwardGradientAdam, ForwardGradientSGD, MLP, forward_gradient
from symkernels.jvp.forward_gradient import local_guess
from symkernels.jvp.functional import _FUSED_CALLS

D = torch.float64


def _problem(batch=6, dtype=D):
    """Two blocks (3→5 tanh→5, then 5→2) with an auxiliary linear head on block 0's output behind a detach: the
    local loss is the aux head's loss for block 0 plus the real loss of block 1 on detached features."""
    torch.manual_seed(0)
    # Initialised in float32 then cast: the float32 and float64 problems hold the same values.
    body, head, aux = (MLP([3, 5, 5], activation="tanh").to(dtype), MLP([5, 2]).to(dtype), MLP([5, 2]).to(dtype))
    params = {**{f"body.{k}": v.detach().clone() for k, v in body.named_parameters()},
              **{f"head.{k}": v.detach().clone() for k, v in head.named_parameters()}}
    aux_params = {k: v.detach().clone() for k, v in aux.named_parameters()}
    x, target = torch.randn(batch, 3).to(dtype), torch.randn(batch, 2).to(dtype)

    def sub(p, prefix):
        return {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}

    def loss_fn(p, x, target):
        h = torch.func.functional_call(body, sub(p, "body."), (x,))
        return (torch.func.functional_call(head, sub(p, "head."), (h,)) - target).square().mean()

    def local_loss(p, x, target):
        h = torch.func.functional_call(body, sub(p, "body."), (x,))
        aux_loss = (torch.func.functional_call(aux, aux_params, (h,)) - target).square().mean()
        out = torch.func.functional_call(head, sub(p, "head."), (h.detach(),))
        return aux_loss + (out - target).square().mean()

    blocks = [[k for k in params if k.startswith("body.")], [k for k in params if k.startswith("head.")]]
    return params, x, target, loss_fn, local_loss, blocks


def _flat(d, keys):
    return torch.cat([d[k].flatten() for k in keys])


@pytest.mark.parametrize("per_block", [False, True])
@pytest.mark.parametrize("tangent_batch", [1, 2])
def test_local_guess_is_the_exact_projection_of_the_true_gradient(per_block, tangent_batch):
    params, x, target, loss_fn, local_loss, blocks = _problem()
    true = torch.func.grad(loss_fn)(params, x, target)
    guess = torch.func.grad(local_loss)(params, x, target)  # the guess, independently of forward_gradient
    loss, est = forward_gradient(loss_fn, params, x, target, guess="local", local_loss=local_loss,
                                 guess_blocks=blocks if per_block else None, tangent_batch=tangent_batch)
    torch.testing.assert_close(loss, loss_fn(params, x, target))
    for block in (blocks if per_block else [list(params)]):
        g, t = _flat(guess, block), _flat(true, block)
        want = torch.dot(t, g) / torch.dot(g, g) * g  # orthogonal projection of ∇_k L on span(G̃_k)
        torch.testing.assert_close(_flat(est, block), want, rtol=1e-10, atol=1e-12)
    # Not vacuous: the guess is neither parallel nor orthogonal to the true gradient.
    e, t = _flat(est, params), _flat(true, params)
    cos = torch.dot(e, t) / (e.norm() * t.norm())
    assert 0.05 < cos < 0.999, f"cosine {cos:.4f}"


def test_local_guess_equal_to_the_true_gradient_gives_the_true_gradient():
    params, x, target, loss_fn, _, blocks = _problem()
    true = torch.func.grad(loss_fn)(params, x, target)
    for guess_blocks in (None, blocks, [[k] for k in params]):
        _, est = forward_gradient(loss_fn, params, x, target, guess="local", local_loss=loss_fn,
                                  guess_blocks=guess_blocks)
        for k in params:
            torch.testing.assert_close(est[k], true[k], rtol=1e-12, atol=1e-14)


def test_local_guess_float32_fused_kernels_and_list_params():
    # float32 through the fused dual kernels (no_grad + symkernels Linear), params as a list, blocks as indices.
    params, x, target, loss_fn, local_loss, blocks = _problem()
    _, x32, t32, fn32, lfn32, _ = _problem(dtype=torch.float32)
    names = list(params)
    p32 = [v.float() for v in params.values()]
    fn = lambda ps, x, t: fn32(dict(zip(names, ps)), x, t)  # noqa: E731
    lfn = lambda ps, x, t: lfn32(dict(zip(names, ps)), x, t)  # noqa: E731
    idx_blocks = [[names.index(k) for k in b] for b in blocks]
    before = _FUSED_CALLS["linear"]
    _, est = forward_gradient(fn, p32, x32, t32, guess="local", local_loss=lfn,
                              guess_blocks=idx_blocks)
    assert _FUSED_CALLS["linear"] > before, "the directional derivatives should use the fused dual kernels"
    true = torch.func.grad(loss_fn)(params, x, target)
    guess = torch.func.grad(local_loss)(params, x, target)
    for block in blocks:
        g, t = _flat(guess, block), _flat(true, block)
        want = torch.dot(t, g) / torch.dot(g, g) * g
        got = torch.cat([est[names.index(k)].flatten() for k in block]).double()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_zero_guess_gives_a_zero_estimate_not_nan():
    params, x, target, loss_fn, _, blocks = _problem()
    # The local loss reaches only the head: body's guess is zero (and so is its estimate), head's is exact.
    head_only = lambda p, x, t: loss_fn({k: (v if k.startswith("head.") else v.detach())  # noqa: E731
                                         for k, v in p.items()}, x, t)
    _, est = forward_gradient(loss_fn, params, x, target, guess="local", local_loss=head_only, guess_blocks=blocks)
    true = torch.func.grad(loss_fn)(params, x, target)
    for k in params:
        if k.startswith("body."):
            assert torch.equal(est[k], torch.zeros_like(est[k]))
        else:
            torch.testing.assert_close(est[k], true[k])
    _, est = forward_gradient(loss_fn, params, x, target, guess="local",
                              local_loss=lambda p, x, t: torch.zeros((), dtype=D))
    assert all(torch.equal(v, torch.zeros_like(v)) for v in est.values())


@pytest.mark.parametrize("opt_cls,kw", [(ForwardGradientSGD, dict(lr=0.1, momentum=0.0)),
                                        (ForwardGradientAdam, dict(lr=0.01))])
def test_optimizer_applies_the_local_guess_estimate(opt_cls, kw):
    params, x, target, loss_fn, local_loss, blocks = _problem()
    names = list(params)
    fn = lambda ps, x, t: loss_fn(dict(zip(names, ps)), x, t)  # noqa: E731
    lfn = lambda ps, x, t: local_loss(dict(zip(names, ps)), x, t)  # noqa: E731
    idx_blocks = [[names.index(k) for k in b] for b in blocks]
    ours = [v.clone() for v in params.values()]
    ref = [v.clone() for v in params.values()]
    opt = opt_cls(ours, guess="local", local_loss=lfn, guess_blocks=idx_blocks, **kw)
    torch_opt = (torch.optim.SGD if opt_cls is ForwardGradientSGD else torch.optim.Adam)(ref, **kw)
    for _ in range(2):
        _, grads = forward_gradient(fn, [p.clone() for p in ref], x, target, guess="local", local_loss=lfn,
                                    guess_blocks=idx_blocks)
        for p, g in zip(ref, grads):
            p.grad = g
        torch_opt.step()
        opt.step(fn, x, target)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


def test_local_guess_training_reduces_loss():
    params, x, target, loss_fn, local_loss, blocks = _problem()
    names = list(params)
    plist = [v.clone() for v in params.values()]
    fn = lambda ps, x, t: loss_fn(dict(zip(names, ps)), x, t)  # noqa: E731
    lfn = lambda ps, x, t: local_loss(dict(zip(names, ps)), x, t)  # noqa: E731
    opt = ForwardGradientAdam(plist, lr=0.02, guess="local", local_loss=lfn,
                              guess_blocks=[[names.index(k) for k in b] for b in blocks])
    first = fn(plist, x, target).item()
    for _ in range(40):
        opt.step(fn, x, target)
    assert fn(plist, x, target).item() < 0.7 * first


def test_local_guess_helper_matches_autograd():
    params, x, target, _, local_loss, _ = _problem()
    want = torch.func.grad(local_loss)(params, x, target)
    for got, k in zip(local_guess(local_loss, params, x, target), params):
        torch.testing.assert_close(got, want[k])


def test_local_guess_bad_arguments():
    params, x, target, loss_fn, local_loss, blocks = _problem()
    with pytest.raises(ValueError, match="guess must be one of"):
        forward_gradient(loss_fn, params, x, target, guess="ntk")
    with pytest.raises(ValueError, match="needs local_loss"):
        forward_gradient(loss_fn, params, x, target, guess="local")
    with pytest.raises(ValueError, match="local_loss is only used with guess='local'"):
        forward_gradient(loss_fn, params, x, target, local_loss=local_loss)
    with pytest.raises(ValueError, match="guess_blocks is only used with guess='local'"):
        forward_gradient(loss_fn, params, x, target, guess_blocks=blocks)
    with pytest.raises(ValueError, match="num_tangents must be 1"):
        forward_gradient(loss_fn, params, x, target, guess="local", local_loss=local_loss, num_tangents=4)
    with pytest.raises(ValueError, match="mode='weight'"):
        forward_gradient(loss_fn, params, x, target, guess="local", local_loss=local_loss, mode="activity")
    with pytest.raises(ValueError, match="leaves parameters .* in no block"):
        forward_gradient(loss_fn, params, x, target, guess="local", local_loss=local_loss, guess_blocks=blocks[:1])
    with pytest.raises(ValueError, match="in blocks 0 and 1"):
        forward_gradient(loss_fn, params, x, target, guess="local", local_loss=local_loss,
                         guess_blocks=[blocks[0], blocks[0] + blocks[1]])
    with pytest.raises(ValueError, match="not a name in params"):
        forward_gradient(loss_fn, params, x, target, guess="local", local_loss=local_loss,
                         guess_blocks=[blocks[0], blocks[1] + ["nope"]])
    with pytest.raises(TypeError, match="guess_blocks must be a list"):
        forward_gradient(loss_fn, params, x, target, guess="local", local_loss=local_loss, guess_blocks="body")
    with pytest.raises(ValueError, match="local_loss must return a scalar loss"):
        forward_gradient(loss_fn, params, x, target, guess="local",
                         local_loss=lambda p, x, t: p["head.layers.0.bias"] * 1.0)
    plist = list(params.values())
    with pytest.raises(ValueError, match=r"not an index in \[0, 6\)"):
        ForwardGradientSGD(plist, lr=0.1, guess="local", local_loss=local_loss, guess_blocks=[[0, 1, 2, 3], [4, 6]])
    with pytest.raises(ValueError, match="needs local_loss"):
        ForwardGradientAdam(plist, guess="local")
