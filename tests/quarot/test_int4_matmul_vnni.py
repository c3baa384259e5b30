"""int4_matmul's VNNI paths (csrc/quarot/int4_matmul_vnni.cpp): zmm AVX512-VNNI and the ymm kernel (VEX
AVX-VNNI, or its EVEX AVX512VL-VNNI encoding where the CPU lacks AVX-VNNI), forced through
SYMKERNELS_INT4_ISA. Exact int32 accumulation (unit scales: the output is the integer dot product) over every
tile shape (M = 1, 2, 3-4, ≥ 5 pick different micro-kernels; the last row tile is 1, 2, 4 or a full tile),
partial column groups, K tails (masked / zero-padded last block), K over one K chunk (4096 codes), several
column chunks per thread, M = 0, K = 0, non-contiguous inputs (the epilogue of every path: test_int4_matmul.py);
and the zmm path's packed-weight route from 48 rows (its own tests below: tiles of 6 rows, groups of 64
columns, K in byte quads, transposed 16 quads at a time)."""
import pytest
import torch

import symkernels
from symkernels import _backend
from symkernels.quarot import reference

pytestmark = pytest.mark.skipif(not _backend.backend_status("cpu"), reason="cpu backend unavailable")

# Both names the forced ymm kernel may run under: VEX where the CPU has AVX-VNNI, else the EVEX encoding.
_RAN = {"avx512": {"avx512"}, "avxvnni": {"avxvnni", "avxvnni-evex"}}


def _force(monkeypatch, isa):
    monkeypatch.setenv("SYMKERNELS_INT4_ISA", isa)
    ran = torch.ops.symkernels.int4_matmul_cpu_isa(16)
    if ran not in _RAN[isa]:
        pytest.skip(f"this CPU has no {isa} VNNI path for int4_matmul (falls back to {ran})")
    return ran


def _codes(rows, k, gen):
    q = torch.randint(-8, 8, (rows, k), generator=gen, dtype=torch.int8)
    return reference.pack_int4(q), q


def _exact(m, n, k, gen):
    a_p, a = _codes(m, k, gen)
    w_p, w = _codes(n, k, gen)
    out = symkernels.int4_matmul(a_p, torch.ones(m, 1), w_p, torch.ones(n, 1), backend="cpu")
    torch.testing.assert_close(out, (a.long() @ w.long().T).float(), atol=0, rtol=0,
                               msg=lambda s: f"m={m} n={n} k={k}: {s}")


# M: every tile configuration and last-tile height; N: partial groups of 3, 4 and 6 columns; K: 2 (one
# byte), tails around the 32/64-byte blocks, K over the 4096-code chunk with a tail.
_SHAPES = [(1, 1, 2), (1, 7, 62), (1, 13, 128), (2, 5, 130), (2, 11, 4098), (3, 5, 64), (4, 9, 126), (5, 4, 200),
           (6, 3, 256), (7, 10, 66), (8, 8, 8200), (11, 37, 190), (13, 2, 4096), (17, 31, 1000), (300, 37, 200)]


@pytest.mark.parametrize("isa", ["avx512", "avxvnni"])
def test_vnni_paths_exact(monkeypatch, isa):
    ran = _force(monkeypatch, isa)
    gen = torch.Generator().manual_seed(21)
    for m, n, k in _SHAPES:
        _exact(m, n, k, gen)
    assert torch.ops.symkernels.int4_matmul_cpu_isa(1) == ran


@pytest.mark.parametrize("isa", ["avx512", "avxvnni"])
def test_vnni_many_column_chunks(monkeypatch, isa):
    """N large enough that each thread walks several L2 chunks of column groups, plus a partial one."""
    _force(monkeypatch, isa)
    gen = torch.Generator().manual_seed(22)
    _exact(9, 1001, 2 * 4100, gen)  # kb = 4100: a chunk is 20 groups of 3 (zmm) or 31 of 2 (ymm)


@pytest.mark.parametrize("isa", ["avx512", "avxvnni"])
def test_vnni_extreme_codes(monkeypatch, isa):
    """|acc| = 64·K with every code −8, and mixed −8 / 7 weights: no saturation, no overflow."""
    _force(monkeypatch, isa)
    for m, n, k in ((1, 3, 4096), (7, 5, 8202)):
        a = torch.full((m, k), -8, dtype=torch.int8)
        w = torch.where(torch.arange(n * k).reshape(n, k) % 3 == 0, 7, -8).to(torch.int8)
        out = symkernels.int4_matmul(reference.pack_int4(a), torch.ones(m, 1), reference.pack_int4(w),
                                     torch.ones(n, 1), backend="cpu")
        torch.testing.assert_close(out, (a.long() @ w.long().T).float(), atol=0, rtol=0)


@pytest.mark.parametrize("isa", ["avx512", "avxvnni"])
def test_vnni_empty_and_noncontiguous(monkeypatch, isa):
    _force(monkeypatch, isa)
    gen = torch.Generator().manual_seed(23)
    w_p, w = _codes(5, 96, gen)
    out = symkernels.int4_matmul(torch.zeros(0, 48, dtype=torch.uint8), torch.ones(0, 1), w_p, torch.ones(5, 1),
                                 backend="cpu")
    assert out.shape == (0, 5)
    # K = 0: every dot product is the empty sum, the output is the bias (or 0)
    for m in (1, 7):
        a0, w0, bias = torch.zeros(m, 0, dtype=torch.uint8), torch.zeros(4, 0, dtype=torch.uint8), torch.randn(4)
        out = symkernels.int4_matmul(a0, torch.ones(m, 1), w0, torch.ones(4, 1), bias, backend="cpu")
        torch.testing.assert_close(out, bias.expand(m, 4), atol=0, rtol=0)
        out = symkernels.int4_matmul(a0, torch.ones(m, 1), w0, torch.ones(4, 1), backend="cpu")
        assert torch.equal(out, torch.zeros(m, 4))
    # rows of a wider buffer, and a transposed-then-transposed-back weight: both strided views
    a_wide = torch.randint(0, 256, (6, 100), generator=gen, dtype=torch.uint8)
    a_view = a_wide[:, 2:50]
    w_view = w_p.T.contiguous().T
    assert not a_view.is_contiguous() and not w_view.is_contiguous()
    out = symkernels.int4_matmul(a_view, torch.ones(6, 1), w_view, torch.ones(5, 1), backend="cpu")
    expected = (reference.unpack_int4(a_view).long() @ w.long().T).float()
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


# The packed route (M ≥ 48 on the zmm path): M = 48 (its threshold) and last tiles of 1-5 of the 6 rows;
# N: one column, partial and several 64-column groups; K/2 % 4 = 0, 1, 2, 3 (zero-padded last quad), quads
# not a multiple of the 16 transposed at once, K = 2; kb = 4100 makes each group its own L2 chunk (a thread
# walks several, the last one partial).
_PACKED_SHAPES = [(48, 64, 128), (64, 64, 128), (65, 1, 2), (66, 63, 130), (67, 65, 4), (68, 129, 6), (69, 200, 1000),
                  (70, 200, 8200), (131, 70, 62)]


def test_vnni_packed_route_exact(monkeypatch):
    _force(monkeypatch, "avx512")
    gen = torch.Generator().manual_seed(24)
    for m, n, k in _PACKED_SHAPES:
        _exact(m, n, k, gen)
    # extreme codes (|acc| = 64·K) and K = 0 through the packed route too
    a = torch.full((64, 8202), -8, dtype=torch.int8)
    w = torch.where(torch.arange(5 * 8202).reshape(5, 8202) % 3 == 0, 7, -8).to(torch.int8)
    out = symkernels.int4_matmul(reference.pack_int4(a), torch.ones(64, 1), reference.pack_int4(w),
                                 torch.ones(5, 1), backend="cpu")
    torch.testing.assert_close(out, (a.long() @ w.long().T).float(), atol=0, rtol=0)
    bias = torch.randn(3)
    out = symkernels.int4_matmul(torch.zeros(64, 0, dtype=torch.uint8), torch.ones(64, 1),
                                 torch.zeros(3, 0, dtype=torch.uint8), torch.ones(3, 1), bias, backend="cpu")
    torch.testing.assert_close(out, bias.expand(64, 3), atol=0, rtol=0)


def test_vnni_packed_route_splits_rows(monkeypatch):
    """Fewer 64-column groups than threads: the threads split each group's row tiles too (evenly, unevenly,
    more threads than tiles)."""
    _force(monkeypatch, "avx512")
    gen = torch.Generator().manual_seed(25)
    threads = torch.get_num_threads()
    try:
        for t in (3, 4, 16):
            torch.set_num_threads(t)
            for m, n, k in ((48, 64, 130), (66, 5, 200), (200, 130, 64)):
                _exact(m, n, k, gen)
    finally:
        torch.set_num_threads(threads)


def test_auto_isa_prefers_zmm_vnni(monkeypatch):
    """Unforced, a CPU with AVX512-VNNI (and no AMX) runs the zmm kernel at every M."""
    monkeypatch.delenv("SYMKERNELS_INT4_ISA", raising=False)
    ran = {torch.ops.symkernels.int4_matmul_cpu_isa(m) for m in (1, 16, 2048)}
    flags = _backend.cpu_flags()
    if "avx512_vnni" not in flags or "amx_int8" in flags:
        pytest.skip("needs a CPU with AVX512-VNNI and without AMX-INT8")
    assert ran == {"avx512"}


def test_int8_dot_peak_helper():
    from symkernels import _C

    flags = _backend.cpu_flags()
    for isa in ("avx512", "avx2", "auto"):
        peak = _C.int8_dot_peak(isa=isa, threads=1, seconds=0.02, repeats=2)
        assert peak["threads"] == 1
        if peak["isa"].startswith("none"):
            assert peak["ops_per_s"] == 0.0
        else:
            assert peak["ops_per_s"] > 1e9, peak  # any AVX2 core does billions of int8 ops per second
    if "avx512_vnni" in flags:
        assert _C.int8_dot_peak(isa="avx512", threads=1, seconds=0.02)["isa"] == "avx512_vnni"
        ymm = _C.int8_dot_peak(isa="avx2", threads=1, seconds=0.02)["isa"]
        assert ymm == ("avx_vnni" if "avx_vnni" in flags else "avx512vl_vnni")
    elif "avx2" in flags and "avx_vnni" not in flags:  # AVX2 without VNNI: the vpmaddubsw sequence
        assert _C.int8_dot_peak(isa="auto", threads=1, seconds=0.02)["isa"] == "avx2"
        assert _C.int8_dot_peak(isa="avx512", threads=1, seconds=0.02)["isa"].startswith("none")
