"""Jacobi-type parallel evaluation of a sequential computation s_t = f_t(s_0, …, s_{t−1}).

The T unknowns s_1..s_T of a sequential computation satisfy a triangular nonlinear system. Jacobi
iteration updates every unknown at once from the previous iterate; after k iterations the first k
unknowns are exact (each depends only on exact predecessors), so at most T iterations reach the
sequential result from any starting guess (Song et al., ICML 2021, arXiv 2002.03629).

The caller supplies ``step_fn(hist, t)``:

* ``hist``: ``[T + 1, *S]`` — ``hist[0]`` is ``init`` (s_0), ``hist[i]`` the current iterate of s_i;
* ``t``: a 1-D int64 tensor of positions in ``1..T`` (sorted, distinct);
* returns ``[len(t), *S]``, row j being f_{t_j}(hist[0 : t_j]) — it may read only rows < t_j.

Example, an Elman RNN: ``lambda hist, t: torch.tanh(hist[t - 1] @ W.T + u[t - 1])``.

Optionally also ``fused_step(hist, start, stop)``: the step and the commit of rows start+1..stop in one call
(e.g. a sampler's network forward, then one op that samples, compares and writes back: see
``symkernels.jacobi.modules``). It evaluates those rows as ``step_fn`` would (bit for bit), writes them into
``hist[start + 1:stop + 1]`` (in place: no autograd through it) and returns what
``torch.ops.symkernels.jacobi_commit`` returns for them. The solver then uses it for every sweep over a
contiguous range of rows that needs no per-row residuals (Jacobi, exact window, the sequential sweep).

**Frozen prefix and the exact stop.** An iteration that leaves rows p+1..q−1 *bitwise* unchanged has
shown that those rows satisfy their own equations given exact predecessors, so they are the sequential
result; row q was just computed from them, so it is exact too. The solver keeps this pointer (the
"converged prefix"), never evaluates frozen rows again, and with ``tol=0`` stops as soon as the pointer
reaches T — at most T iterations, one more than needed only when nothing changes in the last one.

**When the result is bit-exact.** With ``tol=0`` the result equals the sequential evaluation by the same
``step_fn`` called one row at a time (``method="gauss_seidel"``) *bit for bit* iff ``step_fn`` is
batch-invariant: row j's value must not depend on which other rows are evaluated in the same call (same
reduction order, FMA contraction and precision per row; no split-K GEMM choosing a different kernel for
a different row count). A ``torch.matmul`` over a varying number of rows is not batch-invariant on every
BLAS; results then agree to within the rounding difference of the two evaluations, propagated by the
recurrence. ``tol > 0`` stops when every unfrozen row moved by at most ``tol + rtol·|s|`` in the last
iteration; that is a tolerance result, not an exact one (the frozen prefix stays exact either way).

**Failure.** Jacobi iterates are compositions of true steps, but the part of the iterate still driven
by the initial guess can overflow (e.g. a ReLU RNN with gain > 1) or stall (chaotic maps, where the
exact front advances one row per iteration). Non-finite values in the unfrozen suffix, a residual that
grows by ``divergence_factor`` over its best value, or reaching ``max_iters`` unconverged are reported
in ``info.fallback`` and the remaining rows are evaluated sequentially from the exact prefix (``on_failure=
"sequential"``, the default) or a ``JacobiDivergenceError`` is raised (``on_failure="raise"``): never a
silently wrong result.

**One loop.** :func:`iterate` holds the stopping, divergence and fallback rules for every solver here: it
drives an *engine* — ``solve``'s ``step_fn`` engine (one call per iteration, then the fused convergence test
and write-back: one op, ``torch.ops.symkernels.jacobi_commit`` on CPU, or ``fused_step`` doing both; one host
read of (residual, first changed row), which decides the rows of the next call) or the fused RNN kernels of
``jacobi.rnn``, which iterate and test convergence on the device and report a block of iterations per host read.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Callable, Iterable, Protocol

import torch

from symkernels import _backend

METHODS = ("jacobi", "gauss_seidel", "hybrid", "window", "auto")
# The dtypes of torch.ops.symkernels.jacobi_commit's CPU kernel.
_COMMIT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FusedStepFn = Callable[[torch.Tensor, int, int], torch.Tensor]  # (hist, start, stop) -> jacobi_commit's stats


class JacobiDivergenceError(RuntimeError):
    """The Jacobi iteration diverged or did not converge and ``on_failure="raise"`` was asked for."""


@dataclasses.dataclass
class SolveInfo:
    """What a solve did.

    iterations: parallel sweeps (calls of ``step_fn`` for jacobi/window; inner steps for hybrid and
        gauss_seidel, which is T) — the sequential depth of the computation.
    evaluations: rows evaluated in total (work; T for the sequential loop).
    residuals: per iteration, max over unfrozen rows of |s^{k+1} − s^k| (inf when a row became
        non-finite). For hybrid, one entry per outer sweep.
    prefix: per iteration, the number of leading rows known exact after it (the frozen pointer).
    converged: the stopping rule was met by the parallel iteration (False after a fallback).
    exact: every row is the sequential result by construction (tol=0, or a sequential fallback).
    fallback: None, or why the remaining rows were evaluated sequentially.
    """

    method: str
    iterations: int = 0
    evaluations: int = 0
    residuals: list[float] = dataclasses.field(default_factory=list)
    prefix: list[int] = dataclasses.field(default_factory=list)
    converged: bool = False
    exact: bool = False
    fallback: str | None = None


def _bits(x: torch.Tensor) -> torch.Tensor:
    """Same-size integer view, so that equality is bitwise (NaN == same NaN, −0 != +0)."""
    int_dtype = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[x.element_size()]
    return x.contiguous().view(int_dtype)


def _row_changed(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """[rows] bool: any element of the row differs bitwise."""
    if new.numel() == 0:
        return torch.zeros(new.shape[0], dtype=torch.bool, device=new.device)
    return (_bits(new) != _bits(old)).reshape(new.shape[0], -1).any(dim=1)


def _row_residual(new: torch.Tensor, old: torch.Tensor, rtol: float) -> torch.Tensor:
    """[rows] max over the row of |new − old| − rtol·|new| (the test is ≤ tol); inf where a value is
    non-finite and moved, 0 where it did not move (bitwise)."""
    if new.numel() == 0:
        return torch.zeros(new.shape[0], dtype=torch.float64, device=new.device)
    delta = (new - old).abs()
    if rtol:
        delta = delta - rtol * new.abs()
    delta = torch.where(torch.isfinite(new) & torch.isfinite(old), delta, torch.full_like(delta, math.inf))
    # Equal non-finite values (an exact inf/NaN in the true solution) have not moved.
    delta = torch.where(_bits(new).view_as(new) == _bits(old).view_as(old), torch.zeros_like(delta), delta)
    return delta.reshape(new.shape[0], -1).amax(dim=1).double()


def _first_true(mask: torch.Tensor) -> int:
    """Index of the first True in a 1-D bool tensor, or len(mask) if none (one host sync)."""
    if mask.numel() == 0:
        return 0
    idx = torch.nonzero(mask)
    return int(idx[0, 0]) if idx.numel() else mask.numel()


def _all_finite(x: torch.Tensor) -> bool:
    """No inf/NaN in ``x``: x·0 is exactly 0 for a finite x and NaN otherwise, so the sum is 0 iff all are
    finite. Two ops and one read instead of ``isfinite(x).all()``'s five: a sampler pays this once per call,
    after a network forward has flushed the caches each op must reload."""
    return float((x * 0).sum()) == 0.0


def _check_step_output(out, t: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
    expected = (t.numel(),) + tuple(hist.shape[1:])
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"solve: step_fn must return a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != expected:
        raise ValueError(f"solve: step_fn returned shape {tuple(out.shape)} for {t.numel()} positions, expected "
                         f"{expected} (one row per position in t, each shaped like init)")
    if out.dtype != hist.dtype:
        raise TypeError(f"solve: step_fn returned dtype {out.dtype}, expected init's dtype {hist.dtype}")
    return out


def _validate(init, num_steps, method, tol, rtol, max_iters, block_size, window, guess, on_failure):
    if not isinstance(init, torch.Tensor):
        raise TypeError(f"solve: init must be a torch.Tensor (the state s_0), got {type(init).__name__}")
    if not init.is_floating_point():
        raise TypeError(f"solve: init must have a floating dtype, got {init.dtype}")
    if not _all_finite(init):
        raise ValueError("solve: init contains non-finite values (inf/NaN); the initial state must be finite")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"solve: num_steps must be a non-negative int, got {num_steps!r}")
    if method not in METHODS:
        raise ValueError(f"solve: method must be one of {METHODS}, got {method!r}")
    for name, value in (("tol", tol), ("rtol", rtol)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise ValueError(f"solve: {name} must be a finite number >= 0, got {value!r}")
    if max_iters is not None and (isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1):
        raise ValueError(f"solve: max_iters must be None or an int >= 1, got {max_iters!r}")
    for name, value in (("block_size", block_size), ("window", window)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"solve: {name} must be an int >= 1, got {value!r}")
    if on_failure not in ("sequential", "raise"):
        raise ValueError(f"solve: on_failure must be 'sequential' or 'raise', got {on_failure!r}")
    if guess is not None:
        if not isinstance(guess, torch.Tensor):
            raise TypeError(f"solve: guess must be None or a torch.Tensor, got {type(guess).__name__}")
        expected = (num_steps,) + tuple(init.shape)
        if tuple(guess.shape) != expected:
            raise ValueError(f"solve: guess must have shape (num_steps, *init.shape) = {expected}, "
                             f"got {tuple(guess.shape)}")
        if not _all_finite(guess):
            raise ValueError("solve: guess contains non-finite values (inf/NaN)")


# A residual this many times its best value so far counts as divergence: the one constant of every Jacobi loop
# here (``solve``'s ``divergence_factor`` default and ``jacobi.rnn``'s kernel solves).
DIVERGENCE_FACTOR = 1e8


@dataclasses.dataclass
class Sweep:
    """One parallel iteration, as an engine reports it to :func:`iterate`."""

    residual: float  # max over the rows it evaluated of |s^{k+1} − s^k| (inf: non-finite, see SolveInfo)
    prefix: int  # the frozen pointer after it: rows 1..prefix are exact
    evaluations: int  # rows evaluated
    steps: int = 1  # dependent steps it took (hybrid: its inner Gauss–Seidel steps)


class Engine(Protocol):
    """What :func:`iterate` drives: the general ``step_fn`` solver (:class:`_StepEngine`) and the fused RNN
    kernels (``symkernels.jacobi.ops``) are both engines, so they share one loop, one set of stopping and
    divergence rules and one set of messages."""

    def sweeps(self, p: int, m: int) -> Iterable[Sweep]:
        """Up to ``m`` ≥ 1 iterations from the frozen pointer ``p`` (fewer if the engine stopped early), in order.
        An engine that keeps convergence on the device reports a whole block at once (one host read)."""

    def sequential(self, p: int) -> int:
        """Evaluate rows p+1..T one after another from the exact prefix (the exact finish); returns the rows
        evaluated."""


def iterate(engine: Engine, num_steps: int, info: SolveInfo, *, tol: float, stop_on_tol: bool, max_iters: int,
            on_failure: str, divergence_factor: float = DIVERGENCE_FACTOR, check_every: int = 1,
            start: int = 0) -> int:
    """The Jacobi loop: run ``engine`` until the frozen pointer reaches ``num_steps`` or (``stop_on_tol``) a
    residual ≤ ``tol``; on a non-finite residual, growth by ``divergence_factor`` over the best residual, or
    ``max_iters`` iterations without converging, finish sequentially from the exact prefix (``info.fallback``)
    or raise :class:`JacobiDivergenceError` (``on_failure="raise"``). Fills ``info``; returns the final pointer.
    ``check_every``: iterations asked of the engine per host-side look at its record; ``start``: rows already
    exact (``method="auto"``'s probes)."""
    T, p, best, sweeps = num_steps, start, math.inf, 0
    failure: str | None = None
    while p < T and failure is None and not info.converged:
        if sweeps >= max_iters:
            failure = f"not converged after max_iters={max_iters} iterations (exact prefix {p} of {T} rows)"
            break
        done = sweeps
        for sweep in engine.sweeps(p, min(check_every, max_iters - sweeps)):
            sweeps += 1
            resid, p = sweep.residual, sweep.prefix
            info.iterations += sweep.steps
            info.evaluations += sweep.evaluations
            info.residuals.append(resid)
            info.prefix.append(p)
            if stop_on_tol and resid <= tol:
                info.converged = True
                break
            if p >= T:
                break
            # Divergence checks on the part still driven by the guess.
            if not math.isfinite(resid):
                failure = (f"non-finite values in the unconverged rows at iteration {sweeps} "
                           f"(exact prefix {p} of {T})")
                break
            if resid > divergence_factor * best and best > 0:
                failure = (f"residual grew from {best:.3e} to {resid:.3e} by iteration {sweeps} "
                           f"(exact prefix {p} of {T})")
                break
            best = min(best, resid)
        if sweeps == done:
            raise RuntimeError(f"solve({info.method}): the engine ran no iteration at prefix {p} of {T}")
    if failure is not None:
        if on_failure == "raise":
            raise JacobiDivergenceError(f"solve({info.method}): {failure}")
        info.fallback = failure
        finish_sequential(engine, T, p, info)
        info.exact = True
        return T
    if p >= T:
        info.converged = True
    return p


def finish_sequential(engine: Engine, num_steps: int, p: int, info: SolveInfo, *, whole: bool = False) -> None:
    """Rows p+1..T by the engine's sequential sweep, recorded in ``info``. ``whole``: the sweep is the solve
    (method "gauss_seidel", p = 0): one record, residual 0, converged and exact."""
    info.evaluations += engine.sequential(p)
    info.iterations += num_steps - p
    if whole:
        info.residuals.append(0.0)
        info.converged = info.exact = True
    info.prefix.append(num_steps)


# Jacobi iterations that ``method="auto"`` plans for before it has seen any. A contraction reaches 1e-6 in
# float32 in 12 (gain 0.3) to 51 (gain 0.9) iterations on the design note's toy RNN; exact solves of nets with
# skip connections take few more (MADE on digits: 12 of 64), of chaotic or non-contracting chains up to T —
# which the cap at the break-even count bounds: at most one more sequential sweep.
EXPECTED_ITERATIONS = 32


@dataclasses.dataclass(frozen=True)
class CostModel:
    """The time model behind ``method="auto"`` (seconds, or any one unit).

    A sequential step costs ``seq_fixed + seq_per_unit·w`` and a Jacobi iteration over n rows
    ``jac_fixed + jac_per_unit·n·w``, where w is the work of one row (``width``: e.g. B·H·G multiply-adds for
    an RNN timestep, 1 for a generic step). So T sequential steps cost ``sequential(T)``, and K Jacobi
    iterations at most ``jacobi(T, K)``: the frozen prefix advances by at least one row per iteration, so
    iteration k evaluates at most T − k rows.
    """

    seq_fixed: float
    seq_per_unit: float
    jac_fixed: float
    jac_per_unit: float

    def sequential(self, rows: int, width: float = 1.0) -> float:
        return rows * (self.seq_fixed + self.seq_per_unit * width)

    def jacobi(self, rows: int, iters: int, width: float = 1.0) -> float:
        iters = min(iters, rows)
        return iters * self.jac_fixed + self.jac_per_unit * width * iters * (rows - (iters - 1) / 2)

    def break_even(self, rows: int, width: float = 1.0) -> int:
        """The most Jacobi iterations that cost no more than the sequential sweep (0: none)."""
        budget = self.sequential(rows, width)
        lo, hi = 0, rows  # jacobi() grows with iters: bisect for the last count within budget
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.jacobi(rows, mid, width) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo


def choose_method(cost: CostModel, rows: int, expected_iters: int, width: float = 1.0) -> tuple[str, int]:
    """``method="auto"``'s rule: ``("jacobi", cap)`` when ``expected_iters`` Jacobi iterations are predicted to
    cost no more than the sequential sweep (at most the break-even count), with ``cap`` the break-even iteration count (a Jacobi solve still
    unconverged there is finished by the sequential sweep from its exact prefix, so a wrong guess costs at most
    one more sweep); else ``("gauss_seidel", 0)``."""
    cap = cost.break_even(rows, width)
    if rows > 0 and 1 <= expected_iters <= cap:
        return "jacobi", cap
    return "gauss_seidel", 0


def expected_iterations(num_steps: int) -> int:
    """The Jacobi iterations ``method="auto"`` plans for: EXPECTED_ITERATIONS, at most T."""
    return min(num_steps, EXPECTED_ITERATIONS)


class _StepEngine:
    """The general solver's engine: one ``step_fn`` call per Jacobi/window iteration (hybrid: one per inner
    step), the convergence test fused into a few whole-iterate ops on preallocated buffers and one host read of
    (residual, first changed row) per iteration — the pointer decides which rows the next call evaluates."""

    def __init__(self, step_fn: StepFn, hist: torch.Tensor, method: str, tol: float, rtol: float,
                 block_size: int, window: int, fused_step: FusedStepFn | None = None):
        self.step_fn, self.hist, self.method = step_fn, hist, method
        self.tol, self.rtol, self.block_size, self.window = tol, rtol, block_size, window
        self.exact_mode = tol == 0 and rtol == 0
        T = hist.shape[0] - 1
        self.T = T
        row = math.prod(hist.shape[1:])
        # Per-row residuals are needed only by the tolerance window; everything else takes the fused test.
        self.fused = row > 0 and rtol == 0 and not (method == "window" and not self.exact_mode)
        self.fused_step = fused_step if self.fused else None
        # The fused test is one C++ op on CPU (torch.ops.symkernels.jacobi_commit), a few whole-iterate tensor
        # ops on preallocated buffers elsewhere.
        self.native = (self.fused and hist.device.type == "cpu" and hist.dtype in _COMMIT_DTYPES
                       and _backend.has_dispatcher_op("jacobi_commit"))
        if self.fused and not self.native:
            self.int_dtype = _bits(hist[:1]).dtype
            # Bitwise "differs" of the evaluated elements, then a True sentinel: the first True of the flat
            # buffer, divided by the row size, is the first changed row (or n when none changed).
            self.ne_buf = torch.empty(T * row + 1, dtype=torch.bool, device=hist.device)
            self.delta_buf = torch.empty(T * row, dtype=hist.dtype, device=hist.device)

    @functools.cached_property
    def positions(self) -> torch.Tensor:
        """1..T, whose slices are the ``t`` of ``step_fn`` (made on first use: a ``fused_step`` solve needs none)."""
        return torch.arange(1, self.T + 1, device=self.hist.device)

    def sweeps(self, p: int, m: int) -> tuple[Sweep]:
        return (self._hybrid(p) if self.method == "hybrid" else self._parallel(p),)

    def sequential(self, p: int) -> int:
        hist = self.hist
        for i in range(p + 1, self.T + 1):
            if self.fused_step is not None:
                self.fused_step(hist, i - 1, i)
                continue
            t = self.positions[i - 1:i]
            hist[i] = _check_step_output(self.step_fn(hist, t), t, hist)[0]
        return self.T - p

    def _commit(self, new: torch.Tensor, old: torch.Tensor) -> tuple[int, float]:
        """Write ``new`` into ``old`` and return (index of the first row that changed bitwise, or len(new);
        max |new − old|, inf where a value that moved is non-finite): the fused convergence test."""
        if self.native and not (torch.is_grad_enabled() and (new.requires_grad or old.requires_grad)):
            resid, first = torch.ops.symkernels.jacobi_commit(old, new).tolist()
            return int(first), resid
        numel, shape = new.numel(), new.shape
        ne = self.ne_buf[:numel + 1]
        torch.ne(new.view(self.int_dtype), old.view(self.int_dtype), out=ne[:numel].view(shape))
        ne[numel] = True
        delta = self.delta_buf[:numel].view(shape)
        # One host read for both (a GPU drains its queue once per iteration, not twice).
        resid, first_flat = torch.stack([torch.sub(new, old, out=delta).abs_().amax().double(),
                                         torch.argmax(ne.view(torch.uint8)).double()]).tolist()
        first = int(first_flat) // (numel // shape[0])
        if not math.isfinite(resid):  # inf/NaN somewhere: equal non-finite values have not moved (rare path)
            resid = float(_row_residual(new, old, 0.0).max())
        old.copy_(new)
        return first, resid

    def _parallel(self, p: int, stop: int | None = None) -> Sweep:
        hist, T = self.hist, self.T
        if stop is None:
            stop = T if self.method == "jacobi" else min(T, p + self.window)
        resid_rows = None
        if self.fused_step is not None:  # evaluation and commit in one call (one host read)
            resid, first_row = self.fused_step(hist, p, stop).tolist()
            first = int(first_row)
        else:
            t = self.positions[p:stop]
            new = _check_step_output(self.step_fn(hist, t), t, hist)
            old = hist[p + 1:stop + 1]
            if self.fused:
                first, resid = self._commit(new, old)
            else:
                first = _first_true(_row_changed(new, old))
                resid_rows = _row_residual(new, old, self.rtol)
                resid = float(resid_rows.max())
                old.copy_(new)
        # Rows p+1..q unchanged-or-first-changed ⇒ exact through row q+1; only evaluated rows can be certified
        # (a window whose rows all stood still certifies up to its end).
        new_p = min(stop, max(p + 1, p + first + 1))
        if resid_rows is not None and self.method == "window" and not self.exact_mode:
            # Sliding window (Song et al.'s GS-Jacobi): advance past rows that met the tolerance. Those rows
            # are tolerance-accurate, not exact; the solver reports exact=False in that case.
            new_p = max(new_p, p + _first_true(resid_rows > self.tol))
        return Sweep(resid, new_p, stop - p)

    def _hybrid(self, p: int) -> Sweep:
        hist, T, block = self.hist, self.T, self.block_size
        old = hist[p + 1:].clone()
        n_rows = T - p
        steps = min(block, n_rows)
        evaluations = 0
        for i in range(steps):
            # Inner step i: position i of every block, blocks re-aligned at the frozen pointer.
            t = self.positions[p + i::block]
            hist[t] = _check_step_output(self.step_fn(hist, t), t, hist)
            evaluations += t.numel()
        new = hist[p + 1:]
        if self.fused:
            first, resid = self._commit(new, old)  # (copies the swept rows into the snapshot: harmless)
        else:
            first = _first_true(_row_changed(new, old))
            resid = float(_row_residual(new, old, self.rtol).max())
        # The first block was swept Gauss–Seidel from an exact prefix, so it is exact whatever changed.
        return Sweep(resid, min(T, max(p + steps, p + first + 1)), evaluations, steps)


# Rows of method="auto"'s second probe call (the first evaluates one row): enough to see the per-row cost.
AUTO_PROBE_ROWS = 16


def _probe_costs(engine: _StepEngine, info: SolveInfo, num_steps: int) -> CostModel:
    """method="auto" without a cost model: time ``step_fn`` on row 1 alone, then on rows 2..1+w, and fit
    fixed + per-row cost. Both calls are real work: row 1 is exact after the first, row 2 after the second
    (a window iteration from an exact prefix), and both are recorded in ``info`` as iterations."""
    w = min(num_steps - 1, AUTO_PROBE_ROWS)
    times = []
    for p, stop in ((0, 1), (1, 1 + w))[:2 if w >= 1 else 1]:
        t0 = time.perf_counter()
        sweep = engine._parallel(p, stop)  # reads its result on the host: the time includes the device's
        times.append(time.perf_counter() - t0)
        info.iterations += 1
        info.evaluations += sweep.evaluations
        info.residuals.append(sweep.residual)
        info.prefix.append(sweep.prefix)
    per_row = max(0.0, (times[1] - times[0]) / (w - 1)) if w > 1 else 0.0
    fixed = max(0.0, times[0] - per_row)
    return CostModel(fixed, per_row, fixed, per_row)


def solve(step_fn: StepFn, init: torch.Tensor, num_steps: int, *, method: str = "jacobi", tol: float = 0.0,
          rtol: float = 0.0, max_iters: int | None = None, block_size: int = 32, window: int = 64,
          guess: torch.Tensor | None = None, on_failure: str = "sequential",
          divergence_factor: float = DIVERGENCE_FACTOR, cost_model: CostModel | None = None,
          fused_step: FusedStepFn | None = None) -> tuple[torch.Tensor, SolveInfo]:
    """Solve s_t = f_t(s_<t), t = 1..num_steps, by Jacobi-type parallel iteration.

    Args:
        step_fn: ``step_fn(hist, t) -> [len(t), *init.shape]`` (see the module docstring).
        init: s_0, any shape S, floating dtype, finite.
        num_steps: T ≥ 0.
        method: ``"jacobi"`` (all unfrozen rows per iteration), ``"gauss_seidel"`` (one row per call: the
            sequential loop), ``"hybrid"`` (blocks of ``block_size`` rows in parallel, Gauss–Seidel inside
            each block: ≤ ⌈T/B⌉ outer sweeps of B calls), ``"window"`` (Jacobi on the ``window`` rows after
            the converged prefix, which advances past rows whose update met the tolerance), ``"auto"``
            (``"jacobi"`` or ``"gauss_seidel"``, whichever :class:`CostModel` predicts faster: with ``cost_model``
            None, ``step_fn``'s cost is measured on its first two calls, row 1 alone and the next
            ``AUTO_PROBE_ROWS`` rows together, both real work; Jacobi is planned for EXPECTED_ITERATIONS
            iterations and capped at the break-even count, past which the
            sequential sweep finishes from the exact prefix; ``info.method`` names the choice, "auto:jacobi"
            or "auto:gauss_seidel").
        tol, rtol: stop when every unfrozen row moved by ≤ tol + rtol·|s| in the last iteration.
            ``tol=rtol=0`` asks for the exact fixed point (see "exact stop").
        max_iters: cap on parallel iterations (default: T, where Jacobi is exact anyway).
        guess: starting iterate ``[T, *S]`` (default: s_0 repeated).
        on_failure: ``"sequential"`` (finish exactly, report in ``info.fallback``) or ``"raise"``.
        divergence_factor: a residual this many times its best value so far counts as divergence.
        cost_model: ``method="auto"``'s calibration (unit width per row); None: measured (see ``method``).
        fused_step: ``step_fn`` and the commit in one call, for contiguous rows (see the module docstring).

    Returns:
        ``(states [T, *S], info: SolveInfo)``; states[i−1] is s_i.
    """
    _validate(init, num_steps, method, tol, rtol, max_iters, block_size, window, guess, on_failure)
    T = num_steps
    info = SolveInfo(method=method)
    if guess is None:  # s_0 repeated: one copy (what a sampler pays per call, so fewer ops count)
        hist = init.unsqueeze(0).expand((T + 1,) + tuple(init.shape)).clone(memory_format=torch.contiguous_format)
    else:
        hist = torch.empty((T + 1,) + tuple(init.shape), dtype=init.dtype, device=init.device)
        hist[0] = init
        hist[1:] = guess
    exact_mode = tol == 0 and rtol == 0
    if T == 0:
        info.converged = info.exact = True
        return hist[1:], info
    engine = _StepEngine(step_fn, hist, method, tol, rtol, block_size, window, fused_step)
    start = 0
    if method == "auto":
        if cost_model is None:
            cost_model = _probe_costs(engine, info, T)
            start = info.prefix[-1]
        chosen, auto_cap = choose_method(cost_model, T - start, expected_iterations(T - start))
        method = engine.method = chosen
        info.method = f"auto:{chosen}"
        if chosen == "gauss_seidel":
            finish_sequential(engine, T, start, info, whole=start == 0)
            info.converged = info.exact = True
            return hist[1:], info
        max_iters = auto_cap if max_iters is None else min(max_iters, auto_cap)
    if method == "gauss_seidel":
        finish_sequential(engine, T, 0, info, whole=True)
        return hist[1:], info
    cap = max_iters if max_iters is not None else (T if method != "hybrid" else -(-T // block_size))
    p = iterate(engine, T, info, tol=tol, stop_on_tol=not exact_mode and method != "window", max_iters=cap,
                on_failure=on_failure, divergence_factor=divergence_factor, start=start)
    if info.fallback is None:
        info.exact = exact_mode or (p >= T and method != "window")
        if method == "window" and not exact_mode:
            info.exact = False
    return hist[1:], info


def sequential(step_fn: StepFn, init: torch.Tensor, num_steps: int) -> torch.Tensor:
    """The ordinary forward loop: s_t = step_fn(hist, [t]) for t = 1..T. The truth the solver is tested on."""
    states, _ = solve(step_fn, init, num_steps, method="gauss_seidel")
    return states
