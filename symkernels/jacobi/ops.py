"""Public Jacobi RNN op: argument checks, backend choice, the iteration driver and the adjoint backward."""
from __future__ import annotations

import dataclasses
import math
import time

import torch

from symkernels import _backend, _library
from symkernels.jacobi import reference, solver
from symkernels.jacobi.solver import SolveInfo, Sweep, solve

OP_NAME = "jacobi_rnn_iterate"
IMPLEMENTED = ("reference", "cpu", "cuda", "triton")
SUPPORTED_DTYPES = (torch.float32, torch.float64)
RNN_METHODS = ("jacobi", "gauss_seidel", "newton", "auto")
CELLS = ("elman", "gru", "lstm")
NONLINEARITIES = ("tanh", "relu")
_triton_iterate = _library.TritonLauncher("symkernels.jacobi.triton.jacobi_rnn_iterate")


@dataclasses.dataclass(frozen=True)
class _Config:
    cell: str
    nonlinearity: str
    method: str
    tol: float
    max_iters: int | None
    check_every: int
    impl: str
    info: list  # receives the forward's SolveInfo (a list so the frozen config can carry it out)


def _split_initial_state(h0, cell):
    """(h0, c0): the LSTM takes the pair, the other cells one tensor (c0 None)."""
    if cell != "lstm":
        return h0, None
    if not (isinstance(h0, (tuple, list)) and len(h0) == 2):
        raise TypeError(f"rnn: cell='lstm' takes h0 as the pair (h0, c0) of [B, H] tensors, got "
                        f"{type(h0).__name__}")
    return h0[0], h0[1]


def _check_args(x, h0, c0, w_ih, w_hh, b, nonlinearity, cell, method, tol, max_iters, check_every):
    op = "rnn"
    if cell not in CELLS:
        raise ValueError(f"{op}: cell must be one of {CELLS}, got {cell!r}")
    states = (("h0", h0),) + ((("c0", c0),) if cell == "lstm" else ())
    for name, t in (("x", x),) + states + (("w_ih", w_ih), ("w_hh", w_hh), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{op}: {name} must be float32 or float64, got {t.dtype}")
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} must have x's dtype {x.dtype}, got {t.dtype}")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"{op}: nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
    if cell != "elman" and nonlinearity != "tanh":
        raise ValueError(f"{op}: the {cell.upper()} cell has no nonlinearity choice (tanh), "
                         f"got nonlinearity={nonlinearity!r}")
    if method not in RNN_METHODS:
        raise ValueError(f"{op}: method must be one of {RNN_METHODS}, got {method!r}")
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"{op}: tol must be a finite number >= 0, got {tol!r}")
    if method == "newton" and tol == 0:
        raise ValueError(f"{op}: method='newton' is a tolerance method (never bitwise exact); give tol > 0, "
                         f"or use method='jacobi' for the exact result")
    if max_iters is not None and (isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1):
        raise ValueError(f"{op}: max_iters must be None or an int >= 1, got {max_iters!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"{op}: check_every must be an int >= 1, got {check_every!r}")
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be [T, B, input_size], got shape {tuple(x.shape)}")
    T, B, I = x.shape
    if h0.dim() != 2 or h0.shape[0] != B:
        raise ValueError(f"{op}: h0 must be [B, H] with B = x.shape[1] = {B}, got shape {tuple(h0.shape)}")
    H = h0.shape[1]
    if c0 is not None and tuple(c0.shape) != (B, H):
        raise ValueError(f"{op}: c0 must be [B, H] = {(B, H)} like h0, got shape {tuple(c0.shape)}")
    G = reference.gates(cell) * H
    if tuple(w_ih.shape) != (G, I):
        raise ValueError(f"{op}: w_ih must be [{reference.gates(cell)}*H, input_size] = {(G, I)}, "
                         f"got {tuple(w_ih.shape)}")
    if tuple(w_hh.shape) != (G, H):
        raise ValueError(f"{op}: w_hh must be [{reference.gates(cell)}*H, H] = {(G, H)}, got {tuple(w_hh.shape)}")
    expected_b = (2, G) if cell == "gru" else (G,)
    if tuple(b.shape) != expected_b:
        raise ValueError(f"{op}: b must be {expected_b} for cell={cell!r} "
                         f"({'rows b_ih, b_hh' if cell == 'gru' else 'b_ih + b_hh'}), got {tuple(b.shape)}")


def rnn(x: torch.Tensor, h0, w_ih: torch.Tensor, w_hh: torch.Tensor, b: torch.Tensor, *,
        nonlinearity: str = "tanh", cell: str = "elman", method: str = "jacobi", tol: float = 0.0,
        max_iters: int | None = None, check_every: int = 16, return_info: bool = False,
        backend: str | None = None):
    """Evaluate an Elman, GRU or LSTM RNN over all timesteps by Jacobi iteration.

    Args:
        x: ``[T, B, I]``; h0: ``[B, H]``, or the pair ``(h0, c0)`` for the LSTM; w_ih: ``[G, I]``; w_hh:
            ``[G, H]`` (G = H; 3H for the GRU, gates r, z, n as in ``torch.nn.GRU``; 4H for the LSTM, gates
            i, f, g, o as in ``torch.nn.LSTM``); b: ``[G]`` (Elman, LSTM: b_ih + b_hh) or ``[2, 3H]`` (GRU: rows
            b_ih, b_hh). float32 or float64, one device, any strides.
        cell: ``"elman"``, ``"gru"`` or ``"lstm"``. The LSTM's fixed point is over the pair (h_t, c_t) jointly
            (residual, frozen prefix and exact stop over both).
        nonlinearity: ``"tanh"`` or ``"relu"`` (Elman only).
        method: ``"jacobi"``, ``"gauss_seidel"`` (the ordinary sequential loop, by the same kernel),
            ``"newton"`` (DEER: linearise and solve by a parallel associative scan; reference backend only,
            needs ``tol > 0``) or ``"auto"``: Jacobi or the sequential sweep, whichever the cost model predicts
            faster. The model (:class:`~symkernels.jacobi.solver.CostModel`, per device type, backend and
            dtype, measured once on two small problems and cached in ``COST_MODELS``): a sequential step costs
            ``seq_fixed + seq_per_unit·B·H·G``, a Jacobi iteration over n timesteps ``jac_fixed +
            jac_per_unit·n·B·H·G``; Jacobi is planned for 32 iterations (at most T) and chosen if that costs no
            more than the sweep, with ``max_iters`` capped at the break-even count (past it the sweep finishes
            from the exact prefix: a wrong plan costs at most one more sweep).
            ``info.method`` says "auto:jacobi" or "auto:gauss_seidel". On CPU a Jacobi iteration does T times a
            step's work on two cores, so the sweep wins unless very few iterations are expected; on a GPU a
            latency-bound iteration costs about a step and Jacobi wins tolerance solves.
        tol: 0 for the exact fixed point; > 0 stops when no state moved by more than ``tol``.
        max_iters: cap on Jacobi iterations (default T). Unconverged or divergent (non-finite, or a residual
            grown 1e8×) solves are finished by the exact sequential sweep from the exact prefix and reported.
        check_every: iterations per kernel call between host-side convergence checks (the kernels test
            convergence every iteration themselves; the host reads their record once per call).
        return_info: also return the :class:`SolveInfo` of the forward solve.
        backend: ``None``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        h ``[T, B, H]``, or ``(h, c)`` for the LSTM (``(result, info)`` with ``return_info``). With ``tol=0``
        and ``backend="cpu"`` the result is bitwise the sequential loop of the same kernel
        (``method="gauss_seidel"``); the reference backend uses a GEMM per iteration and matches the
        sequential loop within rounding. Differentiable in reverse mode (twice: double backward) and forward
        mode: the backward solves the adjoint linear recurrence λ_t = ∂L/∂s_t + J_{t+1}ᵀ λ_{t+1}, the JVP the
        linearised recurrence ṡ_t = ṙ_t + J_t ṡ_{t−1} over the state s_t (h_t, or [h_t, c_t] for the LSTM),
        both by Jacobi iteration as well (never unrolling the forward iterations).
    """
    h0, c0 = _split_initial_state(h0, cell)
    _check_args(x, h0, c0, w_ih, w_hh, b, nonlinearity, cell, method, tol, max_iters, check_every)
    device = _backend.common_device("rnn", x=x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b=b)
    if method == "newton":
        if backend not in (None, "reference"):
            raise NotImplementedError(f"rnn: method='newton' is implemented by the reference backend only, "
                                      f"got backend={backend!r}")
        impl = "reference"
    else:
        impl = _backend.resolve(OP_NAME, device, backend, IMPLEMENTED)
    requested = method
    if method == "auto":
        T, B, H = x.shape[0], x.shape[1], h0.shape[1]
        method, cap = solver.choose_method(cost_model(impl, device, x.dtype), T, solver.expected_iterations(T),
                                           width=B * H * reference.gates(cell) * H)
        if method == "jacobi":
            max_iters = cap if max_iters is None else min(max_iters, cap)
    b_ih, b_hh = reference.split_bias(b, cell)
    u = reference.input_projection(x, w_ih, b_ih)
    info: list = []
    config = _Config(cell, nonlinearity, method, float(tol), max_iters, check_every, impl, info)
    s = reference.unpack_state(cell, _JacobiRNN.apply(u, reference.pack_state(cell, h0, c0), w_hh, b_hh, config))
    if requested == "auto":
        info[0].method = f"auto:{method}"
    return (s, info[0]) if return_info else s


# method="auto"'s calibration per (device type, implementation, dtype): measured on first use, then cached; a
# test or a user may set an entry (the constants of a known machine) instead.
COST_MODELS: dict[tuple[str, str, torch.dtype], solver.CostModel] = {}
# Calibration problems: Elman, T timesteps, two (batch, hidden) sizes far enough apart to separate the fixed
# cost of a step/iteration from its per-multiply-add cost.
_CALIBRATION_T = 64
_CALIBRATION_SIZES = ((1, 16), (8, 64))


def cost_model(impl: str, device: torch.device, dtype: torch.dtype) -> solver.CostModel:
    """The :class:`~symkernels.jacobi.solver.CostModel` of ``rnn(method="auto")`` on this implementation, in
    seconds per step/iteration and per recurrent multiply-add (width of a timestep: B·H·G)."""
    key = (torch.device(device).type, impl, dtype)
    if key not in COST_MODELS:
        COST_MODELS[key] = _calibrate(impl, torch.device(device), dtype)
    return COST_MODELS[key]


def _best_time(fn, device: torch.device, reps: int = 3) -> float:
    best = math.inf
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _calibrate(impl: str, device: torch.device, dtype: torch.dtype) -> solver.CostModel:
    """Time one sequential sweep and one Jacobi iteration at two sizes; fit fixed + per-multiply-add costs."""
    T = _CALIBRATION_T
    widths, seq, jac = [], [], []
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for B, H in _CALIBRATION_SIZES:
            u = torch.randn(T, B, H, generator=g, dtype=dtype).to(device)
            w = (0.5 * torch.randn(H, H, generator=g, dtype=dtype) / math.sqrt(H)).to(device)
            h0, b = torch.zeros(B, H, dtype=dtype, device=device), torch.zeros(H, dtype=dtype, device=device)
            h = torch.zeros(T, B, H, dtype=dtype, device=device)
            if impl == "reference":  # its sweep is the solver's loop over cell_step, an iteration one batched call
                sweep = lambda: reference.rnn_jacobi(u, h0, w, b, "elman", "tanh", method="gauss_seidel")  # noqa: E731
                iteration = lambda: reference.cell_step(_shift(h0, h), u, w, b, "elman", "tanh")  # noqa: E731
            else:
                sweep = lambda: _iterate(impl, u, h0, w, b, h, 0, 1, 0.0, "elman", "tanh", True)  # noqa: E731
                iteration = lambda: _iterate(impl, u, h0, w, b, h, 0, 1, 0.0, "elman", "tanh", False)  # noqa: E731
            sweep(), iteration()  # warm-up (first-call costs: allocation, Triton compilation)
            widths.append(B * H * H)
            seq.append(_best_time(sweep, device) / T)
            jac.append(_best_time(iteration, device))
    (w1, w2), (s1, s2), (j1, j2) = widths, seq, jac
    seq_unit = max(0.0, (s2 - s1) / (w2 - w1))
    jac_unit = max(0.0, (j2 - j1) / (T * (w2 - w1)))
    return solver.CostModel(seq_fixed=max(0.0, s1 - seq_unit * w1), seq_per_unit=seq_unit,
                            jac_fixed=max(0.0, j1 - jac_unit * T * w1), jac_per_unit=jac_unit)


def _iterate(impl: str, u, h0, w_hh, b_hh, h, start, iters, tol, cell, nonlinearity, sequential):
    if impl == "triton":
        return _triton_iterate(u, h0, w_hh, b_hh, h, start, iters, tol, cell, nonlinearity, sequential)
    return torch.ops.symkernels.jacobi_rnn_iterate(u, h0, w_hh, b_hh, h, start, iters, tol, cell, nonlinearity,
                                                   sequential)


class _KernelEngine:
    """The fused iteration kernel as an engine of the solver's one loop (:func:`solver.iterate`): a call runs up
    to ``check_every`` iterations, testing convergence and advancing the frozen pointer itself, and the loop
    reads its (residual, pointer) record once per call. ``h0`` and the iterate are packed states (width S: H,
    or 2H for the LSTM's [h, c]); a row is one (timestep, batch) state."""

    def __init__(self, u, h0, w_hh, b_hh, cfg: _Config):
        self.T, self.B = u.shape[0], u.shape[1]
        self.args, self.cfg = (u, h0, w_hh, b_hh), cfg
        self.h = h0.unsqueeze(0).expand(self.T, self.B, h0.shape[1]).contiguous()

    def _call(self, start, iters, tol, sequential):
        self.h, stats = _iterate(self.cfg.impl, *self.args, self.h, start, iters, tol, self.cfg.cell,
                                 self.cfg.nonlinearity, sequential)
        return stats

    def sweeps(self, p, m):
        out = []
        for resid, ptr in self._call(p, m, self.cfg.tol, False).tolist():  # the one host read per call
            if ptr < 0:
                break
            out.append(Sweep(resid, int(ptr), (self.T - p) * self.B))
            p = int(ptr)
        return out

    def sequential(self, p):
        self._call(p, 1, 0.0, True)
        return (self.T - p) * self.B


def _solve_with_kernel(u, h0, w_hh, b_hh, cfg: _Config) -> tuple[torch.Tensor, SolveInfo]:
    """Solve by the fused kernel through the solver's loop (same stopping, divergence and fallback rules)."""
    T = u.shape[0]
    info = SolveInfo(method=cfg.method)
    engine = _KernelEngine(u, h0, w_hh, b_hh, cfg)
    if cfg.method == "gauss_seidel" or T == 0:
        solver.finish_sequential(engine, T, 0, info, whole=True)
        return engine.h, info
    solver.iterate(engine, T, info, tol=cfg.tol, stop_on_tol=cfg.tol > 0,
                   max_iters=cfg.max_iters if cfg.max_iters is not None else T, on_failure="sequential",
                   check_every=cfg.check_every)
    if info.fallback is None:
        info.exact = info.prefix[-1] >= T
    return engine.h, info


class _JacobiRNN(_library.KernelFunction):
    """Forward: a Jacobi solve (no graph is recorded). Backward and JVP: the linearised recurrence at the
    solution (implicit function theorem), never the unrolled iterations.

    With J_t = ∂h_t/∂h_{t−1} at the solution and (Lδ)_t = J_t δ_{t−1}, the solution's derivatives are
    ḣ = (I − L)⁻¹ ṙ (forward mode, ṙ the cell's tangent at fixed h_{t−1}) and λ = (I − L)⁻ᵀ g (reverse
    mode); both triangular linear systems are linear recurrences solved by Jacobi iteration. The backward is
    written with differentiable ops and the adjoint solve is itself a Function with a backward, so the
    gradient can be differentiated again (double backward, e.g. gradient penalties, Hessian-vector products).
    """

    @staticmethod
    def forward(u, h0, w_hh, b_hh, cfg: _Config):
        if cfg.method == "newton":
            h, info = reference.rnn_newton(u, h0, w_hh, b_hh, cfg.cell, cfg.nonlinearity, tol=cfg.tol,
                                           max_iters=cfg.max_iters)
        elif cfg.impl == "reference":
            h, info = reference.rnn_jacobi(u, h0, w_hh, b_hh, cfg.cell, cfg.nonlinearity, method=cfg.method,
                                           tol=cfg.tol, max_iters=cfg.max_iters)
        else:
            with torch.no_grad():
                h, info = _solve_with_kernel(u.contiguous(), h0.contiguous(), w_hh.contiguous(),
                                             b_hh.contiguous(), cfg)
        cfg.info.append(info)
        return h

    @staticmethod
    def setup_context(ctx, inputs, output):
        u, h0, w_hh, b_hh, cfg = inputs
        ctx.save_for_backward(u, h0, w_hh, b_hh, output)
        ctx.save_for_forward(u, h0, w_hh, b_hh, output)
        ctx.cfg = cfg

    @staticmethod
    def backward(ctx, grad_h):
        u, h0, w_hh, b_hh, h = ctx.saved_tensors
        cfg = ctx.cfg
        if h.shape[0] == 0:
            return torch.zeros_like(u), torch.zeros_like(h0), torch.zeros_like(w_hh), torch.zeros_like(b_hh), None
        lam = _AdjointSolve.apply(grad_h, u, h0, w_hh, b_hh, h, cfg.cell, cfg.nonlinearity, cfg.tol)
        # One batched VJP of the cell at the solution; differentiable (torch.func composes with autograd).
        _, vjp_all = torch.func.vjp(lambda hp, u_, w_, b_: reference.cell_step(hp, u_, w_, b_, cfg.cell,
                                                                              cfg.nonlinearity),
                                    _shift(h0, h), u, w_hh, b_hh)
        d_hprev, du, dw, db = vjp_all(lam)
        return du, d_hprev[0], dw, db, None

    @staticmethod
    def jvp(ctx, du, dh0, dw, db, _cfg):
        u, h0, w_hh, b_hh, h = ctx.saved_tensors
        cfg = ctx.cfg
        if h.shape[0] == 0:
            return torch.zeros_like(h)
        zero = torch.zeros_like
        dh0 = zero(h0) if dh0 is None else dh0
        # ṙ_t: the cell's tangent with h_{t−1} held at the solution, except ḣ0 entering at t = 0.
        dh_prev = torch.cat([dh0.unsqueeze(0), zero(h[:-1])])
        r_dot = reference.cell_jvp(_shift(h0, h), u, w_hh, b_hh, cfg.cell, cfg.nonlinearity, dh_prev, du, dw, db)
        return tangent(u, h0, w_hh, b_hh, h, r_dot, cfg.cell, cfg.nonlinearity, tol=cfg.tol)


def _shift(h0, h):
    """h_prev: [h0, h_0, …, h_{T−2}], the state each timestep reads."""
    return torch.cat([h0.unsqueeze(0), h[:-1]])


class _AdjointSolve(_library.KernelFunction):
    """λ = (I − L)⁻ᵀ g at the solution h, with a backward so that rnn's gradient is differentiable.

    dλ = (I − Lᵀ)⁻¹(dg + dLᵀ λ), so for a cotangent λ̄: ḡ = μ := (I − L)⁻¹ λ̄ (the forward tangent solve) and
    the cotangents of (h0, h, u, w_hh, b_hh) are those of ⟨λ, dL μ⟩ = Σ_t λ_tᵀ dJ_t μ_{t−1}: one VJP of the
    cell's JVP at the solution.
    """

    @staticmethod
    def forward(g, u, h0, w_hh, b_hh, h, cell, nonlinearity, tol):
        return adjoint(u, h0, w_hh, b_hh, h, g, cell, nonlinearity, tol=tol)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, u, h0, w_hh, b_hh, h, cell, nonlinearity, tol = inputs
        ctx.save_for_backward(u, h0, w_hh, b_hh, h, output)
        ctx.args = (cell, nonlinearity, tol)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, lam_bar):
        u, h0, w_hh, b_hh, h, lam = ctx.saved_tensors
        cell, nonlinearity, tol = ctx.args
        mu = tangent(u, h0, w_hh, b_hh, h, lam_bar, cell, nonlinearity, tol=tol)
        mu_prev = torch.cat([torch.zeros_like(mu[:1]), mu[:-1]])

        def lam_dot_jmu(hp, u_, w_, b_):
            return reference.cell_jvp(hp, u_, w_, b_, cell, nonlinearity, dh_prev=mu_prev)

        _, vjp_fn = torch.func.vjp(lam_dot_jmu, _shift(h0, h), u, w_hh, b_hh)
        d_hprev, du, dw, db = vjp_fn(lam)
        dh = torch.cat([d_hprev[1:], torch.zeros_like(d_hprev[:1])])  # h_prev[t] = h[t − 1]
        return mu, du, d_hprev[0], dw, db, dh, None, None, None


def tangent(u, h0, w_hh, b_hh, h, r, cell, nonlinearity, *, tol=0.0):
    """ḣ = (I − L)⁻¹ r: the linearised recurrence ḣ_t = r_t + J_t ḣ_{t−1} (ḣ_{−1} = 0) at the solution h, by
    Jacobi iteration through the general solver (each iteration one batched JVP of the cell)."""
    T = h.shape[0]
    if T == 0:
        return r
    h_prev = _shift(h0, h)
    r = r.contiguous()

    def step(hist, t):  # hist[i] = ḣ_{i−1}; position t computes ḣ_{t−1}
        i = t - 1
        return r[i] + reference.cell_jvp(h_prev[i], u[i], w_hh, b_hh, cell, nonlinearity, dh_prev=hist[i])

    with torch.no_grad():
        out, _ = solve(step, torch.zeros_like(r[0]), T, tol=tol, divergence_factor=math.inf)
    return out


def adjoint(u, h0, w_hh, b_hh, h, grad_h, cell, nonlinearity, *, tol=0.0):
    """λ_t = g_t + J_{t+1}ᵀ λ_{t+1} (λ_T = g_T), the total gradient w.r.t. each h_t, by Jacobi iteration.

    It is a linear recurrence run backwards in time; the general solver runs it on the time-reversed
    sequence μ_i = λ_{T−i}, each iteration one batched VJP of the cell at the converged forward states.
    """
    T = h.shape[0]
    if T == 0:
        return grad_h
    _, vjp_h = torch.func.vjp(lambda hp: reference.cell_step(hp, u, w_hh, b_hh, cell, nonlinearity), _shift(h0, h))
    g = grad_h.contiguous()
    zero_row = torch.zeros_like(g[:1])

    def step(hist, t):
        lam = torch.flip(hist[1:], (0,))  # lam[j] = current iterate of λ_j
        contrib = torch.cat([vjp_h(lam)[0], zero_row])  # contrib[j] = J_jᵀ λ_j, feeding λ_{j−1}
        return g[T - t] + contrib[T - t + 1]

    with torch.no_grad():
        mu, _ = solve(step, torch.zeros_like(g[0]), T, tol=tol, divergence_factor=math.inf)
    return torch.flip(mu, (0,))


def _iterate_fake(u, h0, w_hh, b_hh, h, start, iters, tol, cell, nonlinearity, sequential):
    return (torch.empty(h.shape, dtype=h.dtype, device=h.device),
            torch.empty((iters, 2), dtype=torch.float64, device=h.device))


def _commit_fake(old, new):
    return torch.empty((2,), dtype=torch.float64, device=old.device)


def _sample_commit_fake(hist, out, noise, start, stop, kind):
    return torch.empty((2,), dtype=torch.float64, device=hist.device)


# No autograd on the ops: the solve is differentiated at its solution by _JacobiRNN (implicit function theorem),
# never through the iterations.
_library.register_op(OP_NAME, fake=_iterate_fake, triton=_triton_iterate)
_library.register_op("jacobi_commit", fake=_commit_fake)
_library.register_op("jacobi_sample_commit", fake=_sample_commit_fake)
