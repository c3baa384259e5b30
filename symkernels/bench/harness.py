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

Each implementation is timed side by side in the same process, interleaved: a few rounds, each timing
every implementation in turn (warm-up, then the median and the 20th/80th percentiles over repeats; CUDA
events on GPU), and each keeps its best round, so a busy moment of a shared machine penalises nobody
alone. A peer given as a string is reported as missing with that reason.

Every case states the least work one call of ``ours`` must do: ``bytes_moved`` (the bytes it must read
and write at least) and ``flops`` (the useful operations, counted against the ``compute`` ceiling:
``"fp32"``/``"fp64"``/``"bf16"``/``"fp16"`` GEMM FLOP/s, ``"int8"`` GEMM OPS, or ``"fp32add"``/``"fp64add"``,
the add rate, for work of adds only). ``Ceilings`` measures
those limits on the same machine in the same run (plus ``"int8dot"``, the int8 dot-product instruction peak
of our own micro-kernel, which a case may name in ``also_vs`` for an extra "% of" column of the CSV), and the roofline
share of a timing is

    share = max(bytes_moved / copy bandwidth, flops / GEMM rate) / time,

the fraction of the machine's limit for that work: 100% is the fastest the work could possibly run.
Cases are generated lazily so a sweep never holds every input in memory at once.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Iterable, Union

import torch

from symkernels import _backend

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
    compute: str = "fp32"  # the GEMM ceiling `flops` count against (a key of COMPUTE_CEILINGS, ADD_CEILINGS or INSTRUCTION_CEILINGS)
    # Implementations timed beside ours for context, not as competitors (the primal alone, another variant
    # of ours): the table's "best peer" leaves them out; the CSV has their ratios like any other.
    context: tuple[str, ...] = ()
    # More compute ceilings to report `flops` against, each as its own "%<kind>" CSV column (e.g. ("int8dot", "int8"):
    # % of the int8 instruction peak and % of the torch._int_mm rate), beside the roofline of `compute`; the
    # table's "% of limit" is the share of the fastest of them.
    also_vs: tuple[str, ...] = ()
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


def time_side_by_side(impls: dict[str, Callable[[], object]], device: torch.device, *, min_time_s: float = 0.2,
                      rounds: int = 3) -> dict[str, Timing | str]:
    """Time every implementation in ``rounds`` interleaved rounds; each keeps its best round (lowest median).

    On a shared machine the load changes within seconds: timing ours fully and then the peer would hand
    one of them the quiet moment. An implementation that raises is reported as ``"failed: …"`` and
    left out of the later rounds."""
    best: dict[str, Timing | str] = {}
    for round_index in range(rounds):
        for name, fn in impls.items():
            if isinstance(best.get(name), str):
                continue
            try:
                t = time_callable(fn, device, min_time_s=min_time_s / rounds, warmup=2 if round_index == 0 else 1)
            except Exception as exc:  # a peer that breaks is reported, not fatal
                best[name] = f"failed: {type(exc).__name__}: {str(exc)[:80]}"
                continue
            previous = best.get(name)
            if previous is None or t.median_s < previous.median_s:
                best[name] = dataclasses.replace(t, min_s=min(t.min_s, previous.min_s) if previous else t.min_s)
            else:
                best[name] = dataclasses.replace(previous, min_s=min(t.min_s, previous.min_s))
    return best


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


# The GEMM each compute ceiling is measured with: (operand dtype, square size on CPU, on CUDA). Large
# enough to reach the library's steady rate, small enough to time in well under a second per repeat.
COMPUTE_CEILINGS = {
    "fp32": (torch.float32, 2048, 8192),
    "fp64": (torch.float64, 1024, 4096),
    "bf16": (torch.bfloat16, 2048, 8192),
    "fp16": (torch.float16, 2048, 8192),
    "int8": (torch.int8, 2048, 8192),  # torch._int_mm: int8 × int8 → int32, what a W4A4/W8A8 GEMM beats
}
# The add rate of a GEMM's arithmetic: butterflies (FWHT) do only adds and subtracts, one FLOP per lane and
# issue slot, where a GEMM's FMA counts two in the same slot (x86 cores issue vector adds at their FMA rate:
# two per cycle on Zen 3 and Sapphire Rapids), so their compute limit is half the GEMM's FLOP/s. Derived from
# the GEMM measurement of the same run: (the GEMM kind, the factor).
ADD_CEILINGS = {"fp32add": ("fp32", 0.5), "fp64add": ("fp64", 0.5)}
# Ceilings that are an instruction's peak rather than a library GEMM: measured by our own micro-kernels.
INSTRUCTION_CEILINGS = {
    "int8dot": "int8 dot-product instruction peak (symkernels._C.int8_dot_peak: vpdpbusd with VNNI, else AVX2's "
               "vpmaddubsw sequence; 16 independent chains per thread, no memory)",
}


def int8_dot_peak(threads: int | None = None, isa: str = "auto", seconds: float = 0.3) -> tuple[float, str]:
    """(int8 ops/s, what was measured) of the int8 dot-product instruction on ``threads`` threads (default
    torch's count): the compute ceiling of an int8 GEMM on a CPU without AMX (vpdpbusd with VNNI, else the
    AVX2 sequence int4_matmul's AVX2 kernel runs). The rate is the better of
    wall time and the threads' CPU time (on a shared machine the wall rate drops whenever another process
    takes a core: the ceiling must not). ops/s is 0 when the CPU or the build has neither; the string says
    why."""
    from symkernels import _C

    threads = torch.get_num_threads() if threads is None else threads
    peak = _C.int8_dot_peak(isa=isa, threads=threads, seconds=seconds, repeats=5)
    return max(float(peak["ops_per_s"]), float(peak.get("ops_per_cpu_s", 0.0))), f"{peak['isa']} × {peak['threads']} threads"


class Ceilings:
    """The machine's limits measured in this run: copy bandwidth, and a GEMM rate per ``Case.compute`` kind
    (measured on first use, so a run pays only for the kinds its cases name).

    These are the practical limits a kernel library reaches (``copy_``, ``torch.mm``, ``torch._int_mm``),
    not datasheet peaks: a row at 100% runs as fast as the best library code for the same work, and a row
    above 100% beats it (e.g. the W4A4 GEMM reading half the bytes of the int8 one).

    The bandwidth a case is held to is that of a copy of the case's own size (``bandwidth(nbytes)``,
    measured per power-of-two size): a 4 MB working set lives in cache and moves several times faster
    than DRAM, so the DRAM rate (``copy_bw``, printed at the top) would let cached rows read far above
    100%."""

    def __init__(self, device: torch.device, copy_bw: float, clone_bw: float, quick: bool = False):
        self.device, self.copy_bw, self.clone_bw, self.quick = device, copy_bw, clone_bw, quick
        self._compute: dict[str, float | str] = {}
        self._bandwidth: dict[int, float] = {}

    def bandwidth(self, nbytes: int) -> float:
        """Bytes/s (read + write) of ``copy_`` moving ``nbytes`` in all, at the power of two at or above it
        (at least 64 KiB, at most the DRAM measurement's size, whose rate it then is)."""
        total = max(64 << 10, 1 << max(0, int(nbytes) - 1).bit_length())
        if total >= (64 << 20 if self.quick else 256 << 20):
            return self.copy_bw
        if total not in self._bandwidth:
            src = torch.empty(total // 8, dtype=torch.float32, device=self.device).uniform_()
            dst = torch.empty_like(src)
            best = time_callable(lambda: dst.copy_(src), self.device, min_time_s=0.05 if self.quick else 0.2,
                                 warmup=3).min_s
            # never below the DRAM rate: a smaller copy that measures slower only saw a busy moment
            self._bandwidth[total] = max(self.copy_bw, total / best)
        return self._bandwidth[total]

    @classmethod
    def measure(cls, device: torch.device, quick: bool = False) -> "Ceilings":
        copy_bw, clone_bw = copy_bandwidth(device, nbytes=(64 << 20) if quick else (256 << 20))
        return cls(device, copy_bw, clone_bw, quick)

    def compute(self, kind: str) -> float | str:
        """Operations/s of a large GEMM of this kind, or the reason it could not be measured."""
        kinds = (*COMPUTE_CEILINGS, *ADD_CEILINGS, *INSTRUCTION_CEILINGS)
        if kind not in kinds:
            raise ValueError(f"Case.compute must be one of {sorted(kinds)}, got {kind!r}")
        if kind in ADD_CEILINGS:
            gemm, factor = ADD_CEILINGS[kind]
            rate = self.compute(gemm)
            return rate if isinstance(rate, str) else factor * rate
        if kind not in self._compute:
            self._compute[kind] = self._measure_int8_dot() if kind == "int8dot" else self._measure_gemm(kind)
        return self._compute[kind]

    def _measure_int8_dot(self) -> float | str:
        if self.device.type != "cpu":
            return "a CPU instruction peak (not measured on this device)"
        try:
            rate, what = int8_dot_peak(seconds=0.2 if self.quick else 0.5)
        except Exception as exc:  # e.g. a build without the helper
            return f"{type(exc).__name__}: {str(exc)[:60]}"
        self._int8_dot_what = what
        return rate if rate > 0 else what

    def shares(self, case: Case, seconds: float) -> dict[str, float]:
        """``{"%<kind>": share in percent, 1 decimal}`` of ``case.flops`` in ``seconds`` for each kind of
        ``case.also_vs`` that could be measured."""
        out = {}
        for kind in case.also_vs if case.flops else ():
            rate = self.compute(kind)
            if not isinstance(rate, str):
                out[f"%{kind}"] = round(100 * case.flops / seconds / rate, 1)
        return out

    def _measure_gemm(self, kind: str) -> float | str:
        dtype, n_cpu, n_cuda = COMPUTE_CEILINGS[kind]
        n = n_cuda if self.device.type == "cuda" else n_cpu
        n //= 2 if self.quick else 1
        try:
            if dtype == torch.int8:
                a = torch.randint(-128, 128, (n, n), dtype=dtype, device=self.device)
                b = torch.randint(-128, 128, (n, n), dtype=dtype, device=self.device)
                gemm = lambda: torch._int_mm(a, b)  # noqa: E731
            else:
                a = torch.randn(n, n, device=self.device).to(dtype)
                b = torch.randn(n, n, device=self.device).to(dtype)
                gemm = lambda: torch.mm(a, b)  # noqa: E731
            # the best repeat, as for the bandwidth: a limit is the fastest the machine showed
            return 2 * n ** 3 / time_callable(gemm, self.device, min_time_s=0.3 if self.quick else 1.0).min_s
        except Exception as exc:  # e.g. no fp16 GEMM kernel on this CPU build
            return f"{type(exc).__name__}: {str(exc)[:60]}"

    def roofline(self, case: Case, seconds: float) -> tuple[float, str] | None:
        """(share of the limit, the limit that binds) for one call of ``case`` taking ``seconds``; None
        when the case states no work. The compute limit is the fastest of the case's ceilings (``compute``
        and ``also_vs`` all rate the same operations): where a library GEMM is far below the instruction
        peak (torch._int_mm on a CPU without VNNI runs at ~2 GOP/s), the peak is what the work could reach."""
        bounds = []
        if case.bytes_moved:
            bounds.append((case.bytes_moved / self.bandwidth(case.bytes_moved), "copy BW"))
        if case.flops:
            rates = [(rate, kind) for kind in dict.fromkeys((case.compute, *case.also_vs))
                     if not isinstance(rate := self.compute(kind), str)]
            if rates:
                rate, kind = max(rates)
                label = (f"{kind} GEMM" if kind in COMPUTE_CEILINGS else
                         f"{ADD_CEILINGS[kind][0]} adds" if kind in ADD_CEILINGS else f"{kind} peak")
                bounds.append((case.flops / rate, label))
        if not bounds:
            return None
        least_time, limit = max(bounds)
        return least_time / seconds, limit

    def describe(self) -> str:
        def rate(k, v):
            if k == "int8dot":
                return (f"int8 dot-product peak unavailable ({v})" if isinstance(v, str) else
                        f"int8 dot-product peak {v / 1e9:.0f} GOP/s ({getattr(self, '_int8_dot_what', '')})")
            if isinstance(v, str):
                return f"{k} GEMM unavailable ({v})"
            return f"{k} GEMM {v / 1e9:.0f} G{'OP' if k == 'int8' else 'FLOP'}/s"

        rates = ", ".join(rate(k, v) for k, v in self._compute.items())
        cached = ", ".join(f"{size >> 10} KiB {bw / 1e9:.0f}" for size, bw in sorted(self._bandwidth.items()))
        return (f"copy_ into allocated memory {self.copy_bw / 1e9:.1f} GB/s (at smaller sizes, GB/s: {cached or 'none'}), "
                f"clone {self.clone_bw / 1e9:.1f} GB/s" + (f"; {rates}" if rates else ""))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    model = _backend.cpu_model_name()
    # The SIMD level our kernels run at is part of the name: a VM's "model name" may say only "AMD EPYC" for a
    # Zen 3 (AVX2) and a Zen 4 (AVX-512) alike, and their results must not land in one folder.
    simd = _backend.build_info().get("simd")
    model = model.replace(' ', '-').replace('(R)', '').replace('(TM)', '')
    return f"cpu-{model}{f'-{simd}' if simd else ''}-{torch.get_num_threads()}threads"
