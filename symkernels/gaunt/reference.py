"""Pure-PyTorch Gaunt tensor product: a dense einsum with the Gaunt tensor, the truth for every backend."""
from __future__ import annotations

import functools

import torch

from symkernels.gaunt import coefficients


@functools.lru_cache(maxsize=64)
def _dense(l1: int, l2: int, lmax_out: int, normalization: str, device: torch.device, dtype: torch.dtype):
    return torch.from_numpy(coefficients.dense_gaunt_tensor(l1, l2, lmax_out, normalization).copy()).to(device, dtype)


def gaunt_tensor_product(x1: torch.Tensor, x2: torch.Tensor, lmax_out: int,
                         normalization: str = "integral") -> torch.Tensor:
    """out[..., k] = Σ_ij G[i, j, k] x1[..., i] x2[..., j], G = ``dense_gaunt_tensor(L1, L2, lmax_out)``.

    Computed in the inputs' dtype (float32 for float16/bfloat16 inputs, rounded once at the end).
    Leading dims broadcast. lmax_out may exceed L1+L2 (the extra outputs are zero).
    """
    l1 = int(round(x1.shape[-1] ** 0.5)) - 1
    l2 = int(round(x2.shape[-1] ** 0.5)) - 1
    compute = torch.float32 if x1.dtype in (torch.float16, torch.bfloat16) else x1.dtype
    g = _dense(l1, l2, lmax_out, normalization, x1.device, compute)
    out = torch.einsum("ijk,...i,...j->...k", g, x1.to(compute), x2.to(compute))
    return out.to(x1.dtype)
