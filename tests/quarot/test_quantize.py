"""quantize_int4 / dequantize_int4 / fake_quantize_int4: bit-exact codes, packing, fused rotation, STE."""
import math

import pytest
import torch
from hypothesis import given, strategies as st

import symkernels
from symkernels import _backend
from symkernels.hadamard import hk_for, matrices, reference as hadamard_reference
from symkernels.quarot import reference
from tests.conftest import backend_device

QUANT_BACKENDS = [b for b in ("cpu", "triton")]


def _require(b):
    status = _backend.backend_status(b)
    if not status:
        pytest.skip(f"backend {b!r} unavailable: {status.reason}")


def _independent_quantize(x: torch.Tensor, clip: float):
    """Per-element Python loop with numpy-free arithmetic: the reference's formula, independently."""
    rows = x.reshape(-1, x.shape[-1]).float()
    codes, scales = [], []
    for row in rows:
        amax = max((abs(v) for v in row.tolist()), default=0.0)
        s = float(torch.tensor(clip, dtype=torch.float32) * torch.tensor(amax, dtype=torch.float32) / 7.0)
        qs = []
        for v in row.tolist():
            t = float(torch.tensor(v, dtype=torch.float32) / torch.tensor(s, dtype=torch.float32)) if s else float("nan")
            qs.append(0 if math.isnan(t) else int(max(-8, min(7, round(t)))))  # Python round = half to even
        codes.append(qs)
        scales.append(s)
    return torch.tensor(codes, dtype=torch.int8).reshape(x.shape), torch.tensor(scales).reshape(*x.shape[:-1], 1)


def test_pack_unpack_round_trip_all_codes():
    q = torch.arange(-8, 8, dtype=torch.int8)
    pairs = torch.cartesian_prod(q, q).reshape(1, -1)  # every (even, odd) combination
    packed = reference.pack_int4(pairs)
    assert packed.shape == (1, 256)
    assert torch.equal(reference.unpack_int4(packed), pairs)
    assert sorted(packed.flatten().tolist()) == list(range(256)), "packing must be a bijection on bytes"
    # the documented order: even index in the low nibble, two's complement
    assert reference.pack_int4(torch.tensor([[-1, 2]], dtype=torch.int8)).item() == 0x2F
    assert reference.pack_int4(torch.tensor([[3, -8]], dtype=torch.int8)).item() == 0x83


def test_reference_matches_independent_loop():
    x = torch.randn(3, 10) * torch.tensor([1.0, 100.0, 1e-3])[:, None]
    x[1, 4] = 0.5 * 100.0 * 7 / 7  # arbitrary; ties are covered by the dedicated test
    for clip in (1.0, 0.9):
        packed, scale = reference.quantize_int4(x, clip)
        codes, s = _independent_quantize(x, clip)
        assert torch.equal(reference.unpack_int4(packed), codes)
        torch.testing.assert_close(scale, s, atol=0, rtol=0)


def test_round_half_to_even_ties(backend):
    if backend == "cuda":
        pytest.skip("quantize_int4 has no CUDA C++ kernel (Triton serves CUDA tensors)")
    device = backend_device(backend)
    # amax 7 → scale 1: x/scale = k + 0.5 exactly; half-to-even gives 0, 2, 2, −2, −2, 4 ...
    x = torch.tensor([[7.0, 0.5, 1.5, 2.5, -1.5, -2.5, 3.5, -7.0]], device=device)
    packed, scale = symkernels.quantize_int4(x, backend=backend)
    assert scale.item() == 1.0
    assert reference.unpack_int4(packed).tolist() == [[7, 0, 2, 2, -2, -2, 4, -7]]


@pytest.mark.parametrize("b", QUANT_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("clip", [1.0, 0.9])
def test_kernels_bit_exact_without_rotation(b, dtype, clip):
    _require(b)
    if b == "triton" and dtype == torch.bfloat16 and not torch.cuda.is_available():
        pytest.skip("no bf16 in the Triton interpreter")
    device = backend_device(b)
    x = (torch.randn(5, 2, 96) * torch.logspace(-3, 3, 96)).to(dtype).to(device)
    packed, scale = symkernels.quantize_int4(x, clip_ratio=clip, backend=b)
    rp, rs = reference.quantize_int4(x, clip)
    assert packed.shape == (5, 2, 48) and packed.dtype == torch.uint8
    assert scale.shape == (5, 2, 1) and scale.dtype == torch.float32
    assert torch.equal(packed.cpu(), rp.cpu()), "codes must be bit-identical to the reference"
    torch.testing.assert_close(scale.cpu(), rs.cpu(), atol=0, rtol=0)


@pytest.mark.parametrize("b", QUANT_BACKENDS)
@pytest.mark.parametrize("n", [64, 12, 28 * 4, 76 * 2, 172])
def test_fused_rotation_equals_unfused_same_backend(b, n):
    """Fused rotate+quantize = quantize(rotation by the same backend's Kronecker kernel), bit for bit."""
    _require(b)
    device = backend_device(b)
    if b == "triton" and n in (76 * 2, 172) and device.type == "cpu":
        n = 44  # K = 172 takes ~30 s in the interpreter; the Kronecker kernel tests cover it
    x = torch.randn(4, n, device=device)
    x[:, 3] *= 50  # an outlier channel, which the rotation spreads
    hk, rot_scale = hk_for(n, torch.float32, device), 1 / math.sqrt(n)
    if b == "triton":
        from symkernels.hadamard import triton as hadamard_triton

        rotated = hadamard_triton.hadamard_transform_k(x, hk, rot_scale)
    else:
        rotated = torch.ops.symkernels.hadamard_transform_k(x, hk, rot_scale)
    packed, scale = symkernels.quantize_int4(x, hadamard=True, clip_ratio=0.9, backend=b)
    up, us = symkernels.quantize_int4(rotated, clip_ratio=0.9, backend=b)
    assert torch.equal(packed, up)
    torch.testing.assert_close(scale, us, atol=0, rtol=0)


@pytest.mark.parametrize("backend_name", ["reference"] + QUANT_BACKENDS)
@pytest.mark.parametrize("n", [128, 20 * 4, 4864])
def test_fused_rotation_vs_dense_truth(backend_name, n):
    """Rotated codes within one step of the float64-rotation codes (rounding-boundary cases only)."""
    _require(backend_name)
    x = torch.randn(8, n)
    packed, scale = symkernels.quantize_int4(x, hadamard=True, backend=backend_name)
    truth = hadamard_reference.reference_dense(x, 1 / math.sqrt(n))
    q_truth = torch.clamp(torch.round(truth / scale.double()), -8, 7)
    diff = (reference.unpack_int4(packed).double() - q_truth).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01
    torch.testing.assert_close(scale.double(), truth.abs().amax(-1, keepdim=True) / 7, rtol=1e-6, atol=0)


def test_dequantize_error_bound():
    x = torch.randn(16, 256)
    packed, scale = symkernels.quantize_int4(x)
    xq = symkernels.dequantize_int4(packed, scale)
    assert bool(((xq - x).abs() <= scale / 2 + 1e-6).all()), "round-to-nearest error must be ≤ scale/2"
    assert symkernels.dequantize_int4(packed, scale, dtype=torch.float16).dtype == torch.float16


@pytest.mark.parametrize("b", ["reference"] + QUANT_BACKENDS)
def test_nan_inf_zero_rows(b):
    _require(b)
    x = torch.randn(4, 8)
    x[0] = 0.0
    x[1, 2] = float("nan")
    x[2, 5] = float("inf")
    packed, scale = symkernels.quantize_int4(x, backend=b)
    assert scale[0].item() == 0.0 and math.isnan(scale[1].item()) and math.isinf(scale[2].item())
    rp, rs = reference.quantize_int4(x)
    assert torch.equal(packed, rp)
    torch.testing.assert_close(scale, rs, atol=0, rtol=0, equal_nan=True)
    deq = symkernels.dequantize_int4(packed, scale)
    assert bool(deq[1].isnan().all()) and bool(deq[3].isfinite().all())


@given(rows=st.sampled_from([(), (0,), (1,), (3,), (2, 3)]), n2=st.integers(0, 40), noncontig=st.booleans(),
       clip=st.sampled_from([1.0, 0.95, 0.5]), seed=st.integers(0, 2**16))
def test_hypothesis_shapes(rows, n2, noncontig, clip, seed):
    n = 2 * n2
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(*rows, 2 * n, generator=gen) * 3
    x = base[..., ::2] if noncontig else base[..., :n].contiguous()
    rp, rs = reference.quantize_int4(x, clip)
    for b in QUANT_BACKENDS:
        if not _backend.backend_status(b) or (b == "triton" and torch.cuda.is_available()):
            continue
        packed, scale = symkernels.quantize_int4(x, clip_ratio=clip, backend=b)
        assert packed.shape == (*rows, n // 2) and scale.shape == (*rows, 1)
        assert torch.equal(packed, rp), b
        torch.testing.assert_close(scale, rs, atol=0, rtol=0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="must be even"):
        symkernels.quantize_int4(torch.randn(2, 7))
    with pytest.raises(TypeError, match="floating dtype"):
        symkernels.quantize_int4(torch.ones(2, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="clip_ratio"):
        symkernels.quantize_int4(torch.randn(2, 8), clip_ratio=1.5)
    with pytest.raises(ValueError, match="nearest supported sizes"):
        symkernels.quantize_int4(torch.randn(2, 428), hadamard=True)  # 428 = 4·107: no order serves it
    with pytest.raises(TypeError, match="uint8"):
        symkernels.dequantize_int4(torch.zeros(2, 4, dtype=torch.int8), torch.ones(2, 1))
    with pytest.raises(ValueError, match="scale must have shape"):
        symkernels.dequantize_int4(torch.zeros(2, 4, dtype=torch.uint8), torch.ones(2))
    if _backend.backend_status("cpu"):
        with pytest.raises(ValueError, match="must be even"):
            torch.ops.symkernels.quantize_int4(torch.randn(2, 7), 1.0, None, 1.0)
        with pytest.raises(ValueError, match="clip_ratio"):
            torch.ops.symkernels.quantize_int4(torch.randn(2, 8), 0.0, None, 1.0)


def test_opcheck_quantize():
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    for x, hk, rs in ((torch.randn(3, 16), None, 1.0),
                      (torch.randn(2, 24), hk_for(24, torch.float32, "cpu"), 24 ** -0.5),
                      (torch.randn(0, 8), None, 1.0), (torch.randn(2, 32, dtype=torch.float16), torch.ones(1, 1), 0.1)):
        torch.library.opcheck(torch.ops.symkernels.quantize_int4, (x, 0.9, hk, rs))


@pytest.mark.parametrize("b", ["reference"] + QUANT_BACKENDS)
def test_fake_quantize_ste_gradient(b):
    _require(b)
    x = torch.randn(3, 16, dtype=torch.float32, requires_grad=True)
    y = symkernels.fake_quantize_int4(x, backend=b)
    packed, scale = reference.quantize_int4(x.detach())
    torch.testing.assert_close(y.detach(), reference.dequantize_int4(packed, scale), atol=0, rtol=0)
    g = torch.randn_like(x)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, g, atol=0, rtol=0)  # straight through
    # with rotation: the gradient is exactly that of x ↦ x·Hᵀ/√n
    yr = symkernels.fake_quantize_int4(x, hadamard=True, backend=b)
    (gr,) = torch.autograd.grad(yr, x, g)
    torch.testing.assert_close(gr.double(), g.double() @ matrices.hadamard_matrix_any(16) / 4.0, atol=1e-6,
                               rtol=1e-6)


def test_triton_large_rotation_tile_rotates_then_quantizes(monkeypatch):
    """A rotation tile past hadamard_triton.MAX_TILE (n = 28·2048 on a GPU) is rotated by the two-pass
    Kronecker transform first, then quantized: forced at n = 12·64 here. Equal, bit for bit, to quantizing
    that rotation; codes within one step of the float64 rotation's."""
    _require("triton")
    from symkernels.hadamard import triton as hadamard_triton
    from symkernels.quarot import triton as quarot_triton

    monkeypatch.setattr(hadamard_triton, "MAX_TILE", 256)
    monkeypatch.setattr(quarot_triton, "MAX_TILE", 256)
    n = 12 * 64
    x = torch.randn(4, n)
    x[:, 3] *= 50
    hk, rot_scale = hk_for(n, torch.float32, x.device), 1 / math.sqrt(n)
    packed, scale = symkernels.quantize_int4(x, hadamard=True, clip_ratio=0.9, backend="triton")
    up, us = symkernels.quantize_int4(hadamard_triton.hadamard_transform_k(x, hk, rot_scale), clip_ratio=0.9,
                                      backend="triton")
    assert torch.equal(packed, up)
    torch.testing.assert_close(scale, us, atol=0, rtol=0)
    truth = hadamard_reference.reference_dense(x, 1 / math.sqrt(n))
    q_truth = torch.clamp(torch.round(truth / scale.double()), -8, 7)
    assert (reference.unpack_int4(packed).double() - q_truth).abs().max() <= 1


@pytest.mark.parametrize("n", [2 * 96 + 2, 1024])
def test_triton_streamed_rows_bit_exact(n, monkeypatch):
    """Rows past MAX_TILE are quantized in chunks (max|x|, then quantize and pack): forced here with
    chunks of 64 (n = 194: a partial last chunk), bit-exact against the reference, NaN rows included."""
    _require("triton")
    from symkernels.quarot import triton as quarot_triton

    monkeypatch.setattr(quarot_triton, "MAX_TILE", 64)
    monkeypatch.setattr(quarot_triton, "_STREAM_BLOCK", 64)
    x = torch.randn(5, n)
    x[1, n - 1] = 40.0  # the row max in the last chunk
    x[2, 7] = float("nan")
    packed, scale = symkernels.quantize_int4(x, clip_ratio=0.9, backend="triton")
    rp, rs = reference.quantize_int4(x, 0.9)
    assert torch.equal(packed, rp)
    torch.testing.assert_close(scale, rs, atol=0, rtol=0, equal_nan=True)
