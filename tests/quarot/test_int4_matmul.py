"""int4_matmul: exact int32 accumulation, fused fp32 epilogue, every backend vs the reference."""
import os

import pytest
import torch
from hypothesis import given, strategies as st

import symkernels
from symkernels import _backend
from symkernels._testing import assert_close
from symkernels.quarot import reference
from tests.conftest import backend_device


def _random_packed(rows, k, gen=None, extreme=False):
    if extreme:  # all −8: the largest |acc| (64·K), checks no int overflow / saturation
        q = torch.full((rows, k), -8, dtype=torch.int8)
    else:
        q = torch.randint(-8, 8, (rows, k), generator=gen, dtype=torch.int8)
    return reference.pack_int4(q), q


def test_reference_vs_plain_int_math():
    a_p, a = _random_packed(5, 64)
    w_p, w = _random_packed(7, 64)
    sa, sw = torch.rand(5, 1) + 0.1, torch.rand(7, 1) + 0.1
    bias = torch.randn(7)
    out = reference.int4_matmul(a_p, sa, w_p, sw, bias)
    expected = (a.int() @ w.int().T).float() * sa * sw.T + bias  # the stated truth
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


@pytest.mark.parametrize("m,n,k", [(1, 8, 64), (5, 12, 128), (17, 33, 192), (4, 4, 72), (3, 5, 2), (64, 70, 256)])
def test_exact_integer_accumulation(kernel_backend, m, n, k):
    """Unit scales, no bias: the output is the integer dot product itself, exactly."""
    if kernel_backend == "triton" and (m * n * k > 4096 * 8) and not torch.cuda.is_available():
        m, n = min(m, 16), min(n, 16)
    dev = backend_device(kernel_backend)
    gen = torch.Generator().manual_seed(m * 1000 + n)
    a_p, a = _random_packed(m, k, gen)
    w_p, w = _random_packed(n, k, gen)
    ones_a, ones_w = torch.ones(m, 1), torch.ones(n, 1)
    out = symkernels.int4_matmul(a_p.to(dev), ones_a.to(dev), w_p.to(dev), ones_w.to(dev), backend=kernel_backend)
    torch.testing.assert_close(out.cpu(), (a.long() @ w.long().T).float(), atol=0, rtol=0)


def test_extreme_codes_no_overflow(kernel_backend):
    dev = backend_device(kernel_backend)
    k = 4096 if kernel_backend != "triton" or torch.cuda.is_available() else 256
    a_p, _ = _random_packed(2, k, extreme=True)
    w_p, _ = _random_packed(3, k, extreme=True)
    out = symkernels.int4_matmul(a_p.to(dev), torch.ones(2, 1, device=dev), w_p.to(dev), torch.ones(3, 1, device=dev),
                                 backend=kernel_backend, out_dtype=torch.float32)
    assert bool((out.cpu() == 64.0 * k).all()), "acc = 64·K must be exact (QuaRot's fp16 epilogue gives inf here)"


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_epilogue_vs_reference(kernel_backend, out_dtype, with_bias):
    if kernel_backend == "triton" and out_dtype == torch.bfloat16 and not torch.cuda.is_available():
        pytest.skip("no bf16 in the Triton interpreter")
    dev = backend_device(kernel_backend)
    gen = torch.Generator().manual_seed(3)
    m, n, k = 9, 20, 128
    a_p, _ = _random_packed(m, k, gen)
    w_p, _ = _random_packed(n, k, gen)
    sa, sw = torch.rand(m, 1, generator=gen) * 0.1, torch.rand(n, 1, generator=gen) * 0.01
    bias = torch.randn(n, generator=gen).to(torch.float16) if with_bias else None
    args = [t.to(dev) if t is not None else None for t in (a_p, sa, w_p, sw, bias)]
    out = symkernels.int4_matmul(*args, out_dtype=out_dtype, backend=kernel_backend)
    ref = reference.int4_matmul(a_p, sa.reshape(-1), w_p, sw.reshape(-1), bias, out_dtype)
    assert out.dtype == out_dtype and out.shape == (m, n)
    assert_close(out.cpu(), ref)


@given(m=st.integers(0, 9), n=st.integers(0, 9), kb=st.integers(0, 40), seed=st.integers(0, 2**16),
       noncontig=st.booleans())
def test_hypothesis_shapes(m, n, kb, seed, noncontig):
    gen = torch.Generator().manual_seed(seed)
    a_p = torch.randint(0, 256, (m, 2 * kb), generator=gen, dtype=torch.uint8)
    w_p = torch.randint(0, 256, (n, kb), generator=gen, dtype=torch.uint8)
    a_p = a_p[:, ::2] if noncontig else a_p[:, :kb]
    sa, sw = torch.rand(m, 1, generator=gen), torch.rand(n, generator=gen)
    ref = reference.int4_matmul(a_p, sa.reshape(-1), w_p, sw, None)
    for b in ("cpu", "triton"):
        if not _backend.backend_status(b) or (b == "triton" and (torch.cuda.is_available() or m * n == 0)):
            continue
        out = symkernels.int4_matmul(a_p, sa, w_p, sw, backend=b)
        assert out.shape == (m, n)
        assert_close(out, ref, msg=f"{b} m={m} n={n} kb={kb}")


def test_quantized_pipeline_matches_float_matmul():
    """quantize → int4_matmul approximates x @ wᵀ within the INT4 error (sanity of layouts and scales)."""
    x, w = torch.randn(16, 256), torch.randn(32, 256)
    a_p, sa = symkernels.quantize_int4(x)
    w_p, sw = symkernels.quantize_int4(w)
    out = symkernels.int4_matmul(a_p, sa, w_p, sw)
    exact = x @ w.T
    rel = (out - exact).norm() / exact.norm()
    assert rel < 0.25, rel
    deq = symkernels.dequantize_int4(a_p, sa) @ symkernels.dequantize_int4(w_p, sw).T
    assert_close(out, deq)


def test_bad_inputs():
    a_p, w_p = torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(3, 8, dtype=torch.uint8)
    sa, sw = torch.ones(2, 1), torch.ones(3, 1)
    with pytest.raises(TypeError, match="a_packed must be a uint8"):
        symkernels.int4_matmul(a_p.to(torch.int8), sa, w_p, sw)
    with pytest.raises(ValueError, match="same K/2"):
        symkernels.int4_matmul(a_p, sa, torch.zeros(3, 4, dtype=torch.uint8), sw)
    with pytest.raises(ValueError, match="a_scale must have shape"):
        symkernels.int4_matmul(a_p, torch.ones(3, 1), w_p, sw)
    with pytest.raises(ValueError, match="w_scale must have shape"):
        symkernels.int4_matmul(a_p, sa, w_p, torch.ones(2, 1))
    with pytest.raises(TypeError, match="w_scale must be a float32"):
        symkernels.int4_matmul(a_p, sa, w_p, sw.half())
    with pytest.raises(ValueError, match="bias must have shape"):
        symkernels.int4_matmul(a_p, sa, w_p, sw, torch.ones(2))
    with pytest.raises(TypeError, match="out_dtype"):
        symkernels.int4_matmul(a_p, sa, w_p, sw, out_dtype=torch.int32)
    with pytest.raises(ValueError, match="2-D"):
        symkernels.int4_matmul(a_p[None], sa, w_p, sw)
    if _backend.backend_status("cpu"):
        with pytest.raises(ValueError, match="same K/2"):
            torch.ops.symkernels.int4_matmul(a_p, sa, torch.zeros(3, 4, dtype=torch.uint8), sw, None, torch.float32)
        with pytest.raises(TypeError, match="uint8"):
            torch.ops.symkernels.int4_matmul(a_p.to(torch.int8), sa, w_p, sw, None, torch.float32)


def test_opcheck_int4_matmul():
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    gen = torch.Generator().manual_seed(0)
    for m, n, kb, bias in ((3, 5, 32, None), (4, 4, 40, torch.randn(4)), (0, 3, 8, None)):
        a = torch.randint(0, 256, (m, kb), generator=gen, dtype=torch.uint8)
        w = torch.randint(0, 256, (n, kb), generator=gen, dtype=torch.uint8)
        torch.library.opcheck(torch.ops.symkernels.int4_matmul,
                              (a, torch.rand(m), w, torch.rand(n), bias, torch.float16))


def _cpu_isa_now(m=16):
    """The CPU path int4_matmul takes for m rows under the current SYMKERNELS_INT4_ISA (after its fallback)."""
    return torch.ops.symkernels.int4_matmul_cpu_isa(m)


# Every tail of the AMX kernel: M around the 16-row activation tile and the 2-tile row pairs (1, 15, 16, 17,
# 33, 300 with a 2×2 block and a lone group), odd N (strips of 32 = 2 tiles of 16, zero rows), K/2 not a
# multiple of 32 (zero-padded 64-code chunk), K < 64, K = 2; the VNNI path's 8-byte tail (K/2 = 40) and its
# pre-unpacked panel (M ≥ 16).
_ISA_SHAPES = ((1, 9, 80), (6, 5, 512), (13, 17, 64), (21, 70, 80), (15, 33, 130), (16, 31, 62), (17, 47, 2),
               (33, 65, 192), (300, 37, 200))


def _check_isa_exact(gen, shapes=_ISA_SHAPES):
    for m, n, k in shapes:
        a_p, a = _random_packed(m, k, gen)
        w_p, w = _random_packed(n, k, gen)
        out = symkernels.int4_matmul(a_p, torch.ones(m, 1), w_p, torch.ones(n, 1), backend="cpu")
        torch.testing.assert_close(out, (a.long() @ w.long().T).float(), atol=0, rtol=0,
                                   msg=lambda s: f"m={m} n={n} k={k}: {s}")
    # extreme codes: activations all −8, weights only −8 / 7, so |acc| reaches 64·K; exact in fp32 here
    m, n, k = 19, 21, 1000
    a = torch.full((m, k), -8, dtype=torch.int8)
    w = torch.where(torch.rand(n, k, generator=gen) < 0.5, -8, 7).to(torch.int8)
    out = symkernels.int4_matmul(reference.pack_int4(a), torch.ones(m, 1), reference.pack_int4(w), torch.ones(n, 1),
                                 backend="cpu")
    torch.testing.assert_close(out, (a.long() @ w.long().T).float(), atol=0, rtol=0)


@pytest.mark.parametrize("isa", ["amx", "avx512", "avxvnni", "avx2", "scalar", ""])
def test_every_cpu_isa_path_exact(monkeypatch, isa):
    """The CPU kernel picks AMX/VNNI/AVX2/scalar at run time; force each path the CPU has and prove it ran.
    avxvnni is the ymm VNNI kernel: VEX AVX-VNNI, or its EVEX encoding ("avxvnni-evex") on AVX-512 CPUs."""
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    monkeypatch.setenv("SYMKERNELS_INT4_ISA", isa)
    ran = _cpu_isa_now()
    if isa:  # a forced path does not depend on M
        assert {_cpu_isa_now(m) for m in (1, 4, 5, 300)} == {ran}
    if isa and ran != isa and not (isa == "avxvnni" and ran == "avxvnni-evex"):
        pytest.skip(f"this CPU/OS has no {isa} path for int4_matmul (it falls back to {ran}; cpu flags with "
                    f"amx/vnni: {[f for f in sorted(_backend.cpu_flags()) if 'amx' in f or 'vnni' in f]})")
    _check_isa_exact(torch.Generator().manual_seed(11))


def test_forced_amx_falls_back_without_amx(monkeypatch):
    """SYMKERNELS_INT4_ISA=amx on a CPU (or kernel) without AMX-INT8 silently takes the best other path."""
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    monkeypatch.setenv("SYMKERNELS_INT4_ISA", "amx")
    if _cpu_isa_now() == "amx":
        pytest.skip("this CPU has AMX-INT8, so the forced path runs (test_every_cpu_isa_path_exact[amx]); "
                    "the fallback is exercised on CPUs without it")
    assert _cpu_isa_now() in ("avx512", "avxvnni", "avx2", "scalar")
    _check_isa_exact(torch.Generator().manual_seed(12), _ISA_SHAPES[:4])


def test_auto_isa_keeps_vnni_at_decode_sizes(monkeypatch):
    """Unforced, an AMX CPU runs M ≤ 2 on VNNI (faster there: W is read once and unpacked in registers)
    and larger M on AMX tiles; both give the exact product."""
    monkeypatch.delenv("SYMKERNELS_INT4_ISA", raising=False)
    if not _backend.backend_status("cpu") or _cpu_isa_now(16) != "amx":
        pytest.skip("no AMX-INT8 path on this CPU/OS")
    assert [_cpu_isa_now(m) for m in (1, 2, 3, 16)] == ["avx512", "avx512", "amx", "amx"]
    _check_isa_exact(torch.Generator().manual_seed(13), ((1, 33, 130), (2, 17, 64), (3, 47, 62)))


# A forced path's name as int4_matmul_cpu_isa reports it (the ymm kernel runs EVEX-encoded on AVX-512 CPUs
# without AVX-VNNI).
_PATH_NAMES = {"amx": {"amx"}, "avx512": {"avx512"}, "avxvnni": {"avxvnni", "avxvnni-evex"}}


@pytest.mark.parametrize("isa", sorted(_PATH_NAMES))
def test_epilogue_bitwise_vs_reference(monkeypatch, isa):
    """Every CPU path's epilogue computes (fp32(acc)·sa)·sw + bias in the reference's order without FMA
    contraction and rounds once to the out dtype (RNE, as torch does): bit-identical to the reference."""
    monkeypatch.setenv("SYMKERNELS_INT4_ISA", isa)
    if not _backend.backend_status("cpu") or _cpu_isa_now() not in _PATH_NAMES[isa]:
        pytest.skip(f"no {isa} path for int4_matmul on this CPU/OS")
    gen = torch.Generator().manual_seed(4)
    m, n, k = 35, 49, 194
    a_p, _ = _random_packed(m, k, gen)
    w_p, _ = _random_packed(n, k, gen)
    sa, sw = torch.rand(m, 1, generator=gen) * 0.1, torch.rand(n, 1, generator=gen) * 0.01
    bias = torch.randn(n, generator=gen)
    for out_dtype in (torch.float32, torch.float16, torch.bfloat16):
        for b in (None, bias):
            out = symkernels.int4_matmul(a_p, sa, w_p, sw, b, out_dtype=out_dtype, backend="cpu")
            ref = reference.int4_matmul(a_p, sa.reshape(-1), w_p, sw.reshape(-1), b, out_dtype)
            assert torch.equal(out, ref), (out_dtype, b is None, (out.float() - ref.float()).abs().max())


@given(m=st.integers(0, 40), n=st.integers(0, 40), kb=st.integers(0, 70), seed=st.integers(0, 2**16),
       isa=st.sampled_from(["amx", "avx512", "avxvnni", "avx2", "scalar"]))
def test_hypothesis_cpu_isa_exact(m, n, kb, seed, isa):
    """Random shapes through every CPU path, exact integer result (a forced path the CPU lacks falls back)."""
    if not _backend.backend_status("cpu"):
        return
    gen = torch.Generator().manual_seed(seed)
    a_p, a = _random_packed(m, 2 * kb, gen)
    w_p, w = _random_packed(n, 2 * kb, gen)
    old = os.environ.get("SYMKERNELS_INT4_ISA")
    os.environ["SYMKERNELS_INT4_ISA"] = isa
    try:
        out = symkernels.int4_matmul(a_p, torch.ones(m, 1), w_p, torch.ones(n, 1), backend="cpu")
    finally:
        if old is None:
            del os.environ["SYMKERNELS_INT4_ISA"]
        else:
            os.environ["SYMKERNELS_INT4_ISA"] = old
    expected = (a.long() @ w.long().T).float() if kb else torch.zeros(m, n)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


@pytest.mark.parametrize("kernel", ["mma", "dp4a"])
def test_cuda_both_kernels(monkeypatch, kernel):
    """The CUDA backend has two kernels (int8 tensor-core mma.sync from sm_80, __dp4a below); the glue
    picks by compute capability, SYMKERNELS_INT4_MATMUL_KERNEL forces one. Shapes hit every launch
    configuration of the mma kernel (M ≤ 16, ≤ 64, > 64), partial tiles in M and N, K not a multiple of
    the 64-code stage or of the 32-code MMA, K = 2, and K/2 % 16 != 0 plus a misaligned base pointer
    (the byte-gather path instead of cp.async)."""
    if not _backend.backend_status("cuda"):
        pytest.skip("cuda backend unavailable")
    if kernel == "mma" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("int8 mma.sync needs compute capability >= 8.0")
    monkeypatch.setenv("SYMKERNELS_INT4_MATMUL_KERNEL", kernel)
    gen = torch.Generator().manual_seed(5)
    shapes = [(1, 8, 64), (1, 4096, 4096), (7, 33, 2), (16, 70, 96), (17, 129, 130), (64, 64, 128),
              (65, 200, 30), (130, 129, 192), (300, 257, 1024)]
    for m, n, k in shapes:
        a_p, a = _random_packed(m, k, gen)
        w_p, w = _random_packed(n, k, gen)
        a_p, w_p = a_p.cuda(), w_p.cuda()
        out = symkernels.int4_matmul(a_p, torch.ones(m, 1, device="cuda"), w_p, torch.ones(n, 1, device="cuda"),
                                     backend="cuda")
        torch.testing.assert_close(out.cpu(), (a.long() @ w.long().T).float(), atol=0, rtol=0,
                                   msg=lambda s: f"{kernel} m={m} n={n} k={k}: {s}")
    # misaligned rows (K/2 = 32, base pointer offset by one byte) and the fused epilogue in every dtype
    m, n, k = 37, 45, 64
    a_p, _ = _random_packed(m, k, gen)
    w_p, _ = _random_packed(n, k, gen)
    a_mis = torch.empty(m * k // 2 + 1, dtype=torch.uint8, device="cuda")[1:].view(m, k // 2)
    a_mis.copy_(a_p)
    sa, sw, bias = torch.rand(m, 1, generator=gen) * 0.1, torch.rand(n, 1, generator=gen) * 0.01, torch.randn(n)
    for out_dtype in (torch.float32, torch.float16, torch.bfloat16):
        out = symkernels.int4_matmul(a_mis, sa.cuda(), w_p.cuda(), sw.cuda(), bias.cuda(), out_dtype=out_dtype,
                                     backend="cuda")
        ref = reference.int4_matmul(a_p, sa.reshape(-1), w_p, sw.reshape(-1), bias, out_dtype)
        assert_close(out.cpu(), ref, msg=f"{kernel} {out_dtype}")
