"""Gaunt tensor product sweep: rows = batch × channels (10⁴ × 32 on CPU), L1 = L2 = L → Lo = L for
L = 1…10, fp32, forward and forward+backward; ours vs e3nn TensorProduct ('uuu', c² path weights),
cuEquivariance (a SegmentedPolynomial with the Gaunt coefficients, same paths), the e3nn S² grid and our
dense reference, all computing the same outputs from the same inputs. One more case, L = 4 at batch 512 ×
32 channels, is the e3nn comparison of issue #14.

Roofline: every case carries both the bytes (inputs + output, ×3 with backward) and the fewest FLOPs an exact
method we know needs (2 × the fewer FMAs of ``ops.cpu_route_fmas``: sparse-direct, 1 per nonzero of G, or the
sphere grid), so the table gives the share of whichever same-run limit binds, copy bandwidth or fp32 GEMM.

Bounded time: e3nn's TensorProduct and the dense einsum grow as L⁶ and take minutes per call at L ≥ 8
with 3.2·10⁵ rows. Before timing, each peer is run once on a 1/64 slice of the batch; if that projects one
full call above the cap (``SYMKERNELS_GAUNT_PEER_CAP_S``, default 10 s) the peer is not timed and the table
says so, with the projection."""
from __future__ import annotations

import os
import time
from typing import Iterable

import torch

from symkernels import _backend
from symkernels.bench.harness import Case, sweep
from symkernels.gaunt import coefficients as C
from symkernels.gaunt import gaunt_tensor_product, ops, reference

_PROBE_FRACTION = 64


def _peer_cap_s() -> float:
    return float(os.environ.get("SYMKERNELS_GAUNT_PEER_CAP_S", "10"))


def _capped(name: str, make, full_inputs, batch: int):
    """``make(*inputs)`` is a zero-argument callable for one call on those inputs (batch-major). Returns it for the
    full inputs, or a string saying why it is skipped: one call on 1/64 of the batch, projected linearly."""
    probe_batch = max(1, batch // _PROBE_FRACTION)
    probe = make(*[x[:probe_batch] for x in full_inputs])
    probe()  # warm-up (e3nn builds its code on the first call)
    start = time.perf_counter()
    probe()
    projected = (time.perf_counter() - start) * batch / probe_batch
    if projected > _peer_cap_s():
        return (f"{name}: not timed, one call ≈ {projected:.0f} s projected from {probe_batch} of {batch} batch rows "
                f"(over the {_peer_cap_s():.0f} s cap, SYMKERNELS_GAUNT_PEER_CAP_S)")
    return make(*full_inputs)


def _e3nn_peers(lmax: int, channels: int, device: torch.device):
    """(tensor product, S² grid product, layout converter) or the reason e3nn cannot run."""
    try:
        from e3nn import o3
    except ImportError as exc:
        return f"e3nn not installed ({exc})"
    irreps = o3.Irreps([(channels, (l, (-1) ** l)) for l in range(lmax + 1)])
    instructions = [(i1, i2, io, "uuu", False, C.gaunt_constant(i1, i2, io) ** 2)
                    for i1 in range(lmax + 1) for i2 in range(lmax + 1) for io in range(lmax + 1)
                    if abs(i1 - i2) <= io <= i1 + i2 and (i1 + i2 + io) % 2 == 0]
    tp = o3.TensorProduct(irreps, irreps, irreps, instructions, irrep_normalization="none",
                          path_normalization="none").to(device)
    # e3nn's β grid is not Gauss–Legendre: it needs about twice our n_β for the product of degree 2L.
    res = (2 * (2 * lmax + 1), 2 * (3 * lmax) + 1)
    to_grid = o3.ToS2Grid(lmax, res, normalization="integral").to(device)
    from_grid = o3.FromS2Grid(res, lmax, normalization="integral").to(device)

    def grid_product(a, b):
        return from_grid(to_grid(a) * to_grid(b))

    def to_e3nn(x):  # [B, C, (L+1)²] → mul_ir [B, Σ C(2l+1)]
        return torch.cat([x[..., l * l:(l + 1) ** 2].reshape(x.shape[0], -1) for l in range(lmax + 1)], -1)

    return tp, grid_product, to_e3nn


def _cueq_peer(lmax: int, channels: int, device: torch.device):
    """(product on our [B, C, n] layout, layout converter) or why cuEquivariance cannot run.

    cuEquivariance has no Gaunt op, so this is its generic segmented tensor product with our coefficients:
    operands per degree l of shape (2l+1, C) (its ir_mul layout), subscripts "iu,ju,ku+ijk" (channel-wise,
    like e3nn's 'uuu'), one path per (l1, l2, l3) with l1+l2+l3 even and l3 ≤ Lo holding the dense block
    G[l1, l2, l3] — the same paths and weights as ours, so outputs agree exactly (tests/gaunt/
    test_gaunt_cpu_layout.py checks it). On CPU only its 'naive' method runs."""
    try:
        import cuequivariance as cue
        import cuequivariance_torch as cuet
    except ImportError as exc:
        return f"cuEquivariance not installed ({exc})"
    stp = cue.SegmentedTensorProduct.from_subscripts("iu,ju,ku+ijk")
    for operand in range(3):
        for l in range(lmax + 1):
            stp.add_segment(operand, (2 * l + 1, channels))
    for l1 in range(lmax + 1):
        for l2 in range(lmax + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, lmax) + 1, 2):
                stp.add_path(l1, l2, l3, c=C.gaunt_coefficients(l1, l2, l3).numpy())
    method = "naive" if device.type == "cpu" else "uniform_1d"
    poly = cuet.SegmentedPolynomial(cue.SegmentedPolynomial.eval_last_operand(stp), method=method,
                                    math_dtype=torch.float32).to(device)

    def to_ir_mul(x):  # [B, C, (L+1)²] → [B, Σ_l (2l+1)·C], channel innermost per degree
        return torch.cat([x[..., l * l:(l + 1) ** 2].transpose(-1, -2).reshape(x.shape[0], -1)
                          for l in range(lmax + 1)], -1)

    def product(a, b):
        return poly([a, b])[0]

    return product, to_ir_mul


def _fwd_bwd(fn, *inputs):
    """A callable doing forward + backward of fn(*inputs) with a fixed upstream gradient."""
    leaves = [x.detach().requires_grad_() for x in inputs]
    grad = torch.randn_like(fn(*leaves))

    def run():
        torch.autograd.grad(fn(*leaves), leaves, grad)

    return run


@sweep("gaunt")
def cases(device: torch.device, quick: bool) -> Iterable[Case]:
    batch, channels = (250, 16) if quick else (10_000, 32)
    degrees = (1, 2, 4) if quick else tuple(range(1, 11))
    ours_backend = "cuda" if device.type == "cuda" and _backend.backend_status("cuda") else \
        ("triton" if device.type == "cuda" else "cpu")
    for lmax in degrees:
        yield from _cases_for_degree(lmax, batch, channels, device, ours_backend)
    # Issue #14's e3nn comparison: L = 4, C = 32, B = 512 (forward only).
    yield from _cases_for_degree(4, 512, 32, device, ours_backend, modes=("forward",))


def _cases_for_degree(lmax: int, batch: int, channels: int, device: torch.device, ours_backend: str,
                      modes: tuple[str, ...] = ("forward", "forward+backward")) -> Iterable[Case]:
    # One function call per degree, so every closure below binds this degree's tensors (the harness
    # collects all cases before timing them).
    n = (lmax + 1) ** 2
    rows = batch * channels
    gen = torch.Generator(device="cpu").manual_seed(lmax)
    a = torch.randn(batch, channels, n, generator=gen).to(device)
    b = torch.randn(batch, channels, n, generator=gen).to(device)
    nnz = C.sparse_gaunt_table(lmax, lmax, lmax)[0].shape[0]
    route = ops.cpu_route(lmax, lmax, lmax) if ours_backend == "cpu" else "-"
    peers = _e3nn_peers(lmax, channels, device)
    cueq = _cueq_peer(lmax, channels, device)
    fmas = ops.cpu_route_fmas(lmax, lmax, lmax)
    least_flops_per_row = 2 * min(nnz, fmas["grid"])

    def ours(x, y):
        return gaunt_tensor_product(x, y, lmax, backend=ours_backend)

    def dense(x, y):
        return reference.gaunt_tensor_product(x, y, lmax)

    for mode in modes:
        forward = mode == "forward"

        def timed(fn):  # a callable factory for inputs (x, y): forward, or forward + backward
            return (lambda x, y: (lambda: fn(x, y))) if forward else (lambda x, y: _fwd_bwd(fn, x, y))

        impls = {"symkernels": timed(ours)(a, b),
                 "dense reference (einsum)": _capped("dense reference", timed(dense), (a, b), batch)}
        if isinstance(peers, str):
            impls["e3nn TensorProduct (c² weights)"] = impls["e3nn S² grid"] = peers
        else:
            tp, grid_product, to_e3nn = peers
            impls["e3nn TensorProduct (c² weights)"] = _capped("e3nn TensorProduct", timed(tp),
                                                               (to_e3nn(a), to_e3nn(b)), batch)
            impls["e3nn S² grid"] = _capped("e3nn S² grid", timed(grid_product), (a, b), batch)
        if isinstance(cueq, str):
            impls["cuEquivariance"] = cueq
        else:
            product, to_ir_mul = cueq
            impls["cuEquivariance"] = _capped("cuEquivariance", timed(product), (to_ir_mul(a), to_ir_mul(b)), batch)
        io_bytes = rows * 3 * n * 4
        yield Case(op=f"gaunt_tensor_product {mode}", shape=f"{batch}x{channels} L={lmax}->{lmax}",
                   dtype="float32", impls=impls, ours="symkernels",
                   bytes_moved=io_bytes * (1 if forward else 3),
                   flops=least_flops_per_row * rows * (1 if forward else 3),
                   extra={"nnz(G)": nnz, "backend": ours_backend, "route": route},
                   check=(lambda: _check(ours(a, b), dense(a[:64], b[:64]), 64)) if forward else None)


def _check(out: torch.Tensor, expected: torch.Tensor, rows: int) -> None:
    out = out[:rows]
    err = ((out - expected).abs().max() / expected.abs().max()).item()
    if not err <= 1e-5:
        raise AssertionError(f"gaunt bench: symkernels differs from the dense reference by {err:.2e} (relative)")
