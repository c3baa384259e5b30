"""Which implementations exist on this machine, and which one a call uses.

Every public op has up to four implementations behind one function:

* ``reference`` — pure PyTorch, always present; the truth the others are tested against.
* ``cpu``       — C++ kernel in ``symkernels._C``, reached through ``torch.ops.symkernels.*``.
* ``cuda``      — CUDA C++ kernel in ``symkernels._C``, reached the same way.
* ``triton``    — Triton kernel; runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.

``backend=None`` lets the op pick: the dispatcher op (C++/CUDA kernels) when it has a kernel for the
tensor's device, Triton for CUDA tensors when no CUDA C++ kernel was built, otherwise the reference.
Nothing here fails at import: a missing ``_C`` or ``triton`` only makes that backend unavailable,
and the recorded reason is raised when somebody asks for it by name.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import platform

import torch

BACKENDS = ("reference", "cpu", "cuda", "triton")

# Loading _C registers every C++ op schema (TORCH_LIBRARY) and kernel (TORCH_LIBRARY_IMPL).
# Import torch first (above) so libtorch is in the process before the extension's symbols resolve.
try:
    from symkernels import _C  # type: ignore[attr-defined]

    _C_ERROR: str | None = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    _C_ERROR = f"symkernels._C could not be loaded ({exc}); build it with `pip install -e . --no-build-isolation`"


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str  # why it is (un)available, in words a user can act on

    def __bool__(self) -> bool:
        return self.available


def triton_interpreted() -> bool:
    """True when Triton kernels run in the NumPy interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        importlib.import_module("triton")
        importlib.import_module("triton.language")
    except Exception as exc:  # ImportError, or a broken install raising anything
        return f"triton is not importable ({exc})"
    return None


def triton_importable() -> bool:
    """Triton is installed (whether or not it can run here: that needs CUDA or TRITON_INTERPRET=1)."""
    return _triton_import_error() is None


def native_has_cuda() -> bool:
    return _C is not None and bool(_C.build_info()["cuda"])


@torch.compiler.assume_constant_result
def backend_available(name: str) -> bool:
    return backend_status(name).available


# Cached: what it reads is fixed in a process (the _C build, Triton's import, TRITON_INTERPRET, which Triton
# itself reads once at import, and whether CUDA is present), and every op call asks (uncached: ~10 µs a call).
@functools.cache
def backend_status(name: str) -> BackendStatus:
    if name == "reference":
        return BackendStatus(name, True, "pure PyTorch, always available")
    if name == "cpu":
        if _C is None:
            return BackendStatus(name, False, _C_ERROR or "")
        return BackendStatus(name, True, f"C++ kernels, SIMD level {_C.build_info()['simd']}")
    if name == "cuda":
        if _C is None:
            return BackendStatus(name, False, _C_ERROR or "")
        if not native_has_cuda():
            return BackendStatus(name, False, "symkernels._C was built without CUDA (torch without CUDA, no nvcc, "
                                              "or SYMKERNELS_FORCE_CPU=1)")
        if not torch.cuda.is_available():
            return BackendStatus(name, False, "built with CUDA, but torch sees no CUDA device")
        return BackendStatus(name, True, f"CUDA kernels for arches {_C.build_info()['cuda_arches']}")
    if name == "triton":
        err = _triton_import_error()
        if err:
            return BackendStatus(name, False, err)
        if triton_interpreted():
            return BackendStatus(name, True, "Triton interpreter (TRITON_INTERPRET=1): CPU tensors, slow, for tests")
        if torch.cuda.is_available():
            return BackendStatus(name, True, "Triton JIT on CUDA")
        return BackendStatus(name, False, "no CUDA device, and TRITON_INTERPRET is not set")
    raise ValueError(f"backend must be one of {BACKENDS} or None, got {name!r}")


def backends() -> dict[str, BackendStatus]:
    """Availability of every backend on this machine, with the reason."""
    return {name: backend_status(name) for name in BACKENDS}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (``avx2``, ``avx512_vnni``, ``amx_int8``, …); empty where
    /proc/cpuinfo is unreadable (another OS). What the hardware has, not what our kernels run: see
    ``build_info()['simd']``."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), ()))
    except OSError:
        return frozenset()


def cpu_model_name() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo, else ``platform.processor()``, else ``"cpu"``."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def build_info() -> dict:
    """What symkernels._C was compiled with (backends, SIMD level, CUDA arches, versions)."""
    info = {"torch": torch.__version__, "native": _C is not None}
    if _C is None:
        info["native_error"] = _C_ERROR
    else:
        info.update(_C.build_info())
    err = _triton_import_error()
    if err is None:
        import triton

        info["triton"] = triton.__version__
    return info


def has_dispatcher_op(op_name: str) -> bool:
    """True when torch.ops.symkernels.<op_name> is registered (by _C or by a Python custom op); an overload is
    named ``"<op>.<overload>"``."""
    name, _, overload = op_name.partition(".")
    if not hasattr(torch.ops.symkernels, name):
        return False
    return not overload or overload in getattr(torch.ops.symkernels, name).overloads()


# Registrations are fixed once the pillars are imported, so Dynamo may evaluate these probes once at
# trace time and bake in the answer (otherwise they would break the graph under fullgraph=True).
@torch.compiler.assume_constant_result
def dispatcher_has_kernel(op_name: str, device: torch.device) -> bool:
    """True when the dispatcher op has a kernel for this device type (CPU or CUDA key)."""
    return _dispatcher_has_kernel_for(op_name, device.type)


@functools.cache  # per (op, device type): the registrations are fixed, and every op call asks
def _dispatcher_has_kernel_for(op_name: str, device_type: str) -> bool:
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None or not has_dispatcher_op(op_name):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"symkernels::{op_name}", key)


def resolve(op_name: str, device: torch.device, backend: str | None, implemented: tuple[str, ...]) -> str:
    """Pick the implementation for one call, or raise a clear error naming ``backend``.

    Returns one of ``"reference"``, ``"triton"`` or ``"dispatcher"`` (the torch.ops op, whose CPU key is
    the C++ kernel and whose CUDA key is the CUDA kernel, or Triton where no CUDA kernel was built).
    ``implemented`` lists the backends this op has.
    """
    if backend is None:
        if dispatcher_has_kernel(op_name, device):
            return "dispatcher"
        if device.type == "cuda" and "triton" in implemented and backend_available("triton"):
            return "triton"
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend not in implemented:
        raise NotImplementedError(f"{op_name}: backend={backend!r} is not implemented; this op has {implemented}")
    if not backend_available(backend):
        raise RuntimeError(f"{op_name}: backend={backend!r} is unavailable: {backend_status(backend).reason}")
    if backend == "reference":
        return "reference"
    if backend == "triton":
        if device.type != "cuda" and not triton_interpreted():
            raise ValueError(f"{op_name}: backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1), "
                             f"got tensors on {device}")
        return "triton"
    if device.type != backend:
        raise ValueError(f"{op_name}: backend={backend!r} needs tensors on a {backend} device, got {device}")
    if not dispatcher_has_kernel(op_name, device):
        raise RuntimeError(f"{op_name}: symkernels._C has no {backend} kernel for this op")
    return "dispatcher"


def common_device(op_name: str, **tensors: torch.Tensor | None) -> torch.device:
    """The one device all given tensors live on; a clear error naming the arguments otherwise."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    unique = set(devices.values())
    if len(unique) > 1:
        listing = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"{op_name}: all tensors must be on one device, got {listing}")
    if not unique:
        raise ValueError(f"{op_name}: no tensor arguments")
    return unique.pop()


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_tensor(op_name: str, name: str, x, last_dim: str, dtypes: tuple = FLOAT_DTYPES) -> None:
    """``x`` is a tensor of one of ``dtypes`` with at least one dimension, whose meaning is ``last_dim``.

    The shared first check of every op's arguments: TypeError for a non-tensor or a wrong dtype, ValueError
    for a scalar, each naming the op and the argument.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op_name}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{op_name}: {name} must have a floating dtype in {dtypes}, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{op_name}: {name} must have at least one dimension ({last_dim}), got a scalar")
