"""The C++ CPU FWHT kernel's own paths (csrc/hadamard/hadamard_transform_cpu.cpp), through the bare dispatcher op.

Rows of ≤ 16 vectors are transformed in registers, longer ones in a leaf pass plus 1–2 passes of up to
four strides; fp16/bf16 are widened and rounded with vector code. Every size 2..2^15 runs here in every dtype, with
odd row counts, strided inputs, empty batches and non-finite values.
"""
import math

import pytest
import torch

from symkernels._testing import assert_close
from tests.conftest import require_backend

ALL_LOG2 = list(range(1, 16))
HALF_TYPES = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _native():
    require_backend("cpu")


def op(x, scale):
    return torch.ops.symkernels.hadamard_transform(x, scale)


def _same_bits(actual, expected):
    """Bit-identical, except that NaNs only have to be NaN in the same places (their payloads differ
    between c10's scalar casts, used by the kernel, and PyTorch's vectorized ones)."""
    nan = expected.isnan()
    return torch.equal(actual.isnan(), nan) and torch.equal(actual[~nan].view(torch.int16),
                                                            expected[~nan].view(torch.int16))


def _truth(x, scale):
    """Float64 x @ H_n.T * scale through the Sylvester recursion (independent of the C++ code)."""
    n = x.shape[-1]
    y = x.double().reshape(-1, n)
    h = 1
    while h < n:
        y = y.reshape(-1, n // (2 * h), 2, h)
        y = torch.stack((y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]), dim=2)
        h *= 2
    return y.reshape(x.shape) * scale


@pytest.mark.parametrize("log2_n", ALL_LOG2)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [1, 3])
def test_every_size_matches_float64_truth(log2_n, dtype, rows):
    n = 1 << log2_n
    x = torch.randn(rows, n, dtype=dtype)
    scale = 1 / math.sqrt(n)
    out = op(x, scale)
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous()
    assert_close(out.double(), _truth(x, scale), dtype=dtype, msg=f"n={n}")


@pytest.mark.parametrize("log2_n", ALL_LOG2)
@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_half_types_are_the_fp32_transform_rounded_once(log2_n, dtype):
    """fp16/bf16 rows are computed in fp32 exactly as fp32 rows are, then rounded once: bit for bit the
    fp32 op's output cast to the half type."""
    n = 1 << log2_n
    x = (torch.randn(5, n) * 4).to(dtype)
    scale = 1 / math.sqrt(n)
    out = op(x, scale)
    assert out.dtype == dtype and out.shape == x.shape
    expected = op(x.float(), scale).to(dtype)
    assert _same_bits(out, expected), f"n={n}"


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_half_conversions_cover_special_values(dtype):
    """Subnormals, the largest finite values, overflow to inf and underflow to zero in both directions."""
    info = torch.finfo(dtype)
    special = torch.tensor([info.tiny, -info.tiny, info.tiny / 8, info.max, -info.max, 0.0, -0.0, 1.0,
                            info.eps, 3.0, -5.5, 1e-30, 65504.0, 7.0, 0.5, -2.0])
    x = special.to(dtype).reshape(1, 16).repeat(3, 1)
    for scale in (1.0, 1 / 4, 8.0, 1e-3):
        out = op(x, scale)
        expected = op(x.float(), scale).to(dtype)
        assert _same_bits(out, expected), f"scale={scale}"
    # Identity-like check through the scale: a single nonzero per row spreads to every output.
    for value in special.tolist():
        row = torch.zeros(1, 64, dtype=dtype)
        row[0, 5] = value
        out = op(row, 1.0)
        expected = op(row.float(), 1.0).to(dtype)
        assert _same_bits(out, expected), f"value={value}"


@pytest.mark.parametrize("log2_n", ALL_LOG2)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, *HALF_TYPES])
def test_nan_and_inf_propagate_at_every_size(log2_n, dtype):
    n = 1 << log2_n
    x = torch.randn(3, n).to(dtype)
    x[0, (7 * n) // 11] = float("nan")
    x[1, (3 * n) // 5] = float("inf")
    out = op(x, 1 / math.sqrt(n))
    assert out[0].isnan().all(), "one NaN input reaches every output of its row"
    assert out[1].isinf().all(), "one inf input (and finite others) makes every output of its row ±inf"
    assert torch.isfinite(out[2]).all(), "other rows are untouched"


@pytest.mark.parametrize("log2_n", [1, 4, 8, 9, 12, 15])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, *HALF_TYPES])
def test_strided_inputs(log2_n, dtype):
    n = 1 << log2_n
    wide = torch.randn(3, 2 * n).to(dtype)
    x = wide[:, ::2]
    assert not x.is_contiguous()
    assert torch.equal(op(x, 0.5).view(torch.uint8), op(x.contiguous(), 0.5).view(torch.uint8))
    t = torch.randn(n, 5).to(dtype).T  # last dim strided
    assert torch.equal(op(t, 0.5).view(torch.uint8), op(t.contiguous(), 0.5).view(torch.uint8))


@pytest.mark.parametrize("shape", [(0, 2), (0, 4096), (3, 0, 32768), (0, 256)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_empty_batches(shape, dtype):
    out = op(torch.empty(shape, dtype=dtype), 1.0)
    assert out.shape == shape and out.dtype == dtype


@pytest.mark.parametrize("rows", [1, 7, 33, 1001])
def test_odd_row_counts_split_across_threads(rows):
    x = torch.randn(rows, 512)
    expected = torch.cat([op(x[i:i + 1], 0.25) for i in range(rows)])
    assert torch.equal(op(x, 0.25), expected)


def test_large_outputs_are_independent_and_resizable():
    """Multi-MiB outputs: a live output is never handed out twice, a recycled buffer is fully overwritten,
    and the storage can still grow."""
    x = torch.randn(2048, 1024)  # 8 MiB
    first = op(x, 0.5)
    second = op(x * 2, 0.5)
    assert first.data_ptr() != second.data_ptr()
    assert torch.equal(second, 2 * first)
    del second
    third = op(-x, 0.5)  # may get second's memory back from the allocator
    assert torch.equal(third, -first)
    third.resize_(4096, 1024)
    third[2048:] = 1.0
    assert torch.equal(third[:2048], -first)
    k = torch.ops.symkernels.hadamard_transform_k
    hk = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, 1.0]])
    y = torch.randn(1024, 4 * 512)  # 8 MiB
    a, b = k(y, hk, 0.5), k(y, hk, 0.5)
    assert a.data_ptr() != b.data_ptr() and torch.equal(a, b)
    assert_close(a, op(y, 0.5))  # hk = H_4, so H_4 ⊗ H_512 = H_2048


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("k_order,p", [(12, 1), (12, 4), (12, 16), (20, 64), (28, 8), (172, 32)])
def test_kronecker_half_rows_are_the_fp32_rows_rounded_once(dtype, k_order, p):
    """hadamard_transform_k widens and rounds fp16/bf16 rows with the vector conversions: bit for bit the
    fp32 op's output cast to the half type (tails of n mod 16 included)."""
    gen = torch.Generator().manual_seed(k_order * 1000 + p)
    hk = torch.randint(0, 2, (k_order, k_order), generator=gen).float() * 2 - 1
    x = (torch.randn(3, k_order * p, generator=gen) * 3).to(dtype)
    k = torch.ops.symkernels.hadamard_transform_k
    out = k(x, hk, 0.125)
    expected = k(x.float(), hk, 0.125).to(dtype)
    assert _same_bits(out, expected)
