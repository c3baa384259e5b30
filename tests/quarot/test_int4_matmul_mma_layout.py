"""CPU model of the CUDA tensor-core int4_matmul kernel's index mapping (csrc/quarot/int4_matmul_cuda.cu).

The kernel (int8 ``mma.sync.m16n8k32``; ``m16n8k64 .s4`` when built for sm_80–sm_89) has never executed:
it was written and compile-checked without a GPU. Its most likely bug is the mapping between packed
bytes, registers and the MMA fragment layouts, so this file re-implements that mapping — which
shared-memory word each lane reads, how ``unpack4`` splits it into int8x4 registers, which registers go
to which MMA operand, where each accumulator is stored — on top of an MMA modelled *only* from the PTX
ISA's fragment formulas, and checks that it reproduces the integer matmul exactly, edges included. What
it cannot check: the PTX semantics themselves (e.g. that .s4 element 0 is the lowest nibble) and the
pipeline's synchronisation. The CUDA test of the real kernels is ``test_cuda_both_kernels`` in
test_int4_matmul.py; it runs only on a GPU.
"""
import numpy as np
import pytest
import torch

from symkernels.quarot import reference

# Mirrors of the kernel's constants and launch configurations.
STAGE_BYTES = 32  # kMmaStageBytes: 64 codes per stage, two m16n8k32 MMAs
ROW_WORDS = STAGE_BYTES // 4 + 4  # kMmaRowWords
CONFIGS = {"decode": (16, 32, 1, 4), "medium": (64, 64, 2, 2), "prefill": (128, 128, 2, 4)}  # BM, BN, WARPS_M, WARPS_N

LANES = np.arange(32)
G, T = LANES // 4, LANES % 4  # groupID, threadID_in_group


def unpack4(words):
    """The kernel's byte trick, in uint32 arithmetic: packed word → (even int8x4, odd int8x4) as uint32."""
    words = words.astype(np.uint64)
    lo, hi = words & 0x0F0F0F0F, (words >> 4) & 0x0F0F0F0F
    even = (((lo ^ 0x08080808) + 0x78787878) & 0xFFFFFFFF) ^ 0x80808080
    odd = (((hi ^ 0x08080808) + 0x78787878) & 0xFFFFFFFF) ^ 0x80808080
    return even.astype(np.uint32), odd.astype(np.uint32)


def s8x4(reg):
    """uint32 register → its four int8 elements, low byte first (PTX 'elements low to high')."""
    return np.stack([((reg >> (8 * b)) & 0xFF).astype(np.uint8).view(np.int8) for b in range(4)], -1).astype(np.int64)


def mma_m16n8(a_regs, b_regs, elements, per_reg):
    """D = A·B for one warp from the PTX ISA fragment formulas of the integer m16n8kK MMAs (row.col).

    a_regs [32, 4], b_regs [32, 2] uint32 per lane, each register holding ``per_reg`` elements (``elements``
    splits one register, lowest first); K = 8·per_reg. With e = per_reg:
    A: row = g for a_i with 0 ≤ i < e or 2e ≤ i < 3e, else g + 8; col = e·t + (i mod e) (+ K/2 for i ≥ 2e).
    B: row = e·t + (i mod e) (+ K/2 for i ≥ e); col = g.   C/D: row = g (+ 8 for c2, c3); col = 2t + (i & 1).
    → d [32, 4] int64 per lane.
    """
    e, k = per_reg, 8 * per_reg
    a = np.zeros((16, k), np.int64)
    b = np.zeros((k, 8), np.int64)
    a_el = np.concatenate([elements(a_regs[:, r]) for r in range(4)], -1)  # [32, 4e]: a_0 .. a_(4e-1)
    b_el = np.concatenate([elements(b_regs[:, r]) for r in range(2)], -1)  # [32, 2e]: b_0 .. b_(2e-1)
    for i in range(4 * e):
        row = np.where((i < e) | ((i >= 2 * e) & (i < 3 * e)), G, G + 8)
        a[row, e * T + (i % e) + (k // 2 if i >= 2 * e else 0)] = a_el[:, i]
    for i in range(2 * e):
        b[e * T + (i % e) + (k // 2 if i >= e else 0), G] = b_el[:, i]
    c = a @ b
    return np.stack([c[G + 8 * (i // 2), 2 * T + (i % 2)] for i in range(4)], -1)


def s4x8(reg):
    """uint32 register → its eight signed 4-bit elements, lowest nibble first."""
    nib = np.stack([(reg >> (4 * e)) & 0xF for e in range(8)], -1).astype(np.int64)
    return np.where(nib >= 8, nib - 16, nib)


def mma_m16n8k32_s8(a_regs, b_regs):
    """m16n8k32 .s8: four int8 elements per register."""
    return mma_m16n8(a_regs, b_regs, s8x4, 4)


def mma_m16n8k64_s4(a_regs, b_regs):
    """m16n8k64 .s4: eight signed nibbles per register."""
    return mma_m16n8(a_regs, b_regs, s4x8, 8)


def stage_tile(packed, r0, rows, k0):
    """load_stage: rows [r0, r0+rows) × packed bytes [k0, k0+32) as words [rows, ROW_WORDS], zero-filled."""
    tile = np.zeros((rows, ROW_WORDS * 4), np.uint8)
    src = packed[r0:r0 + rows, k0:k0 + STAGE_BYTES]
    tile[:src.shape[0], :src.shape[1]] = src
    return tile.view("<u4")


def emulate_kernel(a_packed, w_packed, config, path):
    """Integer result of int4_matmul_mma_kernel (unit scales), block by block, warp by warp, lane by lane.

    path "s8": int8 m16n8k32 after unpack4 (sm_90 and the default); "s4": m16n8k64 on the packed words
    (code compiled for sm_80–sm_89)."""
    bm, bn, warps_m, warps_n = CONFIGS[config]
    m, kb = a_packed.shape
    n = w_packed.shape[0]
    wtm, wtn = bm // warps_m, bn // warps_n
    mi, nj = wtm // 16, wtn // 8
    out = np.full((m, n), -(2**40), np.int64)  # sentinel: every output must be written exactly by the epilogue
    steps = -(-kb // STAGE_BYTES)
    for m0 in range(0, m, bm):
        for n0 in range(0, n, bn):
            stages = [(stage_tile(a_packed, m0, bm, s * STAGE_BYTES), stage_tile(w_packed, n0, bn, s * STAGE_BYTES))
                      for s in range(steps)]
            for warp in range(warps_m * warps_n):
                wm, wn = (warp // warps_n) * wtm, (warp % warps_n) * wtn
                acc = np.zeros((mi, nj, 32, 4), np.int64)
                for sa, sw in stages:
                    if path == "s4":
                        for i in range(mi):
                            r = wm + i * 16 + G
                            af = np.stack([sa[r, T], sa[r + 8, T], sa[r, 4 + T], sa[r + 8, 4 + T]], -1)
                            for j in range(nj):
                                bf = np.stack([sw[wn + j * 8 + G, T], sw[wn + j * 8 + G, 4 + T]], -1)
                                acc[i, j] += mma_m16n8k64_s4(af, bf)
                        continue
                    for ks in range(STAGE_BYTES // 16):
                        word = ks * 4 + T
                        af = []
                        for i in range(mi):
                            e0, o0 = unpack4(sa[wm + i * 16 + G, word])
                            e1, o1 = unpack4(sa[wm + i * 16 + G + 8, word])
                            af.append(np.stack([e0, e1, o0, o1], -1))
                        bf = [np.stack(unpack4(sw[wn + j * 8 + G, word]), -1) for j in range(nj)]
                        for i in range(mi):
                            for j in range(nj):
                                acc[i, j] += mma_m16n8k32_s8(af[i], bf[j])
                for i in range(mi):
                    for j in range(nj):
                        for r in range(4):
                            row = m0 + wm + i * 16 + G + (r // 2) * 8
                            col = n0 + wn + j * 8 + 2 * T + (r % 2)
                            ok = (row < m) & (col < n)
                            out[row[ok], col[ok]] = acc[i, j, ok, r]
    return out


def test_unpack4_matches_nibble_codes():
    words = np.random.default_rng(0).integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)
    even, odd = unpack4(words)
    codes = reference.unpack_int4(torch.from_numpy(words.view(np.uint8).copy()).reshape(-1, 4)).numpy()
    np.testing.assert_array_equal(s8x4(even), codes[:, 0::2])
    np.testing.assert_array_equal(s8x4(odd), codes[:, 1::2])


def test_fragment_model_is_a_matmul():
    """The ISA-formula MMA model itself: each (row, k) of A and (k, col) of B is held by exactly one lane."""
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, (16, 32))
    b = rng.integers(-128, 128, (32, 8))
    pack = lambda x: (x.astype(np.int8).view(np.uint8).astype(np.uint32) << (8 * np.arange(4))).sum(-1).astype(np.uint32)
    g, k4 = G[:, None], 4 * T[:, None] + np.arange(4)  # per lane: its row/column and its 4 consecutive k
    a_regs = np.stack([pack(a[g, k4]), pack(a[g + 8, k4]), pack(a[g, 16 + k4]), pack(a[g + 8, 16 + k4])], -1)
    b_regs = np.stack([pack(b[k4, g]), pack(b[16 + k4, g])], -1)
    d = mma_m16n8k32_s8(a_regs, b_regs)
    c = a @ b
    np.testing.assert_array_equal(d, np.stack([c[G + 8 * (i // 2), 2 * T + (i % 2)] for i in range(4)], -1))


@pytest.mark.parametrize("path", ["s8", "s4"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("m,n,k", [(1, 8, 64), (5, 33, 2), (19, 40, 72), (37, 45, 190), (130, 129, 128)])
def test_kernel_mapping_reproduces_int_matmul(path, config, m, n, k):
    """Edge tiles in M and N, K not a multiple of the 64-code stage or of the 32-code MMA, K = 2."""
    gen = torch.Generator().manual_seed(m * 7919 + n * 31 + k)
    a = torch.randint(-8, 8, (m, k), generator=gen, dtype=torch.int8)
    w = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
    a[0, :] = -8  # the extreme code, at both operands
    w[0, :] = -8
    out = emulate_kernel(reference.pack_int4(a).numpy(), reference.pack_int4(w).numpy(), config, path)
    np.testing.assert_array_equal(out, (a.long() @ w.long().T).numpy())


def test_shared_memory_reads_are_bank_conflict_free_and_chunks_aligned():
    """One fragment load: the 32 lanes read word (ks·4 + t) of rows base + g (+ 8); 16-row steps keep it.
    (The s4 path reads words t and 4 + t: the same two patterns.)"""
    for base in (0, 8, 16, 48):
        for ks in range(STAGE_BYTES // 16):
            banks = ((base + G) * ROW_WORDS + ks * 4 + T) % 32
            assert len(set(banks.tolist())) == 32
    assert (ROW_WORDS * 4) % 16 == 0  # every 16-byte cp.async destination is 16-byte aligned
