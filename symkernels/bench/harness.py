"""The benchmark harness every pillar uses.

A pillar module (``symkernels/bench/<pillar>.py``) registers one sweep::

    from symkernels.bench.harness import Case, sweep

    @sweep("hadamard")
    def cases(device: torch.device, quick: bool) -> Iterable[Case]:
        x = torch.randn(rows, n, device=device)
        yield Case(op="hadamard_transform", shape=f"{rows}x{n}", dtype="float32",
                   impls={"symkernels": lambda: hadamard_transform(x),
                          "torch dense matmul": lambda: x @ H.T,
                          "fast-hadamard-transform": "not installed (GPU-only package)"},
                   ours="symkernels", bytes_moved=2 * x.nbytes)

Each implementation is timed side by side in the same process (warm-up, then the median and the
20th/80th percentiles over repeats; CUDA events on GPU), a peer given as a string is reported as
missing with that reason, and the table gives, for ``ours``, the speed-up over every peer, plus GB/s and
% of the same-run copy bandwidth when ``bytes_moved`` is known, or GFLOP/s when ``flops`` is.
Cases are generated lazily so a sweep never holds every input in memory at once.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Iterable, Union

import torch

Impl = Union[Callable[[], object], str]  # a zero-argument callable, or the reason a peer is missing


@dataclasses.dataclass
class Case:
    op: str
    shape: str
    dtype: str
    impls: dict[str, Impl]
    ours: str
    bytes_moved: int = 0  # bytes one call of `ours` must read + write at least (for GB/s, % of copy)
    flops: int = 0  # useful floating-point (or integer) operations of one call
    extra: dict[str, object] = dataclasses.field(default_factory=dict)  # more columns, e.g. iterations
    check: Callable[[], None] | None = None  # optional correctness check run once before timing


@dataclasses.dataclass
class Timing:
    median_s: float
    q20_s: float
    q80_s: float
    min_s: float


SWEEPS: dict[str, Callable[[torch.device, bool], Iterable[Case]]] = {}


def sweep(pillar: str):
    """Register a pillar's case generator under ``pillar`` (the name given on the command line)."""

    def decorate(fn):
        SWEEPS[pillar] = fn
        return fn

    return decorate


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_callable(fn: Callable[[], object], device: torch.device, *, min_time_s: float = 0.2,
                  max_reps: int = 200, warmup: int = 2) -> Timing:
    """Median wall time of ``fn`` (CUDA events on GPU), after warm-up, over ≥ 3 repeats."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples: list[float] = []
    start_all = time.perf_counter()
    while len(samples) < 3 or (time.perf_counter() - start_all < min_time_s and len(samples) < max_reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    samples.sort()
    q = lambda p: samples[min(len(samples) - 1, int(p * len(samples)))]  # noqa: E731
    return Timing(statistics.median(samples), q(0.2), q(0.8), samples[0])


def copy_bandwidth(device: torch.device, nbytes: int = 256 << 20) -> tuple[float, float]:
    """Bytes/s (read + write counted) of two same-run copies: the practical memory-bandwidth limits.

    Returns ``(copy, clone)``: ``dst.copy_(src)`` into memory allocated once — the physical limit — and
    ``src.clone()``, which like every out-of-place op also pays for fresh output memory (on CPU the page
    faults of a new mapping, unless PyTorch's THP_MEM_ALLOC_ENABLE=1 backs it with huge pages).
    A limit is the best rate the machine showed, so each is the fastest of its repeats (a median would
    let one busy moment of a shared machine lower the bar and inflate every "% of limit").
    """
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy = time_callable(lambda: dst.copy_(src), device, min_time_s=0.5, warmup=3)
    clone = time_callable(lambda: src.clone(), device, min_time_s=0.5, warmup=3)
    return 2 * nbytes / copy.min_s, 2 * nbytes / clone.min_s


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    import platform

    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu-{model.replace(' ', '-').replace('(R)', '').replace('(TM)', '')}-{torch.get_num_threads()}threads"
