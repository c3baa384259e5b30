"""Traces symkernels ops the way torch.compile does (AOTAutograd, FunctionalTensorMode) on fake CUDA tensors
and prints, per case, the graph's call targets as JSON. The cases are every pillar's ``probe_cases``
(tests/<pillar>/gpu_cases.py): one call of each op whose CUDA kernel may be Triton.

A script, not a test module: the Triton kernels must be real ``triton.jit`` functions (what ``wrap_triton``
traces), so triton is imported without the TRITON_INTERPRET=1 that tests/conftest.py sets; see
tests/test_op_registration.py.

No GPU is needed: torch asks the active Triton driver only for a target, to analyse which kernel
arguments are written (from the kernel's TTIR), and Hopper's is given below.
"""
import json
import sys
from pathlib import Path

import torch
import triton
from torch._functorch.aot_autograd import aot_export_joint_simple
from torch._subclasses.fake_tensor import FakeTensorMode
from triton.backends.compiler import GPUTarget

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: `tests` as a package
import symkernels  # noqa: E402, F401  (registers the ops)
from tests.gpu_cases import probe_cases  # noqa: E402


class _HopperTarget:
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


def _targets(op, args):
    """The call targets of op(*args)'s forward graph; non-tensor arguments are constants of the trace."""
    slots = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def call(*tensors):
        full = list(args)
        for i, t in zip(slots, tensors):
            full[i] = t
        out = op(*full)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    graph = aot_export_joint_simple(call, [args[i] for i in slots], trace_joint=False)
    # A mutating op (out=) is recorded as auto_functionalized(op, ...): name the op it runs.
    return [str(node.args[0]) if "auto_functionalized" in str(node.target) else str(node.target)
            for node in graph.graph.nodes if node.op == "call_function"]


def main():
    triton.runtime.driver.set_active(_HopperTarget())
    report = {}
    for device in ("cuda", "cpu"):
        with FakeTensorMode(allow_non_fake_inputs=True):
            for case, (op, args) in probe_cases(device).items():
                try:
                    report[f"{case}/{device}"] = _targets(op, args)
                except Exception as exc:  # reported, so the test names the case that failed
                    report[f"{case}/{device}"] = f"error: {type(exc).__name__}: {exc}"
    print(json.dumps(report))


if __name__ == "__main__":
    main()
