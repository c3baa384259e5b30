"""The Jacobi RNN op's rows in the GPU checks (tests/gpu_cases.py): smoke, compile gate, decomposition probe."""
from __future__ import annotations

import math

import torch

import symkernels
from symkernels.jacobi import ops
from tests.gpu_cases import F32, F64, FirstLaunchOnly, SmokeOp, cuda, dtype_name, randn


def _make_rnn(cell):
    def make(shape, dtype, gen):
        T, B, I, H = shape
        G = 3 * H if cell == "gru" else H
        return (randn(gen, T, B, I, dtype=dtype), 0.5 * randn(gen, B, H, dtype=dtype),
                randn(gen, G, I, dtype=dtype) / math.sqrt(I), 0.8 * randn(gen, G, H, dtype=dtype) / math.sqrt(H),
                0.1 * randn(gen, *((2, G) if cell == "gru" else (H,)), dtype=dtype))
    return make


_RNN_SHAPES = ((6, 2, 3, 4), (40, 3, 5, 16))

SMOKE = [
    SmokeOp("rnn_elman", ops.IMPLEMENTED, (F32, F64), _RNN_SHAPES, _make_rnn("elman"),
            lambda a, d, be: symkernels.jacobi.rnn(*a, backend=be)),
    SmokeOp("rnn_gru", ops.IMPLEMENTED, (F32, F64), _RNN_SHAPES, _make_rnn("gru"),
            lambda a, d, be: symkernels.jacobi.rnn(*a, cell="gru", backend=be)),
]


def gate_cases():
    from symkernels.jacobi import triton as jt

    # (cell, nonlinearity, gate rows per hidden unit, state width per hidden unit: the LSTM's is [h | c])
    for cell, nonlinearity, gates, state in (("elman", "tanh", 1, 1), ("elman", "relu", 1, 1), ("gru", "tanh", 3, 1),
                                             ("lstm", "tanh", 4, 2)):
        for h, b, dtype in ((32, 1, F32), (64, 8, F32), (64, 8, F64)):
            t_len = 4096
            # Every Jacobi sweep launches with the same arguments; only the first is recorded, as the loop's
            # bookkeeping between sweeps (indexing) is beyond what fake CUDA tensors support on a CPU build.
            yield f"rnn_{cell}_{nonlinearity} T={t_len} B={b} H={h} {dtype_name(dtype)}", FirstLaunchOnly(
                lambda h=h, b=b, dtype=dtype, cell=cell, nl=nonlinearity, g=gates, s=state, t_len=t_len: \
                jt.jacobi_rnn_iterate(cuda(t_len, b, g * h, dtype=dtype), cuda(b, s * h, dtype=dtype),
                                      cuda(g * h, h, dtype=dtype), cuda(g * h, dtype=dtype),
                                      cuda(t_len, b, s * h, dtype=dtype), 0, 2, 0.0, cell, nl, False))


def probe_cases(device):
    f32 = dict(dtype=torch.float32, device=device)
    return {
        "jacobi_rnn_iterate": (torch.ops.symkernels.jacobi_rnn_iterate,
                               (torch.empty(16, 2, 8, **f32), torch.empty(2, 8, **f32), torch.empty(8, 8, **f32),
                                torch.empty(8, **f32), torch.empty(16, 2, 8, **f32), 0, 4, 0.0, "elman", "tanh",
                                False)),
    }
