"""The general solver vs the sequential loop: every method, exactness, frozen prefix, failures, bad input."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from symkernels._testing import assert_close
from symkernels.jacobi import JacobiDivergenceError, METHODS, sequential, solve
from symkernels.jacobi.solver import CostModel, choose_method, expected_iterations


def elman_step(w, u, act=torch.tanh):
    """Batch-invariant Elman step: elementwise products and a last-dim sum, the same per row for any
    number of rows (unlike a GEMM that picks its kernel by row count)."""

    def step(hist, t):
        return act((hist[t - 1].unsqueeze(-2) * w).sum(-1) + u[t - 1])

    return step


def make_rnn(T, B, H, gain, dtype=torch.float64, seed=0, act=torch.tanh):
    g = torch.Generator().manual_seed(seed)
    w = gain * torch.randn(H, H, generator=g, dtype=dtype) / math.sqrt(H)
    u = torch.randn(T, B, H, generator=g, dtype=dtype)
    return elman_step(w, u, act), torch.zeros(B, H, dtype=dtype)


def python_loop(w, u, h0, act=torch.tanh):
    """An independent truth: the textbook loop, not going through the solver at all."""
    h, out = h0, []
    for t in range(u.shape[0]):
        h = act((h.unsqueeze(-2) * w).sum(-1) + u[t])
        out.append(h)
    return torch.stack(out)


def test_sequential_matches_textbook_loop():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, 5, generator=g, dtype=torch.float64) / 2
    u = torch.randn(40, 3, 5, generator=g, dtype=torch.float64)
    h0 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    assert torch.equal(sequential(elman_step(w, u), h0, 40), python_loop(w, u, h0))


@pytest.mark.parametrize("method", ["jacobi", "hybrid", "window"])
@pytest.mark.parametrize("gain", [0.5, 1.5, 4.0])  # contractive, mildly and strongly non-contractive
def test_exact_mode_is_bitwise_sequential(method, gain):
    step, h0 = make_rnn(T=96, B=2, H=4, gain=gain)
    truth = sequential(step, h0, 96)
    states, info = solve(step, h0, 96, method=method, tol=0.0, block_size=8, window=16)
    assert torch.equal(states, truth), f"max diff {(states - truth).abs().max()}"
    assert info.exact and info.fallback is None
    if method == "jacobi":
        assert info.iterations <= 96
    if method == "hybrid":
        assert info.iterations <= 96  # ≤ ⌈T/B⌉ sweeps of B inner steps


def test_contractive_converges_fast_and_stops_exactly_after_fixed_point():
    step, h0 = make_rnn(T=200, B=1, H=8, gain=0.3)
    truth = sequential(step, h0, 200)
    states, info = solve(step, h0, 200, tol=0.0)
    assert torch.equal(states, truth)
    # Contraction: the fixed point is reached bitwise long before T (design note toy: 64 of 1000).
    assert info.iterations < 120, info.iterations
    assert info.prefix[-1] == 200


@pytest.mark.parametrize("method", ["jacobi", "hybrid"])
def test_tolerance_mode_close_to_sequential(method):
    step, h0 = make_rnn(T=300, B=2, H=6, gain=0.8)
    truth = sequential(step, h0, 300)
    states, info = solve(step, h0, 300, method=method, tol=1e-12, block_size=16)
    assert info.converged and info.fallback is None
    assert info.iterations < 300
    # A contraction with factor ~0.8 keeps the final-iteration error within a small multiple of tol.
    assert (states - truth).abs().max() < 1e-10


def test_window_tolerance_mode():
    step, h0 = make_rnn(T=300, B=2, H=6, gain=0.8)
    truth = sequential(step, h0, 300)
    states, info = solve(step, h0, 300, method="window", window=32, tol=1e-12)
    assert info.converged and not info.exact
    assert (states - truth).abs().max() < 1e-10
    assert max(len_ for len_ in [info.iterations]) < 300


def test_long_sequence_T4096_contractive():
    T = 4096
    g = torch.Generator().manual_seed(3)
    a = 0.5 * torch.rand(T, 8, generator=g, dtype=torch.float64)
    u = torch.randn(T, 8, generator=g, dtype=torch.float64)

    def step(hist, t):  # elementwise (diagonal) nonlinear recurrence: batch-invariant by construction
        return torch.sin(a[t - 1] * hist[t - 1] + u[t - 1])

    h0 = torch.zeros(8, dtype=torch.float64)
    truth = sequential(step, h0, T)
    states, info = solve(step, h0, T, tol=0.0)
    assert torch.equal(states, truth)
    assert info.iterations < 100
    states_tol, info_tol = solve(step, h0, T, tol=1e-9)
    assert info_tol.iterations <= info.iterations
    assert_close(states_tol, truth, dtype=torch.float32)


def test_worst_case_needs_T_iterations_and_is_exact():
    # s_t = 2·s_{t−1} + 1 from s_0 = 0 has s_t = 2^t − 1: every row changes in every iteration until the
    # front reaches it, so Jacobi needs exactly T iterations.
    T = 512

    def step(hist, t):
        return 2 * hist[t - 1] + 1

    h0 = torch.zeros(1, dtype=torch.float64)
    states, info = solve(step, h0, T, tol=0.0, divergence_factor=math.inf)
    assert torch.equal(states[:, 0], 2.0 ** torch.arange(1, T + 1, dtype=torch.float64) - 1)
    assert info.iterations == T
    assert info.prefix == list(range(1, T + 1))


def test_frozen_prefix_invariant_and_not_recomputed():
    step, h0 = make_rnn(T=64, B=2, H=4, gain=1.1)
    truth = sequential(step, h0, 64)
    seen = []

    def spy(hist, t):
        seen.append(t.clone())
        out = step(hist, t)
        # Every row below the first requested one must already be the sequential result.
        first = int(t[0])
        assert torch.equal(hist[1:first], truth[:first - 1])
        return out

    _, info = solve(spy, h0, 64, tol=0.0)
    assert all(int(t[0]) == p + 1 for t, p in zip(seen, [0] + info.prefix[:-1]))
    assert all(b >= a + 1 for a, b in zip([0] + info.prefix, info.prefix))  # front moves ≥ 1 per iteration
    assert info.evaluations == sum(t.numel() for t in seen)


def test_gauss_seidel_is_the_sequential_loop():
    step, h0 = make_rnn(T=30, B=1, H=3, gain=0.9)
    states, info = solve(step, h0, 30, method="gauss_seidel")
    assert info.iterations == 30 and info.evaluations == 30
    assert torch.equal(states, sequential(step, h0, 30))


def relu_blowup(T=200):
    # ReLU RNN with gain 3: the true solution is finite for the first steps but the guess-driven suffix grows
    # geometrically; the true solution also grows, so overflow to inf happens in float32 beyond ~80 steps.
    g = torch.Generator().manual_seed(5)
    w = 3.0 * torch.eye(4, dtype=torch.float32)
    u = torch.rand(T, 4, generator=g, dtype=torch.float32) + 1.0

    def step(hist, t):
        return torch.relu((hist[t - 1].unsqueeze(-2) * w).sum(-1) + u[t - 1])

    return step, torch.zeros(4, dtype=torch.float32)


def test_nonfinite_divergence_falls_back_to_exact():
    step, h0 = relu_blowup()
    truth = sequential(step, h0, 200)
    assert torch.isinf(truth).any() and torch.isnan(truth).any()  # the true answer overflows (inf·0 = NaN): inf must propagate like the reference
    states, info = solve(step, h0, 200, tol=1e-6)
    assert info.fallback is not None and "residual grew" in info.fallback  # caught early, by growth
    assert info.exact
    torch.testing.assert_close(states, truth, rtol=0, atol=0, equal_nan=True)
    states, info = solve(step, h0, 200, tol=1e-6, divergence_factor=math.inf)
    assert info.fallback is not None and "non-finite" in info.fallback  # caught late, at overflow
    assert info.exact
    torch.testing.assert_close(states, truth, rtol=0, atol=0, equal_nan=True)


def test_divergence_raise():
    step, h0 = relu_blowup()
    with pytest.raises(JacobiDivergenceError, match="non-finite"):
        solve(step, h0, 200, tol=1e-6, on_failure="raise", divergence_factor=math.inf)


def test_max_iters_falls_back_exactly():
    step, h0 = make_rnn(T=80, B=1, H=4, gain=2.0)
    truth = sequential(step, h0, 80)
    states, info = solve(step, h0, 80, tol=0.0, max_iters=5)
    assert "max_iters=5" in info.fallback and info.exact
    assert torch.equal(states, truth)


@given(T=st.integers(0, 40), B=st.integers(0, 3), H=st.integers(1, 5), gain=st.floats(0.1, 2.5),
       method=st.sampled_from(["jacobi", "hybrid", "window"]), block=st.integers(1, 9),
       noncontig=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_random_shapes_exact(T, B, H, gain, method, block, noncontig, seed):
    g = torch.Generator().manual_seed(seed)
    w = gain * torch.randn(H, H, generator=g, dtype=torch.float64) / math.sqrt(H)
    u = torch.randn(T, B, 2 * H, generator=g, dtype=torch.float64)
    u = u[..., ::2] if noncontig else u[..., :H]
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64)
    step = elman_step(w, u)
    states, info = solve(step, h0, T, method=method, block_size=block, window=block)
    assert states.shape == (T, B, H)
    assert torch.equal(states, python_loop(w, u, h0) if T else states)
    assert info.exact


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(tol=-1e-3), ValueError, "tol must be a finite number >= 0"),
    (dict(tol=float("nan")), ValueError, "tol must be"),
    (dict(rtol=-1.0), ValueError, "rtol must be"),
    (dict(method="newton"), ValueError, "method must be one of"),
    (dict(max_iters=0), ValueError, "max_iters must be None or an int >= 1"),
    (dict(block_size=0), ValueError, "block_size must be an int >= 1"),
    (dict(window=-2), ValueError, "window must be an int >= 1"),
    (dict(on_failure="ignore"), ValueError, "on_failure"),
    (dict(guess=torch.zeros(3, 2)), ValueError, "guess must have shape"),
    (dict(guess=torch.full((10, 2), math.nan)), ValueError, "guess contains non-finite"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        solve(lambda hist, t: hist[t - 1], torch.zeros(2), 10, **kwargs)


def test_bad_init_and_steps():
    with pytest.raises(TypeError, match="init must be a torch.Tensor"):
        solve(lambda h, t: h[t - 1], [0.0], 3)
    with pytest.raises(TypeError, match="floating dtype"):
        solve(lambda h, t: h[t - 1], torch.zeros(2, dtype=torch.int64), 3)
    with pytest.raises(ValueError, match="init contains non-finite"):
        solve(lambda h, t: h[t - 1], torch.tensor([math.inf]), 3)
    with pytest.raises(ValueError, match="num_steps must be a non-negative int"):
        solve(lambda h, t: h[t - 1], torch.zeros(2), -1)


@pytest.mark.parametrize("method", METHODS)
def test_step_fn_shape_mismatch(method):
    with pytest.raises(ValueError, match=r"step_fn returned shape \(\d+, 3\)"):
        solve(lambda h, t: torch.zeros(t.numel(), 3), torch.zeros(2), 5, method=method)
    with pytest.raises(TypeError, match="step_fn returned dtype"):
        solve(lambda h, t: h[t - 1].float(), torch.zeros(2, dtype=torch.float64), 5, method=method)


def test_window_that_stands_still_certifies_only_its_own_rows():
    # Rows 1..4 equal the guess (they never move); row 5 jumps. A window of 4 sees no change and must not
    # certify row 5, which it never evaluated (regression: found by hypothesis through the MADE sampler).
    def step(hist, t):
        return hist[t - 1] + (t == 5).to(hist.dtype).unsqueeze(-1)

    init = torch.zeros(1, dtype=torch.float64)
    for method in ("window", "jacobi", "hybrid"):
        states, info = solve(step, init, 9, method=method, window=4, block_size=4)
        assert torch.equal(states[:, 0], torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1], dtype=torch.float64)), method


def _commit_cases():
    g = torch.Generator().manual_seed(7)
    for dtype in (torch.float32, torch.float64, torch.float16):
        old = torch.randn(9, 3, 4, generator=g).to(dtype)
        new = old.clone()
        new[4:] += torch.randn(5, 3, 4, generator=g).to(dtype)
        yield old, new  # rows 0..3 unchanged
        yield old, old.clone()  # nothing moved
        signed = old.clone()
        signed[2, 0, 0], old[2, 0, 0] = -0.0, 0.0  # bits differ, values equal: changed, residual 0 there
        yield old, signed
        inf = new.clone()
        inf[6, 1, 1] = math.inf
        yield old, inf  # a value moved to inf: residual inf
        both = inf.clone()
        yield inf.clone(), both  # equal non-finite values have not moved
        nan = new.clone()
        nan[7, 2, 3] = math.nan
        yield old, nan  # a value moved to NaN: residual inf
        huge = old.clone()
        huge[5, 0, 0] = torch.finfo(dtype).max
        flipped = huge.clone()
        flipped[5, 0, 0] = -torch.finfo(dtype).max
        yield huge, flipped  # both finite, the difference overflows T: residual inf
    yield torch.randn(5, 2), torch.randn(5, 2).t().contiguous().t()  # a non-contiguous new


@pytest.mark.parametrize("case", range(22))
def test_commit_fused_test_matches_the_reference_ops(case):
    """The solver's fused convergence test (C++ op on CPU, tensor ops elsewhere) against the per-row ops."""
    from symkernels.jacobi.solver import _StepEngine, _first_true, _row_changed, _row_residual

    old, new = list(_commit_cases())[case]
    first = _first_true(_row_changed(new, old))
    resid = float(_row_residual(new, old, 0.0).max())
    hist = torch.cat([old[:1], old])
    for native in (True, False):
        engine = _StepEngine(lambda h, t: h[t], hist.clone(), "jacobi", 0.0, 0.0, 4, 4)
        if native and not engine.native:
            continue
        engine.native = native
        if not native:  # the buffers of the tensor-op path
            engine.int_dtype = {8: torch.int64, 4: torch.int32, 2: torch.int16}[old.element_size()]
            engine.ne_buf = torch.empty(old.numel() + 1, dtype=torch.bool)
            engine.delta_buf = torch.empty(old.numel(), dtype=old.dtype)
        target = old.clone()
        got_first, got_resid = engine._commit(new, target)
        assert got_first == first and (got_resid == resid or (math.isnan(resid) and math.isnan(got_resid))), \
            (native, got_first, first, got_resid, resid)
        assert torch.equal(target.view(torch.uint8), new.contiguous().view(torch.uint8))


@pytest.mark.parametrize("method", ["jacobi", "window", "hybrid", "gauss_seidel", "auto"])
def test_fused_step_serves_contiguous_sweeps_and_changes_nothing(method):
    # solve(fused_step=...) evaluates and commits in one call where a sweep covers contiguous rows; the result
    # and the record are those of step_fn plus the solver's own commit.
    from symkernels.jacobi.solver import _first_true, _row_changed, _row_residual
    g = torch.Generator().manual_seed(7)
    T, u = 23, torch.randn(23, 4, generator=g, dtype=torch.float64)

    def step(hist, t):  # elementwise: batch-invariant, so every method is exact
        return torch.tanh(1.3 * hist[t - 1] + u[t - 1])

    calls = []

    def fused_step(hist, start, stop):
        calls.append((start, stop))
        new, old = step(hist, torch.arange(start + 1, stop + 1)), hist[start + 1:stop + 1]
        first, resid = _first_true(_row_changed(new, old)), float(_row_residual(new, old, 0.0).max())
        old.copy_(new)
        return torch.tensor([resid, first], dtype=torch.float64)

    kwargs = dict(method=method, window=5, block_size=4)
    if method == "auto":  # a given cost model: the choice must not depend on timing
        kwargs["cost_model"] = CostModel(seq_fixed=1.0, seq_per_unit=0.0, jac_fixed=1.0, jac_per_unit=0.0)
    want, want_info = solve(step, torch.zeros(4, dtype=torch.float64), T, **kwargs)
    got, info = solve(step, torch.zeros(4, dtype=torch.float64), T, fused_step=fused_step, **kwargs)
    assert torch.equal(got, want) and torch.equal(got, sequential(step, torch.zeros(4, dtype=torch.float64), T))
    assert (info.iterations, info.prefix, info.residuals) == (want_info.iterations, want_info.prefix,
                                                               want_info.residuals)
    assert bool(calls) == (method != "hybrid")  # hybrid's inner steps take strided rows: step_fn


def test_commit_op_opcheck():
    if not hasattr(torch.ops.symkernels, "jacobi_commit"):
        pytest.skip("symkernels._C not built")
    old, new = torch.randn(6, 5), torch.randn(6, 5)
    torch.library.opcheck(torch.ops.symkernels.jacobi_commit, (old, new))


# method="auto": the selection logic on injected cost models (no timing).
SEQ_BOUND = CostModel(seq_fixed=1.0, seq_per_unit=0.0, jac_fixed=1.0, jac_per_unit=1.0)  # CPU-like: work-bound
LATENCY_BOUND = CostModel(seq_fixed=1.0, seq_per_unit=0.0, jac_fixed=0.5, jac_per_unit=0.001)  # GPU-like


def test_cost_model_break_even_and_choice():
    # Work-bound: T = 100 steps cost 100; one iteration over 100 rows costs 101 > 100: never Jacobi.
    assert SEQ_BOUND.sequential(100) == 100 and SEQ_BOUND.jacobi(100, 1) == 101
    assert SEQ_BOUND.break_even(100) == 0
    assert choose_method(SEQ_BOUND, 100, 5) == ("gauss_seidel", 0)
    # Latency-bound: Jacobi up to its break-even count, and the cap is that count.
    slow_iterations = CostModel(seq_fixed=1.0, seq_per_unit=0.0, jac_fixed=2.0, jac_per_unit=0.001)
    cap = slow_iterations.break_even(100)
    assert 0 < cap < 100 and slow_iterations.jacobi(100, cap) <= 100 < slow_iterations.jacobi(100, cap + 1)
    assert choose_method(slow_iterations, 100, 32) == ("jacobi", cap)
    assert choose_method(slow_iterations, 100, cap + 1) == ("gauss_seidel", 0)  # expected beyond break-even
    assert choose_method(LATENCY_BOUND, 100, 100) == ("jacobi", 100)
    # The frozen prefix bounds the work: iteration k evaluates at most T − k rows.
    assert LATENCY_BOUND.jacobi(100, 100) == 100 * 0.5 + 0.001 * 100 * (100 - 99 / 2)
    assert expected_iterations(100) == 32 and expected_iterations(10) == 10


@pytest.mark.parametrize("cost, chosen", [(SEQ_BOUND, "gauss_seidel"), (LATENCY_BOUND, "jacobi"), (None, None)])
def test_solve_auto(cost, chosen):
    step, h0 = make_rnn(T=80, B=2, H=4, gain=0.5)
    truth = sequential(step, h0, 80)
    states, info = solve(step, h0, 80, method="auto", cost_model=cost)
    assert torch.equal(states, truth) and info.exact and info.fallback is None
    assert info.method in ("auto:jacobi", "auto:gauss_seidel")
    if chosen is not None:
        assert info.method == f"auto:{chosen}"
    if chosen == "gauss_seidel":
        assert info.iterations == info.evaluations == 80
    states, info = solve(step, h0, 80, method="auto", tol=1e-10, cost_model=cost)
    assert (states - truth).abs().max() < 1e-8


def test_solve_auto_caps_jacobi_at_break_even():
    # A model whose break-even count is 34 (48 steps of 1 against iterations of 1.4), above the 32 iterations
    # planned: Jacobi; a non-contracting system that needs ~T iterations is stopped at 34
    # and finished exactly by the sequential sweep.
    cost = CostModel(seq_fixed=1.0, seq_per_unit=0.0, jac_fixed=1.4, jac_per_unit=0.0)
    step, h0 = make_rnn(T=48, B=1, H=4, gain=3.0)
    states, info = solve(step, h0, 48, method="auto", tol=1e-9, cost_model=cost)
    assert info.method == "auto:jacobi" and "max_iters=34" in info.fallback and info.exact
    assert torch.equal(states, sequential(step, h0, 48))


@pytest.mark.parametrize("method", ["jacobi", "hybrid"])
def test_exact_mode_through_the_tensor_op_commit(method, monkeypatch):
    # The commit path devices without the C++ op take (CUDA, or no _C build), end to end.
    from symkernels.jacobi import solver

    monkeypatch.setattr(solver, "_COMMIT_DTYPES", ())
    step, h0 = make_rnn(T=64, B=2, H=4, gain=1.5)
    states, info = solve(step, h0, 64, method=method, block_size=8)
    assert torch.equal(states, sequential(step, h0, 64)) and info.exact
    assert all(b >= a + 1 for a, b in zip([0] + info.prefix, info.prefix))
