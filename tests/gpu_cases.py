"""The GPU checks' cases, declared by each pillar next to its own tests and collected here.

Three checks run every kernel, each as one whole (so each needs every op's row), and each pillar states its
own ops' rows in ``tests/<pillar>/gpu_cases.py``, as far as it has them:

* ``SMOKE``: ``SmokeOp`` rows of the GPU smoke suite (tests/test_gpu_smoke.py): every backend × dtype of an
  op on two small shapes, against its reference.
* ``gate_cases()``: the compile gate's launches (tools/gpu_compile_gate.py): ``(name, launch)`` pairs, each
  calling a Triton launcher on fake CUDA tensors (``cuda``) at a shape worth compiling for (benchmark shapes,
  the largest test shapes, the largest supported sizes); ``FirstLaunchOnly`` marks a launch the gate stops
  at its first kernel.
* ``probe_cases(device)``: ``{"<op>" or "<op>.<overload>": (op, args)}``, one call of every op whose CUDA
  kernel may be Triton (an ``out=`` overload through ``into_fresh_buffer``), which
  tests/triton_decomposition_probe.py traces as torch.compile does (tests/test_op_registration.py fails for
  an op served by Triton that has none).

A new pillar's module is found by its path, so no list here or in the drivers names the pillars. These
modules hold data and import Triton code lazily: the gate and the probe import them in processes that
compile Triton kernels (no TRITON_INTERPRET, no pytest), the smoke suite in one that interprets them.
"""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
ALL_FLOATS = (F32, F64, F16, BF16)


@dataclasses.dataclass(frozen=True)
class SmokeOp:
    """One op's row of the GPU smoke suite; its test ids are ``<name>-<backend>-<dtype>-s<shape index>``."""
    name: str
    implemented: tuple[str, ...]  # the op module's own list: one truth for which backends exist
    dtypes: tuple[torch.dtype, ...]
    shapes: tuple  # two small problem sizes, the first the smallest
    make: Callable  # (shape, dtype, generator) -> tuple of CPU inputs
    call: Callable  # (inputs, dtype, backend or None) -> tensor or tuple of tensors
    half_rule: str = "torch_error"  # "torch_error" or "table": how float16/bfloat16 outputs are judged
    exact: bool = False  # integer outputs: equal to the reference bit for bit


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype = F64) -> torch.Tensor:
    """Normal samples drawn in float64 and then cast, so every dtype of a smoke case sees the same values."""
    return torch.randn(*shape, generator=gen, dtype=F64).to(dtype)


class FirstLaunchOnly:
    """A compile-gate launch that is over at its first kernel launch: the gate records that one and stops
    the launcher there (its remaining work is not needed, or not possible on fake tensors)."""

    def __init__(self, launch: Callable[[], object]):
        self.launch = launch

    def __call__(self) -> object:
        return self.launch()


def into_fresh_buffer(out_op: Callable) -> Callable:
    """A probe call of an ``out=`` overload: ``out_op(*args, out=buffer)`` on a new buffer of the first
    argument's shape, returning the buffer, so the traced function mutates no input (which the probe's
    ``aot_export_joint_simple`` requires)."""
    def call(x, *rest):
        out = torch.empty_like(x)
        out_op(x, *rest, out=out)
        return out
    return call


def cuda(*shape: int, dtype: torch.dtype = F32) -> torch.Tensor:
    """A CUDA tensor for a compile-gate launch: fake there (the gate runs its cases under FakeTensorMode)."""
    return torch.empty(shape, dtype=dtype, device="cuda")


def dtype_name(dtype: torch.dtype) -> str:
    """fp16, bf16, fp32, fp64: the dtype as the compile gate's case names write it."""
    return {F16: "fp16", BF16: "bf16", F32: "fp32", F64: "fp64"}[dtype]


def pillars() -> list[ModuleType]:
    """Every ``tests/<pillar>/gpu_cases.py``, in the pillars' name order."""
    return [importlib.import_module(f"{__package__}.{path.parent.name}.gpu_cases")
            for path in sorted(Path(__file__).resolve().parent.glob("*/gpu_cases.py"))]


def smoke_ops() -> list[SmokeOp]:
    return [op for pillar in pillars() for op in getattr(pillar, "SMOKE", ())]


def gate_cases() -> list[tuple[str, Callable[[], object]]]:
    return [case for pillar in pillars() if hasattr(pillar, "gate_cases") for case in pillar.gate_cases()]


def probe_cases(device: str) -> dict[str, tuple[Callable, tuple]]:
    cases: dict[str, tuple[Callable, tuple]] = {}
    for pillar in pillars():
        if hasattr(pillar, "probe_cases"):
            cases.update(pillar.probe_cases(device))
    return cases
