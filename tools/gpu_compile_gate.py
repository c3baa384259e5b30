#!/usr/bin/env python3
"""GPU compile gate: compile every Triton kernel the way the package would launch it, for real GPUs,
on a machine without one.

The interpreter (``TRITON_INTERPRET=1``, what the tests use) never lowers a kernel: it accepts code that
no GPU can compile, and it cannot see shared memory, registers or spills. This tool closes that gap.

1. Record. Each case (every pillar's ``gate_cases``, in ``tests/<pillar>/gpu_cases.py``) calls a package
   launcher (``symkernels/<pillar>/triton.py``) on *fake* CUDA tensors (``FakeTensorMode``: shapes, strides
   and dtypes, no storage), so the launcher takes its CUDA branch (block sizes, warps, precision) at the
   real shape without allocating it.
   ``JITFunction.run`` is replaced by a recorder, so every ``kernel[grid](...)`` the launcher makes is
   captured, tensors standing in as (dtype, alignment) pointers.
2. Specialise. Triton's own binder turns each recorded launch into the (signature, constexprs, attrs,
   options) the runtime would compile: the same integer specialisation (divisible by 16, equal to 1)
   and pointer alignment as a real launch.
3. Compile ahead of time for sm_90 (H100/H200) and sm_80 (A100) with ``triton.compile`` and the bundled
   ``ptxas``; read shared memory from the metadata, registers and spills from ``ptxas -v`` and the
   tensor-core instructions (``wgmma`` / ``mma``) from the PTX.

It fails on a compile error, shared memory over the target's limit, or any spill not listed, with its
reason, in KNOWN_SPILLS. The table lands in ``bench/results/gpu-compile/`` (Markdown + CSV). Compiled
kernels stay in ``TRITON_CACHE_DIR`` (default ``build/triton-cache``) and ptxas reports next to them, so a
second run only re-records. Step 2 uses Triton's runtime internals (the JIT binder, ``_pack_args``) as of
Triton 3.9, the version CI runs.

    python tools/gpu_compile_gate.py [--only SUBSTRING] [--arch 90 --arch 80] [--jobs N]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
# Compile for GPUs, not for the interpreter: this must be decided before triton is imported.
os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_CACHE_DIR", str(REPO / "build" / "triton-cache"))
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # today's default, stated (silences 3.9's warning)
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import triton  # noqa: E402
from torch._library.triton import set_wrap_triton_enabled  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

from tests.gpu_cases import FirstLaunchOnly, gate_cases  # noqa: E402

# Dynamic shared memory a block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin).
SMEM_LIMIT = {90: 232448, 80: 166912}
GPU_NAME = {90: "sm_90 (H100/H200)", 80: "sm_80 (A100)"}

# Spills accepted by name, each with its reason; every other spill fails the gate. A key is (arch,
# kernel, the case that first produced the specialisation, most spill bytes stored). The gate also fails
# when a listed one no longer spills or spills more, so the list cannot silently go stale.
_GAUNT_LOOP_COUNTERS = (
    "ptxas keeps loop-carried scalars of the nested chunk loops in local memory (8 B stored; the SASS "
    "shows 32-bit STL/LDL around the loop back-edge) while using 72 of 255 registers: its own choice, not "
    "register pressure. Other tile shapes move the same 4-24 B to other degrees (tried: 16/32-row "
    "blocks, 4/8 warps, 16/32/64 output tiles, 16/32 grid chunks, 1-3 stages, one fused chunk loop)")
KNOWN_SPILLS = {
    (90, "_gaunt_grid_kernel", "gaunt L=7x8->15 fp16", 8): _GAUNT_LOOP_COUNTERS,
    (90, "_gaunt_grid_kernel", "gaunt L=7x8->15 bf16", 8): _GAUNT_LOOP_COUNTERS,
    (80, "_gaunt_grid_kernel", "gaunt L=3x3->3 fp32", 8): _GAUNT_LOOP_COUNTERS,
}


# ------------------------------------------------------------------------------------------------------
# Recording launches
# ------------------------------------------------------------------------------------------------------
class DevicePointer:
    """A tensor argument as Triton's specialisation sees it: an element type and an address, whose
    alignment is the storage offset's (allocations themselves are 256-byte aligned)."""

    def __init__(self, t: torch.Tensor):
        self.dtype = t.dtype
        self._address = 1 << 20 | t.storage_offset() * t.element_size()

    def data_ptr(self) -> int:
        return self._address


@dataclasses.dataclass
class Launch:
    case: str
    kernel: JITFunction
    args: list
    kwargs: dict


_recorded: list[Launch] = []
_current_case = ""
_stop_after_launch = False


class _CaseRecorded(Exception):
    """Raised by the recorder to end a ``FirstLaunchOnly`` case once its launch is captured."""


def _record_run(self, *args, grid, warmup, **kwargs):
    as_pointer = lambda a: DevicePointer(a) if isinstance(a, torch.Tensor) else a  # noqa: E731
    _recorded.append(Launch(_current_case, self, [as_pointer(a) for a in args],
                            {k: as_pointer(v) for k, v in kwargs.items()}))
    if _stop_after_launch:
        raise _CaseRecorded


def record(cases: list[tuple[str, Callable[[], object]]]) -> list[Launch]:
    """Runs every case's launcher on fake CUDA tensors; returns the kernel launches it made. Tables with
    real values a launcher needs (Hadamard factors) are built by the case beforehand, outside the fake mode."""
    global _current_case, _stop_after_launch
    _recorded.clear()
    real_run = JITFunction.run
    JITFunction.run = _record_run
    try:
        # wrap_triton off: launchers then call the kernels' run() directly (recorded above) instead of
        # emitting the graph node torch.compile traces.
        with FakeTensorMode(allow_non_fake_inputs=True), set_wrap_triton_enabled(False):
            for name, launch in cases:
                _current_case, _stop_after_launch = name, isinstance(launch, FirstLaunchOnly)
                before = len(_recorded)
                try:
                    launch()
                except _CaseRecorded:
                    pass
                if len(_recorded) == before:
                    raise RuntimeError(f"case {name!r} launched no kernel")
    finally:
        JITFunction.run = real_run
        _stop_after_launch = False
    return list(_recorded)


# ------------------------------------------------------------------------------------------------------
# Specialise, compile, measure
# ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Specialisation:
    kernel: JITFunction
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    cases: list[str]

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    def label(self) -> str:
        """The constexprs and warps, short: what tells two rows of one kernel apart."""
        names = [p.name for p in self.kernel.params]
        parts = [f"{names[path[0]]}={_short(v)}" for path, v in self.constexprs.items() if len(path) == 1]
        return " ".join(parts + [f"warps={self.options['num_warps']}", f"stages={self.options['num_stages']}"])


def _short(v) -> str:
    return str(getattr(v, "value", v))


def specialise(launches: list[Launch], arch: int) -> list[Specialisation]:
    """Triton's own binder on the recorded arguments, deduplicated: one entry per distinct compile."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binders: dict[int, Callable] = {}
    unique: dict[str, Specialisation] = {}
    for launch in launches:
        kernel = launch.kernel
        if id(kernel) not in binders:
            binders[id(kernel)] = create_function_from_signature(kernel.signature, kernel.params, backend)
        kwargs = dict(launch.kwargs, debug=False)
        bound_args, specialization, options = binders[id(kernel)](*launch.args, **kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization,
                                                                  options)
        options = options.__dict__
        key = repr((kernel.fn.__qualname__, signature, sorted(constexprs.items()), sorted(attrs.items()),
                    sorted((k, repr(v)) for k, v in options.items())))
        if key in unique:
            unique[key].cases.append(launch.case)
        else:
            unique[key] = Specialisation(kernel, signature, constexprs, attrs, options, [launch.case])
    return list(unique.values())


@dataclasses.dataclass
class Result:
    arch: int
    kernel: str
    config: str
    cases: list[str]
    compiled: bool
    error: str = ""
    shared: int = 0
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    has_dot: bool = False
    tensor_cores: str = ""
    seconds: float = 0.0

    @property
    def smem_limit(self) -> int:
        return SMEM_LIMIT[self.arch]

    def known_spill(self) -> tuple | None:
        return next((k for k in KNOWN_SPILLS if k[:3] == (self.arch, self.kernel, self.cases[0])), None)

    def failures(self) -> list[str]:
        if not self.compiled:
            return [f"does not compile: {self.error}"]
        out = []
        if self.shared > self.smem_limit:
            out.append(f"shared memory {self.shared} B > {self.smem_limit} B")
        known = self.known_spill()
        if known and not 0 < self.spill_stores <= known[3]:
            out.append(f"KNOWN_SPILLS lists up to {known[3]} B of spill stores here, found {self.spill_stores} B: "
                       f"update the list")
        elif (self.spill_stores or self.spill_loads) and not known:
            out.append(f"spills ({self.spill_stores} B stored, {self.spill_loads} B loaded)")
        return out


def _ptxas_path(arch: int) -> str:
    """The ptxas Triton itself uses for ``arch`` (its wheel bundles one per generation)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(arch).path
    except ImportError:  # older Triton: a single bundled ptxas
        from triton import knobs
        return knobs.nvidia.ptxas.path


_PTXAS_V = re.compile(r"Used (\d+) registers|(\d+) bytes spill stores, (\d+) bytes spill loads")


def _parse_ptxas_log(log: str) -> dict | None:
    usage = {"registers": 0, "spill_stores": 0, "spill_loads": 0}
    found = False
    for m in _PTXAS_V.finditer(log):
        found = True
        if m.group(1):
            usage["registers"] = max(usage["registers"], int(m.group(1)))
        else:
            usage["spill_stores"] += int(m.group(2))
            usage["spill_loads"] += int(m.group(3))
    return usage if found else None


def _usage_file(ptx: str) -> Path:
    key = hashlib.sha256(ptx.encode()).hexdigest()[:32]
    return Path(os.environ["TRITON_CACHE_DIR"]) / "ptxas-usage" / f"{key}.json"


def ptxas_usage(ptx: str, arch: int, compile_log: str) -> dict:
    """Registers and spill bytes of ``ptx``: from Triton's own ``ptxas -v`` log when this run compiled it,
    else from the report kept beside the Triton cache, else from running ``ptxas -v`` with Triton's flags."""
    record = _usage_file(ptx)
    usage = _parse_ptxas_log(compile_log)
    if usage is None and record.exists():
        return json.loads(record.read_text())
    if usage is None:
        gpu_name = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "k.ptx"
            src.write_text(ptx)
            log = subprocess.run([_ptxas_path(arch), "-lineinfo", "-v", "--regAllocOptLevel=2",
                                  f"--gpu-name={gpu_name}", str(src), "-o", str(Path(tmp) / "k.cubin")],
                                 capture_output=True, text=True, check=True).stderr
        usage = _parse_ptxas_log(log)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(usage))
    return usage


def compile_one(spec: Specialisation, arch: int) -> Result:
    result = Result(arch, spec.name, spec.label(), spec.cases, compiled=False)
    start = time.time()
    try:
        return _compile_into(result, spec, arch)
    finally:
        result.seconds = time.time() - start


def _compile_into(result: Result, spec: Specialisation, arch: int) -> Result:
    log = io.StringIO()
    try:
        # Triton prints its own ptxas -v log with this knob: registers and spills at no extra ptxas run.
        with contextlib.redirect_stdout(log), _knob(triton.knobs.nvidia, "dump_ptxas_log", True):
            compiled = triton.compile(ASTSource(spec.kernel, spec.signature, spec.constexprs, spec.attrs),
                                      target=GPUTarget("cuda", arch, 32), options=spec.options)
    except Exception as e:  # noqa: BLE001  every failure is a row of the report
        message = str(e).strip().splitlines()
        result.error = (type(e).__name__ + ": " + " | ".join(line.strip() for line in message[-3:]))[:400]
        return result
    result.compiled = True
    result.shared = compiled.metadata.shared
    ptx = compiled.asm["ptx"]
    usage = ptxas_usage(ptx, arch, log.getvalue())
    result.registers, result.spill_stores, result.spill_loads = (usage["registers"], usage["spill_stores"],
                                                                 usage["spill_loads"])
    result.has_dot = "tt.dot" in compiled.asm["ttir"]
    if result.has_dot:
        found = [name for name, pattern in (("wgmma", "wgmma.mma_async"), ("mma", "mma.sync")) if pattern in ptx]
        result.tensor_cores = "+".join(found) or "none (FMA)"
    return result


@contextlib.contextmanager
def _knob(namespace, name: str, value):
    """Sets a Triton knob for the block when this Triton has it (older ones lack some)."""
    if not hasattr(namespace, name):
        yield
        return
    old = getattr(namespace, name)
    setattr(namespace, name, value)
    try:
        yield
    finally:
        setattr(namespace, name, old)


_work: list[tuple[Specialisation, int]] = []


def _compile_job(index: int) -> Result:
    spec, arch = _work[index]
    return compile_one(spec, arch)


def compile_all(specs_by_arch: dict[int, list[Specialisation]], jobs: int) -> list[Result]:
    """Compiles in forked workers (the recorded kernels are inherited, nothing is pickled but an index)."""
    _work.clear()
    _work.extend((spec, arch) for arch, specs in specs_by_arch.items() for spec in specs)
    if jobs <= 1:
        return [_compile_job(i) for i in range(len(_work))]
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_compile_job, range(len(_work))))


# ------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------
_COLUMNS = ["arch", "kernel", "config", "compiles", "shared_bytes", "smem_limit", "registers", "spill_stores",
            "spill_loads", "tensor_cores", "seconds", "cases", "error"]


def _row(r: Result) -> dict:
    cases = r.cases if len(r.cases) <= 3 else r.cases[:3] + [f"... +{len(r.cases) - 3}"]
    return {"arch": f"sm_{r.arch}", "kernel": r.kernel, "config": r.config, "compiles": "yes" if r.compiled else "NO",
            "shared_bytes": r.shared, "smem_limit": r.smem_limit, "registers": r.registers,
            "spill_stores": r.spill_stores, "spill_loads": r.spill_loads, "tensor_cores": r.tensor_cores or "-",
            "seconds": f"{r.seconds:.1f}", "cases": "; ".join(cases),
            "error": r.error or ("known spill (KNOWN_SPILLS)" if r.known_spill() else "")}


def summary(results: list[Result], arch: int) -> str:
    rs = [r for r in results if r.arch == arch]
    ok = [r for r in rs if r.compiled]
    spilling = [r for r in ok if r.spill_stores or r.spill_loads]
    dots: dict[str, set[str]] = {}
    for r in ok:
        if r.has_dot:
            dots.setdefault(r.kernel, set()).add(r.tensor_cores)
    return (f"{GPU_NAME[arch]}: {len(ok)}/{len(rs)} specialisations compile; max shared memory "
            f"{max((r.shared for r in ok), default=0)} B (limit {SMEM_LIMIT[arch]}); max registers "
            f"{max((r.registers for r in ok), default=0)}; spilling: {len(spilling)} "
            f"({sum(1 for r in spilling if r.known_spill())} known, at most "
            f"{max((r.spill_stores for r in spilling), default=0)} B); tl.dot → "
            + ("; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in sorted(dots.items())) or "none"))


def write_report(results: list[Result], out_dir: Path, header: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [_row(r) for r in results]
    with open(out_dir / "gpu-compile.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, _COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# GPU compile gate", ""] + header + [""]
    lines += ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[c]).replace("|", "\\|") for c in _COLUMNS) + " |")
    (out_dir / "gpu-compile.md").write_text("\n".join(lines) + "\n")


def run_gate(cases, archs=(90, 80), jobs=None, out_dir: Path | None = None) -> tuple[list[Result], list[str]]:
    """Records, compiles and checks ``cases``; returns (results, failure messages)."""
    start = time.time()
    launches = record(cases)
    specs = {arch: specialise(launches, arch) for arch in archs}
    results = compile_all(specs, jobs or os.cpu_count() or 1)
    failures = [f"sm_{r.arch} {r.kernel} [{r.config}] ({r.cases[0]}{', ...' if len(r.cases) > 1 else ''}): {why}"
                for r in results for why in r.failures()]
    if out_dir is not None:
        header = [f"triton {triton.__version__}, torch {torch.__version__}; {len(cases)} cases, "
                  f"{len(launches)} launches; {time.time() - start:.0f} s", ""]
        header += [f"- {summary(results, arch)}" for arch in archs]
        header += ["", "Known spills (KNOWN_SPILLS in tools/gpu_compile_gate.py):", ""]
        header += [f"- sm_{a} {k} ({case}, ≤ {b} B): {why}" for (a, k, case, b), why in KNOWN_SPILLS.items()]
        write_report(results, out_dir, header)
    return results, failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="cases whose name contains this substring")
    parser.add_argument("--arch", type=int, action="append", choices=sorted(SMEM_LIMIT), help="default: 90 and 80")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compiles (default: CPU count)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu-compile")
    args = parser.parse_args(argv)
    start = time.time()
    cases = [c for c in gate_cases() if args.only is None or args.only in c[0]]
    results, failures = run_gate(cases, tuple(args.arch or (90, 80)), args.jobs, args.out)
    for arch in args.arch or (90, 80):
        print(summary(results, arch))
    print(f"{len(results)} compiles in {time.time() - start:.0f} s; table: {args.out}/gpu-compile.md")
    if failures:
        print(f"\nGPU compile gate FAILED ({len(failures)}):", *failures, sep="\n  ", file=sys.stderr)
        return 1
    print("GPU compile gate passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
