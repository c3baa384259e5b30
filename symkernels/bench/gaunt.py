"""Gaunt tensor product sweep: rows = batch × channels (10⁴ × 32 on CPU), L1 = L2 = L → Lo = L for
L = 1…10, fp32, forward and forward+backward; ours vs e3nn TensorProduct ('uuu', c² path weights), the
e3nn S² grid and our dense reference, all computing the same outputs from the same inputs.

Memory roofline: for L ≤ 5 the product is memory-bound (design note §4), so those cases carry
``bytes_moved`` (inputs + output, ×3 with backward) and the table gives % of the same-run copy bandwidth;
above, they carry FLOPs (2·nnz(G) per row, the sparse-direct count) instead.

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
    cueq = "cuEquivariance: not installed; its kernels are CUDA-only" if device.type == "cpu" else \
        "cuEquivariance: not installed in this environment"
    for lmax in degrees:
        yield from _cases_for_degree(lmax, batch, channels, device, ours_backend, cueq)


def _cases_for_degree(lmax: int, batch: int, channels: int, device: torch.device, ours_backend: str,
                      cueq: str) -> Iterable[Case]:
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

    def ours(x, y):
        return gaunt_tensor_product(x, y, lmax, backend=ours_backend)

    def dense(x, y):
        return reference.gaunt_tensor_product(x, y, lmax)

    for mode in ("forward", "forward+backward"):
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
        impls["cuEquivariance"] = cueq
        io_bytes = rows * 3 * n * 4
        memory_bound = lmax <= 5
        yield Case(op=f"gaunt_tensor_product {mode}", shape=f"{batch}x{channels} L={lmax}->{lmax}",
                   dtype="float32", impls=impls, ours="symkernels",
                   bytes_moved=io_bytes * (1 if forward else 3) if memory_bound else 0,
                   flops=0 if memory_bound else 2 * nnz * rows * (1 if forward else 3),
                   extra={"nnz(G)": nnz, "backend": ours_backend, "route": route},
                   check=(lambda: _check(ours(a, b), dense(a[:64], b[:64]), 64)) if forward else None)


def _check(out: torch.Tensor, expected: torch.Tensor, rows: int) -> None:
    out = out[:rows]
    err = ((out - expected).abs().max() / expected.abs().max()).item()
    if not err <= 1e-5:
        raise AssertionError(f"gaunt bench: symkernels differs from the dense reference by {err:.2e} (relative)")
