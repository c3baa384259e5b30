"""Seeded weight tangents: reproducible from the seed, the same numbers in every backend, N(0,1)/±1 statistics."""
import math

import pytest
import scipy.stats
import torch

from symkernels._testing import assert_close
from symkernels.jvp import linear_dual, reference
from symkernels.jvp.ops import IMPLEMENTED
from tests.conftest import require_implemented, to_backend

N_SAMPLES = 1 << 18
# Every statistic below is a mean of N_SAMPLES i.i.d. terms, so its standard error is sqrt(Var(term)/n);
# with fixed seeds the test is deterministic, and 5 standard errors leave room (p < 6e-7 per statistic
# for a correct generator) without letting a biased one through (a 1.5% bias in the variance fails).
Z = 5.0


# linear_dual has no "cuda" backend by name (CUDA tensors run Triton; see symkernels/jvp/ops.py).
@pytest.fixture
def kernel_backend(kernel_backend):
    return require_implemented(kernel_backend, IMPLEMENTED)


def _stats_sample(seed, dist):
    return reference.seeded_tangent((N_SAMPLES,), seed, dist, dtype=torch.float64)


@pytest.mark.parametrize("dist", reference.DISTRIBUTIONS)
def test_moments(dist):
    v = _stats_sample(1234, dist)
    se = 1 / math.sqrt(N_SAMPLES)
    assert abs(v.mean().item()) < Z * se                                     # Var(v) = 1
    if dist == "gaussian":
        assert abs((v * v).mean().item() - 1) < Z * math.sqrt(2) * se       # Var(v²) = 2
        assert abs((v ** 4).mean().item() - 3) < Z * math.sqrt(96) * se     # Var(v⁴) = 105 − 9
        ks = scipy.stats.kstest(v.numpy(), "norm").statistic
        assert ks < 1.95 / math.sqrt(N_SAMPLES)                              # KS critical value, p = 0.001
    else:
        assert set(v.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("dist", reference.DISTRIBUTIONS)
def test_independence(dist):
    se = 1 / math.sqrt(N_SAMPLES)
    v, w = _stats_sample(1, dist), _stats_sample(2, dist)
    corr = lambda a, b: ((a - a.mean()) * (b - b.mean())).mean().item() / (a.std() * b.std()).item()  # noqa: E731
    assert abs(corr(v[1:], v[:-1])) < Z * se      # neighbouring indices
    assert abs(corr(v, w)) < Z * se               # neighbouring seeds
    assert abs(corr(v[:-1], w[1:])) < Z * se      # seeds are not shifted copies of each other


def test_reproducible_from_seed():
    a = reference.seeded_tangent((3, 7, 5), 42, "gaussian")
    assert torch.equal(a, reference.seeded_tangent((3, 7, 5), 42, "gaussian"))
    assert not torch.equal(a, reference.seeded_tangent((3, 7, 5), 43, "gaussian"))
    assert not torch.equal(a[0], a[1])  # each tangent t has its own stream
    # The flat-index contract: a sub-block is the same numbers at an offset.
    assert torch.equal(a[1], reference.seeded_tangent((7, 5), 42, "gaussian", offset=35))


def test_known_values():
    # Pins the RNG spec (reference.py): a changed hash would silently change what every stored seed means.
    assert reference.mix32_int(1) == 0x688990C0
    assert reference.seed_keys(7) == (2911091942, 4193662023)
    key0 = reference.seed_keys(7)[0]
    bits = reference.seeded_bits(torch.arange(4), key0).tolist()
    assert bits == [2517600161, 25187000, 3783987200, 2143913304]
    assert bits == [reference.mix32_int(reference.mix32_int(i + key0) ^ key0) for i in range(4)]
    torch.testing.assert_close(reference.seeded_tangent((3,), 7, "gaussian"),
                               torch.tensor([1.0149359703063965, 1.0211821794509888, 0.3448440432548523]))


def _generated_weight_tangent(backend, T, N, K, seed, dist, dtype):
    """W_t as the kernel generates it: with x = I_K and no activation, y_t[t] = W_t[t]ᵀ exactly."""
    x, w = to_backend(backend, (torch.eye(K, dtype=dtype), torch.zeros(N, K, dtype=dtype)))
    _, y_t = linear_dual(x, None, w, weight_seed=seed, distribution=dist, num_tangents=T, backend=backend)
    return y_t.transpose(-1, -2).cpu()


@pytest.mark.parametrize("dist", reference.DISTRIBUTIONS)
def test_kernels_generate_the_reference_numbers(kernel_backend, dist):
    T, N, K = 2, 17, 18
    got = _generated_weight_tangent(kernel_backend, T, N, K, 99, dist, torch.float32)
    want = reference.seeded_tangent((T, N, K), 99, dist)
    if dist == "rademacher":
        assert torch.equal(got, want)  # integer hash only: bit-identical
    else:
        # Same integers; log/cos of the backend's math library may differ in the last ulp.
        torch.testing.assert_close(got, want, atol=1e-6, rtol=4e-7)


@pytest.mark.parametrize("dist", reference.DISTRIBUTIONS)
def test_seeded_linear_dual_matches_materialised(kernel_backend, dist):
    g = torch.Generator().manual_seed(0)
    x, x_t = torch.randn(5, 20, generator=g), torch.randn(5, 20, generator=g)
    w, b = torch.randn(19, 20, generator=g) / 5, torch.randn(19, generator=g)
    w_t = reference.seeded_tangent((3, 19, 20), 5, dist)
    x, x_t, w, b, w_t = to_backend(kernel_backend, (x, x_t, w, b, w_t))
    y, y_t = linear_dual(x, x_t, w, None, b, None, "gelu", weight_seed=5, distribution=dist, num_tangents=3,
                         backend=kernel_backend)
    ry, ry_t = linear_dual(x, x_t, w, w_t, b, None, "gelu", backend="reference")
    assert_close(y, ry)
    # fp32 tolerance: the Gaussian values are defined in fp32 (see reference.py).
    assert_close(y_t, ry_t, dtype=torch.float32)
    # A seed alone with num_tangents=None: one unbatched tangent.
    _, y_t1 = linear_dual(x, None, w, weight_seed=5, distribution=dist, backend=kernel_backend)
    assert y_t1.shape == (5, 19)


def test_cpu_seeded_multi_tile():
    # T·N·K above the C++ kernel's generated-tile size (2^18 values), so W_t is produced and multiplied in
    # several tiles written into column slices of the product; must equal the materialised tangent.
    from symkernels import _backend

    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    T, N, K = 2, 300, 512
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(3, K, generator=g), torch.randn(N, K, generator=g)
    _, y_t = linear_dual(x, None, w, weight_seed=12, distribution="rademacher", num_tangents=T, backend="cpu")
    w_t = reference.seeded_tangent((T, N, K), 12, "rademacher")
    assert_close(y_t, x @ w_t.transpose(-1, -2))


@pytest.mark.parametrize("M", [3, 40])
def test_cpu_seeded_with_batched_x_tangents(M):
    # x_t carries T: at M=3 the primal and x-tangent GEMM is stacked and the seeded tiles ADD their products
    # (beta = 1) into y_t's column blocks; at M=40 the tiles write first and the x-tangent GEMM adds.
    from symkernels import _backend

    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    T, N, K = 3, 9, 11
    g = torch.Generator().manual_seed(4)
    x, x_t = torch.randn(M, K, generator=g, dtype=torch.float64), torch.randn(T, M, K, generator=g, dtype=torch.float64)
    w, b = torch.randn(N, K, generator=g, dtype=torch.float64) / 3, torch.randn(N, generator=g, dtype=torch.float64)
    y, y_t = linear_dual(x, x_t, w, None, b, None, "silu", weight_seed=8, distribution="rademacher",
                         num_tangents=T, backend="cpu")
    w_t = reference.seeded_tangent((T, N, K), 8, "rademacher").double()
    ry, ry_t = linear_dual(x, x_t, w, w_t, b, None, "silu", backend="reference")
    assert_close(y, ry)
    assert_close(y_t, ry_t)


def test_cpu_vectorised_gaussian_matches_reference_at_scale():
    """The C++ kernel's vectorised fp64 log/cos path (8 lanes, padded tails) over 65k+ values, incl. the tails
    of the distribution (u1 near 2^-24) and every quadrant of cos: same tolerance as the small test."""
    from symkernels import _backend

    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    T, N, K = 1, 257, 255  # T·N·K not a multiple of 8: the padded last vector
    got = _generated_weight_tangent("cpu", T, N, K, 2024, "gaussian", torch.float32)
    want = reference.seeded_tangent((T, N, K), 2024, "gaussian")
    assert want.abs().max() > 4.0  # the sample reaches the tails
    torch.testing.assert_close(got, want, atol=1e-6, rtol=4e-7)
