"""Hadamard transforms of size n = K·2^m (K not a power of two), as used by QuaRot for LLM widths.

The matrix is the Kronecker product ``H_n = H_K ⊗ H_{2^m}``: element ``k·2^m + j`` of a row (k < K,
j < 2^m) is mixed with the others as

    y[k·2^m + j] = scale · Σ_{k', j'} H_K[k, k'] · H_{2^m}[j, j'] · x[k'·2^m + j'],

with the Sylvester H_{2^m} of ``symkernels.hadamard.reference``. Each K is the smallest order 4·o for
the odd part o of n, so every n has exactly one decomposition (n = 5120 = 20·2^8; the order-40 matrix
is H_20 ⊗ H_2, which gives the same H_n). Orders, and how each ±1 matrix is built here:

* Paley I (q ≡ 3 mod 4 a prime power, order q + 1): 12 (q=11), 20 (19), 44 (43), 60 (59), 108 (107),
  140 (139);
* Paley II (q ≡ 1 mod 4 a prime power, order 2(q + 1)): 28 (q=13), 36 (17), 52 (q=25, GF(25)
  arithmetic);
* Williamson array over four circulant ±1 blocks whose first rows are published Williamson-type
  quadruples (order 43: Baumert–Hall, tabulated in M. Hall, *Combinatorial Theory*, 2nd ed., 1983;
  order 39: a 2013 computer-search table, the one SageMath cites as [Lon2013]): 156, 172.

Every matrix satisfies ``H Hᵀ = K·I`` (checked in the tests, and once per process here before use).
Paley I and Williamson matrices are not symmetric, so unlike the power-of-two transform H_n/√n is
orthogonal but not its own inverse: the inverse (and the backward) is the transform by ``H_nᵀ``
(``transpose=True``).
"""
from __future__ import annotations

import functools
import itertools
import math

import torch

# Largest supported n for the K·2^m transforms (all backends). 65536 covers every LLM width in the
# design note (the largest, 29568 = 924·2^5, needs an order not tabulated here anyway).
MAX_SIZE = 1 << 16

# Williamson-type quadruples (first rows of four circulant ±1 matrices A, B, C, D of order t with
# AAᵀ + BBᵀ + CCᵀ + DDᵀ = 4t·I, pairwise amicable). Published sequences; the array below turns them
# into an order-4t Hadamard matrix, which the tests verify.
_WILLIAMSON = {
    39: ("+++--+-+-----+--++----++--+-----+-+--++", "+++--++-+---+-+--+----+--+-+---+-++--++",
         "++++---+--++----+-+--+-+----++--+---+++", "+---++-+-+-----+++-++-+++-----+-+-++---"),
    43: ("++---++++-+--+--++--------++--+--+-++++---+", "+++-+-++--+-+-++++-+----+-++++-+-+--++-+-++",
         "++-++++++----+-+--++-++-++--+-+----++++++-+", "+---++--++++-+-+++-++--++-+++-+-++++--++---"),
}

# order K -> (construction, parameter)
_CONSTRUCTIONS = {
    12: ("paley1", 11), 20: ("paley1", 19), 28: ("paley2", 13), 36: ("paley2", 17), 44: ("paley1", 43),
    52: ("paley2", 25), 60: ("paley1", 59), 108: ("paley1", 107), 140: ("paley1", 139),
    156: ("williamson", 39), 172: ("williamson", 43),
}
# The orders a user may name (40 = 20·2 is included for completeness: H_40 := H_20 ⊗ H_2).
ORDERS = tuple(sorted(set(_CONSTRUCTIONS) | {40}))


# ---------------------------------------------------------------------------------------------------
# Finite fields GF(p^e), e ≤ 3: elements are coefficient tuples mod p of polynomials modulo a monic
# irreducible of degree e (for e ≤ 3, irreducible ⇔ no root in GF(p)).

def _prime_power(q: int) -> tuple[int, int]:
    for p in range(2, q + 1):
        if q % p == 0:
            e, r = 0, q
            while r % p == 0:
                r //= p
                e += 1
            if r != 1:
                raise ValueError(f"{q} is not a prime power")
            return p, e
    raise ValueError(f"{q} is not a prime power")


def _field_elements(q: int) -> tuple[list[tuple[int, ...]], callable, callable]:
    """The q elements of GF(q), and its subtraction and multiplication."""
    p, e = _prime_power(q)
    if e == 1:
        elems = [(a,) for a in range(p)]
        return elems, (lambda a, b: ((a[0] - b[0]) % p,)), (lambda a, b: ((a[0] * b[0]) % p,))
    if e > 3:
        raise ValueError(f"GF({q}) with exponent {e} > 3 is not supported")
    # modulus t^e + c_{e-1} t^{e-1} + … + c_0, the first without a root in GF(p)
    for tail in itertools.product(range(p), repeat=e):
        poly = list(tail) + [1]  # poly[i] = coefficient of t^i
        if all(sum(c * pow(x, i, p) for i, c in enumerate(poly)) % p for x in range(p)):
            break

    def mul(a, b):
        prod = [0] * (2 * e - 1)
        for i, ai in enumerate(a):
            for j, bj in enumerate(b):
                prod[i + j] = (prod[i + j] + ai * bj) % p
        for d in range(2 * e - 2, e - 1, -1):  # reduce t^d using t^e = −(c_0 + … + c_{e-1} t^{e-1})
            c = prod[d]
            if c:
                prod[d] = 0
                for i in range(e):
                    prod[d - e + i] = (prod[d - e + i] - c * poly[i]) % p
        return tuple(prod[:e])

    elems = list(itertools.product(range(p), repeat=e))
    return elems, (lambda a, b: tuple((x - y) % p for x, y in zip(a, b))), mul


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = χ(x_i − x_j) with χ the quadratic character of GF(q) (0 on the diagonal)."""
    elems, sub, mul = _field_elements(q)
    zero = elems[0]
    squares = {mul(a, a) for a in elems if a != zero}
    chi = {a: (0 if a == zero else (1 if a in squares else -1)) for a in elems}
    return torch.tensor([[chi[sub(a, b)] for b in elems] for a in elems], dtype=torch.float64)


def _paley1(q: int) -> torch.Tensor:
    """Order q + 1 for q ≡ 3 (mod 4): H = I + S with S the skew conference matrix [[0, 1ᵀ], [−1, Q]]."""
    assert q % 4 == 3
    qm = _jacobsthal(q)
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = qm
    return s + torch.eye(q + 1, dtype=torch.float64)


def _paley2(q: int) -> torch.Tensor:
    """Order 2(q + 1) for q ≡ 1 (mod 4): C ⊗ [[1, 1], [1, −1]] + I ⊗ [[1, −1], [−1, −1]], C symmetric conference."""
    assert q % 4 == 1
    qm = _jacobsthal(q)
    c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    c[0, 1:] = 1
    c[1:, 0] = 1
    c[1:, 1:] = qm
    a = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    return torch.kron(c, a) + torch.kron(torch.eye(q + 1, dtype=torch.float64), b)


def _circulant(first_row: str) -> torch.Tensor:
    row = torch.tensor([1.0 if ch == "+" else -1.0 for ch in first_row], dtype=torch.float64)
    t = row.numel()
    idx = (torch.arange(t)[None, :] - torch.arange(t)[:, None]) % t  # row i is the first row shifted by i
    return row[idx]


def _williamson(t: int) -> torch.Tensor:
    a, b, c, d = (_circulant(s) for s in _WILLIAMSON[t])
    return torch.cat([torch.cat(blocks, dim=1) for blocks in (
        (a, b, c, d), (-b, a, -d, c), (-c, d, a, -b), (-d, -c, b, a))], dim=0)


@functools.lru_cache(maxsize=None)
def _hadamard_k_cached(k: int) -> torch.Tensor:
    if k == 40:
        h = torch.kron(_hadamard_k_cached(20), torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64))
    else:
        kind, param = _CONSTRUCTIONS[k]
        h = {"paley1": _paley1, "paley2": _paley2, "williamson": _williamson}[kind](param)
    # Never hand out a wrong matrix: the defining identity is cheap to check once.
    if h.shape != (k, k) or not torch.equal(h @ h.T, k * torch.eye(k, dtype=torch.float64)):
        raise AssertionError(f"internal error: the order-{k} construction is not a Hadamard matrix")
    return h


def hadamard_k_matrix(k: int, *, dtype: torch.dtype = torch.float64,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """The ±1 Hadamard matrix H_K of order ``k`` ∈ ``ORDERS`` (H Hᵀ = k·I), built in code."""
    if k not in ORDERS:
        raise ValueError(f"no tabulated Hadamard matrix of order {k}; available orders: {ORDERS}")
    return _hadamard_k_cached(k).to(dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------------
# Sizes

def decompose(n: int) -> tuple[int, int] | None:
    """(K, 2^m) with n = K·2^m for a non-power-of-two n this module supports, else None.

    K = 4·(odd part of n), the smallest order for that odd part; 40 is never chosen (20·2 covers it).
    """
    if not isinstance(n, int) or n < 1 or n > MAX_SIZE or n & (n - 1) == 0:
        return None
    odd = n
    while odd % 2 == 0:
        odd //= 2
    k = 4 * odd
    if k not in _CONSTRUCTIONS or n % k:
        return None
    return k, n // k


def supported_sizes(limit: int = MAX_SIZE) -> list[int]:
    """Every n ≤ limit with a transform: powers of two 2..2^15 and K·2^m for the tabulated K."""
    sizes = {1 << e for e in range(1, 16) if (1 << e) <= limit}
    for k in _CONSTRUCTIONS:
        p = 1
        while k * p <= min(limit, MAX_SIZE):
            sizes.add(k * p)
            p *= 2
    return sorted(sizes)


def nearest_supported(n: int, count: int = 2) -> list[int]:
    """The supported sizes just below and just above n (for error messages)."""
    sizes = supported_sizes()
    below = [s for s in sizes if s < n][-count:]
    above = [s for s in sizes if s > n][:count]
    return below + above


def is_supported_k_size(n: int) -> bool:
    return decompose(n) is not None


def hadamard_matrix_any(n: int, *, dtype: torch.dtype = torch.float64,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """Dense ±1 H_n for any supported n (power of two: Sylvester; else H_K ⊗ H_{2^m})."""
    from symkernels.hadamard.reference import hadamard_matrix

    if n >= 1 and n & (n - 1) == 0:
        return hadamard_matrix(n, dtype=dtype, device=device)
    kp = decompose(n)
    if kp is None:
        raise ValueError(f"no Hadamard matrix of size {n} here; nearest supported sizes: {nearest_supported(n)}")
    k, p = kp
    return torch.kron(hadamard_k_matrix(k), hadamard_matrix(p)).to(dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------------
# References

def reference_dense(x: torch.Tensor, scale: float = 1.0, transpose: bool = False) -> torch.Tensor:
    """x @ H_nᵀ · scale (or x @ H_n · scale when transposing) in float64: the independent truth.

    Dense matrices only, no butterflies. Up to n = 4096 the n×n matrix is built; above, the Kronecker
    identity (A ⊗ B) vec(X) = vec(A X Bᵀ) applies the dense H_K and H_P factors (an n×n fp64 matrix at
    n = 28672 would take 6.6 GB).
    """
    from symkernels.hadamard.reference import hadamard_matrix

    n = x.shape[-1]
    if n <= 4096:
        h = hadamard_matrix_any(n, device=x.device)
        return x.double() @ (h if transpose else h.T) * scale
    k, p = decompose(n)
    hk = hadamard_k_matrix(k, device=x.device)
    hp = hadamard_matrix(p, device=x.device)
    if transpose:
        hk = hk.T
    y = hk @ x.double().reshape(*x.shape[:-1], k, p) @ hp.T
    return y.reshape(x.shape) * scale


def reference_two_pass(x: torch.Tensor, hk: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """QuaRot's route: FWHT over the 2^m part, then a dense K×K product; fp32 (fp64 for fp64) math.

    ``hk`` is the K×K matrix applied (H_K, or H_Kᵀ for the transposed transform).
    """
    from symkernels.hadamard import reference

    n = x.shape[-1]
    k = hk.shape[0]
    p = n // k
    acc = reference.accumulation_dtype(x.dtype)
    y = x.to(acc).reshape(*x.shape[:-1], k, p)
    if p > 1:
        y = reference.hadamard_transform(y, 1.0)
    y = torch.matmul(hk.to(acc), y)  # [K, K] @ [..., K, P]
    return (y * scale).reshape(x.shape).to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# Randomized Hadamard

def random_signs(n: int, seed: int, *, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """n random ±1 values from a CPU generator seeded with ``seed`` (same on every device)."""
    gen = torch.Generator().manual_seed(int(seed))
    s = torch.randint(0, 2, (n,), generator=gen).to(torch.float64) * 2 - 1
    return s.to(dtype=dtype, device=device)


def random_hadamard(n: int, seed: int = 0, *, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The orthogonal matrix Q = diag(s) · H_nᵀ / √n with seeded random signs s ∈ {±1}ⁿ.

    ``x @ Q`` equals ``randomized_hadamard_transform(x, seed)``; Q Qᵀ = I. Built in float64 (QuaRot
    folds it into weights offline in fp64) and cast to ``dtype`` at the end.
    """
    h = hadamard_matrix_any(n)
    q = random_signs(n, seed)[:, None] * h.T / math.sqrt(n)
    return q.to(dtype=dtype, device=device)


def randomized_hadamard_transform(x: torch.Tensor, seed: int = 0, *, inverse: bool = False,
                                  backend: str | None = None) -> torch.Tensor:
    """``x @ random_hadamard(n, seed)`` (``inverse=True``: ``x @ Qᵀ``), with the fast transform.

    x·diag(s)·H_nᵀ/√n is the sign flip followed by ``hadamard_transform(·, 1/√n)``; the inverse is
    the transposed transform followed by the same sign flip.
    """
    from symkernels.hadamard.ops import hadamard_transform

    n = x.shape[-1]
    s = random_signs(n, seed, dtype=x.dtype, device=x.device)
    if not inverse:
        return hadamard_transform(x * s, 1.0 / math.sqrt(n), backend=backend)
    return hadamard_transform(x, 1.0 / math.sqrt(n), backend=backend, transpose=True) * s
