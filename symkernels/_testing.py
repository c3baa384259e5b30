"""Test helpers shared by every pillar: one tolerance table, and comparisons that explain failures.

Two ways to judge a kernel's output ``out`` against the float64 truth ``truth``:

1. ``assert_close(out, expected)`` — both in the same dtype, with the (atol, rtol) pair for that
   dtype from ``TOLERANCES``. Use it when the reference is run in the same dtype as the kernel.
2. ``assert_within_torch_error(out, truth, torch_out)`` — the rule of fast-hadamard-transform and
   flash-attention: the kernel may be at most twice as wrong as PyTorch itself computing the same
   reference in the same low precision (``torch_out``), plus a small floor for the output rounding.
   This is the right test for fp16/bf16 kernels that accumulate in fp32, where a fixed table would be
   either too loose for some inputs or too tight for others.
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# Why these values: each rtol is a few units of the dtype's rounding unit (eps/2: fp64 1.1e-16,
# fp32 6e-8, fp16 4.9e-4, bf16 3.9e-3) times the growth of a reduction over O(log n..sqrt n) terms that
# the ops here do (butterflies, dot products of ≤ 32k terms, accumulated in fp32). fp16/bf16 rows match
# the loosest that a single rounding of the *output* can cause (one ulp) with fp32 accumulation, which
# is what our kernels promise; atol covers results that cancel to ~0. Ops whose error grows faster
# (long recurrences) must say so and use assert_within_torch_error instead of widening this table.
TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(atol=1e-10, rtol=1e-9),
    torch.float32: Tolerance(atol=1e-5, rtol=2e-5),
    torch.float16: Tolerance(atol=2e-3, rtol=2e-3),
    torch.bfloat16: Tolerance(atol=1.6e-2, rtol=1.6e-2),
}

# Floor added to the 2x rule, relative to max|truth|: the rounding of the output itself (1 ulp).
OUTPUT_ROUNDING: dict[torch.dtype, float] = {
    torch.float64: 2.3e-16,
    torch.float32: 1.2e-7,
    torch.float16: 9.8e-4,
    torch.bfloat16: 7.9e-3,
}


def tolerance(dtype: torch.dtype) -> Tolerance:
    try:
        return TOLERANCES[dtype]
    except KeyError:
        raise ValueError(f"no tolerance entry for dtype {dtype}; add one to symkernels._testing.TOLERANCES") from None


def _describe_mismatch(actual: torch.Tensor, expected: torch.Tensor) -> str:
    diff = (actual.double() - expected.double()).abs()
    flat = diff.flatten()
    nan_mismatch = (actual.isnan() != expected.isnan()).sum().item()
    if flat.numel() == 0:
        return "empty tensors"
    worst = int(torch.nan_to_num(flat, nan=float("inf")).argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), diff.shape))
    return (f"max |diff| = {flat[worst].item():.3e} at index {index} "
            f"(actual {actual.flatten()[worst].item():.6g}, expected {expected.flatten()[worst].item():.6g}); "
            f"{nan_mismatch} NaN mismatches; max |expected| = {expected.double().abs().max().item():.3e}")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, dtype: torch.dtype | None = None,
                 msg: str = "", scale_atol: bool = True) -> None:
    """``actual`` ≈ ``expected`` under the table entry for ``dtype`` (default: ``actual.dtype``).

    With ``scale_atol`` the absolute tolerance is relative to max|expected| (at least 1), so that ops
    whose outputs grow with the problem size (an unnormalized transform) are judged by the same table.
    NaN/inf must sit in the same places.
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{msg}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    tol = tolerance(dtype or actual.dtype)
    atol = tol.atol
    if scale_atol and expected.numel():
        finite = expected.double()[expected.isfinite()]
        if finite.numel():
            atol *= max(1.0, finite.abs().max().item())
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=tol.rtol, equal_nan=True,
                               msg=lambda _: f"{msg}: {_describe_mismatch(actual, expected)} "
                                             f"(atol {atol:.2e}, rtol {tol.rtol:.1e})")


def assert_within_torch_error(actual: torch.Tensor, truth: torch.Tensor, torch_out: torch.Tensor, *,
                              factor: float = 2.0, msg: str = "") -> None:
    """max|actual − truth| ≤ factor·max|torch_out − truth| + output rounding of actual's dtype."""
    err = (actual.double() - truth.double()).abs().max().item() if truth.numel() else 0.0
    torch_err = (torch_out.double() - truth.double()).abs().max().item() if truth.numel() else 0.0
    floor = OUTPUT_ROUNDING[actual.dtype] * max(1.0, truth.double().abs().max().item() if truth.numel() else 0.0)
    bound = factor * torch_err + floor
    if not err <= bound:  # written so that NaN fails
        raise AssertionError(f"{msg}: error {err:.3e} exceeds {factor}x PyTorch's own {torch_err:.3e} "
                             f"+ floor {floor:.1e} ({_describe_mismatch(actual, truth)})")


def random_noncontiguous(shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device | str = "cpu",
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """A tensor of ``shape`` whose memory is strided (every other element of a wider buffer)."""
    if len(shape) == 0:
        return torch.randn((), dtype=dtype, device=device, generator=generator)
    wide = torch.randn(*shape[:-1], 2 * shape[-1], dtype=dtype, device=device, generator=generator)
    view = wide[..., ::2]
    assert not view.is_contiguous() or view.numel() <= 1
    return view
