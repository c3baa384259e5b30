"""Traces symkernels ops the way torch.compile does (AOTAutograd, FunctionalTensorMode) on fake CUDA tensors
and prints, per case, the graph's call targets as JSON. A script, not a test module: the Triton kernels
must be real ``triton.jit`` functions (what ``wrap_triton`` traces), so triton is imported without the
TRITON_INTERPRET=1 that tests/conftest.py sets; see tests/test_op_registration.py.

No GPU is needed: torch asks the active Triton driver only for a target, to analyse which kernel
arguments are written (from the kernel's TTIR), and Hopper's is given below.
"""
import json

import torch
import triton
from torch._functorch.aot_autograd import aot_export_joint_simple
from torch._subclasses.fake_tensor import FakeTensorMode
from triton.backends.compiler import GPUTarget

import symkernels  # noqa: F401  (registers the ops)


class _HopperTarget:
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


def _into_fresh_buffer(out_op):
    """``out_op(*args, out=buffer)`` on a buffer of the first argument's shape, returning the buffer: the
    traced function then mutates no input, which aot_export_joint_simple requires."""
    def call(x, *rest):
        out = torch.empty_like(x)
        out_op(x, *rest, out=out)
        return out
    return call


def _cases(device):
    """{case: (op, args)}: one call of every op whose CUDA kernel may be Triton (values do not matter)."""
    ops = torch.ops.symkernels
    f32 = dict(dtype=torch.float32, device=device)
    hk = torch.empty(12, 12, **f32)
    u8 = dict(dtype=torch.uint8, device=device)
    return {
        "hadamard_transform": (ops.hadamard_transform, (torch.empty(8, 256, **f32), 0.0625)),
        "hadamard_transform_k": (ops.hadamard_transform_k, (torch.empty(8, 12 * 64, **f32), hk, 1.0)),
        "hadamard_transform.out": (_into_fresh_buffer(ops.hadamard_transform.out), (torch.empty(8, 256, **f32), 0.0625)),
        "hadamard_transform_k.out": (_into_fresh_buffer(ops.hadamard_transform_k.out),
                                     (torch.empty(8, 12 * 64, **f32), hk, 1.0)),
        "quantize_int4": (ops.quantize_int4, (torch.empty(8, 256, **f32), 1.0, None, 1.0)),
        "int4_matmul": (ops.int4_matmul, (torch.empty(8, 128, **u8), torch.empty(8, 1, **f32),
                                          torch.empty(32, 128, **u8), torch.empty(32, 1, **f32), None,
                                          torch.float32)),
        "jacobi_rnn_iterate": (ops.jacobi_rnn_iterate, (torch.empty(16, 2, 8, **f32), torch.empty(2, 8, **f32),
                                                        torch.empty(8, 8, **f32), torch.empty(8, **f32),
                                                        torch.empty(16, 2, 8, **f32), 0, 4, 0.0, "elman", "tanh",
                                                        False)),
        # jvp: the Triton kernels of linear_dual and the row duals serve their CUDA keys where _C has no
        # CUDA kernel; attention_dual's CUDA kernel runs its Triton kernel for impl="triton".
        "linear_dual": (ops.linear_dual, (torch.empty(16, 32, **f32), torch.empty(2, 16, 32, **f32),
                                          torch.empty(24, 32, **f32), None, torch.empty(24, **f32), None, "gelu", 2)),
        "layer_norm_dual": (ops.layer_norm_dual, (torch.empty(8, 64, **f32), torch.empty(2, 8, 64, **f32),
                                                  torch.empty(64, **f32), None, torch.empty(64, **f32), None, 1e-5, 2)),
        "rms_norm_dual": (ops.rms_norm_dual, (torch.empty(8, 64, **f32), torch.empty(2, 8, 64, **f32),
                                              torch.empty(64, **f32), None, 1e-6, 2)),
        "softmax_dual": (ops.softmax_dual, (torch.empty(8, 64, **f32), torch.empty(2, 8, 64, **f32), 2)),
        "attention_dual": (ops.attention_dual, (torch.empty(2, 16, 32, **f32), torch.empty(2, 16, 32, **f32),
                                                torch.empty(2, 16, 32, **f32), torch.empty(1, 2, 16, 32, **f32),
                                                None, None, 1, False, 0.125, "triton")),
    }


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
            for case, (op, args) in _cases(device).items():
                try:
                    report[f"{case}/{device}"] = _targets(op, args)
                except Exception as exc:  # reported, so the test names the case that failed
                    report[f"{case}/{device}"] = f"error: {type(exc).__name__}: {exc}"
    print(json.dumps(report))


if __name__ == "__main__":
    main()
