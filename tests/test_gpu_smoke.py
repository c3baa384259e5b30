"""Smoke suite: every public op × backend × dtype on two small shapes, against the op's reference backend.

Its job on a GPU machine (`make gpu-check`, stage b): one quick pass over every CUDA and Triton kernel on
CUDA tensors, and over the default route (backend=None: the dispatcher's CUDA key), before anything
slower runs. Without a GPU the same table runs the cpu backend and the Triton kernels in the interpreter
(smallest shape only), so CI checks the table itself; the cuda and default rows skip.

Case ids are `<op>-<backend>-<dtype>-s<shape index>`, e.g. `-k "cuda and float32 and s0"` selects one small
case per CUDA kernel (what tools/gpu_check.sh runs under compute-sanitizer).

Judging: float32/float64 against the reference in the same dtype with the tolerance table; float16/bfloat16
either by the table too (ops whose tests do so: gaunt, the int4_matmul epilogue) or by at most twice
PyTorch's own error (the reference run in that dtype) against the float64 truth; integer codes bit for bit.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import pytest
import torch

import symkernels
from symkernels import _backend
from symkernels._testing import assert_close, assert_within_torch_error
from symkernels.gaunt import ops as gaunt_ops
from symkernels.hadamard import ops as hadamard_ops
from symkernels.jacobi import ops as jacobi_ops
from symkernels.jvp import attention as attention_ops, ops as jvp_ops
from symkernels.jvp import attention_dual, layer_norm_dual, rms_norm_dual, softmax_dual
from symkernels.quarot import ops as quarot_ops, reference as quarot_reference
from tests.conftest import HAS_CUDA, require_backend, require_implemented, to_device

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
ALL_FLOATS = (F32, F64, F16, BF16)
DEFAULT = "default"  # backend=None: what a user gets, the dispatcher's kernel for the tensors' device


@dataclasses.dataclass(frozen=True)
class Op:
    name: str
    implemented: tuple[str, ...]  # the op module's own list: one truth for which backends exist
    dtypes: tuple[torch.dtype, ...]
    shapes: tuple  # two small problem sizes, the first the smallest
    make: Callable  # (shape, dtype, generator) -> tuple of CPU inputs
    call: Callable  # (inputs, dtype, backend or None) -> tensor or tuple of tensors
    half_rule: str = "torch_error"  # "torch_error" or "table": how float16/bfloat16 outputs are judged
    exact: bool = False  # integer outputs: equal to the reference bit for bit


def _randn(gen, *shape, dtype=F64):
    return torch.randn(*shape, generator=gen, dtype=F64).to(dtype)


def _make_rnn(cell):
    def make(shape, dtype, gen):
        T, B, I, H = shape
        G = 3 * H if cell == "gru" else H
        return (_randn(gen, T, B, I, dtype=dtype), 0.5 * _randn(gen, B, H, dtype=dtype),
                _randn(gen, G, I, dtype=dtype) / math.sqrt(I), 0.8 * _randn(gen, G, H, dtype=dtype) / math.sqrt(H),
                0.1 * _randn(gen, *((2, G) if cell == "gru" else (H,)), dtype=dtype))
    return make


def _make_int4_matmul(shape, dtype, gen):
    m, n, k = shape
    codes = lambda rows: torch.randint(-8, 8, (rows, k), generator=gen, dtype=torch.int8)  # noqa: E731
    return (quarot_reference.pack_int4(codes(m)), torch.rand(m, 1, generator=gen) * 0.1,
            quarot_reference.pack_int4(codes(n)), torch.rand(n, 1, generator=gen) * 0.01,
            torch.randn(n, generator=gen).to(F16))


def _row_inputs(shape, dtype, gen):
    """x, x_t, weight, weight_t, bias, bias_t with T = 2 tangents (row duals take a prefix of them)."""
    N = shape[-1]
    return (_randn(gen, *shape, dtype=dtype), _randn(gen, 2, *shape, dtype=dtype),
            1 + 0.1 * _randn(gen, N, dtype=dtype), _randn(gen, 2, N, dtype=dtype),
            _randn(gen, N, dtype=dtype), _randn(gen, 2, N, dtype=dtype))


OPS = [
    Op("hadamard", hadamard_ops.IMPLEMENTED, ALL_FLOATS, ((3, 64), (5, 1024)),
       lambda s, d, g: (_randn(g, *s, dtype=d),),
       lambda a, d, be: symkernels.hadamard_transform(a[0], a[0].shape[-1] ** -0.5, backend=be)),
    Op("hadamard_k", hadamard_ops.IMPLEMENTED, ALL_FLOATS, ((3, 48), (4, 28 * 8)),
       lambda s, d, g: (_randn(g, *s, dtype=d),),
       lambda a, d, be: symkernels.hadamard_transform(a[0], a[0].shape[-1] ** -0.5, backend=be)),
    Op("gaunt", gaunt_ops.IMPLEMENTED, ALL_FLOATS, ((4, 1, 1), (7, 2, 3)),
       lambda s, d, g: (_randn(g, s[0], (s[1] + 1) ** 2, dtype=d), _randn(g, s[0], (s[2] + 1) ** 2, dtype=d)),
       lambda a, d, be: symkernels.gaunt_tensor_product(a[0], a[1], backend=be), half_rule="table"),
    Op("quantize_int4", quarot_ops.QUANTIZE_IMPLEMENTED, ALL_FLOATS, ((4, 64), (3, 2, 96)),
       lambda s, d, g: ((_randn(g, *s) * torch.logspace(-2, 2, s[-1], dtype=F64)).to(d),),
       lambda a, d, be: symkernels.quantize_int4(a[0], clip_ratio=0.9, backend=be), exact=True),
    Op("int4_matmul", quarot_ops.MATMUL_IMPLEMENTED, (F32, F16, BF16), ((5, 7, 64), (17, 33, 128)),
       _make_int4_matmul, lambda a, d, be: symkernels.int4_matmul(*a, out_dtype=d, backend=be), half_rule="table"),
    Op("linear_dual", jvp_ops.IMPLEMENTED, ALL_FLOATS, ((3, 17, 16), (20, 64, 33)),
       lambda s, d, g: (_randn(g, s[0], s[1], dtype=d), _randn(g, 2, s[0], s[1], dtype=d),
                        _randn(g, s[2], s[1], dtype=d) / math.sqrt(s[1]), _randn(g, s[2], s[1], dtype=d),
                        _randn(g, s[2], dtype=d), _randn(g, 2, s[2], dtype=d)),
       lambda a, d, be: symkernels.linear_dual(*a, "gelu", backend=be)),
    Op("layer_norm_dual", jvp_ops.ROW_IMPLEMENTED, ALL_FLOATS, ((2, 3, 19), (7, 256)), _row_inputs,
       lambda a, d, be: layer_norm_dual(*a, backend=be)),
    Op("rms_norm_dual", jvp_ops.ROW_IMPLEMENTED, ALL_FLOATS, ((2, 3, 19), (7, 256)), _row_inputs,
       lambda a, d, be: rms_norm_dual(*a[:4], backend=be)),
    Op("softmax_dual", jvp_ops.ROW_IMPLEMENTED, ALL_FLOATS, ((2, 3, 19), (7, 256)), _row_inputs,
       lambda a, d, be: softmax_dual(*a[:2], backend=be)),
    Op("attention_dual", attention_ops.IMPLEMENTED, (F32, F64), ((2, 5, 7, 4), (3, 33, 20, 16)),
       lambda s, d, g: (_randn(g, s[0], s[1], s[3], dtype=d), _randn(g, s[0], s[2], s[3], dtype=d),
                        _randn(g, s[0], s[2], s[3], dtype=d), _randn(g, 2, s[0], s[1], s[3], dtype=d)),
       lambda a, d, be: attention_dual(*a, causal=True, backend=be)),
    Op("rnn_elman", jacobi_ops.IMPLEMENTED, (F32, F64), ((6, 2, 3, 4), (40, 3, 5, 16)), _make_rnn("elman"),
       lambda a, d, be: symkernels.jacobi.rnn(*a, backend=be)),
    Op("rnn_gru", jacobi_ops.IMPLEMENTED, (F32, F64), ((6, 2, 3, 4), (40, 3, 5, 16)), _make_rnn("gru"),
       lambda a, d, be: symkernels.jacobi.rnn(*a, cell="gru", backend=be)),
]

SMOKE_BACKENDS = ("cuda", "triton", DEFAULT, "cpu")
CASES = [pytest.param(op, backend, dtype, i, id=f"{op.name}-{backend}-{str(dtype)[6:]}-s{i}")
         for op in OPS for backend in SMOKE_BACKENDS for dtype in op.dtypes for i in range(len(op.shapes))]


def _outputs(result) -> tuple[torch.Tensor, ...]:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def _as_float64(inputs):
    return tuple(t.double() if t.is_floating_point() else t for t in inputs)


def _device_for(backend: str) -> torch.device:
    if backend == DEFAULT:
        if not HAS_CUDA:
            pytest.skip("without CUDA the default route is the cpu backend's (or the reference): run as 'cpu'")
        return torch.device("cuda")
    device = require_backend(backend)
    if backend == "cpu" and HAS_CUDA:
        pytest.skip("the CPU kernels are tested by the CPU suite; on a GPU machine this suite is about the GPU")
    return device


@pytest.mark.parametrize("op, backend, dtype, shape_index", CASES)
def test_op_matches_reference(op, backend, dtype, shape_index):
    if backend != DEFAULT:
        require_implemented(backend, op.implemented)
    device = _device_for(backend)
    interpreted = backend == "triton" and _backend.triton_interpreted()
    if interpreted and (shape_index > 0 or dtype == BF16):
        pytest.skip("Triton interpreter: the smallest shape, no bfloat16")
    gen = torch.Generator().manual_seed(shape_index)
    inputs = op.make(op.shapes[shape_index], dtype, gen)
    got = _outputs(op.call(to_device(inputs, device), dtype, None if backend == DEFAULT else backend))
    want = _outputs(op.call(inputs, dtype, "reference"))
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        g = g.cpu()
        assert g.shape == w.shape and g.dtype == w.dtype, f"output {i}: {g.shape} {g.dtype} vs {w.shape} {w.dtype}"
        msg = f"{op.name} {backend} {dtype} shape {op.shapes[shape_index]} output {i}"
        if op.exact or not g.is_floating_point():
            assert torch.equal(g, w), msg
        elif dtype in (F32, F64) or op.half_rule == "table":
            assert_close(g, w, msg=msg)
        else:
            truth = _outputs(op.call(_as_float64(inputs), F64, "reference"))[i]
            assert_within_torch_error(g, truth, w, msg=msg)


def test_table_covers_every_backend_of_every_op():
    # A new backend or op must show up here: the table is the GPU check's whole list of kernels to run.
    for op in OPS:
        assert set(op.implemented) - {"reference"} <= set(SMOKE_BACKENDS), op.name
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids))


def test_to_device_keeps_values_and_strides():
    # The helper every GPU test gets its tensors from (tests/conftest.py): a strided view stays strided.
    x = torch.randn(3, 8)[:, ::2]
    target = torch.device("cuda") if HAS_CUDA else torch.device("meta")
    moved = to_device({"x": x, "none": None, "pair": (x.T.contiguous(),)}, target)
    assert moved["none"] is None and moved["x"].device.type == target.type
    assert moved["x"].stride() == x.stride() and moved["pair"][0].stride() == (3, 1)
    if target.type == "cuda":
        assert torch.equal(moved["x"].cpu(), x)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device: Inductor compiles the Triton kernels for it")
@pytest.mark.parametrize("route", ["backend='triton'", "dispatcher op"])
def test_inductor_compiles_our_triton_kernel_into_its_code(route):
    # torch.compile must see the Triton kernel itself (wrap_triton under Dynamo for the public function's
    # Triton path, _library's decomposition for an op whose CUDA key is Triton), not an opaque call.
    from torch._inductor.utils import run_and_get_code

    from symkernels import _library

    require_backend("triton")
    if route == "dispatcher op" and not _library.REGISTERED["hadamard_transform"].triton:
        pytest.skip("the native CUDA build serves hadamard_transform's CUDA key")
    x = torch.randn(64, 256, device="cuda")
    if route == "dispatcher op":
        def f(t):
            return torch.ops.symkernels.hadamard_transform(t, 0.0625) * 2
    else:
        def f(t):
            return symkernels.hadamard_transform(t, 0.0625, backend="triton") * 2
    got, codes = run_and_get_code(torch.compile(f, fullgraph=True), x)
    assert any("_fwht_kernel" in code for code in codes), "Inductor's code does not launch _fwht_kernel"
    assert_close(got, hadamard_ops.hadamard_transform(x, 0.0625, backend="reference") * 2)
