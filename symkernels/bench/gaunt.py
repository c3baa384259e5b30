"""Gaunt tensor product sweep: rows = batch × channels, L1 = L2 = L → Lo = L, fp32, forward and
forward+backward; ours vs e3nn TensorProduct ('uuu', c² path weights), the e3nn S² grid and our dense
reference, all computing the same outputs from the same inputs."""
from __future__ import annotations

from typing import Iterable

import torch

from symkernels import _backend
from symkernels.bench.harness import Case, sweep
from symkernels.gaunt import coefficients as C
from symkernels.gaunt import gaunt_tensor_product, reference


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
    degrees = (1, 2, 4) if quick else (1, 2, 3, 4, 5, 6, 8, 10)
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
    peers = _e3nn_peers(lmax, channels, device)

    def ours(x, y):
        return gaunt_tensor_product(x, y, lmax, backend=ours_backend)

    def dense(x, y):
        return reference.gaunt_tensor_product(x, y, lmax)

    for mode in ("forward", "forward+backward"):
        forward = mode == "forward"
        impls = {"symkernels": (lambda: ours(a, b)) if forward else _fwd_bwd(ours, a, b),
                 "dense reference (einsum)": (lambda: dense(a, b)) if forward else _fwd_bwd(dense, a, b)}
        if isinstance(peers, str):
            impls["e3nn TensorProduct (c² weights)"] = impls["e3nn S² grid"] = peers
        else:
            tp, grid_product, to_e3nn = peers
            ea, eb = to_e3nn(a), to_e3nn(b)
            impls["e3nn TensorProduct (c² weights)"] = (lambda: tp(ea, eb)) if forward else _fwd_bwd(tp, ea, eb)
            impls["e3nn S² grid"] = (lambda: grid_product(a, b)) if forward else _fwd_bwd(grid_product, a, b)
        impls["cuEquivariance"] = cueq
        io_bytes = rows * 3 * n * 4
        yield Case(op=f"gaunt_tensor_product {mode}", shape=f"{batch}x{channels} L={lmax}->{lmax}",
                   dtype="float32", impls=impls, ours="symkernels",
                   bytes_moved=io_bytes * (1 if forward else 3),
                   flops=2 * nnz * rows * (1 if forward else 3),
                   extra={"nnz(G)": nnz, "backend": ours_backend},
                   check=(lambda: _check(ours(a, b), dense(a, b))) if forward else None)


def _check(out: torch.Tensor, expected: torch.Tensor) -> None:
    err = ((out - expected).abs().max() / expected.abs().max()).item()
    if not err <= 1e-5:
        raise AssertionError(f"gaunt bench: symkernels differs from the dense reference by {err:.2e} (relative)")
