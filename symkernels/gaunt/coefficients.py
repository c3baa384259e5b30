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

How G is computed (``_gaunt_entries``):

* Y_lm = Θ_l|m|(cos β)·φ_m(α) separates, so G = [∫ Θ1 Θ2 Θ3 d cos β]·[∫ φ1 φ2 φ3 dα]. The α integral is a
  closed form (multiples of π/2); the β integral is a polynomial of degree ≤ L1+L2+Lo in cos β, integrated
  *exactly* by the Gauss–Legendre rule with ⌊(L1+L2+Lo)/2⌋+1 nodes, Θ from the closed-form normalization
  and the stable Legendre recurrence. Only entries allowed by the selection rules are evaluated, vectorized:
  (12, 12, 24) takes a fraction of a second (exact-integer Racah sums per entry took ~12 s).
* Independent checks (tests): sympy's ``real_gaunt`` and c·e3nn's ``wigner_3j``, and the exact-integer
  Racah 3j symbols kept here (``wigner_3j_symbol``, ``gaunt_constant``: the only roundings are one
  big-integer division and a square root).

Nothing here is shipped as a data file: every table is generated on first use and cached.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import torch

NORMALIZATIONS = ("integral", "component")

# Above this degree the float64 tables would need care in the P̄ recurrence (growth of (2m−1)!! / √((l+m)!)
# stays far inside float64 range up to here).
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


def _alpha_integral(m1: np.ndarray, m2: np.ndarray, m3: np.ndarray) -> np.ndarray:
    """∫_0^2π φ_m1 φ_m2 φ_m3 dα in closed form (φ_0 = 1, φ_m = cos mα, φ_−m = sin mα), exact multiples of π/2.

    cos·cos·cos: ¼Σ cos(a ± b ± c) gives (π/2)[δ(a+b+c=0) + δ(c=a+b) + δ(b=a+c) + δ(a=b+c)];
    cos a·sin b·sin c: ¼[cos(a+b−c) + cos(a−b+c) − cos(a+b+c) − cos(a−b−c)] gives (π/2)[δ(c=a+b) + δ(b=a+c)
    − δ(a=b+c)] (b, c ≥ 1); an odd number of sines integrates to 0.
    """
    a = [np.abs(m) for m in (m1, m2, m3)]
    sines = [m < 0 for m in (m1, m2, m3)]
    n_sin = sines[0].astype(int) + sines[1] + sines[2]
    ccc = ((a[0] + a[1] + a[2] == 0).astype(float) + (a[2] == a[0] + a[1]) + (a[1] == a[0] + a[2])
           + (a[0] == a[1] + a[2]))
    # For two sines, let x be the cosine's order and y, z the sines' (the expression is symmetric in y, z).
    x = np.where(~sines[0], a[0], np.where(~sines[1], a[1], a[2]))
    y = np.where(sines[0], a[0], a[1])
    z = np.where(sines[2], a[2], a[1])
    css = (z == x + y).astype(float) + (y == x + z) - (x == y + z)
    return (math.pi / 2) * np.where(n_sin == 0, ccc, np.where(n_sin == 2, css, 0.0))


def _degree_order(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(l, m) of the flat indices 0..n−1 (index l²+l+m)."""
    i = np.arange(n)
    l = np.floor(np.sqrt(i)).astype(np.int64)
    return l, i - l * l - l


@functools.lru_cache(maxsize=None)
def _gaunt_entries(lmax1: int, lmax2: int, lmax_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Nonzeros of the 'integral' real Gaunt tensor of degrees ≤ (L1, L2, Lo): (i1, i2, i3) [nnz, 3], values.

    G = ∫ Y Y Y dΩ factorizes on a product grid: with Y_lm = Θ_l|m|(cos β)·φ_m(α),
    G = [Σ_j w_j Θ1(x_j) Θ2(x_j) Θ3(x_j)] · ∫φφφ dα. The α factor is the closed form above; the β factor is
    a polynomial of degree ≤ L1+L2+Lo in cos β, integrated exactly by ⌊(L1+L2+Lo)/2⌋+1 Gauss–Legendre
    nodes, so G is exact up to float64 rounding (a few ulp of the largest entry; tested against sympy's
    real_gaunt and c·e3nn's wigner_3j). Candidates come from the selection rules (triangle, even degree
    sum, |m3| ∈ {|m1|+|m2|, ||m1|−|m2||} with the sine/cosine type fixed), so the work is O(nnz·n_β),
    vectorized: (12, 12, 24) takes well under a second where exact-integer Racah sums took ~12 s.
    """
    n1, n2 = num_coefficients(lmax1), num_coefficients(lmax2)
    deg1, ord1 = _degree_order(n1)
    deg2, ord2 = _degree_order(n2)
    i1, i2 = (a.reshape(-1) for a in np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij"))
    l1, m1, l2, m2 = deg1[i1], ord1[i1], deg2[i2], ord2[i2]
    cosine = (m1 >= 0) == (m2 >= 0)  # the product φ_m1 φ_m2 holds cosines (m3 ≥ 0) or sines (m3 < 0)
    hi, lo = np.abs(m1) + np.abs(m2), np.abs(np.abs(m1) - np.abs(m2))
    # Candidate (i1, i2, m3): both |m3| values, the second only where it differs (m1, m2 both nonzero); an
    # m3 = 0 only as a cosine.
    am3 = np.concatenate([hi, lo])
    pick = np.concatenate([(hi > 0) | cosine, (lo != hi) & ((lo > 0) | cosine)])
    c1, c2 = np.concatenate([i1, i1])[pick], np.concatenate([i2, i2])[pick]
    m3 = np.where(np.concatenate([cosine, cosine]), am3, -am3)[pick]
    # Each candidate holds every l3 with |m3| ≤ l3, |l1−l2| ≤ l3 ≤ min(l1+l2, Lo), l1+l2+l3 even.
    s1, s2 = deg1[c1], deg2[c2]
    first = np.maximum(np.abs(m3), np.abs(s1 - s2))
    first += (first + s1 + s2) % 2
    last = np.minimum(s1 + s2, lmax_out)
    count = np.maximum(0, (last - first) // 2 + 1)
    rep = np.repeat(np.arange(c1.size), count)
    step = np.arange(rep.size) - np.repeat(np.cumsum(count) - count, count)
    l3 = first[rep] + 2 * step
    idx = np.stack([c1[rep], c2[rep], l3 * l3 + l3 + m3[rep]], axis=1)
    n_beta = (lmax1 + lmax2 + lmax_out) // 2 + 1
    nodes, weights = np.polynomial.legendre.leggauss(n_beta)
    theta = legendre_factors(max(lmax1, lmax2, lmax_out), nodes).T  # [N, n_beta]
    values = (theta[idx[:, 0]] * theta[idx[:, 1]] * theta[idx[:, 2]]) @ weights
    values *= _alpha_integral(ord1[idx[:, 0]], ord2[idx[:, 1]], m3[rep])
    # Accidental zeros (3j symbols that vanish inside the selection rules) come out as rounding; drop
    # everything below that floor relative to its path's norm (‖G_path‖_F = c(l1, l2, l3)).
    path = (s1[rep] * (lmax2 + 1) + s2[rep]) * (lmax_out + 1) + l3
    norm = np.sqrt(np.bincount(path, weights=values * values, minlength=(lmax1 + 1) * (lmax2 + 1) * (lmax_out + 1)))
    nonzero = np.abs(values) > 1e-13 * norm[path]
    idx, values = idx[nonzero], values[nonzero]
    # By output, then i1, then i2 (the kernels keep one output accumulator per run).
    order = np.argsort((idx[:, 2] * n1 + idx[:, 0]) * n2 + idx[:, 1])
    idx, values = idx[order], values[order]
    idx.setflags(write=False)
    values.setflags(write=False)
    return idx, values


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
    idx, values = _gaunt_entries(l1, l2, l3)
    lo1, lo2, lo3 = l1 * l1, l2 * l2, l3 * l3
    sel = ((idx[:, 0] >= lo1) & (idx[:, 1] >= lo2) & (idx[:, 2] >= lo3))
    block = np.zeros((2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1))
    block[idx[sel, 0] - lo1, idx[sel, 1] - lo2, idx[sel, 2] - lo3] = values[sel]
    return torch.from_numpy(block * scale)


@functools.lru_cache(maxsize=None)
def dense_gaunt_tensor(lmax1: int, lmax2: int, lmax_out: int, normalization: str = "integral") -> np.ndarray:
    """All blocks assembled: ``[(L1+1)², (L2+1)², (Lo+1)²]`` float64 (cached, read-only)."""
    idx, values = _gaunt_entries(lmax1, lmax2, lmax_out)
    full = np.zeros((num_coefficients(lmax1), num_coefficients(lmax2), num_coefficients(lmax_out)))
    full[idx[:, 0], idx[:, 1], idx[:, 2]] = values * normalization_scale(normalization)
    full.setflags(write=False)
    return full


@functools.lru_cache(maxsize=None)
def sparse_gaunt_table(lmax1: int, lmax2: int, lmax_out: int,
                       normalization: str = "integral") -> tuple[torch.Tensor, torch.Tensor]:
    """Nonzeros of the dense tensor: ``paths`` int32 [nnz, 3] (i1, i2, i3) and ``coeffs`` float64 [nnz].

    Sorted by output index i3, then i1, so a kernel keeps one output accumulator in a register for a
    run of entries. CPU tensors, cached: callers move/cast them (see ``ops._device_tables``).
    """
    idx, values = _gaunt_entries(lmax1, lmax2, lmax_out)
    paths = torch.from_numpy(idx.astype(np.int32))
    coeffs = torch.from_numpy(values * normalization_scale(normalization))
    return paths, coeffs


@functools.lru_cache(maxsize=None)
def sparse_table_size(lmax1: int, lmax2: int, lmax_out: int) -> int:
    """Upper bound on nnz of the sparse table from the selection rules, without building it (cost models).

    Real-basis rule: φ_m1·φ_m2 holds only |m3| ∈ {|m1|+|m2|, ||m1|−|m2||}, as a cosine (m3 ≥ 0) when m1, m2
    are both cosines or both sines, else as a sine; m3 = 0 only as a cosine. Accidental zeros of the 3j
    symbols are not subtracted (a few percent).
    """
    count = 0
    for l1 in range(lmax1 + 1):
        m1 = np.arange(-l1, l1 + 1)[:, None]
        for l2 in range(lmax2 + 1):
            m2 = np.arange(-l2, l2 + 1)[None, :]
            same = (m1 >= 0) == (m2 >= 0)
            hi = np.abs(m1) + np.abs(m2)
            lo = np.abs(np.abs(m1) - np.abs(m2))
            for l3 in range(abs(l1 - l2), min(l1 + l2, lmax_out) + 1, 2):
                count += int(((hi <= l3) & ((hi > 0) | same)).sum())
                count += int(((lo <= l3) & (lo != hi) & ((lo > 0) | same)).sum())
    return count


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


def legendre_factors(lmax: int, cos_beta: np.ndarray) -> np.ndarray:
    """The β-part Θ_l|m|(cos β) of the integral-normalized real SH: [n, (lmax+1)²] float64 at index l²+l+m.

    Y_lm(β, α) = Θ_l|m|(cos β)·φ_m(α) with φ_0 = 1, φ_m = cos(mα), φ_−m = sin(mα) (m > 0), so Θ includes the
    √2 of m ≠ 0. Associated Legendre P̄_l^m (no Condon–Shortley phase) by the standard stable three-term
    recurrence in l at fixed m, starting from P̄_m^m = (2m−1)!!·sin^m β. At cos β = 0 the odd ones
    (l+m odd) come out exactly 0, which the grid kernel's node pairing relies on.
    """
    x = np.asarray(cos_beta, dtype=np.float64).reshape(-1)
    s = np.sqrt(np.clip(1 - x * x, 0.0, None))
    out = np.zeros((x.size, num_coefficients(lmax)))
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
            if m == 0:
                out[:, l * l + l] = norm * legendre[l]
            else:
                out[:, l * l + l + m] = out[:, l * l + l - m] = math.sqrt(2) * norm * legendre[l]
    return out


def real_sh(lmax: int, cos_beta: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Integral-normalized real SH of the module's basis on a β×α product grid: [n_β, n_α, (lmax+1)²]."""
    theta = legendre_factors(lmax, cos_beta)
    alpha = np.asarray(alpha, dtype=np.float64).reshape(-1)
    phi = np.ones((alpha.size, num_coefficients(lmax)))
    for l in range(lmax + 1):
        for m in range(1, l + 1):
            phi[:, l * l + l + m] = np.cos(m * alpha)
            phi[:, l * l + l - m] = np.sin(m * alpha)
    return theta[:, None, :] * phi[None, :, :]


@functools.lru_cache(maxsize=None)
def grid_pair_tables(degree_sum: int, lmax: int, normalization: str = "integral") -> tuple[torch.Tensor, torch.Tensor]:
    """Tables of the CPU sphere-grid kernel (``torch.ops.symkernels.gaunt_tensor_product_grid``), float64.

    For a product with L1+L2+Lo = ``degree_sum`` and every degree ≤ ``lmax``: the n_β = ⌊degree_sum/2⌋+1
    Gauss–Legendre nodes come in pairs ±x; returns ``theta`` [P, (lmax+1)²] = ``legendre_factors`` at the
    P = ⌈n_β/2⌉ nodes x ≥ 0 (the kernel gets −x from the parity (−1)^(l+|m|)) and ``weights`` [P] =
    (π/2)·w_j·(normalization scale): the α integral of φ_m² (2π or π) and the 1/4 of the kernel's complex
    Fourier form folded in; halved for the node x = 0 (odd n_β), which the kernel counts as a pair with itself.
    Both backward products have the same degree sum (a permutation of L1, L2, Lo), hence the same table.
    """
    n_beta = degree_sum // 2 + 1
    nodes, weights = np.polynomial.legendre.leggauss(n_beta)
    pairs = (n_beta + 1) // 2
    x = np.abs(nodes[:pairs][::-1]).copy()  # the nonnegative nodes, as |negative ones| (exactly symmetric)
    w = weights[:pairs][::-1].copy()
    if n_beta % 2:
        x[0] = 0.0
        w[0] *= 0.5
    theta = legendre_factors(lmax, x)
    w = w * (math.pi / 2) * normalization_scale(normalization)
    return torch.from_numpy(theta), torch.from_numpy(w)


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
