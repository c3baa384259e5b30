"""The Hadamard matrices, and which sizes n have one: everything the transforms need to know about H_n.

**Powers of two.** ``hadamard_matrix(n)`` is the Sylvester matrix H_1 = [1], H_2n = [[H_n, H_n], [H_n, −H_n]]
(entry (i, j) is (−1)^popcount(i & j), what ``scipy.linalg.hadamard`` returns): symmetric, H_n H_nᵀ = n·I.

**n = K·2^m** (K not a power of two, as QuaRot needs for LLM widths): the Kronecker product
``H_n = H_K ⊗ H_{2^m}``; element ``k·2^m + j`` of a row (k < K, j < 2^m) is mixed with the others as

    y[k·2^m + j] = scale · Σ_{k', j'} H_K[k, k'] · H_{2^m}[j, j'] · x[k'·2^m + j'],

with the Sylvester H_{2^m}. ``decompose(n)`` gives (K, 2^m), ``hk_for(n, …)`` the K×K factor the kernels
apply, ``supported_size(n)`` whether any transform serves n.

**Orders.** ``ORDERS`` holds every order K ≤ ``MAX_ORDER`` = 1024 (K ≡ 0 mod 4, not a power of two) that
the rules below reach: 191 of the 247 candidates. ``construction(K)`` names the rule used for K; the
first that applies wins:

1. doubling, ``H_K = H_{K/2} ⊗ H_2`` (Sylvester's [[H, H], [H, −H]] up to a row/column permutation),
   whenever K/2 is itself reachable (40 = 20·2, 24 = 12·2, 1008 = 252·4, …);
2. Paley I, order q + 1 for a prime power q ≡ 3 (mod 4): ``H = I + S`` with the skew conference matrix
   S = [[0, 1ᵀ], [−1, Q]] (12: q = 11, 84: q = 83, 464: q = 463, 684: q = 683);
3. Paley II, order 2(q + 1) for a prime power q ≡ 1 (mod 4): ``C ⊗ [[1, 1], [1, −1]] + I ⊗ [[1, −1],
   [−1, −1]]`` with the symmetric conference matrix C = [[0, 1ᵀ], [1, Q]] (28: q = 13, 52: q = 5^2,
   76: q = 37, 148: q = 73, 244: q = 11^2, 924: q = 461);
   Q is the Jacobsthal matrix Q[a, b] = χ(a − b) of GF(q) (χ the quadratic character). Where both
   Paley rules serve a K, prime fields come before prime powers, then Paley I before Paley II: that
   keeps the earlier table's choices (28 from GF(13), not GF(3^3); 60 from Paley I over GF(59));
4. Williamson arrays over four circulant ±1 blocks whose first rows are published Williamson-type
   quadruples (order 43: Baumert–Hall, tabulated in M. Hall, *Combinatorial Theory*, 2nd ed., 1983;
   order 39: a 2013 computer-search table, the one SageMath cites as [Lon2013]): 156, 172;
5. Kronecker products ``H_a ⊗ H_b`` of two reachable orders that are not powers of two (smallest a
   first). Up to MAX_ORDER every such product is also reached by rules 1–3; the first order that needs
   this rule is 1904 = 28·68.

The 56 multiples of 4 up to 1024 that no rule reaches are 92, 116, 184, 188, 232, 236, … (the tests
list them all). Hadamard matrices of all but three of them are known (668, 716 and 892 are open
problems), but from constructions not implemented here (more Williamson quadruples, Turyn,
Goethals–Seidel, …). The order table of the earlier
version (12, 20, 28, 36, 40, 44, 52, 60, 108, 140, 156, 172) is the rule list's choice for those
orders too, so their matrices are unchanged bit for bit.

**Sizes.** n = K·2^m uses the smallest K ∈ ``ORDERS`` that divides n with n/K a power of two, trying
K = 4·o, 8·o, 16·o, … for the odd part o of n (29568 = 924·2^5; 59392 = 464·2^7, since neither 116
nor 232 is reachable). The K×K mix costs K multiply-adds per element, so the smallest K is the
cheapest, and because doubling is rule 1 every larger candidate K·2^i is H_K ⊗ H_{2^i}: all orders
that could serve n give the same H_n.

Every matrix satisfies ``H Hᵀ = K·I``: the tests check every order; here each Paley and Williamson
matrix is checked once per process before use (the other orders are Kronecker products of those).
Paley I and Williamson matrices are not symmetric, so unlike the power-of-two transform H_n/√n is
orthogonal but not its own inverse: the inverse (and the backward) is the transform by ``H_nᵀ``
(``transpose=True``).
"""
from __future__ import annotations

import functools
import itertools
import math

import torch

# Powers of two 2^1 .. 2^15 = 32768: the range every backend of the power-of-two transform supports.
MAX_LOG2_SIZE = 15
# Largest supported n for the K·2^m transforms (all backends). 65536 covers every LLM width in the
# design note (the largest, 29568 = 924·2^5) and Llama-3-405B's 53248 = 52·2^10.
MAX_SIZE = 1 << 16
# Largest order K tabulated. The K×K mix costs K multiply-adds per element against log2(n/K) for the
# FWHT, so beyond ~1000 it is all the kernels do; 1024 still admits Qwen2-72B's 924.
MAX_ORDER = 1024

# Williamson-type quadruples (first rows of four circulant ±1 matrices A, B, C, D of order t with
# AAᵀ + BBᵀ + CCᵀ + DDᵀ = 4t·I, pairwise amicable). Published sequences; the array below turns them
# into an order-4t Hadamard matrix, which the tests verify.
_WILLIAMSON = {
    39: ("+++--+-+-----+--++----++--+-----+-+--++", "+++--++-+---+-+--+----+--+-+---+-++--++",
         "++++---+--++----+-+--+-+----++--+---+++", "+---++-+-+-----+++-++-+++-----+-+-++---"),
    43: ("++---++++-+--+--++--------++--+--+-++++---+", "+++-+-++--+-+-++++-+----+-++++-+-+--++-+-++",
         "++-++++++----+-+--++-++-++--+-+----++++++-+", "+---++--++++-+-+++-++--++-+++-+-++++--++---"),
}

_H2 = ((1, 1), (1, -1))


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def hadamard_matrix(n: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
                    ) -> torch.Tensor:
    """The n×n Sylvester Hadamard matrix (n a power of two), built by Kronecker doubling."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"n must be a power of two, got {n}")
    h = torch.ones(1, 1, dtype=dtype, device=device)
    base = torch.tensor([[1, 1], [1, -1]], dtype=dtype, device=device)
    while h.shape[0] < n:
        h = torch.kron(base, h)
    return h


# ---------------------------------------------------------------------------------------------------
# Finite fields GF(p^e): elements are coefficient tuples (c_0, …, c_{e-1}) mod p of polynomials modulo a
# monic irreducible of degree e, listed in the order of itertools.product (c_0 the most significant).

def _prime_power(q: int) -> tuple[int, int] | None:
    """(p, e) with q = p^e for a prime p, or None."""
    for p in range(2, math.isqrt(q) + 1):
        if q % p == 0:
            e = 0
            while q % p == 0:
                q //= p
                e += 1
            return (p, e) if q == 1 else None
    return (q, 1) if q >= 2 else None


def _poly_remainder(num: list[int], den: list[int], p: int) -> list[int]:
    """num mod den over GF(p); coefficient lists, index = degree, den monic."""
    rem = list(num)
    for top in range(len(rem) - 1, len(den) - 2, -1):
        c = rem[top]
        if c:
            for i, d in enumerate(den):
                rem[top - len(den) + 1 + i] = (rem[top - len(den) + 1 + i] - c * d) % p
    return rem[:len(den) - 1]


def _is_irreducible(poly: list[int], p: int) -> bool:
    """A monic polynomial of degree e is reducible ⇔ a monic factor of degree ≤ e/2 divides it.

    Trial division by all of them (at most 3 + 9 + 27 for GF(3^6)); for e ≤ 3 this is "has no root in
    GF(p)", the test of the earlier version, so GF(25) keeps its modulus t² + t + 1.
    """
    e = len(poly) - 1
    for degree in range(1, e // 2 + 1):
        for low in itertools.product(range(p), repeat=degree):
            if not any(_poly_remainder(poly, list(low) + [1], p)):
                return False
    return True


def _first_irreducible(p: int, e: int) -> list[int]:
    """The first monic irreducible t^e + c_{e-1} t^{e-1} + … + c_0, in itertools.product order of (c_0, …)."""
    for tail in itertools.product(range(p), repeat=e):
        if _is_irreducible(list(tail) + [1], p):
            return list(tail) + [1]
    raise AssertionError(f"no irreducible polynomial of degree {e} over GF({p})")  # one always exists


class _GaloisField:
    """GF(q), q = p^e: the element list, multiplication, and a table of differences."""

    def __init__(self, q: int):
        pe = _prime_power(q)
        if pe is None:
            raise ValueError(f"{q} is not a prime power")
        self.p, self.e = pe
        self.modulus = _first_irreducible(self.p, self.e) if self.e > 1 else [0, 1]
        self.elements = list(itertools.product(range(self.p), repeat=self.e))

    def mul(self, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
        prod = [0] * (2 * self.e - 1)
        for i, ai in enumerate(a):
            for j, bj in enumerate(b):
                prod[i + j] = (prod[i + j] + ai * bj) % self.p
        return tuple(_poly_remainder(prod, self.modulus, self.p)) if self.e > 1 else tuple(prod)

    def index_of_difference(self) -> torch.Tensor:
        """[q, q] int64: the position in ``elements`` of elements[a] − elements[b] (digit-wise mod p)."""
        digits = torch.tensor(self.elements, dtype=torch.int64)  # [q, e]
        place = self.p ** torch.arange(self.e - 1, -1, -1)       # c_0 is the most significant digit
        return (((digits[:, None, :] - digits[None, :, :]) % self.p) * place).sum(-1)


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[a, b] = χ(x_a − x_b) with χ the quadratic character of GF(q) (0 on the diagonal)."""
    field = _GaloisField(q)
    zero, *nonzero = field.elements
    squares = {field.mul(a, a) for a in nonzero}
    chi = torch.tensor([0] + [1 if a in squares else -1 for a in nonzero], dtype=torch.float64)
    return chi[field.index_of_difference()]


def _paley1(q: int) -> torch.Tensor:
    """Order q + 1 for q ≡ 3 (mod 4): H = I + S with S the skew conference matrix [[0, 1ᵀ], [−1, Q]]."""
    assert q % 4 == 3
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = _jacobsthal(q)
    return s + torch.eye(q + 1, dtype=torch.float64)


def _paley2(q: int) -> torch.Tensor:
    """Order 2(q + 1) for q ≡ 1 (mod 4): C ⊗ [[1, 1], [1, −1]] + I ⊗ [[1, −1], [−1, −1]], C symmetric conference."""
    assert q % 4 == 1
    c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    c[0, 1:] = 1
    c[1:, 0] = 1
    c[1:, 1:] = _jacobsthal(q)
    a = torch.tensor(_H2, dtype=torch.float64)
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


# ---------------------------------------------------------------------------------------------------
# Which rule builds which order

@functools.lru_cache(maxsize=None)
def construction(k: int) -> tuple | None:
    """How H_k is built here: ``("sylvester", k)`` for powers of two, ``("double", k/2)``,
    ``("paley1", q)``, ``("paley2", q)``, ``("williamson", t)``, ``("kronecker", a, b)``; None if no rule
    reaches k. The rules are tried in the order of the module docstring (any k, not only k ≤ MAX_ORDER)."""
    if k < 1:
        return None
    if _is_power_of_two(k):
        return ("sylvester", k)
    if k % 4:
        return None  # a Hadamard matrix of order k > 2 needs 4 | k
    if construction(k // 2) is not None:
        return ("double", k // 2)
    paley = []  # (field exponent, rule rank, rule, q): prime fields first, then Paley I before Paley II
    for rank, (rule, q, residue) in enumerate((("paley1", k - 1, 3), ("paley2", k // 2 - 1, 1))):
        pe = _prime_power(q)
        if pe is not None and q % 4 == residue:
            paley.append((pe[1], rank, rule, q))
    if paley:
        _, _, rule, q = min(paley)
        return (rule, q)
    if k // 4 in _WILLIAMSON:
        return ("williamson", k // 4)
    for a in range(12, math.isqrt(k) + 1, 4):
        b = k // a
        if k % a == 0 and not _is_power_of_two(a) and not _is_power_of_two(b) and construction(a) and construction(b):
            return ("kronecker", a, b)
    return None


# The orders a user may name, and the ones decompose() picks from.
ORDERS = tuple(k for k in range(12, MAX_ORDER + 1, 4) if not _is_power_of_two(k) and construction(k) is not None)
_ORDER_SET = frozenset(ORDERS)
# For error messages: the table is too long to print.
ORDERS_SUMMARY = f"symkernels.hadamard.ORDERS ({len(ORDERS)} orders from {ORDERS[0]} to {ORDERS[-1]})"


def _build(rule: tuple) -> torch.Tensor:
    """The float64 ±1 matrix a ``construction()`` result describes."""
    kind, *params = rule
    if kind == "sylvester":
        return hadamard_matrix(params[0])
    if kind == "double":
        return torch.kron(_hadamard_k_pm1(params[0]).double(), torch.tensor(_H2, dtype=torch.float64))
    if kind == "kronecker":
        return torch.kron(_hadamard_k_pm1(params[0]).double(), _hadamard_k_pm1(params[1]).double())
    return {"paley1": _paley1, "paley2": _paley2, "williamson": _williamson}[kind](params[0])


# int8 (±1 is exact) keeps a few large orders cheap to hold; a process uses one or two orders.
@functools.lru_cache(maxsize=32)
def _hadamard_k_pm1(k: int) -> torch.Tensor:
    rule = construction(k)
    h = _build(rule)
    if h.shape != (k, k):
        raise AssertionError(f"internal error: the order-{k} construction {rule} has shape {tuple(h.shape)}")
    # Never hand out a wrong matrix: the defining identity is cheap to check once (fp32 is exact: every
    # partial sum is an integer of magnitude ≤ k < 2^24). Kronecker products (doubling included) of
    # checked factors need no check: (A ⊗ B)(A ⊗ B)ᵀ = AAᵀ ⊗ BBᵀ.
    if rule[0] not in ("double", "kronecker", "sylvester"):
        hf = h.float()
        if not torch.equal(hf @ hf.T, k * torch.eye(k)):
            raise AssertionError(f"internal error: the order-{k} construction {rule} is not a Hadamard matrix")
    return h.to(torch.int8)


def hadamard_k_matrix(k: int, *, dtype: torch.dtype = torch.float64,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """The ±1 Hadamard matrix H_K of order ``k`` ∈ ``ORDERS`` (H Hᵀ = k·I), built in code."""
    if k not in _ORDER_SET:
        raise ValueError(f"no Hadamard matrix of order {k} here; available: {ORDERS_SUMMARY}, "
                         f"nearest: {[o for o in ORDERS if o < k][-2:] + [o for o in ORDERS if o > k][:2]}")
    return _hadamard_k_pm1(k).to(dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------------
# Sizes

def decompose(n: int) -> tuple[int, int] | None:
    """(K, 2^m) with n = K·2^m for a non-power-of-two n this module supports, else None.

    K is the smallest order in ``ORDERS`` of the form 4·o·2^j (o the odd part of n, j = 0, 1, …) that
    divides n; every larger one gives the same H_n (module docstring).
    """
    if not isinstance(n, int) or n < 1 or n > MAX_SIZE or _is_power_of_two(n):
        return None
    k = 4 * (n // (n & -n))  # 4 × the odd part
    while k <= min(n, MAX_ORDER):
        if k in _ORDER_SET:
            return k, n // k
        k *= 2
    return None


def factor(n: int) -> tuple[int, int] | None:
    """(K, P) with n = K·P for every size the transforms serve: (1, n) for a power of two 2..2^15, else
    ``decompose(n)``; None if no transform serves n."""
    if 2 <= n <= 1 << MAX_LOG2_SIZE and n & (n - 1) == 0:
        return 1, n
    return decompose(n)


def supported_size(n: int) -> bool:
    """Whether ``hadamard_transform`` serves rows of n (a power of two 2..2^15, or K·2^m)."""
    return factor(n) is not None


def supported_sizes(limit: int = MAX_SIZE) -> list[int]:
    """Every n ≤ limit with a transform: powers of two 2..2^15 and K·2^m for K in ``ORDERS``."""
    sizes = {1 << e for e in range(1, MAX_LOG2_SIZE + 1) if (1 << e) <= limit}
    for k in ORDERS:
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


def hadamard_matrix_any(n: int, *, dtype: torch.dtype = torch.float64,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """Dense ±1 H_n for any supported n (power of two: Sylvester; else H_K ⊗ H_{2^m})."""
    if _is_power_of_two(n):
        return hadamard_matrix(n, dtype=dtype, device=device)
    kp = decompose(n)
    if kp is None:
        raise ValueError(f"no Hadamard matrix of size {n} here; nearest supported sizes: {nearest_supported(n)}")
    k, p = kp
    return torch.kron(hadamard_k_matrix(k), hadamard_matrix(p)).to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _hk(k: int, transpose: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    h = hadamard_k_matrix(k) if k > 1 else hadamard_matrix(1)
    return (h.T if transpose else h).contiguous().to(dtype=dtype, device=device)


# A constant of the traced graph: without this, dynamo would trace through the lru_cache into the
# construction of H_K and its data-dependent H·Hᵀ = K·I check (a graph break under fullgraph=True).
@torch.compiler.assume_constant_result
def hk_for(n: int, dtype: torch.dtype, device: torch.device, transpose: bool = False) -> torch.Tensor:
    """The K×K factor the kernels apply for a supported size n = K·P (``factor``): H_K, or [[1]] for a power
    of two, whose transform is all butterflies. fp64 for fp64 data, else fp32 (±1 is exact in both)."""
    k, _ = factor(n)
    return _hk(k, transpose, torch.float64 if dtype == torch.float64 else torch.float32, device)


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
