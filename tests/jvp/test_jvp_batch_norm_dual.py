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


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm2d_module_equals_nn_and_fuses_dual_tensors(training):
    import torch.autograd.forward_ad as fwAD

    from symkernels.jvp import BatchNorm2d
    from symkernels.jvp.functional import _FUSED_CALLS

    torch.manual_seed(0)
    ours, ref = BatchNorm2d(3).double(), torch.nn.BatchNorm2d(3).double()
    for m in (ours, ref):
        m.train(training)
        m.running_mean.fill_(0.3)
        m.weight.data.uniform_(0.5, 1.5)
    ref.load_state_dict(ours.state_dict())
    x, x_t = torch.randn(4, 3, 5, 5, dtype=D) * 2 + 1, torch.randn(4, 3, 5, 5, dtype=D)
    # Dual tensors, not torch.func.jvp: functorch refuses a training-mode BatchNorm's in-place buffer update.
    with torch.no_grad(), fwAD.dual_level():
        want_y, want_t = fwAD.unpack_dual(ref(fwAD.make_dual(x, x_t)))  # ref's running statistics move once
    before = _FUSED_CALLS["batch_norm"]
    with torch.no_grad(), fwAD.dual_level():
        y, y_t = fwAD.unpack_dual(ours(fwAD.make_dual(x, x_t)))
    assert _FUSED_CALLS["batch_norm"] == before + 1, "dual tensors should take batch_norm_dual"
    assert_close(y, want_y)
    assert_close(y_t, want_t)
    for a, b in ((ours.running_mean, ref.running_mean), (ours.running_var, ref.running_var)):
        assert_close(a, b)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked)
    if not training:  # under torch.func.jvp: F.batch_norm's own forward AD
        assert_close(jvp(ours, (x,), (x_t,))[1], want_t)


def test_cnn_with_batch_norm_forward_gradient_is_exact():
    from symkernels.jvp import BatchNorm2d, Conv2d, Linear
    from symkernels.jvp.forward_gradient import directional_derivatives, param_tangent, tangent_seeds

    torch.manual_seed(0)
    net = torch.nn.Sequential(Conv2d(1, 4, 3, padding=1), BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(),
                              Linear(4 * 6 * 6, 3)).double()
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    x, y = torch.randn(5, 1, 6, 6, dtype=D), torch.randint(0, 3, (5,))

    def loss_fn(p, x, y):
        return F.cross_entropy(torch.func.functional_call(net, p, (x,)), y)

    from symkernels.jvp.functional import _FUSED_CALLS

    before = _FUSED_CALLS["batch_norm"]
    _, d = directional_derivatives(loss_fn, params, x, y, num_tangents=2, seed=3)
    assert _FUSED_CALLS["batch_norm"] == before + 2, "each lean pass should take batch_norm_dual"
    # The truth by autograd: torch.func refuses the training-mode in-place update of the running statistics.
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    true = dict(zip(leaves, torch.autograd.grad(loss_fn(leaves, x, y), list(leaves.values()))))
    seeds = tangent_seeds(3, len(params), 2)
    want = torch.stack([sum((true[n] * param_tangent(p, seeds[t][j], "gaussian")).sum()
                            for j, (n, p) in enumerate(params.items())) for t in range(2)])
    torch.testing.assert_close(d, want)
