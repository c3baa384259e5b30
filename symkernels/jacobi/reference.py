"""Pure-PyTorch truth for the Jacobi pillar's ops: the RNN cells, the textbook sequential loop, and the
reference Jacobi solve (through the general solver); the autoregressive samplers' step (:func:`sample_rows`).

Conventions (those of ``torch.nn.RNN``/``GRU``/``LSTM`` with ``batch_first=False``):
x ``[T, B, I]``, w_ih ``[G, I]``, w_hh ``[G, H]`` with G = H (Elman), 3H (GRU, gates r, z, n) or 4H (LSTM,
gates i, f, g, o). Bias ``b``: ``[G]`` for Elman and LSTM (b_ih + b_hh, they only ever appear summed),
``[2, 3H]`` for the GRU (rows b_ih, b_hh: b_hn sits inside the reset gate's product, so the two cannot be
merged).

**The state.** The recurrence is a fixed point over the whole state s_t, which is h_t for Elman and GRU and
the pair (h_t, c_t) for the LSTM: c_t depends on c_{t−1} directly, so h alone is not a state. The LSTM state
is stored as one tensor ``s = [h, c]`` of width 2H (``pack_state``/``unpack_state``), so the solver, the
adjoint and the tangent solves, the frozen prefix and the residual all run unchanged over ``[T, B, S]``
(S = state_width(cell, H)). Only ``h`` enters the recurrent mat-vec.
"""
from __future__ import annotations

import math

import torch

from symkernels.jacobi.solver import SolveInfo, solve


GATES = {"elman": 1, "gru": 3, "lstm": 4}


def gates(cell: str) -> int:
    """Gate blocks of H rows in w_ih, w_hh and the input projection u."""
    return GATES[cell]


def state_width(cell: str, hidden: int) -> int:
    """S: the width of one state row (h, or [h, c] for the LSTM)."""
    return 2 * hidden if cell == "lstm" else hidden


def pack_state(cell: str, h: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """The solver's state from the cell's parts: h, or [h, c] along the last axis for the LSTM."""
    return torch.cat([h, c], -1) if cell == "lstm" else h


def unpack_state(cell: str, s: torch.Tensor):
    """h, or (h, c) for the LSTM: the inverse of :func:`pack_state` (views, no copy)."""
    if cell != "lstm":
        return s
    H = s.shape[-1] // 2
    return s[..., :H], s[..., H:]


def split_bias(b: torch.Tensor, cell: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(b_ih, b_hh): the bias added to the input projection u, and the one inside the recurrence."""
    if cell == "gru":
        return b[0], b[1]
    return b, torch.zeros_like(b)


def input_projection(x: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor) -> torch.Tensor:
    """u_t = W_ih x_t + b_ih for all t at once: the part of the RNN that was always parallel."""
    return torch.matmul(x, w_ih.t()) + b_ih


def cell_step(h_prev: torch.Tensor, u: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, cell: str,
              nonlinearity: str) -> torch.Tensor:
    """New state from the previous one and the input projection, for any leading shape.

    LSTM (gates i, f, g, o as in ``torch.nn.LSTM``): c = σ(a_f)·c_prev + σ(a_i)·tanh(a_g), h = σ(a_o)·tanh(c)
    with a = u + b_hh + W_hh h_prev; ``h_prev`` and the result are the packed state [h, c].
    """
    H = w_hh.shape[1]
    gh = torch.matmul(h_prev[..., :H], w_hh.t()) + b_hh
    if cell == "lstm":
        a = u + gh
        i, f, o = torch.sigmoid(a[..., :H]), torch.sigmoid(a[..., H:2 * H]), torch.sigmoid(a[..., 3 * H:])
        c = f * h_prev[..., H:] + i * torch.tanh(a[..., 2 * H:3 * H])
        return torch.cat([o * torch.tanh(c), c], -1)
    if cell == "gru":
        r = torch.sigmoid(u[..., :H] + gh[..., :H])
        z = torch.sigmoid(u[..., H:2 * H] + gh[..., H:2 * H])
        n = torch.tanh(u[..., 2 * H:] + r * gh[..., 2 * H:])
        return (1 - z) * n + z * h_prev
    a = u + gh
    return torch.tanh(a) if nonlinearity == "tanh" else torch.relu(a)


def cell_jvp(h_prev: torch.Tensor, u: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, cell: str,
             nonlinearity: str, dh_prev: torch.Tensor | None = None, du: torch.Tensor | None = None,
             dw_hh: torch.Tensor | None = None, db_hh: torch.Tensor | None = None) -> torch.Tensor:
    """Tangent of :func:`cell_step` (None: a zero tangent), written out by hand with plain differentiable ops.

    Written out rather than taken from ``torch.func.jvp``, because the RNN's forward-mode rule runs inside an
    outer forward-AD level (``autograd.Function.jvp``), where a nested ``torch.func.jvp`` is not supported.
    """
    H = w_hh.shape[1]
    h_part = h_prev[..., :H]
    dgh = None
    for term in (None if dh_prev is None else torch.matmul(dh_prev[..., :H], w_hh.t()),
                 None if dw_hh is None else torch.matmul(h_part, dw_hh.t()), db_hh):
        if term is not None:
            dgh = term if dgh is None else dgh + term
    gh = torch.matmul(h_part, w_hh.t()) + b_hh
    zero = torch.zeros_like(gh)
    dgh = zero if dgh is None else dgh + zero  # broadcast to gh's shape
    du = torch.zeros_like(u) if du is None else du
    if cell == "lstm":
        a, da = u + gh, du + dgh
        i, f, o = torch.sigmoid(a[..., :H]), torch.sigmoid(a[..., H:2 * H]), torch.sigmoid(a[..., 3 * H:])
        g = torch.tanh(a[..., 2 * H:3 * H])
        c_prev = h_prev[..., H:]
        c = f * c_prev + i * g
        dc = (f * (1 - f) * da[..., H:2 * H] * c_prev + i * (1 - i) * da[..., :H] * g
              + i * (1 - g * g) * da[..., 2 * H:3 * H])
        if dh_prev is not None:
            dc = dc + f * dh_prev[..., H:]
        tc = torch.tanh(c)
        dh = o * (1 - o) * da[..., 3 * H:] * tc + o * (1 - tc * tc) * dc
        return torch.cat([dh, dc], -1)
    if cell == "gru":
        r = torch.sigmoid(u[..., :H] + gh[..., :H])
        z = torch.sigmoid(u[..., H:2 * H] + gh[..., H:2 * H])
        n = torch.tanh(u[..., 2 * H:] + r * gh[..., 2 * H:])
        dr = r * (1 - r) * (du[..., :H] + dgh[..., :H])
        dz = z * (1 - z) * (du[..., H:2 * H] + dgh[..., H:2 * H])
        dn = (1 - n * n) * (du[..., 2 * H:] + dr * gh[..., 2 * H:] + r * dgh[..., 2 * H:])
        out = dz * (h_prev - n) + (1 - z) * dn
        return out if dh_prev is None else out + z * dh_prev
    a = u + gh
    da = du + dgh
    if nonlinearity == "tanh":
        y = torch.tanh(a)
        return (1 - y * y) * da
    return (a > 0).to(a.dtype) * da


def rnn_sequential(x: torch.Tensor, h0, w_ih: torch.Tensor, w_hh: torch.Tensor, b: torch.Tensor,
                   nonlinearity: str = "tanh", cell: str = "elman"):
    """The textbook loop, differentiable by autograd: the truth every backend is tested against.

    ``h0`` is ``[B, H]``, or the pair ``(h0, c0)`` for the LSTM; returns h ``[T, B, H]``, or ``(h, c)``.
    """
    b_ih, b_hh = split_bias(b, cell)
    u = input_projection(x, w_ih, b_ih)
    s0 = pack_state(cell, *h0) if cell == "lstm" else h0
    return unpack_state(cell, rnn_sequential_from_u(u, s0, w_hh, b_hh, cell, nonlinearity))


def rnn_jacobi(u: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, cell: str,
               nonlinearity: str, *, method: str = "jacobi", tol: float = 0.0,
               max_iters: int | None = None) -> tuple[torch.Tensor, SolveInfo]:
    """Jacobi solve of the recurrence through the general solver (a GEMM per iteration: not batch-invariant,
    so equal to the sequential loop within rounding, not bitwise; the C++ kernel is the bitwise one)."""

    def step(hist, t):
        return cell_step(hist[t - 1], u[t - 1], w_hh, b_hh, cell, nonlinearity)

    with torch.no_grad():
        return solve(step, h0, u.shape[0], method=method, tol=tol, max_iters=max_iters)


def affine_scan(A: torch.Tensor, c: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = A_t h_{t−1} + c_t for t = 0..T−1 from h0, by a chunked parallel scan.

    A: ``[T, B, H, H]``, c: ``[T, B, H]``, h0: ``[B, H]``. The pairs (A, c) compose associatively as
    (A2, c2)∘(A1, c1) = (A2 A1, A2 c1 + c2). With chunks of C ≈ √T steps:

    1. every chunk at once (C batched steps): its transfer matrix P_k = A_last···A_first and its solution from
       a zero start;
    2. the chunk start states, s_{k+1} = P_k s_k + (zero-start solution of chunk k)_last: T/C mat-vecs;
    3. every chunk at once again from its true start state (C batched mat-vec steps).

    O(T·H³) work (the products P_k) and depth O(√T): a log T factor less work than a doubling
    (Hillis–Steele) scan, which matters on a CPU, where the work, not the depth, sets the time.
    """
    T, B, H = c.shape
    if T == 0:
        return c.clone()
    C = max(1, math.isqrt(T - 1) + 1)
    n = -(-T // C)
    pad = n * C - T
    if pad:  # identity steps at the end: they leave the last state unchanged and are cut off below
        eye = torch.eye(H, dtype=A.dtype, device=A.device).expand(pad, B, H, H)
        A = torch.cat([A, eye])
        c = torch.cat([c, c.new_zeros(pad, B, H)])
    A = A.reshape(n, C, B, H, H)
    c = c.reshape(n, C, B, H, 1)
    P, local = A[:, 0], c[:, 0]
    for i in range(1, C):
        P = A[:, i] @ P
        local = A[:, i] @ local + c[:, i]
    starts = [h0.unsqueeze(-1)]
    for k in range(n - 1):
        starts.append(P[k] @ starts[-1] + local[k])
    s = torch.stack(starts)
    out = []
    for i in range(C):
        s = A[:, i] @ s + c[:, i]
        out.append(s)
    return torch.stack(out, 1).reshape(n * C, B, H)[:T]


NEWTON_MAX_ITERS = 64


def rnn_newton(u: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, cell: str,
               nonlinearity: str, *, tol: float, max_iters: int | None = None) -> tuple[torch.Tensor, SolveInfo]:
    """DEER-style Newton iteration (Lim et al., ICLR 2024): linearise every step around the current iterate,
    h_t ≈ f_t(ĥ_{t−1}) + J_t (h_{t−1} − ĥ_{t−1}), and solve that affine recurrence exactly by a parallel scan.

    Quadratic convergence near the solution, but undamped: far from it the linearised suffix can overflow
    (non-finite → reported, finished by the sequential loop). A tolerance method: never bitwise exact.
    """
    T, B, H = u.shape[0], h0.shape[0], h0.shape[1]
    info = SolveInfo(method="newton")
    # Undamped Newton either converges in a handful of iterations or wanders (design note: inf/NaN at gain 2);
    # past NEWTON_MAX_ITERS the sequential loop is cheaper than more O(T·B·H³) scans.
    cap = max_iters if max_iters is not None else min(T, NEWTON_MAX_ITERS)
    h = h0.unsqueeze(0).expand(T, B, H).clone()

    def f_row(hp, u_row):
        return cell_step(hp, u_row, w_hh, b_hh, cell, nonlinearity)

    jac = torch.func.vmap(torch.func.jacrev(f_row))
    best, stalls = math.inf, 0
    with torch.no_grad():
        while info.iterations < cap:
            h_prev = torch.cat([h0.unsqueeze(0), h[:-1]])
            f = cell_step(h_prev, u, w_hh, b_hh, cell, nonlinearity)
            if cell == "elman":  # closed form: J = diag(act'(a)) W_hh
                d = (1 - f * f) if nonlinearity == "tanh" else (f > 0).to(f.dtype)
                J = d.unsqueeze(-1) * w_hh
            else:
                J = jac(h_prev.reshape(T * B, H), u.reshape(T * B, -1)).reshape(T, B, H, H)
            c = f - (J @ h_prev.unsqueeze(-1)).squeeze(-1)
            h_new = affine_scan(J, c, h0)
            resid = float((h_new - h).abs().max()) if h.numel() else 0.0
            h = h_new
            info.iterations += 1
            info.evaluations += T * B
            info.residuals.append(resid)
            if not math.isfinite(resid):
                info.fallback = f"non-finite values after Newton iteration {info.iterations}"
                break
            if resid <= tol:
                info.converged = True
                break
            # Near the solution Newton at least halves the residual every step (quadratically, in fact); once
            # it is small (<= √tol) and stops doing so twice running, it sits on the rounding floor of the
            # scan (float32 at tol 1e-6: ~1e-6) and more iterations would only burn time.
            stalls = stalls + 1 if best <= math.sqrt(tol) and resid > 0.5 * best else 0
            best = min(best, resid)
            if stalls >= 2:
                info.fallback = (f"stalled at residual {resid:.2e} > tol={tol:g} after {info.iterations} Newton "
                                 f"iterations (rounding floor of the scan)")
                break
        if not info.converged:
            info.fallback = info.fallback or f"not converged after max_iters={cap} Newton iterations"
            h = rnn_sequential_from_u(u, h0, w_hh, b_hh, cell, nonlinearity)
            info.exact = True
    return h, info


def rnn_sequential_from_u(u, h0, w_hh, b_hh, cell, nonlinearity):
    """The loop over the packed state from the input projection (the body of :func:`rnn_sequential`)."""
    h, out = h0, []
    for t in range(u.shape[0]):
        h = cell_step(h, u[t], w_hh, b_hh, cell, nonlinearity)
        out.append(h)
    return torch.stack(out) if out else u.new_empty((0,) + tuple(h0.shape))


def sampling_noise(noise: torch.Tensor, kind: str) -> torch.Tensor:
    """The samplers' pre-drawn noise as :func:`sample_rows` takes it: for ``"bernoulli"`` the logits of the
    uniforms, so that a sample, u < sigmoid(logit), is the comparison logit > logit(u): the same event in exact
    arithmetic (in floating point they can differ only where u is within rounding of sigmoid(logit)), with no
    transcendental per iteration: one logit per call instead of a whole-output sigmoid per network pass. The
    normal noise of ``"gaussian"`` as it is."""
    return torch.logit(noise) if kind == "bernoulli" else noise


def sample_rows(out: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, kind: str) -> torch.Tensor:
    """The samples of the 1-based columns ``t`` as rows ``[len(t), B]`` (the solver's layout), from a network
    output ``out`` — ``[B, D]`` logits (``kind="bernoulli"``: 1 where the logit exceeds the threshold) or
    ``[B, 2D]`` means and log standard deviations (``"gaussian"``: ``mean + exp(log σ)·noise``) — and pre-drawn
    ``noise [B, D]`` as :func:`sampling_noise` makes it.

    Exp runs over the whole log-σ half, the same shape in every call, so that a column's parameter is the same
    bits whichever columns are asked for: an elementwise kernel may round an element of its scalar tail
    differently from one of its vector body, and which elements fall in the tail depends on the shape.
    (``torch.ops.symkernels.jacobi_sample_commit`` draws the same bits, then compares them with the iterate and
    writes them back, in one op.)"""
    D = noise.shape[1]
    d = t - 1
    u = noise.t().index_select(0, d)
    if kind == "bernoulli":
        return (out.t().index_select(0, d) > u).to(out.dtype)
    mean, scale = out[:, :D].t().index_select(0, d), torch.exp(out[:, D:]).t().index_select(0, d)
    return mean + scale * u
