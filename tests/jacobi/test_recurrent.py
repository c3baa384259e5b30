"""symkernels.jacobi.RNN/GRU/LSTM against torch.nn.RNN/GRU/LSTM with the same weights: outputs, final states,
gradients, variable lengths, state-dict round trips, the sequential fallback and argument errors."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from symkernels._testing import assert_close
from symkernels.jacobi import GRU, LSTM, RNN, JacobiRNNBase
from symkernels.jacobi.recurrent import auto_method, solve_layer_grid
from tests.conftest import require_backend

OURS = {"rnn_tanh": RNN, "rnn_relu": RNN, "gru": GRU, "lstm": LSTM}
TORCH = {"rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}
KINDS = list(OURS)
# The solver backends a module can be asked for here: the reference always; the C++ kernel when built.
SOLVER_BACKENDS = ["reference", "cpu"]


def pair(kind, input_size, hidden, seed=0, dtype=torch.float64, gain=1.0, **kwargs):
    """(torch.nn module, our module) with the same parameters."""
    torch.manual_seed(seed)
    extra = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    solver = {k: kwargs.pop(k) for k in ("method", "tol", "max_iters", "backend") if k in kwargs}
    ref = TORCH[kind](input_size, hidden, **extra, **kwargs, dtype=dtype)
    if gain != 1.0:
        with torch.no_grad():
            for name, p in ref.named_parameters():
                if name.startswith("weight_hh"):
                    p.mul_(gain)
    return ref, OURS[kind].from_torch(ref, **solver)


def hidden_state(kind, layers_dirs, B, H, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(layers_dirs, B, H, generator=g, dtype=dtype)
    return (h, torch.randn(layers_dirs, B, H, generator=g, dtype=dtype)) if kind == "lstm" else h


def flat(result):
    """(output, h_n) or (output, (h_n, c_n)) → list of tensors."""
    out, final = result
    return [out] + (list(final) if isinstance(final, tuple) else [final])


def assert_same_results(ours, theirs, msg):
    names = ["output", "h_n", "c_n"]
    for name, a, t in zip(names, flat(ours), flat(theirs)):
        assert_close(a, t, msg=f"{msg}: {name}")


def assert_same_gradients(ours_mod, ref_mod, inputs_ours, inputs_ref, loss_ours, loss_ref, msg):
    g_ours = torch.autograd.grad(loss_ours, inputs_ours + list(ours_mod.parameters()), retain_graph=True)
    g_ref = torch.autograd.grad(loss_ref, inputs_ref + list(ref_mod.parameters()))
    names = [f"input{i}" for i in range(len(inputs_ours))] + [n for n, _ in ours_mod.named_parameters()]
    for name, a, t in zip(names, g_ours, g_ref):
        assert_close(a, t, msg=f"{msg}: grad {name}")


def weighted_loss(result, seed=7):
    g = torch.Generator().manual_seed(seed)
    return sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in flat(result))


# (kind, num_layers, bidirectional, batch_first, bias, hx given): every argument varied, every cell in several.
COMBOS = [
    ("rnn_tanh", 1, False, False, True, False),
    ("rnn_relu", 2, True, False, True, True),
    ("rnn_tanh", 3, False, True, False, True),
    ("gru", 1, True, True, True, True),
    ("gru", 2, False, False, False, False),
    ("gru", 3, True, False, True, False),
    ("lstm", 1, False, False, True, True),
    ("lstm", 2, True, True, True, False),
    ("lstm", 3, False, False, False, True),
    ("lstm", 2, True, False, False, True),
]


@pytest.mark.parametrize("solver_backend", SOLVER_BACKENDS)
@pytest.mark.parametrize("method", ["jacobi", "sequential"])
@pytest.mark.parametrize("kind, layers, bidirectional, batch_first, bias, with_hx", COMBOS)
def test_matches_torch_nn_float64(kind, layers, bidirectional, batch_first, bias, with_hx, method, solver_backend):
    require_backend(solver_backend)
    T, B, I, H = 13, 3, 4, 5
    ref, ours = pair(kind, I, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                     bias=bias, method=method, backend=solver_backend)
    g = torch.Generator().manual_seed(2)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=g, dtype=torch.float64, requires_grad=True)
    hx = hidden_state(kind, layers * (2 if bidirectional else 1), B, H) if with_hx else None
    hx_leaves = [] if hx is None else [t.requires_grad_() for t in (hx if kind == "lstm" else (hx,))]
    result = ours(x, hx)
    truth = ref(x, hx)
    assert_same_results(result, truth, f"{kind} {method}")
    assert_same_gradients(ours, ref, [x] + hx_leaves, [x] + hx_leaves, weighted_loss(result), weighted_loss(truth),
                          f"{kind} {method}")


@pytest.mark.parametrize("solver_backend", SOLVER_BACKENDS)
@pytest.mark.parametrize("method", ["jacobi", "sequential"])
@pytest.mark.parametrize("layers, bidirectional, batch_first, bias", [(1, False, False, True), (2, True, True, True),
                                                                      (3, False, False, False)])
def test_projected_lstm_float64(layers, bidirectional, batch_first, bias, method, solver_backend):
    require_backend(solver_backend)
    T, B, I, H, P = 11, 3, 4, 6, 3
    ref, ours = pair("lstm", I, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                     bias=bias, proj_size=P, method=method, backend=solver_backend)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    g = torch.Generator().manual_seed(10)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=g, dtype=torch.float64, requires_grad=True)
    n = layers * (2 if bidirectional else 1)
    h0 = torch.randn(n, B, P, generator=g, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(n, B, H, generator=g, dtype=torch.float64, requires_grad=True)
    for hx, leaves in ((None, [x]), ((h0, c0), [x, h0, c0])):
        result, truth = ours(x, hx), ref(x, hx)
        assert_same_results(result, truth, f"proj {method}")
        assert_same_gradients(ours, ref, leaves, leaves, weighted_loss(result), weighted_loss(truth), f"proj {method}")
    assert type(ours.to_torch()) is torch.nn.LSTM and ours.to_torch().proj_size == P


def test_projected_lstm_packed_and_errors():
    ref, ours = pair("lstm", 3, 5, num_layers=2, bidirectional=True, proj_size=2, method="jacobi",
                     backend="reference")
    x = torch.randn(7, 3, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor([3, 7, 5]), enforce_sorted=False)
    (out, final), (out_ref, final_ref) = ours(packed), ref(packed)
    assert_same_results((out.data, final), (out_ref.data, final_ref), "proj packed")
    with pytest.raises(ValueError, match=r"h0 must be \[num_layers\*num_directions, batch, proj_size\]"):
        ours(x, (torch.zeros(4, 3, 5, dtype=torch.float64), torch.zeros(4, 3, 5, dtype=torch.float64)))
    with pytest.raises(ValueError, match="proj_size is an LSTM argument"):
        JacobiRNNBase("gru", 3, 5, proj_size=2)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_triton_solver_in_module(kind):
    # The Triton kernel under the modules (NumPy interpreter here: tiny shapes), both directions, 2 layers.
    device = require_backend("triton")
    ref, ours = pair(kind, 3, 4, num_layers=2, bidirectional=True, method="jacobi", backend="triton")
    ref, ours = ref.to(device), ours.to(device)
    x = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64).to(device)
    x.requires_grad_()
    result, truth = ours(x), ref(x)
    assert_same_results(result, truth, f"{kind} triton")
    assert_same_gradients(ours, ref, [x], [x], weighted_loss(result), weighted_loss(truth), f"{kind} triton")


@pytest.mark.parametrize("kind", KINDS)
def test_matches_torch_nn_float32(kind):
    require_backend("cpu")
    ref, ours = pair(kind, 3, 8, num_layers=2, bidirectional=True, dtype=torch.float32, method="jacobi")
    x = torch.randn(40, 2, 3, generator=torch.Generator().manual_seed(3), requires_grad=True)
    result, truth = ours(x), ref(x)
    assert_same_results(result, truth, kind)
    assert_same_gradients(ours, ref, [x], [x], weighted_loss(result), weighted_loss(truth), kind)


@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_input(kind):
    ref, ours = pair(kind, 3, 4, num_layers=2, method="jacobi", backend="reference")
    x = torch.randn(7, 3, dtype=torch.float64)
    hx = hidden_state(kind, 2, 1, 4)
    hx = tuple(t[:, 0] for t in hx) if kind == "lstm" else hx[:, 0]
    assert_same_results(ours(x, hx), ref(x, hx), kind)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_dropout(kind):
    ref, ours = pair(kind, 3, 4, num_layers=3, dropout=0.5, backend="reference")
    x = torch.randn(9, 2, 3, dtype=torch.float64)
    # Eval mode: no dropout, both agree.
    assert_same_results(ours.eval()(x), ref.eval()(x), f"{kind} eval")
    # Training mode applies dropout between layers (not after the last): p = 1 zeroes every layer input above
    # the first, a deterministic draw that torch.nn makes too.
    ours.dropout = ref.dropout = 1.0
    assert_same_results(ours.train()(x), ref.train()(x), f"{kind} train p=1")
    ours.dropout = 0.5
    torch.manual_seed(0)
    a = ours(x)[0]
    assert not torch.allclose(a, ours.eval()(x)[0]), "dropout had no effect in training mode"


@pytest.mark.parametrize("solver_backend", SOLVER_BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_sequence(kind, bidirectional, solver_backend):
    require_backend(solver_backend)
    ref, ours = pair(kind, 3, 4, num_layers=2, bidirectional=bidirectional, method="jacobi",
                     backend=solver_backend)
    lengths = torch.tensor([5, 9, 1, 7])  # unsorted: the caller's batch order must survive
    x = torch.randn(9, 4, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64, requires_grad=True)
    hx = hidden_state(kind, 2 * (2 if bidirectional else 1), 4, 4)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    (out, final), (out_ref, final_ref) = ours(packed, hx), ref(packed, hx)
    assert torch.equal(out.batch_sizes, out_ref.batch_sizes)
    assert torch.equal(out.sorted_indices, out_ref.sorted_indices)
    assert_same_results((out.data, final), (out_ref.data, final_ref), f"{kind} packed")
    assert_same_gradients(ours, ref, [x], [x], weighted_loss((out.data, final)),
                          weighted_loss((out_ref.data, final_ref)), f"{kind} packed")
    # lengths= on the padded tensor: the padded form of the same result (zeros past each end).
    padded_ref, _ = pad_packed_sequence(out_ref, total_length=9)
    assert_same_results(ours(x, hx, lengths=lengths), (padded_ref, final_ref), f"{kind} lengths=")


def test_packed_sequence_presorted():
    # A pack made with enforce_sorted=True carries no sorted_indices.
    ref, ours = pair("lstm", 3, 4, num_layers=2, method="jacobi", backend="reference")
    x = torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor([6, 4, 2]))
    assert packed.sorted_indices is None
    (out, final), (out_ref, final_ref) = ours(packed), ref(packed)
    assert out.sorted_indices is None
    assert_same_results((out.data, final), (out_ref.data, final_ref), "presorted pack")


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip(kind):
    ref, ours = pair(kind, 3, 4, num_layers=2, bidirectional=True, bias=True)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    fresh = OURS[kind](3, 4, num_layers=2, bidirectional=True, **({"nonlinearity": kind[4:]} if "rnn" in kind else {}),
                       dtype=torch.float64)
    fresh.load_state_dict(ref.state_dict())
    back = TORCH[kind](3, 4, num_layers=2, bidirectional=True, **({"nonlinearity": kind[4:]} if "rnn" in kind else {}),
                       dtype=torch.float64)
    back.load_state_dict(fresh.state_dict())
    for (n, a), (_, b) in zip(back.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), n
    converted = ours.to_torch()
    assert type(converted) is TORCH[kind]
    if kind.startswith("rnn"):
        assert converted.nonlinearity == ref.nonlinearity
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    assert_same_results(converted(x), ref(x), kind)
    assert isinstance(JacobiRNNBase.from_torch(ref), OURS[kind])


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match="module must be a torch.nn.LSTM"):
        LSTM.from_torch(torch.nn.GRU(2, 3))
    with pytest.raises(TypeError, match="torch.nn.RNN, GRU or LSTM"):
        JacobiRNNBase.from_torch(torch.nn.Linear(2, 3))


def test_default_init_like_torch():
    torch.manual_seed(0)
    ours = LSTM(3, 16, num_layers=2)
    for name, p in ours.named_parameters():
        assert p.abs().max() <= 0.25 and p.std() > 0.1, name  # uniform in ±1/√16


@pytest.mark.parametrize("solver_backend", SOLVER_BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_non_contractive_weights_fall_back_exactly(kind, solver_backend):
    # Recurrent weights ×6: the Jacobi iterate of the unconverged suffix overflows (ReLU) or is capped by
    # max_iters (the saturating cells); either way the result is finished by the exact sequential sweep.
    require_backend(solver_backend)
    ref, ours = pair(kind, 3, 4, num_layers=2, gain=6.0, method="jacobi", max_iters=3, backend=solver_backend)
    x = torch.randn(30, 2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert_same_results(ours(x), ref(x), kind)
    assert len(ours.last_solve_info) == 2
    for info in ours.last_solve_info:
        assert info.fallback is not None and info.exact, info


def test_auto_rule():
    assert auto_method(torch.device("cpu"), 1e-6) == "sequential"
    assert auto_method(torch.device("cpu"), 0.0) == "sequential"
    assert auto_method(torch.device("cuda"), 0.0) == "sequential"
    assert auto_method(torch.device("cuda"), 1e-6) == "jacobi"
    ref, ours = pair("gru", 3, 4, method="auto", backend="reference")
    x = torch.randn(8, 2, 3, dtype=torch.float64)
    assert_same_results(ours(x), ref(x), "auto")


def test_newton_method_module():
    ref, ours = pair("lstm", 3, 4, method="newton", tol=1e-12, gain=0.5)
    x = torch.randn(20, 2, 3, dtype=torch.float64)
    assert_same_results(ours(x), ref(x), "newton")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("call, exc, match", [
    (lambda m: m(torch.zeros(5, 2, 4, dtype=torch.float64)), ValueError, r"input.size\(-1\) must be input_size=3"),
    (lambda m: m(torch.zeros(5, 2, 3, dtype=torch.int64)), TypeError, "input must be float32 or float64"),
    (lambda m: m(torch.zeros(5, 2, 3)), TypeError, "differs from the parameters"),
    (lambda m: m(torch.zeros(1, 1, 5, 3, dtype=torch.float64)), ValueError, "input must be 2-D"),
    (lambda m: m(torch.zeros(5, 2, 3, dtype=torch.float64), lengths=torch.tensor([6, 1])), ValueError,
     r"lengths must lie in \[1, T=5\]"),
])
def test_bad_input(kind, call, exc, match):
    _, ours = pair(kind, 3, 4)
    with pytest.raises(exc, match=match):
        call(ours)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_hx(kind):
    _, ours = pair(kind, 3, 4, num_layers=2)
    x = torch.zeros(5, 2, 3, dtype=torch.float64)
    wrong = torch.zeros(1, 2, 4, dtype=torch.float64)
    name = "h0" if kind == "lstm" else "hx"
    with pytest.raises(ValueError, match=rf"{name} must be \[num_layers\*num_directions, batch, hidden_size\]"):
        ours(x, (wrong, wrong) if kind == "lstm" else wrong)
    if kind == "lstm":
        with pytest.raises(ValueError, match="c0 must be"):
            ours(x, (torch.zeros(2, 2, 4, dtype=torch.float64), wrong))
        with pytest.raises(TypeError, match=r"hx must be the pair \(h_0, c_0\)"):
            ours(x, torch.zeros(2, 2, 4, dtype=torch.float64))
    else:
        with pytest.raises(TypeError, match="hx must have the input's dtype"):
            ours(x, torch.zeros(2, 2, 4))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match=r"proj_size must be an int in \[0, hidden_size=4\)"):
        LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="hidden_size must be an int >= 1"):
        GRU(3, 0)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="method must be one of"):
        LSTM(3, 4, method="deer")
    with pytest.raises(ValueError, match="dropout must be a number in"):
        GRU(3, 4, dropout=1.5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_layer_grid_solve_equals_layer_by_layer(kind, batch_first):
    T, B, L = 20, 2, 3
    ref, ours = pair(kind, 3, 4, num_layers=L, batch_first=batch_first)
    x = torch.randn((B, T, 3) if batch_first else (T, B, 3), generator=torch.Generator().manual_seed(6),
                    dtype=torch.float64)
    hx = hidden_state(kind, L, B, 4)
    output, final, info = solve_layer_grid(ours, x, hx)
    assert_same_results((output, final), ref(x, hx), f"{kind} grid")
    # The exact front moves along the anti-diagonals: at most T + L − 1 iterations (+1 to see nothing move).
    assert info.exact and info.iterations <= T + L, info.iterations


def test_layer_grid_rejects_bidirectional():
    _, ours = pair("lstm", 3, 4, num_layers=2, bidirectional=True)
    with pytest.raises(NotImplementedError, match="bidirectional=True is not a wavefront"):
        solve_layer_grid(ours, torch.zeros(5, 1, 3, dtype=torch.float64))
