"""Pure-PyTorch Hadamard transforms: the truths every other backend is tested against.

``hadamard_transform(x, scale)`` equals ``x @ H_n.T * scale`` along the last dimension (``transpose=True``:
``x @ H_n * scale``), with H_n of ``symkernels.hadamard.matrices``:

- n a power of two: the Sylvester matrix, by log2(n) butterfly stages (``fwht``). H_n is symmetric and H_n H_nᵀ = n I,
  so the transform with scale 1/sqrt(n) is its own inverse, and its own adjoint;
- n = K·2^m: H_K ⊗ H_{2^m}, by QuaRot's two passes (``reference_two_pass``: the butterflies over every
  length-2^m segment, then a dense K×K product).

``reference_dense`` is the independent truth of both: dense matrices only, in float64, no butterflies.
"""
from __future__ import annotations

import torch

from symkernels.hadamard.matrices import decompose, hadamard_k_matrix, hadamard_matrix, hadamard_matrix_any, hk_for


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are transformed in fp32 (one rounding, at the end); fp64 stays fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def hadamard_transform(x: torch.Tensor, scale: float = 1.0, *, transpose: bool = False) -> torch.Tensor:
    """The transform of any supported size n: butterflies for a power of two, else ``reference_two_pass``."""
    n = x.shape[-1]
    if n & (n - 1) == 0:
        return fwht(x, scale)
    return reference_two_pass(x, hk_for(n, x.dtype, x.device, transpose), scale)


def fwht(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """log2(n) butterfly stages: at stride h, pairs (a, b) = (x[i], x[i + h]) become (a + b, a - b)."""
    n = x.shape[-1]
    lead = x.shape[:-1]
    y = x.to(accumulation_dtype(x.dtype)).reshape(-1, n)
    h = 1
    while h < n:
        pairs = y.reshape(-1, n // (2 * h), 2, h)
        a, b = pairs[:, :, 0, :], pairs[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2).reshape(-1, n)
        h *= 2
    return (y * scale).to(x.dtype).reshape(*lead, n)


def reference_two_pass(x: torch.Tensor, hk: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """QuaRot's route: FWHT over the 2^m part, then a dense K×K product; fp32 (fp64 for fp64) math.

    ``hk`` is the K×K matrix applied (H_K, or H_Kᵀ for the transposed transform).
    """
    n = x.shape[-1]
    k = hk.shape[0]
    p = n // k
    acc = accumulation_dtype(x.dtype)
    y = x.to(acc).reshape(*x.shape[:-1], k, p)
    if p > 1:
        y = fwht(y, 1.0)
    y = torch.matmul(hk.to(acc), y)  # [K, K] @ [..., K, P]
    return (y * scale).reshape(x.shape).to(x.dtype)


def reference_dense(x: torch.Tensor, scale: float = 1.0, transpose: bool = False) -> torch.Tensor:
    """x @ H_nᵀ · scale (or x @ H_n · scale when transposing) in float64: the independent truth.

    Dense matrices only, no butterflies. Up to n = 4096 the n×n matrix is built; above, the Kronecker
    identity (A ⊗ B) vec(X) = vec(A X Bᵀ) applies the dense H_K and H_P factors (an n×n fp64 matrix at
    n = 28672 would take 6.6 GB). A power of two n is split the same way, as H_64 ⊗ H_{n/64} (Sylvester
    matrices are Kronecker powers of H_2).
    """
    n = x.shape[-1]
    if n <= 4096:
        h = hadamard_matrix_any(n, device=x.device)
        return x.double() @ (h if transpose else h.T) * scale
    if n & (n - 1) == 0:
        k, p = 64, n // 64
        hk = hadamard_matrix(k, device=x.device)
    else:
        k, p = decompose(n)
        hk = hadamard_k_matrix(k, device=x.device)
    hp = hadamard_matrix(p, device=x.device)
    if transpose:
        hk = hk.T
    y = hk @ x.double().reshape(*x.shape[:-1], k, p) @ hp.T
    return y.reshape(x.shape) * scale
