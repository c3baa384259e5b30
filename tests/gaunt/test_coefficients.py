"""Gaunt coefficients and tables vs independent truths: sympy's real_gaunt, e3nn's wigner_3j, quadrature."""
import itertools
import math

import numpy as np
import pytest
import torch

from symkernels.gaunt import coefficients as C


def _triples(lmax, l3max):
    for l1, l2 in itertools.product(range(lmax + 1), repeat=2):
        for l3 in range(l3max + 1):
            yield l1, l2, l3


def _sympy_block(l1, l2, l3):
    from sympy.physics.wigner import real_gaunt

    return np.array([[[float(real_gaunt(l1, l2, l3, m1, m2, m3)) for m3 in range(-l3, l3 + 1)]
                      for m2 in range(-l2, l2 + 1)] for m1 in range(-l1, l1 + 1)])


# sympy's real_gaunt uses the textbook real SH in the same m order; e3nn's basis is that one evaluated at
# a rotated point, which leaves ∫YYY unchanged, so no reordering or sign flips are expected here.
@pytest.mark.parametrize("l1,l2,l3", [t for t in _triples(2, 4)] + [(3, 3, 4), (2, 5, 3)])
def test_matches_sympy_real_gaunt(l1, l2, l3):
    pytest.importorskip("sympy")
    got = C.gaunt_coefficients(l1, l2, l3).numpy()
    np.testing.assert_allclose(got, _sympy_block(l1, l2, l3), atol=1e-14, rtol=0)


def test_matches_constant_times_e3nn_wigner_3j():
    o3 = pytest.importorskip("e3nn.o3")
    worst = 0.0
    for l1, l2 in itertools.product(range(7), repeat=2):
        for l3 in range(abs(l1 - l2), l1 + l2 + 1):
            expected = C.gaunt_constant(l1, l2, l3) * o3.wigner_3j(l1, l2, l3, dtype=torch.float64).numpy()
            got = C.gaunt_coefficients(l1, l2, l3).numpy()
            worst = max(worst, np.abs(got - expected).max())
            if (l1 + l2 + l3) % 2:
                assert C.gaunt_constant(l1, l2, l3) == 0 and not got.any()
    assert worst < 1e-13, worst


def test_wigner_3j_matches_sympy():
    from sympy.physics.wigner import wigner_3j

    rng = np.random.default_rng(0)
    for _ in range(60):
        j1, j2 = rng.integers(0, 9, size=2)
        j3 = int(rng.integers(abs(j1 - j2), j1 + j2 + 1))
        m1 = int(rng.integers(-j1, j1 + 1))
        m2 = int(rng.integers(-j2, j2 + 1))
        m3 = -m1 - m2
        expected = float(wigner_3j(int(j1), int(j2), j3, m1, m2, m3))
        assert C.wigner_3j_symbol(int(j1), int(j2), j3, m1, m2, m3) == pytest.approx(expected, abs=1e-15, rel=1e-14)
    assert C.wigner_3j_symbol(1, 1, 1, 1, 1, 1) == 0.0  # m's do not sum to zero
    assert C.wigner_3j_symbol(1, 1, 3, 0, 0, 0) == 0.0  # triangle violated


def test_symmetry_norm_and_normalization():
    for l1, l2, l3 in [(1, 2, 3), (2, 2, 2), (4, 3, 3), (6, 5, 3)]:
        g = C.gaunt_coefficients(l1, l2, l3)
        # every permutation of the (degree, index) pairs
        assert torch.equal(C.gaunt_coefficients(l2, l1, l3), g.permute(1, 0, 2))
        assert torch.allclose(C.gaunt_coefficients(l3, l1, l2), g.permute(2, 0, 1), atol=1e-16)
        # e3nn 3j blocks have unit Frobenius norm, so ‖G‖_F = c
        assert g.norm().item() == pytest.approx(C.gaunt_constant(l1, l2, l3), rel=1e-14)
        comp = C.gaunt_coefficients(l1, l2, l3, normalization="component")
        torch.testing.assert_close(comp, g * math.sqrt(4 * math.pi), atol=1e-15, rtol=1e-15)
    # Y_00 = 1/√(4π): the product with the constant is a scaling
    g = C.gaunt_coefficients(0, 3, 3)
    torch.testing.assert_close(g[0], torch.eye(7, dtype=torch.float64) / math.sqrt(4 * math.pi))


def test_real_from_complex_is_unitary():
    for l in range(8):
        u = C.real_from_complex(l)
        np.testing.assert_allclose(u @ u.conj().T, np.eye(2 * l + 1), atol=1e-15)


def test_sparse_table_matches_dense_and_is_sorted():
    dense = C.dense_gaunt_tensor(3, 2, 4)
    paths, coeffs = C.sparse_gaunt_table(3, 2, 4)
    rebuilt = np.zeros_like(dense)
    p = paths.numpy()
    rebuilt[p[:, 0], p[:, 1], p[:, 2]] = coeffs.numpy()
    np.testing.assert_array_equal(rebuilt, dense)
    assert (np.diff(p[:, 2]) >= 0).all()
    assert paths.dtype == torch.int32 and coeffs.dtype == torch.float64
    # nnz from the design note's table (L1 = L2 = L, Lo = L and 2L)
    for l, lo, nnz in [(1, 1, 10), (2, 2, 83), (3, 6, 708), (4, 4, 1158), (4, 8, 2229)]:
        assert C.sparse_gaunt_table(l, l, lo)[0].shape[0] == nnz


def test_real_sh_orthonormal_on_grid():
    n_beta, n_alpha = C.grid_size(5, 5, 0)
    nodes, weights = np.polynomial.legendre.leggauss(n_beta)
    alpha = 2 * math.pi * np.arange(n_alpha) / n_alpha
    y = C.real_sh(5, nodes, alpha).reshape(n_beta * n_alpha, -1)
    w = np.repeat(weights * 2 * math.pi / n_alpha, n_alpha)
    np.testing.assert_allclose((y * w[:, None]).T @ y, np.eye(36), atol=1e-14)


@pytest.mark.parametrize("l1,l2,lo", [(2, 3, 4), (3, 3, 6), (4, 1, 2), (0, 2, 2), (6, 6, 12)])
def test_grid_route_is_exact_and_minimal(l1, l2, lo):
    gen = torch.Generator().manual_seed(l1 * 100 + l2 * 10 + lo)
    a = torch.randn(6, (l1 + 1) ** 2, dtype=torch.float64, generator=gen)
    b = torch.randn(6, (l2 + 1) ** 2, dtype=torch.float64, generator=gen)
    expected = torch.einsum("ijk,ri,rj->rk", torch.from_numpy(C.dense_gaunt_tensor(l1, l2, lo).copy()), a, b)
    to1, to2, back = C.grid_tables(l1, l2, lo)
    torch.testing.assert_close(((a @ to1) * (b @ to2)) @ back, expected, atol=1e-13, rtol=1e-12)
    assert to1.shape[1] == math.prod(C.grid_size(l1, l2, lo))


def test_bad_degrees():
    with pytest.raises(ValueError, match="l3 must be between 0 and"):
        C.gaunt_coefficients(1, 1, -1)
    with pytest.raises(TypeError, match="l1 must be an int"):
        C.gaunt_coefficients(1.0, 1, 1)
    with pytest.raises(ValueError, match="normalization must be one of"):
        C.gaunt_coefficients(1, 1, 2, normalization="norm")


def test_tables_at_degree_12_are_fast():
    """(12, 12, 24) was ~12 s with per-entry exact Racah sums; the vectorized quadrature takes well under 1 s
    (bound generous for a loaded CI machine)."""
    import time

    C._gaunt_entries.cache_clear()
    C.sparse_gaunt_table.cache_clear()
    start = time.perf_counter()
    paths, coeffs = C.sparse_gaunt_table(12, 12, 24)
    assert time.perf_counter() - start < 4.0
    assert paths.shape[0] == coeffs.shape[0] > 0


@pytest.mark.parametrize("l1,l2,l3", [(12, 12, 24), (12, 11, 7), (10, 12, 16), (5, 12, 13)])
def test_high_degree_blocks_match_racah(l1, l2, l3):
    """Spot checks at high degree against the exact-integer Racah 3j symbols: the (0 0 0) constant c and the
    Frobenius norm ‖G‖ = c, plus individual entries through the m1 = m2 = m3 = 0 element
    G[l1, l2, l3] = √((2l1+1)(2l2+1)(2l3+1)/4π)·(l1 l2 l3; 0 0 0)²."""
    g = C.gaunt_coefficients(l1, l2, l3).numpy()
    c = C.gaunt_constant(l1, l2, l3)
    assert abs(np.linalg.norm(g) - c) <= 1e-14 * max(c, 1)
    expected = math.sqrt((2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1) / (4 * math.pi)) * C.wigner_3j_symbol(
        l1, l2, l3, 0, 0, 0) ** 2
    assert abs(g[l1, l2, l3] - expected) <= 1e-14
