"""Gaunt coefficients and the tables every backend uses, generated in float64 from closed forms.

Conventions (the same as e3nn ≥ 0.5, see ``/work/shared/design/gaunt.md``):

* Real spherical harmonics, flat index ``l*l + l + m`` for m = −l..l (e3nn's order).
* 'integral' normalization: ∫_{S²} Y_lm Y_l'm' dΩ = δ (so Y_00 = 1/√(4π)).
  'component' normalization: Y_comp = √(4π)·Y_int (e3nn's 'component': |Y_l(r)|² = 2l+1), so the
  constant function 1 is the coefficient vector e_00.
* The real basis used here is the textbook one,
  Y_lm = √2 N_l^|m| P̄_l^|m|(cos θ)·{cos(mφ) for m > 0, sin(|m|φ) for m < 0}, Y_l0 = N_l^0 P̄_l^0(cos θ),
  with P̄ the associated Legendre function *without* the Condon–Shortley phase. e3nn's basis is this
  one evaluated at a rotated point (e3nn Y(x,y,z) = textbook Y(z,x,y), a cyclic permutation, i.e. a
  rotation; tested in tests/gaunt/test_modules.py); a common rotation of all three factors
  leaves ∫ Y Y Y unchanged, so the Gaunt tensor below *is* the Gaunt tensor of e3nn's basis — tested
  against ``sympy.physics.wigner.real_gaunt`` (same basis, same order) and c·``e3nn.o3.wigner_3j``.

Closed forms used:

* Wigner 3j symbols by Racah's formula, in exact integer arithmetic (Python integers); the only
  roundings are one big-integer division and a square root, so every coefficient is correct to a few ulp.
* Complex Gaunt: ∫ Y_{l1μ1} Y_{l2μ2} Y_{l3μ3} dΩ = √((2l1+1)(2l2+1)(2l3+1)/4π)·(l1 l2 l3;0 0 0)(l1 l2 l3;μ1 μ2 μ3).
* Real Gaunt: G = Σ U U U · complex Gaunt, with the complex→real change of basis ``real_from_complex(l)``.

Nothing here is shipped as a data file: every table is generated on first use and cached.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import torch

NORMALIZATIONS = ("integral", "component")

# Above this degree the float64 grid tables lose accuracy in the P̄ recurrence (growth of
# (2m−1)!! / √((l+m)!) stays far inside float64 range up to here) and the Racah sums get slow.
MAX_L = 32


def num_coefficients(lmax: int) -> int:
    """(lmax+1)², the length of a coefficient vector of degrees 0..lmax."""
    return (lmax + 1) ** 2


def _check_l(name: str, l: int) -> None:
    if isinstance(l, bool) or not isinstance(l, int):
        raise TypeError(f"{name} must be an int, got {type(l).__name__}")
    if l < 0 or l > MAX_L:
        raise ValueError(f"{name} must be between 0 and {MAX_L}, got {l}")


def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def normalization_scale(normalization: str) -> float:
    """Factor from the 'integral' Gaunt tensor to the one of ``normalization``.

    With Y_comp = √(4π) Y_int, coefficients a_comp = a_int/√(4π), and projecting the product back onto
    Y_comp gives c_comp = √(4π)·G_int(a_comp, b_comp).
    """
    _check_normalization(normalization)
    return 1.0 if normalization == "integral" else math.sqrt(4 * math.pi)


# ---------------------------------------------------------------------------------------------
# Wigner 3j and the complex Gaunt integral, exactly.
# ---------------------------------------------------------------------------------------------
_fact = math.factorial


@functools.lru_cache(maxsize=None)
def _wigner_3j_squared_signed(j1: int, j2: int, j3: int, m1: int, m2: int, m3: int) -> tuple[int, float]:
    """(sign, value²) of the 3j symbol (j1 j2 j3; m1 m2 m3) by Racah's formula.

    Everything is exact integer arithmetic up to one correctly rounded big-integer division at the end
    (CPython's int / int rounds correctly), so value² is within 0.5 ulp.
    """
    if m1 + m2 + m3 != 0 or abs(m1) > j1 or abs(m2) > j2 or abs(m3) > j3:
        return 0, 0.0
    if j3 > j1 + j2 or j3 < abs(j1 - j2):
        return 0, 0.0
    k_min = max(0, j2 - j3 - m1, j1 - j3 + m2)
    k_max = min(j1 + j2 - j3, j1 - m1, j2 + m2)
    denoms = [_fact(k) * _fact(j3 - j2 + k + m1) * _fact(j3 - j1 + k - m2) * _fact(j1 + j2 - j3 - k)
              * _fact(j1 - k - m1) * _fact(j2 - k + m2) for k in range(k_min, k_max + 1)]
    # The alternating sum over one common denominator in plain integers (Fraction arithmetic, one gcd
    # per term, made the L = 12 tables take minutes).
    common = math.lcm(*denoms)
    numer = sum((-1) ** k * (common // d) for k, d in zip(range(k_min, k_max + 1), denoms))
    if numer == 0:
        return 0, 0.0
    sign = (1 if numer > 0 else -1) * (-1) ** ((j1 - j2 - m3) % 2)
    top = (_fact(j1 + j2 - j3) * _fact(j1 - j2 + j3) * _fact(-j1 + j2 + j3)
           * _fact(j1 + m1) * _fact(j1 - m1) * _fact(j2 + m2) * _fact(j2 - m2) * _fact(j3 + m3) * _fact(j3 - m3)
           * numer * numer)
    bottom = _fact(j1 + j2 + j3 + 1) * common * common
    return sign, top / bottom


def wigner_3j_symbol(j1: int, j2: int, j3: int, m1: int, m2: int, m3: int) -> float:
    """The Wigner 3j symbol (j1 j2 j3; m1 m2 m3) for integer arguments, to ~1 ulp."""
    sign, sq = _wigner_3j_squared_signed(j1, j2, j3, m1, m2, m3)
    return sign * math.sqrt(sq) if sign else 0.0


def gaunt_constant(l1: int, l2: int, l3: int) -> float:
    """c(l1,l2,l3) = √((2l1+1)(2l2+1)(2l3+1)/4π)·|(l1 l2 l3;0 0 0)|: G = c·(e3nn 3j block), ‖G‖_F = c."""
    sign, sq = _wigner_3j_squared_signed(l1, l2, l3, 0, 0, 0)
    if not sign:
        return 0.0
    return math.sqrt(sq * (2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1) / (4 * math.pi))


def _complex_gaunt(l1: int, l2: int, l3: int, mu1: int, mu2: int, mu3: int) -> float:
    """∫ Y_{l1μ1} Y_{l2μ2} Y_{l3μ3} dΩ for complex Condon–Shortley SH (no conjugation), to a few ulp."""
    s0, q0 = _wigner_3j_squared_signed(l1, l2, l3, 0, 0, 0)
    s1, q1 = _wigner_3j_squared_signed(l1, l2, l3, mu1, mu2, mu3)
    if not (s0 and s1):
        return 0.0
    return s0 * s1 * math.sqrt(q0 * q1 * ((2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1)) / (4 * math.pi))


@functools.lru_cache(maxsize=None)
def real_from_complex(l: int) -> np.ndarray:
    """U with Y_real[m] = Σ_μ U[m, μ] Y_complex[μ] (indices m, μ = −l..l → 0..2l), complex128, unitary.

    Complex SH with the Condon–Shortley phase; the real ones are the textbook basis of the module
    docstring: Y_m = (Y_{−m} + (−1)^m Y_m)/√2 for m > 0 and Y_m = i(Y_m − (−1)^m Y_{−m})/√2 for m < 0.
    """
    _check_l("l", l)
    u = np.zeros((2 * l + 1, 2 * l + 1), dtype=np.complex128)
    r = 1 / math.sqrt(2)
    u[l, l] = 1.0
    for m in range(1, l + 1):
        u[l + m, l - m] = r
        u[l + m, l + m] = (-1) ** m * r
        u[l - m, l - m] = 1j * r
        u[l - m, l + m] = -1j * (-1) ** m * r
    return u


@functools.lru_cache(maxsize=None)
def _gaunt_block(l1: int, l2: int, l3: int) -> np.ndarray:
    """Real 'integral' Gaunt block [2l1+1, 2l2+1, 2l3+1], float64, read-only (cached)."""
    shape = (2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1)
    order = sorted(range(3), key=lambda i: (l1, l2, l3)[i])
    if order != [0, 1, 2]:
        # G is symmetric under permuting the (degree, index) pairs: compute the sorted triple once.
        canonical = _gaunt_block(*[(l1, l2, l3)[i] for i in order])
        block = np.ascontiguousarray(canonical.transpose(np.argsort(order)))
        block.setflags(write=False)
        return block
    if (l1 + l2 + l3) % 2 or l3 > l1 + l2 or l3 < abs(l1 - l2):
        block = np.zeros(shape)
    else:
        gc = np.zeros(shape)
        for mu1 in range(-l1, l1 + 1):
            for mu2 in range(-l2, l2 + 1):
                mu3 = -mu1 - mu2
                if abs(mu3) <= l3:
                    gc[mu1 + l1, mu2 + l2, mu3 + l3] = _complex_gaunt(l1, l2, l3, mu1, mu2, mu3)
        u1, u2, u3 = real_from_complex(l1), real_from_complex(l2), real_from_complex(l3)
        # Y_real = U Y_complex in each factor: three small GEMMs (a, b, c are the real indices).
        full = np.tensordot(u1, gc, axes=(1, 0))  # [a, j, k]
        full = np.tensordot(full, u2, axes=(1, 1))  # [a, k, b]
        full = np.tensordot(full, u3, axes=(1, 1))  # [a, b, c]
        # The imaginary part is zero in exact arithmetic (Y_real are real); here it is rounding only.
        block = np.ascontiguousarray(full.real)
        # Entries that are zero exactly (by the m-selection rules) come out as ±1e-17 rounding; the
        # sparsity pattern is the selection rule |m3| ∈ {|m1+m2|, |m1−m2|}, so clear everything below
        # that rounding floor relative to the block's scale.
        block[np.abs(block) < 1e-13 * max(1.0, np.abs(block).max())] = 0.0
    block.setflags(write=False)
    return block


def gaunt_coefficients(l1: int, l2: int, l3: int, normalization: str = "integral") -> torch.Tensor:
    """Dense real Gaunt coefficients G[m1, m2, m3] = ∫ Y_{l1m1} Y_{l2m2} Y_{l3m3} dΩ (float64).

    Args:
        l1, l2, l3: degrees, 0..MAX_L.
        normalization: 'integral' (orthonormal SH, Y_00 = 1/√(4π); G is exactly the integral above) or
            'component' (e3nn's component normalization; G_comp = √(4π)·G_int, so that the constant
            function 1 ↔ e_00 is the identity of the product).

    Returns:
        ``[2l1+1, 2l2+1, 2l3+1]`` float64 in e3nn's basis and m-order. Zero unless l1+l2+l3 is even and
        (l1, l2, l3) satisfy the triangle inequality. Symmetric under any permutation of the three
        (degree, index) pairs; equals ``gaunt_constant(l1,l2,l3) * e3nn.o3.wigner_3j(l1,l2,l3)``.
    """
    for name, l in (("l1", l1), ("l2", l2), ("l3", l3)):
        _check_l(name, l)
    scale = normalization_scale(normalization)
    return torch.from_numpy(_gaunt_block(l1, l2, l3) * scale)


@functools.lru_cache(maxsize=None)
def dense_gaunt_tensor(lmax1: int, lmax2: int, lmax_out: int, normalization: str = "integral") -> np.ndarray:
    """All blocks assembled: ``[(L1+1)², (L2+1)², (Lo+1)²]`` float64 (cached, read-only)."""
    scale = normalization_scale(normalization)
    full = np.zeros((num_coefficients(lmax1), num_coefficients(lmax2), num_coefficients(lmax_out)))
    for l1 in range(lmax1 + 1):
        for l2 in range(lmax2 + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, lmax_out) + 1, 2):
                full[l1 * l1:(l1 + 1) ** 2, l2 * l2:(l2 + 1) ** 2, l3 * l3:(l3 + 1) ** 2] = _gaunt_block(l1, l2, l3)
    full *= scale
    full.setflags(write=False)
    return full


@functools.lru_cache(maxsize=None)
def sparse_gaunt_table(lmax1: int, lmax2: int, lmax_out: int,
                       normalization: str = "integral") -> tuple[torch.Tensor, torch.Tensor]:
    """Nonzeros of the dense tensor: ``paths`` int32 [nnz, 3] (i1, i2, i3) and ``coeffs`` float64 [nnz].

    Sorted by output index i3, then i1, so a kernel keeps one output accumulator in a register for a
    run of entries. CPU tensors, cached: callers move/cast them (see ``ops._device_tables``).
    """
    dense = dense_gaunt_tensor(lmax1, lmax2, lmax_out, normalization)
    i3, i1, i2 = np.nonzero(dense.transpose(2, 0, 1))
    paths = torch.from_numpy(np.stack([i1, i2, i3], axis=1).astype(np.int32))
    coeffs = torch.from_numpy(dense[i1, i2, i3].copy())
    return paths, coeffs


# ---------------------------------------------------------------------------------------------
# The sphere grid: exact quadrature for the product route (Triton kernel).
# ---------------------------------------------------------------------------------------------
def grid_size(lmax1: int, lmax2: int, lmax_out: int) -> tuple[int, int]:
    """(n_beta, n_alpha) of the smallest exact product grid.

    The integrand Y·Y·Y of ∫ f1 f2 Y_out has degree D = L1+L2+Lo: in cos β it is a polynomial of degree
    ≤ D (the sin^k factors pair up), integrated exactly by n_β = ⌊D/2⌋+1 Gauss–Legendre nodes
    (exact to degree 2n_β−1); in α it is a trigonometric polynomial of degree ≤ D, integrated exactly
    by n_α = D+1 uniform points. One point fewer in either direction is wrong by O(1).
    """
    d = lmax1 + lmax2 + lmax_out
    return d // 2 + 1, d + 1


def real_sh(lmax: int, cos_beta: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Integral-normalized real SH of the module's basis on a β×α product grid: [n_β, n_α, (lmax+1)²].

    Associated Legendre P̄_l^m (no Condon–Shortley phase) by the standard stable three-term recurrence
    in l at fixed m, starting from P̄_m^m = (2m−1)!!·sin^m β.
    """
    x = np.asarray(cos_beta, dtype=np.float64)
    s = np.sqrt(np.clip(1 - x * x, 0.0, None))
    out = np.zeros((x.size, np.size(alpha), num_coefficients(lmax)))
    p_mm = np.ones_like(x)
    for m in range(lmax + 1):
        if m > 0:
            p_mm = p_mm * (2 * m - 1) * s
        legendre = {m: p_mm}
        if m + 1 <= lmax:
            legendre[m + 1] = x * (2 * m + 1) * p_mm
        for l in range(m + 2, lmax + 1):
            legendre[l] = ((2 * l - 1) * x * legendre[l - 1] - (l + m - 1) * legendre[l - 2]) / (l - m)
        for l in range(m, lmax + 1):
            norm = math.sqrt((2 * l + 1) / (4 * math.pi) * float(Fraction(_fact(l - m), _fact(l + m))))
            theta_part = norm * legendre[l]
            if m == 0:
                out[:, :, l * l + l] = theta_part[:, None]
            else:
                out[:, :, l * l + l + m] = math.sqrt(2) * theta_part[:, None] * np.cos(m * alpha)[None, :]
                out[:, :, l * l + l - m] = math.sqrt(2) * theta_part[:, None] * np.sin(m * alpha)[None, :]
    return out


@functools.lru_cache(maxsize=None)
def grid_tables(lmax1: int, lmax2: int, lmax_out: int,
                normalization: str = "integral") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(to_grid1 [(L1+1)², G], to_grid2 [(L2+1)², G], from_grid [G, (Lo+1)²]) float64, G = n_β·n_α.

    ``((x1 @ to_grid1) * (x2 @ to_grid2)) @ from_grid`` is the Gaunt product exactly: the first two
    evaluate both functions on the grid, ``from_grid`` holds quadrature weight × Y_out (× the
    normalization scale), i.e. the exact projection back onto degrees ≤ Lo.
    """
    n_beta, n_alpha = grid_size(lmax1, lmax2, lmax_out)
    nodes, weights = np.polynomial.legendre.leggauss(n_beta)
    alpha = 2 * math.pi * np.arange(n_alpha) / n_alpha
    lmax = max(lmax1, lmax2, lmax_out)
    y = real_sh(lmax, nodes, alpha).reshape(n_beta * n_alpha, -1)  # [G, (lmax+1)²]
    w = np.repeat(weights * (2 * math.pi / n_alpha), n_alpha)  # [G]
    scale = normalization_scale(normalization)
    to1 = torch.from_numpy(np.ascontiguousarray(y[:, :num_coefficients(lmax1)].T))
    to2 = torch.from_numpy(np.ascontiguousarray(y[:, :num_coefficients(lmax2)].T))
    back = torch.from_numpy(np.ascontiguousarray(w[:, None] * y[:, :num_coefficients(lmax_out)] * scale))
    return to1, to2, back
