"""Pure-PyTorch fast Walsh–Hadamard transform: the truth every other backend is tested against.

``hadamard_transform(x, scale)`` equals ``x @ hadamard_matrix(n).T * scale`` along the last dimension,
with the Sylvester-ordered matrix H_1 = [1], H_2n = [[H_n, H_n], [H_n, -H_n]] (entry (i, j) is
(-1)^popcount(i & j)), which is what ``scipy.linalg.hadamard`` returns. H_n is symmetric and
H_n H_nᵀ = n I, so the transform with scale 1/sqrt(n) is its own inverse, and its own adjoint.
"""
from __future__ import annotations

import torch

MAX_LOG2_SIZE = 15  # sizes 2^1 .. 2^15 = 32768, the range every backend supports


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


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are transformed in fp32 (one rounding, at the end); fp64 stays fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def hadamard_transform(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
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
