"""The CPU kernel's tile machinery and sparse schedule (csrc/gaunt/gaunt_tensor_product_cpu.cpp), against the dense reference.

The kernel takes W rows at a time (W = 16 fp32 / 8 fp64 lanes) through an in-register block transpose when rows
are dense, and row by row otherwise; its tiles hold 1, 2 or 4 vectors of rows depending on the degrees; the
sparse route regroups any (paths, coeffs) table by (outer input, output) on the host and may swap the inputs'
roles. These tests aim at each of those seams: row counts on both sides of every W and tile multiple, dense and
strided and broadcast rows, outputs wider than one W-chunk and not a multiple of it, permuted/duplicated/partial
tables, the swapped schedule, and gradients through all of it.
"""
import pytest
import torch

from symkernels._testing import assert_close, random_noncontiguous
from symkernels.gaunt import coefficients as C
from symkernels.gaunt import gaunt_tensor_product as gtp
from symkernels.gaunt import ops as gaunt_ops
from symkernels.gaunt import reference
from tests.gaunt.conftest import F64, rand, size
from tests.conftest import require_backend


# Around 8 and 16 (one W-row group, fp64/fp32), 32 and 64 (tiles of 2 and 4 vectors of fp32 rows), and more.
ROW_COUNTS = [1, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 100, 129]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("rows", ROW_COUNTS)
def test_row_counts_around_block_and_tile_sizes(rows, dtype, cpu_route):
    # (4, 4, 4): 25 coefficients, one full W-chunk plus a partial one (fp32) or three plus one (fp64); tile of 4
    # vectors. (6, 6, 8): tile of 2 vectors; (10, 10, 10): of 1. (2, 1, 3): fewer coefficients than one chunk.
    for l1, l2, lo in [(4, 4, 4), (6, 6, 8), (10, 10, 10), (2, 1, 3)]:
        a, b = rand(rows, size(l1), seed=rows), rand(rows, size(l2), seed=rows + 1)
        out = gtp(a.to(dtype), b.to(dtype), lo, backend="cpu")
        assert_close(out, reference.gaunt_tensor_product(a, b, lo).to(dtype), msg=f"{(l1, l2, lo)} rows={rows}")


@pytest.mark.parametrize("layout", ["noncontiguous", "broadcast", "transposed"])
def test_rows_read_in_place_match_dense_rows(layout, cpu_route):
    # Same numbers through the element-by-element path (every layout but dense rows) and the block path.
    e, c, l1, l2, lo = 5, 13, 4, 3, 5
    if layout == "noncontiguous":
        a = random_noncontiguous((e, c, size(l1)), dtype=F64)
        b = random_noncontiguous((e, c, size(l2)), dtype=F64)
    elif layout == "broadcast":
        a, b = rand(e, c, size(l1)), rand(e, 1, size(l2), seed=1)
    else:
        a = rand(c, e, size(l1)).transpose(0, 1)
        b = rand(c, e, size(l2), seed=1).transpose(0, 1)
    out = gtp(a, b, lo, backend="cpu")
    dense = gtp(a.contiguous(), b.expand(e, c, -1).contiguous(), lo, backend="cpu")
    assert_close(out, reference.gaunt_tensor_product(a, b, lo))
    assert_close(out, dense)


def test_nan_poisons_only_its_row_inside_a_block(cpu_route):
    # Rows 3 and 21 lie inside full 16-row blocks of the fp32 transpose; their neighbours must stay finite.
    a, b = rand(40, size(4)).float(), rand(40, size(4), seed=1).float()
    a[3, 7] = float("nan")
    b[21, 0] = float("inf")
    out = gtp(a, b, 4, backend="cpu")
    bad = torch.zeros(40, dtype=torch.bool)
    bad[[3, 21]] = True
    assert out[bad].isnan().all()
    assert_close(out[~bad], reference.gaunt_tensor_product(a[~bad].double(), b[~bad].double(), 4).float())


def test_empty_batch(cpu_route):
    a, b = torch.randn(0, 3, size(4)), torch.randn(0, 3, size(2))
    out = gtp(a, b, 5, backend="cpu")
    assert out.shape == (0, 3, size(5))


# --------------------------------------------------------------------------------------------
# The sparse schedule: any table, in any order.
# --------------------------------------------------------------------------------------------
def _raw(a, b, paths, coeffs, lo):
    return torch.ops.symkernels.gaunt_tensor_product(a, b, paths, coeffs, lo)


def _dense_from_table(paths, coeffs, n1, n2, no):
    g = torch.zeros(n1, n2, no, dtype=F64)
    g.index_put_((paths[:, 0].long(), paths[:, 1].long(), paths[:, 2].long()), coeffs.double(), accumulate=True)
    return g


@pytest.mark.parametrize("l1,l2,lo", [(4, 4, 4), (6, 1, 6), (1, 6, 5), (3, 5, 8)])
def test_any_table_order_duplicates_and_missing_outputs(l1, l2, lo):
    require_backend("cpu")
    paths, coeffs = C.sparse_gaunt_table(l1, l2, lo)
    gen = torch.Generator().manual_seed(l1 * 100 + l2 * 10 + lo)
    # Shuffled (no longer sorted by output), a third of the entries duplicated with split coefficients, and
    # every entry of one output dropped: the schedule must regroup, sum the duplicates, and leave that output 0.
    order = torch.randperm(paths.shape[0], generator=gen)
    p, c = paths[order], coeffs[order]
    dup = torch.arange(0, p.shape[0], 3)
    p = torch.cat([p, p[dup]])
    c = torch.cat([c, c[dup] * 0.25])
    c[dup] *= 0.75
    keep = p[:, 2] != 1
    p, c = p[keep].contiguous(), c[keep].contiguous()
    a, b = rand(37, size(l1), seed=1), rand(37, size(l2), seed=2)
    expected = torch.einsum("ijk,ri,rj->rk", _dense_from_table(p, c, size(l1), size(l2), size(lo)), a, b)
    out = _raw(a, b, p, c, lo)
    assert_close(out, expected)
    assert (out[:, 1] == 0).all()
    assert_close(out, torch.cat([reference.gaunt_tensor_product(a, b, lo)[:, :1], out[:, 1:2],
                                 reference.gaunt_tensor_product(a, b, lo)[:, 2:]], dim=1))


def test_outer_input_is_the_one_with_fewer_groups():
    """(6, 1, 6): grouping by x2's index gives fewer (outer, output) groups than by x1's, so the kernel swaps
    the inputs' roles; (1, 6, 6) does not. Both must give the reference (and each other, transposed roles)."""
    require_backend("cpu")
    a6, b1 = rand(50, size(6), seed=3), rand(50, size(1), seed=4)
    p, c = C.sparse_gaunt_table(6, 1, 6)
    pairs = {"i1": len({(int(x), int(z)) for x, _, z in p}), "i2": len({(int(y), int(z)) for _, y, z in p})}
    assert pairs["i2"] < pairs["i1"]  # the premise: this table takes the swapped schedule
    out = _raw(a6, b1, p, c, 6)
    assert_close(out, reference.gaunt_tensor_product(a6, b1, 6))
    p_t, c_t = C.sparse_gaunt_table(1, 6, 6)
    assert_close(_raw(b1, a6, p_t, c_t, 6), out)


@pytest.mark.parametrize("l1,l2,lo", [(4, 4, 4), (6, 2, 5)])
def test_gradients_through_the_kernel(l1, l2, lo, cpu_route):
    # 19 rows: two fp64 8-row blocks and a remainder, in forward, backward (permuted tables) and double backward.
    a = rand(19, size(l1), seed=5).requires_grad_()
    b = rand(19, size(l2), seed=6).requires_grad_()
    torch.autograd.gradcheck(lambda x, y: gtp(x, y, lo, backend="cpu"), (a, b))
    torch.autograd.gradgradcheck(lambda x, y: gtp(x, y, lo, backend="cpu"), (a, b))
    g = rand(19, size(lo), seed=7)
    ga, gb = torch.autograd.grad(gtp(a, b, lo, backend="cpu"), (a, b), g)
    ra, rb = torch.autograd.grad(reference.gaunt_tensor_product(a, b, lo), (a, b), g)
    assert_close(ga, ra)
    assert_close(gb, rb)


def test_cpu_route_fmas_counts():
    # The sparse count is the selection-rule bound on nnz(G); the grid count follows the kernel's loops.
    fmas = gaunt_ops.cpu_route_fmas(4, 4, 4)
    assert fmas["sparse"] == C.sparse_table_size(4, 4, 4)
    # n_beta = 12 // 2 + 1 = 7 Gauss-Legendre nodes -> 4 pairs; 3 transforms of 25 coefficients; complex
    # product terms 9 + 8 + 7 + 6 + 5 for output orders k = 0..4.
    assert fmas["grid"] == 4 * (3 * 25 + 8 * (9 + 8 + 7 + 6 + 5))
    factor = gaunt_ops.grid_cost_factor()
    assert gaunt_ops.cpu_route(4, 4, 4) == ("grid" if fmas["grid"] < factor * fmas["sparse"] else "sparse")


# --------------------------------------------------------------------------------------------
# The benchmark's cuEquivariance peer computes the same product.
# --------------------------------------------------------------------------------------------
def test_cuequivariance_peer_agrees_with_ours():
    pytest.importorskip("cuequivariance_torch", reason="cuEquivariance not installed (optional bench peer)")
    from symkernels.bench import gaunt as gaunt_bench

    lmax, channels = 3, 5
    peer = gaunt_bench._cueq_peer(lmax, channels, torch.device("cpu"))
    assert not isinstance(peer, str), peer
    product, to_ir_mul = peer
    a, b = rand(6, channels, size(lmax), seed=8).float(), rand(6, channels, size(lmax), seed=9).float()
    ours = gtp(a, b, lmax, backend="reference")
    assert_close(product(to_ir_mul(a), to_ir_mul(b)), to_ir_mul(ours))

