"""Jacobi pillar benchmarks: RNN evaluation to tolerance vs sequential peers, MADE sampling vs sequential.

Iteration counts are device-independent and reported beside wall-clock ratios (``Case.extra``):
``iters`` = Jacobi iterations to tol 1e-6 (float32), ``T/iters`` = the iteration-count ratio over a
sequential loop's T dependent steps. Peers: a Python loop of the same cell (torch ops per step), our CPU
kernel's own sequential sweep (a fused sequential kernel), ``torch.nn.RNN``/``GRU`` (oneDNN on CPU), and the
reference DEER Newton method (pure torch, iterations in ``newton_iters``).

Module rows (``rnn_module_*``): ``symkernels.jacobi.RNN``/``GRU``/``LSTM`` (torch.nn's default initialisation,
stacked layers) against ``torch.nn.RNN``/``GRU``/``LSTM`` with the same weights and our module's own sequential
sweep (``method="sequential"``); ``iters`` sums the Jacobi iterations over the layers, ``T/iters`` is
layers·T over that sum.

MADE rows (``made_sample``): Jacobi sampling to the exact fixed point against the sequential sampler (D passes),
identical samples; ``bookkeeping`` is the share of a Jacobi call spent outside the network's forward (issue
#14's "solver bookkeeping", measured in place: ``_bookkeeping_share``).
"""
from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import Iterable

import torch

from symkernels import _backend
from symkernels.bench.harness import Case, sweep
from symkernels import jacobi
from symkernels.jacobi import MADE, made_sample, reference, rnn, rnn_sequential

TOL = 1e-6
# Work caps that keep the full sweep (T up to 16384, H up to 256, gain 1.2) to minutes: ~1 s per solve on CPU.
FMA_BUDGET_CPU = 1e10
FMA_BUDGET_GPU = 1e13
# The reference Newton's scan costs T·B·H³ multiply-adds per iteration (the chunk transfer products) on top
# of materialising [T, B, H, H] Jacobians: benched only where that stays below this.
NEWTON_FMA_BUDGET = 6e8


def _rnn_inputs(T, B, H, gain, cell, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    G = 3 * H if cell == "gru" else H
    # Orthogonal-ish recurrent matrix scaled to spectral radius ≈ gain (the "gain" of the design note).
    w_hh = gain * torch.randn(G, H, generator=g) / math.sqrt(H)
    x = torch.randn(T, B, H, generator=g)
    w_ih = torch.randn(G, H, generator=g) / math.sqrt(H)
    b = 0.1 * torch.randn(*((2, G) if cell == "gru" else (H,)), generator=g)
    h0 = torch.zeros(B, H)
    return tuple(t.to(device) for t in (x, h0, w_ih, w_hh, b))


def _torch_module(cell, args):
    x, h0, w_ih, w_hh, b = args
    H = h0.shape[1]
    mod = (torch.nn.GRU(x.shape[2], H) if cell == "gru" else torch.nn.RNN(x.shape[2], H)).to(x.device)
    with torch.no_grad():
        mod.weight_ih_l0.copy_(w_ih)
        mod.weight_hh_l0.copy_(w_hh)
        mod.bias_ih_l0.copy_(b[0] if cell == "gru" else b)
        mod.bias_hh_l0.copy_(b[1] if cell == "gru" else torch.zeros_like(b))
    h0u = h0.unsqueeze(0)

    def run():
        with torch.no_grad():
            return mod(x, h0u)[0]

    return run


def rnn_cases(device, quick) -> Iterable[Case]:
    if quick:
        grid = [(256, 32, 1, 0.5, "elman"), (1024, 32, 1, 0.9, "elman"), (256, 32, 8, 0.9, "gru")]
    else:
        grid = [(T, H, B, gain, "elman") for T, H, B, gain in
                itertools.product((256, 1024, 4096, 16384), (32, 64, 256), (1, 8), (0.5, 0.9, 1.2))]
        grid += [(T, 64, 8, 0.9, "gru") for T in (256, 1024, 4096)]
    kernel_backend = "cpu" if device.type == "cpu" else "cuda"
    have_kernel = bool(_backend.backend_status(kernel_backend))
    # Bounded time: a Jacobi solve may spend at most this many recurrent multiply-adds (T·B·H·G per
    # iteration); a case that needs more iterations is reported with its lower bound and not timed.
    fma_budget = FMA_BUDGET_CPU if device.type == "cpu" else FMA_BUDGET_GPU
    for T, H, B, gain, cell in grid:
        args = _rnn_inputs(T, B, H, gain, cell, device)
        G = 3 * H if cell == "gru" else H
        cap = min(T, max(4, int(fma_budget // (T * B * H * G))))
        impls = {}
        extra = {}
        if have_kernel:
            with torch.no_grad():
                h, info = rnn(*args, cell=cell, tol=TOL, backend=kernel_backend, return_info=True, check_every=64,
                              max_iters=cap)
                truth = rnn_sequential(*args, "tanh", cell)
            err = (h - truth).abs().max().item()
            over_budget = info.fallback is not None and "max_iters" in info.fallback and cap < T
            extra = {"iters": f">{cap}" if over_budget else info.iterations,
                     "T/iters": f"<{T / cap:.1f}" if over_budget else round(T / max(1, info.iterations), 1),
                     "max_err": f"{err:.1e}", "fallback": bool(info.fallback) and not over_budget}
            ours = "jacobi (tol 1e-6)"
            if over_budget:
                impls[ours] = (f"not timed: needs more than {cap} iterations, over the bench's budget of "
                               f"{fma_budget:.0e} multiply-adds per solve")
            else:
                impls[ours] = lambda a=args, c=cell: rnn(*a, cell=c, tol=TOL, backend=kernel_backend,
                                                        check_every=64)
            impls["our kernel, sequential sweep"] = lambda a=args, c=cell: rnn(*a, cell=c, backend=kernel_backend,
                                                                              method="gauss_seidel")
            # method="auto": Jacobi or the sweep by the calibrated cost model (its pick in extra["auto"]).
            with torch.no_grad():
                _, auto_info = rnn(*args, cell=cell, tol=TOL, backend=kernel_backend, method="auto",
                                   return_info=True, check_every=64)
            extra["auto"] = auto_info.method.split(":")[1]
            impls["auto (tol 1e-6)"] = lambda a=args, c=cell: rnn(*a, cell=c, tol=TOL, backend=kernel_backend,
                                                                 method="auto", check_every=64)
        else:
            ours = "jacobi reference (tol 1e-6)"
            impls[ours] = lambda a=args, c=cell: rnn(*a, cell=c, tol=TOL, backend="reference")
        if T <= 4096 or not quick:
            impls["python loop (same cell)"] = lambda a=args, c=cell: rnn_sequential(*a, "tanh", c)
        impls[f"torch.nn.{'GRU' if cell == 'gru' else 'RNN'}"] = _torch_module(cell, args)
        if (T <= 256 if quick else T * B * H ** 3 <= NEWTON_FMA_BUDGET and gain <= 0.9):
            # Reference DEER Newton (pure torch, chunked O(T·B·H³) scan per iteration): a peer for iteration counts.
            with torch.no_grad():
                _, n_info = rnn(*args, cell=cell, method="newton", tol=TOL, return_info=True)
            extra["newton_iters"] = n_info.iterations if not n_info.fallback else f"fallback ({n_info.iterations})"
            impls["newton / DEER (reference)"] = lambda a=args, c=cell: rnn(*a, cell=c, method="newton", tol=TOL)
        else:
            impls["newton / DEER (reference)"] = "skipped: O(T·B·H³) scan per iteration over the bench budget"
        iters = extra.get("iters", 1)
        # An untimed over-budget case reports iterations as ">cap"; its flop count is then a lower bound.
        # the least work: one sequential pass of the recurrent mat-vecs (Jacobi's extra sweeps are its overhead,
        # which the roofline share then shows)
        yield Case(op=f"rnn_{cell}", shape=f"T={T} B={B} H={H} gain={gain}", dtype="float32", impls=impls, ours=ours,
                   flops=2 * T * B * H * G, extra=extra, context=("our kernel, sequential sweep", "auto (tol 1e-6)"))


_MODULES = {"elman": ("RNN", jacobi.RNN), "gru": ("GRU", jacobi.GRU), "lstm": ("LSTM", jacobi.LSTM)}


def module_cases(device, quick) -> Iterable[Case]:
    """Stacked torch.nn-compatible modules, Jacobi to tol 1e-6 vs torch.nn and our sequential sweep."""
    if quick:
        grid = [(256, 64, 1, 1, "lstm"), (256, 64, 8, 2, "gru"), (1024, 64, 1, 1, "lstm")]
    else:
        grid = [(T, H, B, L, cell) for cell in ("lstm", "gru", "elman") for T, H, B, L in
                itertools.product((256, 1024, 4096, 16384), (64, 256), (1, 8), (1, 2))]
    fma_budget = FMA_BUDGET_CPU if device.type == "cpu" else FMA_BUDGET_GPU
    for T, H, B, layers, cell in grid:
        torch_name, cls = _MODULES[cell]
        G = reference.gates(cell) * H
        cap = min(T, max(4, int(fma_budget // (layers * T * B * H * G))))
        peer = getattr(torch.nn, torch_name)(H, H, num_layers=layers).to(device)
        ours = cls.from_torch(peer, method="jacobi", tol=TOL, max_iters=cap)
        sweep_mod = cls.from_torch(peer, method="sequential")
        x = torch.randn(T, B, H, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            out = ours(x)[0]
            truth = peer(x)[0]
        infos = ours.last_solve_info
        capped = any(i.fallback is not None and "max_iters" in i.fallback for i in infos) and cap < T
        iters = sum(i.iterations for i in infos)
        extra = {"layers": layers, "iters": f">{cap}" if capped else iters,
                 "T/iters": f"<{T / cap:.1f}" if capped else round(layers * T / max(1, iters), 1),
                 "max_err": f"{(out - truth).abs().max().item():.1e}",
                 "fallback": any(i.fallback is not None for i in infos) and not capped}

        def timed(mod):
            def run():
                with torch.no_grad():
                    return mod(x)
            return run

        impls = {"jacobi (tol 1e-6)": (f"not timed: needs more than {cap} iterations, over the bench's budget of "
                                       f"{fma_budget:.0e} multiply-adds per solve") if capped else timed(ours),
                 "our module, sequential sweep": timed(sweep_mod),
                 f"torch.nn.{torch_name}": timed(peer)}
        yield Case(op=f"rnn_module_{cell}", shape=f"T={T} B={B} H={H} layers={layers}", dtype="float32",
                   impls=impls, ours="jacobi (tol 1e-6)", flops=2 * T * B * H * G * layers, extra=extra,
                   context=("our module, sequential sweep",))


# The trained digits MADE's weights, kept between runs (build/ is not committed): training is most of the case.
_DIGITS_CACHE = Path(__file__).resolve().parents[2] / "build" / "bench-cache" / "made_digits_64x256x256_800.pt"


def _digits_made(device):
    """The worked example's model (symkernels.jacobi.examples): MADE 64-256-256-64 trained on binarized digits,
    800 Adam steps (deterministic; cached in build/bench-cache); None without scikit-learn."""
    model = MADE(64, (256, 256), seed=0)
    if _DIGITS_CACHE.exists():
        model.load_state_dict(torch.load(_DIGITS_CACHE))
        return model.eval().to(device)
    try:
        from symkernels.jacobi import examples
        data = examples.load_binarized_digits()
    except ImportError:
        return None
    torch.manual_seed(0)
    examples.train(model, data, 800, seed=0)
    try:
        _DIGITS_CACHE.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), _DIGITS_CACHE)
    except OSError:  # a read-only checkout: train again next time
        pass
    return model.eval().to(device)


def _bookkeeping_share(model: MADE, noise: torch.Tensor, rounds: int = 5) -> float:
    """The share of a Jacobi ``made_sample`` call spent outside the network's forward (the solver's
    bookkeeping: sampling, convergence test, write-back, pointer, set-up), measured in place: the forward is
    timed inside the sampling call, where it runs as it does there (the caches as the rest of the iteration
    leaves them), and the fastest of ``rounds`` calls is kept. CPU time on CPU (immune to other processes'
    load with one thread), wall time with a synchronize on a GPU."""
    cpu = noise.device.type == "cpu"
    clock = time.process_time if cpu and torch.get_num_threads() == 1 else time.perf_counter
    sync = (lambda: None) if cpu else torch.cuda.synchronize
    inside = [0.0]
    forward = model.forward

    def timed_forward(x):
        sync()
        t0 = clock()
        y = forward(x)
        sync()
        inside[0] += clock() - t0
        return y

    best = (math.inf, 0.0)
    model.forward = timed_forward
    try:
        for _ in range(rounds):
            inside[0] = 0.0
            sync()
            t0 = clock()
            made_sample(model, noise)
            sync()
            best = min(best, (clock() - t0, inside[0]))
    finally:
        del model.forward  # the class's forward again
    total, in_forward = best
    return 1.0 - in_forward / total


def made_cases(device, quick) -> Iterable[Case]:
    # An untrained MADE barely conditions on the past (near-constant outputs converge in ~2 passes); scaling
    # the random weights ×3 gives conditionals that depend on the past as a trained model's do. The first case
    # is the trained digits model of `python -m symkernels.jacobi.examples` (issue #14's measurement).
    grid = [("digits", 64, 256, 200)] + ([(None, 64, 256, 100)] if quick else
                                         [(None, 64, 256, 100), (None, 64, 256, 1), (None, 784, 512, 100)])
    for trained, D, hidden, B in grid:
        if trained:
            model = _digits_made(device)
            if model is None:
                continue
        else:
            model = MADE(D, (hidden, hidden), seed=0).to(device)
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(3.0)
        noise = torch.rand(B, D, generator=torch.Generator().manual_seed(1)).to(device)
        seq = made_sample(model, noise, method="gauss_seidel")
        jac, info = made_sample(model, noise, return_info=True)
        _, auto_info = made_sample(model, noise, method="auto", return_info=True)
        assert torch.equal(seq, jac)
        yield Case(op="made_sample", shape=f"D={D} hidden={hidden}x2 B={B}{' digits' if trained else ''}",
                   dtype="float32",
                   impls={"jacobi (exact)": lambda m=model, n=noise: made_sample(m, n),
                          "sequential (D passes)": lambda m=model, n=noise: made_sample(m, n, method="gauss_seidel"),
                          "auto (exact)": lambda m=model, n=noise: made_sample(m, n, method="auto")},
                   ours="jacobi (exact)", context=("auto (exact)",),
                   # Least work: one forward of the masked network over the batch (every output computed
                   # once); Jacobi pays it once per iteration, the sequential sampler D times.
                   flops=2 * B * (D * hidden + hidden * hidden + hidden * D),
                   extra={"iters": info.iterations, "T/iters": round(D / info.iterations, 1), "identical": True,
                          "auto": auto_info.method.split(":")[1],
                          "bookkeeping": f"{100 * _bookkeeping_share(model, noise):.1f}%"})


@sweep("jacobi")
def cases(device: torch.device, quick: bool) -> Iterable[Case]:
    yield from rnn_cases(device, quick)
    yield from module_cases(device, quick)
    yield from made_cases(device, quick)
