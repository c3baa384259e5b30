"""Helpers of the Gaunt tests: float64 inputs by seed, irreps sizes, and the CPU-route fixture."""
import pytest
import torch

from symkernels.gaunt import ops as gaunt_ops
from tests.conftest import require_backend

F64 = torch.float64


def rand(*shape, dtype=F64, seed=0):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def size(l):
    """Coefficients of one irreps feature with degrees 0..l: (l + 1)²."""
    return (l + 1) ** 2


@pytest.fixture(params=["sparse", "grid"])
def cpu_route(request, monkeypatch):
    """Forces one route of the CPU kernel (sparse-direct or sphere grid) for the test."""
    require_backend("cpu")
    monkeypatch.setattr(gaunt_ops, "_CPU_ROUTE", request.param)
    return request.param
