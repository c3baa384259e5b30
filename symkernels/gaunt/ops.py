"""Public Gaunt ops: argument checks, backend choice, fake and autograd registrations."""
from __future__ import annotations

import functools
import math

import torch

from symkernels import _backend, _library
from symkernels.gaunt import coefficients, reference

OP_NAME = "gaunt_tensor_product"
IMPLEMENTED = ("reference", "cpu", "cuda", "triton")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_HALF = (torch.float16, torch.bfloat16)
_triton_product = _library.TritonLauncher("symkernels.gaunt.triton.gaunt_tensor_product")


def lmax_from_size(n: int) -> int | None:
    """L with (L+1)² = n, or None when n is not a positive perfect square."""
    if n < 1:
        return None
    l = math.isqrt(n) - 1
    return l if (l + 1) ** 2 == n else None


def _check_args(x1, x2, lmax_out, normalization) -> tuple[int, int, int]:
    for name, x in (("x1", x1), ("x2", x2)):
        _backend.check_float_tensor(OP_NAME, name, x, "the SH coefficients", SUPPORTED_DTYPES)
    if x1.dtype != x2.dtype:
        raise TypeError(f"{OP_NAME}: x1 and x2 must have the same dtype, got {x1.dtype} and {x2.dtype}")
    degrees = []
    for name, x in (("x1", x1), ("x2", x2)):
        n = x.shape[-1]
        l = lmax_from_size(n)
        if l is None:
            lo = math.isqrt(max(n, 1))
            raise ValueError(f"{OP_NAME}: {name}.shape[-1] must be a perfect square (L+1)² holding degrees 0..L, "
                             f"got {n} (nearest: {lo * lo} or {(lo + 1) ** 2})")
        if l > coefficients.MAX_L:
            raise ValueError(f"{OP_NAME}: {name} has degree L = {l}; at most {coefficients.MAX_L} is supported")
        degrees.append(l)
    l1, l2 = degrees
    if lmax_out is None:
        lmax_out = l1 + l2
    if isinstance(lmax_out, bool) or not isinstance(lmax_out, int):
        raise TypeError(f"{OP_NAME}: lmax_out must be an int or None, got {type(lmax_out).__name__}")
    if not 0 <= lmax_out <= l1 + l2:
        raise ValueError(f"{OP_NAME}: lmax_out must be between 0 and L1+L2 = {l1 + l2} (higher degrees of the "
                         f"product are zero), got {lmax_out}")
    if normalization not in coefficients.NORMALIZATIONS:
        raise ValueError(f"{OP_NAME}: normalization must be one of {coefficients.NORMALIZATIONS}, "
                         f"got {normalization!r}")
    try:
        if x1.shape[:-1] != x2.shape[:-1]:  # (torch.broadcast_shapes costs ~9 µs, as much as the rest here)
            torch.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
    except RuntimeError:
        raise ValueError(f"{OP_NAME}: the leading dims of x1 {tuple(x1.shape[:-1])} and x2 {tuple(x2.shape[:-1])} "
                         f"do not broadcast") from None
    return l1, l2, lmax_out


def gaunt_tensor_product(x1: torch.Tensor, x2: torch.Tensor, lmax_out: int | None = None, *,
                         normalization: str = "integral", backend: str | None = None) -> torch.Tensor:
    """Gaunt tensor product: the product of two spherical functions, projected onto degrees ≤ lmax_out.

    Args:
        x1: ``[..., (L1+1)²]`` real SH coefficients of degrees 0..L1 in e3nn's basis and order
            (index l² + l + m). float16, bfloat16, float32 or float64; any strides.
        x2: ``[..., (L2+1)²]``, same dtype; leading dims broadcast with x1's (e.g. batch × channels
            against batch × 1 for an edge SH shared by all channels).
        lmax_out: output degree Lo, 0 ≤ Lo ≤ L1+L2 (default L1+L2, the whole product).
        normalization: how coefficients map to functions, as e3nn's ``normalization``:
            ``'integral'`` — f = Σ x_lm Y_lm with orthonormal SH (∫Y² = 1, Y_00 = 1/√(4π)); the
            product is out_k = Σ G_ijk x1_i x2_j with G_ijk = ∫ Y_i Y_j Y_k dΩ.
            ``'component'`` — f = Σ x_lm Y'_lm with Y' = √(4π)·Y (e3nn's 'component'); then
            out = √(4π)·Σ G x1 x2, and e_00 (the constant 1) is the identity.
        backend: ``None`` (the dispatcher op where a kernel exists for the device, else Triton on CUDA,
            else the reference), ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        ``[..., (Lo+1)²]`` in x1's dtype (computed in float32 for half inputs, float64 for float64).
        Equals ``reference.gaunt_tensor_product`` (a dense einsum with the Gaunt tensor). A row with a
        NaN/inf input gives a NaN output row, as the dense contraction does.

    Algorithms: ``cpu`` contracts the nonzeros of G directly (sparse-direct, O(L⁵)) for small degrees and
    uses the exact sphere grid (Gauss–Legendre in cos β, Fourier convolution in α, O(L³)) from about
    L = 5 on, chosen per (L1, L2, Lo) by ``cpu_route`` (measured crossover); ``cuda`` is sparse-direct;
    ``triton`` evaluates both inputs on the smallest exact sphere grid (Gauss–Legendre × uniform),
    multiplies, and projects back, all as small GEMMs fused per row tile. Broadcast and strided inputs are
    read in place by the CPU kernels (an edge SH [E, 1, n] shared by C channels is never expanded). Differentiable to any order
    (backward is again a Gaunt product, since G is symmetric), in forward mode too.
    """
    l1, l2, lmax_out = _check_args(x1, x2, lmax_out, normalization)
    device = _backend.common_device(OP_NAME, x1=x1, x2=x2)
    impl = _backend.resolve(OP_NAME, device, backend, IMPLEMENTED)
    if impl == "reference":
        return reference.gaunt_tensor_product(x1, x2, lmax_out, normalization)
    # The CPU and Triton kernels compute half inputs in float32 (widen here, round once at the end); the
    # CUDA kernel reads half/bfloat16 itself and accumulates in float32.
    half = x1.dtype in _HALF and not (impl == "dispatcher" and device.type == "cuda")
    a, b = (x1.float(), x2.float()) if half else (x1, x2)
    if impl == "dispatcher" and torch.compiler.is_compiling():
        # Dynamo cannot trace an autograd.Function with a custom jvp; the dispatcher op carries its own
        # register_autograd (backward = the op again), so compiled graphs keep every reverse-mode order.
        out = _raw_product(a, b, lmax_out, normalization, impl)
    else:
        out = _GauntFunction.apply(a, b, lmax_out, normalization, impl)
    return out.to(x1.dtype) if half else out


# ---------------------------------------------------------------------------------------------
# Tables on the device, cached. assume_constant_result lets torch.compile treat them as constants
# instead of tracing the (numpy, exact-integer) generator.
# ---------------------------------------------------------------------------------------------
_TABLE_CACHE: dict[tuple, tuple[torch.Tensor, ...]] = {}


@torch.compiler.assume_constant_result
def _sparse_tables(l1: int, l2: int, lo: int, normalization: str, device: torch.device,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    key = ("sparse", l1, l2, lo, normalization, device, dtype)
    if key not in _TABLE_CACHE:
        paths, coeffs = coefficients.sparse_gaunt_table(l1, l2, lo, normalization)
        _TABLE_CACHE[key] = (paths.to(device), coeffs.to(device=device, dtype=dtype))
    return _TABLE_CACHE[key]


@torch.compiler.assume_constant_result
def _grid_pair_tables(degree_sum: int, lmax: int, normalization: str, device: torch.device,
                      dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    key = ("grid_pairs", degree_sum, lmax, normalization, device, dtype)
    if key not in _TABLE_CACHE:
        _TABLE_CACHE[key] = tuple(t.to(device=device, dtype=dtype)
                                  for t in coefficients.grid_pair_tables(degree_sum, lmax, normalization))
    return _TABLE_CACHE[key]


@torch.compiler.assume_constant_result
def _grid_tables(l1: int, l2: int, lo: int, normalization: str, device: torch.device,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    key = ("grid", l1, l2, lo, normalization, device, dtype)
    if key not in _TABLE_CACHE:
        _TABLE_CACHE[key] = tuple(t.to(device=device, dtype=dtype)
                                  for t in coefficients.grid_tables(l1, l2, lo, normalization))
    return _TABLE_CACHE[key]


# Private knob for tests and benchmarks: None (choose by cost), "sparse" or "grid" (CPU kernel routes).
_CPU_ROUTE: str | None = None


def cpu_route_fmas(l1: int, l2: int, lo: int) -> dict[str, int]:
    """FMAs per row of each exact CPU route for degrees (L1, L2, Lo), as the kernels do them.

    ``"sparse"``: one per nonzero of G (the bound of ``coefficients.sparse_table_size``) plus one per
    (outer, output) group, bounded here by the nonzeros too (the kernel factors out[k] = Σ_i a_i Σ_j c b_j).
    ``"grid"``: node pairs × (the three Legendre transforms, one FMA per coefficient, + 8 FMAs per complex
    Fourier product term). 2× these are the FLOPs the benchmark counts (the fewer of the two is the least
    work an exact method we know needs)."""
    nnz = coefficients.sparse_table_size(l1, l2, lo)
    pairs = ((l1 + l2 + lo) // 2 + 2) // 2
    analysis = (l1 + 1) ** 2 + (l2 + 1) ** 2 + (lo + 1) ** 2
    product = 8 * sum(min(l1, k + l2) - max(-l1, k - l2) + 1 for k in range(min(lo, l1 + l2) + 1))
    return {"sparse": nnz, "grid": pairs * (analysis + product)}


@torch.compiler.assume_constant_result  # a pure function of ints (numpy inside): a constant for Dynamo
def cpu_route(l1: int, l2: int, lo: int) -> str:
    """The CPU kernel's route for degrees (L1, L2, Lo): ``"sparse"`` (direct over the nonzeros of G) or
    ``"grid"`` (exact sphere grid, O(L³)), whichever the cost model below says is faster.

    Both costs are per row (``cpu_route_fmas``): the sparse route's table entries against the grid's FMAs,
    at ``grid_cost_factor()`` to one. Measured before the sparse route was factored by (outer, output) groups
    on the 2-core AVX-512 dev machine, fp32, 1 thread, 16384 rows, CPU time (machine shared, ±20%), grid
    speed-up over sparse for L1 = L2 = Lo = L: 0.6–0.8× at L = 2, 0.9× at 3, 1.0–1.2× at 4, 1.0–1.6× at 5,
    1.1–1.5× at 6, 2.2–2.9× at 8, 4.3–4.9× at 10; asymmetric cases agreed too: (6,3,6) grid 1.3×,
    (6,6,12) 2.7×, (5,5,10) 1.4×; (8,2,8) sparse 1.2×, (2,8,8) 1.3×, (4,4,8) 1.2×, (3,3,6) 1.2×; (8,1,8)
    a tie. Re-measured after the sparse route was factored and both routes got block transposes (same setup,
    best of 8 interleaved): grid speed-up 0.65× at L = 2, 0.64× at 3, 0.95× at 4, 1.5× at 5 and 6; (3,3,6)
    0.8×, (4,4,8) 1.0×, (8,1,8) 0.67×, (6,3,6) 1.2×: the model still picks the faster route, sparse up to
    L = 4 and the grid from 5.

    On AVX2 (Zen 3 without AVX-512, both routes in 32-byte vectors with FMA, same setup, best of 3) the grid
    costs twice as much per FMA unit: grid speed-up 0.47× at L = 2, 0.33× at 3, 0.49× at 4, 0.79× at 5, 0.77×
    at 6, 1.29× at 7, 1.35× at 8, 2.9× at 10; (3,3,6) 0.41×, (4,4,8) 0.67×, (6,3,6) 0.63×, (8,1,8) 0.40×,
    (5,5,10) 0.79×, (6,6,12) 0.98×: a factor of 0.5 picks the faster route in each (a tie at (6,6,12)).
    """
    return _CPU_ROUTE if _CPU_ROUTE is not None else _cheaper_cpu_route(l1, l2, lo, grid_cost_factor())


@functools.cache  # asked on every CPU call (~3 µs uncached, numpy inside)
def _cheaper_cpu_route(l1: int, l2: int, lo: int, cost_factor: float) -> str:
    fmas = cpu_route_fmas(l1, l2, lo)
    return "grid" if fmas["grid"] < cost_factor * fmas["sparse"] else "sparse"


# Time of one sparse table entry per grid FMA unit, by the SIMD level the CPU kernels run at (measured, see
# cpu_route). The baseline x86-64 and non-x86 builds were not measured: they take the AVX2 value (vectors of
# a register's width there too).
_GRID_COST_FACTOR = {"avx512": 1.0, "avx2": 0.5}
_GRID_COST_FACTOR_UNMEASURED = 0.5


@functools.cache
def grid_cost_factor() -> float:
    """The cost model's time of one sparse table entry per grid FMA unit on this CPU (see cpu_route)."""
    return _GRID_COST_FACTOR.get(_backend.build_info().get("simd", ""), _GRID_COST_FACTOR_UNMEASURED)


def _raw_product(x1: torch.Tensor, x2: torch.Tensor, lmax_out: int, normalization: str, impl: str) -> torch.Tensor:
    """One kernel call, no autograd recording. lmax_out may exceed L1+L2 (backward asks for that)."""
    l1 = lmax_from_size(x1.shape[-1])
    l2 = lmax_from_size(x2.shape[-1])
    if impl == "dispatcher" and x1.device.type == "cpu" and cpu_route(l1, l2, lmax_out) == "grid":
        theta, weights = _grid_pair_tables(l1 + l2 + lmax_out, max(l1, l2, lmax_out), normalization, x1.device,
                                           x1.dtype)
        return torch.ops.symkernels.gaunt_tensor_product_grid(x1, x2, theta, weights, lmax_out)
    if impl == "triton":
        return _triton_product(x1, x2, *_grid_tables(l1, l2, lmax_out, normalization, x1.device, x1.dtype))
    coeff_dtype = torch.float32 if x1.dtype in _HALF else x1.dtype  # never round the table to half
    paths, coeffs = _sparse_tables(l1, l2, lmax_out, normalization, x1.device, coeff_dtype)
    return torch.ops.symkernels.gaunt_tensor_product(x1, x2, paths, coeffs, lmax_out)


class _GauntFunction(_library.KernelFunction):
    """Autograd for the kernel backends, in both modes.

    G is symmetric under index permutations, so ∂L/∂x1 = GTP(x2, g) truncated to degree L1 and
    ∂L/∂x2 = GTP(x1, g) truncated to L2; the tangent is GTP(dx1, x2) + GTP(x1, dx2). Every one of them
    calls ``apply`` again, so double (and higher) backward is recorded through the same kernels.
    A bare ``torch.library`` op has no forward-mode formula, hence this wrapper.
    """

    @staticmethod
    def forward(x1, x2, lmax_out, normalization, impl):
        return _raw_product(x1, x2, lmax_out, normalization, impl)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x1, x2, ctx.lmax_out, ctx.normalization, ctx.impl = inputs
        ctx.save_for_backward(x1, x2)
        ctx.save_for_forward(x1, x2)
        ctx.shapes = (x1.shape, x2.shape)

    @staticmethod
    def backward(ctx, grad):
        x1, x2 = ctx.saved_tensors
        s1, s2 = ctx.shapes
        l1, l2 = lmax_from_size(s1[-1]), lmax_from_size(s2[-1])
        g1 = g2 = None
        if ctx.needs_input_grad[0]:
            g1 = _GauntFunction.apply(x2, grad, l1, ctx.normalization, ctx.impl).sum_to_size(s1)
        if ctx.needs_input_grad[1]:
            g2 = _GauntFunction.apply(x1, grad, l2, ctx.normalization, ctx.impl).sum_to_size(s2)
        return g1, g2, None, None, None

    @staticmethod
    def jvp(ctx, dx1, dx2, *_):
        x1, x2 = ctx.saved_tensors
        out = None
        if dx1 is not None:
            out = _GauntFunction.apply(dx1, x2, ctx.lmax_out, ctx.normalization, ctx.impl)
        if dx2 is not None:
            term = _GauntFunction.apply(x1, dx2, ctx.lmax_out, ctx.normalization, ctx.impl)
            out = term if out is None else out + term
        return out

    @staticmethod
    def vmap(info, in_dims, x1, x2, lmax_out, normalization, impl):
        # The op maps over (broadcast) leading dims: give both inputs the same rank, then put the vmapped
        # dim first on each (size 1 where an input is not vmapped, so it broadcasts).
        d1, d2 = in_dims[0], in_dims[1]
        r1 = x1.dim() - (d1 is not None)
        r2 = x2.dim() - (d2 is not None)
        rank = max(r1, r2)

        def prepare(x, d, r):
            if d is None:
                x = x.unsqueeze(0)
            else:
                x = x.movedim(d, 0)
            return x.reshape(x.shape[:1] + (1,) * (rank - r) + x.shape[1:])

        out = _GauntFunction.apply(prepare(x1, d1, r1), prepare(x2, d2, r2), lmax_out, normalization, impl)
        return out, 0


# Both product ops share one signature, (x1, x2, table_a, table_b, lmax_out) -> [..., (lmax_out+1)^2]: the
# sparse route's tables are (paths, coeffs), the grid route's (theta, weights). Their fake kernel, saved
# context and forward-mode rule are therefore the same.
def _fake_product(x1, x2, _table_a, _table_b, lmax_out):
    torch._check(x1.dtype == x2.dtype, lambda: f"{OP_NAME}: x2 must have x1's dtype")
    lead = torch.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
    return x1.new_empty((*lead, (lmax_out + 1) ** 2))


def _save_product_inputs(ctx, inputs, output):
    x1, x2, table_a, table_b, lmax_out = inputs
    ctx.save_for_backward(x1, x2, table_a, table_b)
    ctx.save_for_forward(x1, x2, table_a, table_b)
    ctx.lmax_out = lmax_out


def _product_jvp(op_name: str):
    # The product is bilinear: d(x1 ⊛ x2) = dx1 ⊛ x2 + x1 ⊛ dx2, each term the op again.
    def jvp(ctx, x1_t, x2_t, *_table_tangents):
        op = getattr(torch.ops.symkernels, op_name)
        x1, x2, table_a, table_b = ctx.saved_tensors
        terms = []
        if x1_t is not None:
            terms.append(op(x1_t, x2, table_a, table_b, ctx.lmax_out))
        if x2_t is not None:
            terms.append(op(x1, x2_t, table_a, table_b, ctx.lmax_out))
        return terms[0] if len(terms) == 1 else terms[0] + terms[1]

    return jvp


def _permuted(paths, columns):
    # Same entries with the roles of the indices permuted (G is symmetric), re-sorted by the new output index
    # so the kernel keeps its accumulator in a register.
    p = paths[:, columns]
    order = torch.argsort(p[:, 2].long() * (1 << 20) + p[:, 0].long(), stable=True)
    return p[order].contiguous(), order


# Backward is the op again, with permuted tables, so double backward is the op again too.
def _sparse_backward(ctx, grad):
    x1, x2, paths, coeffs = ctx.saved_tensors
    g1 = g2 = None
    if ctx.needs_input_grad[0]:
        p, order = _permuted(paths, [1, 2, 0])
        l1 = lmax_from_size(x1.shape[-1])
        g1 = torch.ops.symkernels.gaunt_tensor_product(x2, grad, p, coeffs[order], l1).sum_to_size(x1.shape)
    if ctx.needs_input_grad[1]:
        p, order = _permuted(paths, [0, 2, 1])
        l2 = lmax_from_size(x2.shape[-1])
        g2 = torch.ops.symkernels.gaunt_tensor_product(x1, grad, p, coeffs[order], l2).sum_to_size(x2.shape)
    return g1, g2, None, None, None


# G is symmetric and the grid table depends only on L1+L2+Lo, so backward is the op with the roles permuted.
def _grid_backward(ctx, grad):
    x1, x2, theta, weights = ctx.saved_tensors
    op = torch.ops.symkernels.gaunt_tensor_product_grid
    g1 = g2 = None
    if ctx.needs_input_grad[0]:
        g1 = op(x2, grad, theta, weights, lmax_from_size(x1.shape[-1])).sum_to_size(x1.shape)
    if ctx.needs_input_grad[1]:
        g2 = op(x1, grad, theta, weights, lmax_from_size(x2.shape[-1])).sum_to_size(x2.shape)
    return g1, g2, None, None, None


_library.register_op(OP_NAME, fake=_fake_product, setup_context=_save_product_inputs, backward=_sparse_backward,
                     jvp=_product_jvp("gaunt_tensor_product"))
_library.register_op("gaunt_tensor_product_grid", fake=_fake_product, setup_context=_save_product_inputs,
                     backward=_grid_backward, jvp=_product_jvp("gaunt_tensor_product_grid"))
