"""The weight MSE clip search (``_scale_of(..., mse=True)``) evaluates all candidate ratios on all rows
as one broadcast computation; it must pick exactly the scales of the straightforward one-candidate-at-a-
time loop it replaced (kept here as the reference), including all-zero rows, ties and group shapes."""
import math

import pytest
import torch

from symkernels.quarot import weights
from symkernels.quarot.weights import MSE_GRID, MSE_MAXSHRINK, MSE_NORM, _scale_of


def _loop_reference(w: torch.Tensor, clip_ratio: float) -> torch.Tensor:
    """The original search: candidates in order 1, 0.99, …; a later one wins only if strictly better."""
    amax = w.abs().amax(dim=-1, keepdim=True).float()

    def scale(ratio: float) -> torch.Tensor:
        s = (torch.tensor(ratio, dtype=torch.float32) * amax) / 7.0
        return torch.where(s > 0, s, torch.ones_like(s))

    wf = w.float()
    best, best_err = scale(clip_ratio), torch.full_like(amax, float("inf"))
    for i in range(int(MSE_MAXSHRINK * MSE_GRID)):
        s = scale(clip_ratio * (1.0 - i / MSE_GRID))
        err = (wf - torch.clamp(torch.round(wf / s), -8, 7) * s).abs().pow(MSE_NORM).sum(dim=-1, keepdim=True)
        better = err < best_err
        best, best_err = torch.where(better, s, best), torch.where(better, err, best_err)
    return best


@pytest.mark.parametrize("shape", [(48, 96), (5, 33), (3, 4, 64), (1, 8)])
@pytest.mark.parametrize("clip_ratio", [1.0, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vectorised_mse_search_equals_loop(shape, clip_ratio, dtype, monkeypatch):
    gen = torch.Generator().manual_seed(sum(shape))
    # heavy-tailed rows (the case the search is for), one all-zero row, one constant row (every
    # candidate ties: the first, largest ratio must win)
    w = (torch.randn(*shape, generator=gen) * torch.rand(shape[-1], generator=gen) ** 4).to(dtype)
    flat = w.view(-1, shape[-1])
    flat[0] = 0.0
    if flat.shape[0] > 1:
        flat[-1] = 0.5
    # a chunk of a few rows, so that the row-chunk loop runs more than once
    monkeypatch.setattr(weights, "_MSE_CHUNK_ELEMS", 3 * int(MSE_MAXSHRINK * MSE_GRID) * shape[-1])
    got = _scale_of(w, clip_ratio, mse=True)
    assert got.shape == (*shape[:-1], 1) and got.dtype == torch.float32
    torch.testing.assert_close(got, _loop_reference(w, clip_ratio), rtol=0, atol=0)


def test_mse_search_only_shrinks_and_keeps_plain_scale_without_mse():
    w = torch.randn(16, 128) / math.sqrt(128)
    plain = _scale_of(w, 1.0)
    torch.testing.assert_close(plain, w.abs().amax(-1, keepdim=True) / 7.0, rtol=0, atol=0)
    searched = _scale_of(w, 1.0, mse=True)
    assert bool((searched <= plain).all()) and bool((searched >= (1 - MSE_MAXSHRINK) * plain - 1e-9).all())
