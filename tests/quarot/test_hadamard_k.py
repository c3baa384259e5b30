"""Non-power-of-two (n = K·2^m) Hadamard transforms: matrices, references, kernels, autograd, errors."""
import math

import pytest
import torch
from hypothesis import given, strategies as st

import symkernels
from symkernels import _backend
from symkernels._testing import assert_close, assert_within_torch_error, random_noncontiguous
from symkernels.hadamard import hadamard_k
from symkernels.hadamard.hadamard_k_ops import hk_for

# Widths of real models (design note table) that have a tabulated order, and ones that do not.
MODEL_WIDTHS = [11008, 13824, 14336, 28672, 3584, 5120, 1536, 8960, 896]
UNSUPPORTED_WIDTHS = [18944, 4864, 29568, 10, 6 * 7]
SMALL_ORDERS = [12, 20, 28, 36, 44, 52]


@pytest.mark.parametrize("k", hadamard_k.ORDERS)
def test_matrix_is_hadamard(k):
    h = hadamard_k.hadamard_k_matrix(k)
    assert h.shape == (k, k)
    assert bool((h.abs() == 1).all()), "entries must be ±1"
    torch.testing.assert_close(h @ h.T, k * torch.eye(k, dtype=torch.float64), atol=0, rtol=0)
    torch.testing.assert_close(h.T @ h, k * torch.eye(k, dtype=torch.float64), atol=0, rtol=0)


def test_constructions_differ_from_trivial_permutations():
    # Guards against a construction silently degenerating (e.g. Paley with a wrong character):
    # the orthogonality test would catch most, and here the Paley I core must be skew.
    h = hadamard_k.hadamard_k_matrix(12)
    s = h - torch.eye(12, dtype=torch.float64)
    torch.testing.assert_close(s, -s.T)
    h28 = hadamard_k.hadamard_k_matrix(28)  # Paley II is symmetric
    torch.testing.assert_close(h28, h28.T)


def test_gf25_field_is_a_field():
    elems, sub, mul = hadamard_k._field_elements(25)
    zero, one = (0, 0), (1, 0)
    assert len(set(elems)) == 25
    for a in elems:
        if a != zero:  # every nonzero element has an inverse: no zero divisors, so the modulus is irreducible
            assert any(mul(a, b) == one for b in elems)
    squares = {mul(a, a) for a in elems if a != zero}
    assert len(squares) == 12


@pytest.mark.parametrize("n", MODEL_WIDTHS)
def test_model_widths_supported(n):
    k, p = hadamard_k.decompose(n)
    assert k * p == n and p & (p - 1) == 0 and k in hadamard_k.ORDERS


@pytest.mark.parametrize("n", UNSUPPORTED_WIDTHS)
def test_unsupported_size_error_lists_nearest(n):
    with pytest.raises(ValueError, match="nearest supported sizes") as info:
        symkernels.hadamard_transform(torch.randn(2, n))
    near = hadamard_k.nearest_supported(n)
    assert str(near[0]) in str(info.value) and str(near[-1]) in str(info.value)
    assert all(hadamard_k.decompose(s) is not None or s & (s - 1) == 0 for s in near)


def test_bad_dtype_and_scale():
    with pytest.raises(TypeError, match="floating dtype"):
        symkernels.hadamard_transform(torch.ones(2, 12, dtype=torch.int32))
    with pytest.raises(ValueError, match="scale must be a finite"):
        symkernels.hadamard_transform(torch.ones(2, 12), float("nan"))


def test_cpu_op_rejects_bad_hk():
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    with pytest.raises(ValueError, match="square"):
        torch.ops.symkernels.hadamard_transform_k(torch.ones(2, 12), torch.ones(12, 6), 1.0)
    with pytest.raises(ValueError, match="K·2"):
        torch.ops.symkernels.hadamard_transform_k(torch.ones(2, 36), torch.ones(12, 12), 1.0)
    with pytest.raises(TypeError, match="must be float16"):
        torch.ops.symkernels.hadamard_transform_k(torch.ones(2, 12, dtype=torch.int64), torch.ones(12, 12), 1.0)


@pytest.mark.parametrize("n", [12, 24, 40, 52 * 4, 156, 172 * 2, 1536, 11008])
def test_two_pass_reference_matches_dense_truth(n):
    x = torch.randn(3, n, dtype=torch.float64)
    for transpose in (False, True):
        out = hadamard_k.reference_two_pass(x, hk_for(n, x.dtype, x.device, transpose), 0.5)
        assert_close(out, hadamard_k.reference_dense(x, 0.5, transpose=transpose), msg=f"n={n}")


def test_dense_matrix_definition_by_index():
    # H_n[k·P + j, k'·P + j'] = H_K[k, k'] · H_P[j, j'] (the documented ordering), checked entrywise.
    n, k, p = 48, 12, 4
    h = hadamard_k.hadamard_matrix_any(n)
    hk = hadamard_k.hadamard_k_matrix(k)
    hp = symkernels.hadamard.hadamard_matrix(p)
    for a in range(n):
        for b in range(0, n, 5):
            assert h[a, b] == hk[a // p, b // p] * hp[a % p, b % p]


@pytest.mark.parametrize("n", [12, 20 * 8, 28 * 2, 36, 44 * 4, 52, 60 * 2, 108, 140, 156, 172])
def test_kernels_match_truth_small(kernel_backend, n):
    device = torch.device("cpu") if kernel_backend != "cuda" else torch.device("cuda")
    if kernel_backend == "triton" and n > 64 and not torch.cuda.is_available():
        n = 12 * 4 if n < 100 else n  # the interpreter is slow: big orders only with P = 1
    x = torch.randn(3, n, dtype=torch.float32, device=device)
    out = symkernels.hadamard_transform(x, 1 / math.sqrt(n), backend=kernel_backend)
    assert_close(out, hadamard_k.reference_dense(x, 1 / math.sqrt(n)).float(), msg=f"{kernel_backend} n={n}")


@pytest.mark.parametrize("n", MODEL_WIDTHS)
def test_cpu_model_widths_match_truth(n):
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    x = torch.randn(2, n)
    scale = 1 / math.sqrt(n)
    for transpose in (False, True):
        out = symkernels.hadamard_transform(x, scale, transpose=transpose, backend="cpu")
        assert_close(out, hadamard_k.reference_dense(x, scale, transpose=transpose).float(), msg=f"n={n}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_within_torch_error(kernel_backend, dtype):
    if kernel_backend == "triton" and dtype == torch.bfloat16 and not torch.cuda.is_available():
        pytest.skip("no bf16 in the Triton interpreter")
    device = torch.device("cuda" if kernel_backend == "cuda" else "cpu")
    n = 20 * 4
    x = torch.randn(4, n, device=device).to(dtype)
    truth = hadamard_k.reference_dense(x, 0.25)
    torch_out = (x @ hadamard_k.hadamard_matrix_any(n, dtype=dtype, device=device).T) * 0.25
    out = symkernels.hadamard_transform(x, 0.25, backend=kernel_backend)
    assert out.dtype == dtype
    if dtype == torch.float64:
        assert_close(out, truth)
    else:
        assert_within_torch_error(out, truth, torch_out, msg=f"{kernel_backend} {dtype}")


def test_inverse_round_trip(backend):
    device = torch.device("cuda" if backend == "cuda" else "cpu")
    n = 12 * 8
    x = torch.randn(5, n, device=device)
    y = symkernels.hadamard_transform(x, 1 / math.sqrt(n), backend=backend)
    back = symkernels.hadamard_transform(y, 1 / math.sqrt(n), transpose=True, backend=backend)
    assert_close(back, x)


def test_nan_and_inf_propagate(kernel_backend):
    device = torch.device("cuda" if kernel_backend == "cuda" else "cpu")
    x = torch.randn(2, 24, device=device)
    x[0, 3] = float("nan")
    x[1, 5] = float("inf")
    out = symkernels.hadamard_transform(x, backend=kernel_backend)
    ref = hadamard_k.reference_two_pass(x, hk_for(24, x.dtype, x.device), 1.0)
    assert torch.equal(out.isnan(), ref.isnan()) and bool(out[0].isnan().all())
    assert torch.equal(out.isfinite(), ref.isfinite())


@pytest.mark.parametrize("k", [12, 28])
def test_gradcheck_and_forward_ad(backend, k):
    if backend == "reference" and k != 12:
        pytest.skip("the reference is plain torch autograd; one size is enough")
    if backend == "triton" and not torch.cuda.is_available():
        pytest.skip("~100 interpreted launches per gradcheck; test_triton_backward_matches_reference covers it")
    device = torch.device("cuda" if backend == "cuda" else "cpu")
    x = torch.randn(1, k * 2, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda t: symkernels.hadamard_transform(t, 0.3, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_triton_backward_matches_reference():
    """Backward and double backward of the Triton path vs the reference's autograd, a few launches."""
    if not _backend.backend_status("triton"):
        pytest.skip("triton unavailable")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.randn(2, 28, dtype=torch.float64, device=device, requires_grad=True)
    g, v = torch.randn_like(x), torch.randn_like(x)
    grads = {}
    for b in ("reference", "triton"):
        (gx,) = torch.autograd.grad(symkernels.hadamard_transform(x, 0.3, backend=b), x, g, create_graph=True)
        grads[b] = gx
    assert_close(grads["triton"], grads["reference"])
    # gx = g·H·s is linear in g: its derivative along v is v·Hᵀ·s, the forward transform (double backward)
    g2 = torch.randn_like(x).requires_grad_()
    (gx,) = torch.autograd.grad(symkernels.hadamard_transform(x, 0.3, backend="triton"), x, g2, create_graph=True)
    (ggt,) = torch.autograd.grad(gx, g2, v)
    assert_close(ggt, hadamard_k.reference_dense(v, 0.3))


def test_jvp_matches_reference(kernel_backend):
    device = torch.device("cuda" if kernel_backend == "cuda" else "cpu")
    x, t = torch.randn(2, 40, device=device), torch.randn(2, 40, device=device)
    _, tangent = torch.func.jvp(lambda a: symkernels.hadamard_transform(a, 0.5, backend=kernel_backend), (x,), (t,))
    assert_close(tangent, hadamard_k.reference_dense(t, 0.5).float())
    batched = torch.vmap(lambda a: symkernels.hadamard_transform(a, 0.5, backend=kernel_backend))(x[:, None, :])
    assert_close(batched[:, 0], hadamard_k.reference_dense(x, 0.5).float())


def test_opcheck_dispatcher_op():
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    for n, dtype in ((12, torch.float32), (56, torch.float64), (0, torch.float32)):
        rows = 3 if n else 0
        n = n or 20
        x = torch.randn(rows, n, dtype=dtype, requires_grad=rows > 0)
        hk = hk_for(n, dtype, x.device)
        torch.library.opcheck(torch.ops.symkernels.hadamard_transform_k, (x, hk, 0.5))


def test_dispatcher_op_double_backward():
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    x = torch.randn(2, 12, dtype=torch.float64, requires_grad=True)
    hk = hk_for(12, x.dtype, x.device)
    op = lambda t: torch.ops.symkernels.hadamard_transform_k(t, hk, 0.5)  # noqa: E731
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradgradcheck(op, (x,))


@given(k=st.sampled_from(SMALL_ORDERS), log_p=st.integers(0, 3), batch=st.sampled_from([(), (0,), (1,), (3,), (2, 3)]),
       noncontig=st.booleans(), seed=st.integers(0, 2**16))
def test_hypothesis_shapes(k, log_p, batch, noncontig, seed):
    n = k << log_p
    gen = torch.Generator().manual_seed(seed)
    x = (random_noncontiguous((*batch, n), dtype=torch.float32, generator=gen) if noncontig
         else torch.randn(*batch, n, generator=gen))
    truth = hadamard_k.reference_dense(x, 0.5).float()
    backends = ["reference"] + [b for b in ("cpu", "triton") if _backend.backend_status(b)]
    for b in backends:
        if b == "triton" and torch.cuda.is_available():
            continue
        out = symkernels.hadamard_transform(x, 0.5, backend=b)
        assert out.shape == x.shape
        assert_close(out, truth, msg=f"{b} n={n} batch={batch}")


def test_random_hadamard_orthogonal_and_matches_transform(backend):
    device = torch.device("cuda" if backend == "cuda" else "cpu")
    for n in (64, 12 * 4):
        q = symkernels.random_hadamard(n, seed=7)
        torch.testing.assert_close(q @ q.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)
        assert not torch.equal(q, symkernels.random_hadamard(n, seed=8)), "seed must matter"
        torch.testing.assert_close(q, symkernels.random_hadamard(n, seed=7), atol=0, rtol=0)
        x = torch.randn(3, n, dtype=torch.float64, device=device)
        y = symkernels.randomized_hadamard_transform(x, seed=7, backend=backend)
        assert_close(y, x @ q.to(device))
        assert_close(symkernels.randomized_hadamard_transform(y, seed=7, inverse=True, backend=backend), x)


def _cpu_op(x, hk, scale):
    return torch.ops.symkernels.hadamard_transform_k(x, hk, scale)


@pytest.mark.parametrize("k", hadamard_k.ORDERS)
def test_cpu_every_order_both_mix_routes(k):
    """Every tabulated order, forward and transposed, at P = 16 (FMA mix) and P = 32, 64 (the sign-class
    mix for K ≥ 56, with 2 and 4 vector slabs per tile), vs the fp64 two-pass reference. 2·H_K is not ±1,
    so with half the scale it takes the general FMA mix: both routes must give the same rows."""
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    gen = torch.Generator().manual_seed(k)
    for p in (16, 32, 64):
        n = k * p
        x = torch.randn(2, n, generator=gen)
        for transpose in (False, True):
            hk = hk_for(n, torch.float32, x.device, transpose)
            out = _cpu_op(x, hk, 0.5)
            truth = hadamard_k.reference_two_pass(x.double(), hk.double(), 0.5)
            assert_close(out, truth.float(), msg=f"K={k} P={p} transpose={transpose}")
            assert_close(out, _cpu_op(x, 2 * hk, 0.25), msg=f"K={k} P={p}: sign-class vs FMA mix")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_cpu_sign_class_mix_dtypes(dtype):
    """The sign-class mix in fp64 (8-wide vectors: P = 16 is already 2 slabs) and for the half types."""
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    n = 172 * 32
    x = torch.randn(3, n, dtype=torch.float64).to(dtype)
    hk = hk_for(n, dtype, x.device)
    truth = hadamard_k.reference_two_pass(x.double(), hk.double(), 0.125)
    out = _cpu_op(x, hk, 0.125)
    assert out.dtype == dtype
    if dtype == torch.float64:
        assert_close(out, truth)
    else:
        torch_out = hadamard_k.reference_two_pass(x.float(), hk.float(), 0.125).to(dtype)
        assert_within_torch_error(out, truth, torch_out, msg=f"{dtype}")


def test_cpu_sign_class_mix_any_pm1_matrix_and_specials():
    """Any ±1 matrix takes the sign-class route (not only Hadamard ones: unbalanced classes, more padding),
    a non-contiguous batch, and NaN/Inf propagate like the two-pass reference."""
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    gen = torch.Generator().manual_seed(3)
    k, p = 64, 32
    hk = (torch.randint(0, 2, (k, k), generator=gen) * 2 - 1).float()
    x = random_noncontiguous((2, 3, k * p), dtype=torch.float32, generator=gen)
    assert_close(_cpu_op(x, hk, 0.3), hadamard_k.reference_two_pass(x.double(), hk.double(), 0.3).float())
    n = 108 * 64
    hk = hk_for(n, torch.float32, torch.device("cpu"))
    x = torch.randn(3, n, generator=gen)
    x[0, 5] = float("nan")
    x[1, 700] = float("inf")
    x[2, 3], x[2, 64 * 50 + 3] = float("inf"), float("-inf")  # same column j in two segments
    out, ref = _cpu_op(x, hk, 1.0), hadamard_k.reference_two_pass(x.double(), hk.double(), 1.0)
    assert torch.equal(out.isnan(), ref.isnan()) and bool(out[0].isnan().all())
    assert torch.equal(out.isfinite(), ref.isfinite())
    assert torch.equal(out.isinf() & (out > 0), ref.isinf() & (ref > 0))


@pytest.mark.parametrize("n", [172 * 32, 108 * 64])
def test_cpu_fused_quantize_equals_unfused_on_sign_class_route(n):
    """The fused rotate+quantize shares the row code: bit-identical to quantize(hadamard_transform(x))."""
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    x = torch.randn(5, n)
    x[:, 7] *= 40
    packed, scale = symkernels.quantize_int4(x, hadamard=True, backend="cpu")
    rotated = _cpu_op(x, hk_for(n, x.dtype, x.device), 1 / math.sqrt(n))
    up, us = symkernels.quantize_int4(rotated, backend="cpu")
    assert torch.equal(packed, up)
    torch.testing.assert_close(scale, us, atol=0, rtol=0)


def test_cpu_plan_cache_keys_on_matrix_contents():
    """Plans are cached per (H_K bits, P): an in-place change of hk, or another P, must not reuse a plan."""
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    k = 60
    hk = hadamard_k.hadamard_k_matrix(k).float().contiguous()
    for p in (32, 64):
        x = torch.randn(2, k * p)
        for _ in range(2):
            assert_close(_cpu_op(x, hk, 1.0), hadamard_k.reference_two_pass(x.double(), hk.double(), 1.0).float())
            hk[:, 7] *= -1  # same tensor, same storage, new contents (still ±1: still the sign-class route)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_triton_two_pass_kronecker(dtype, monkeypatch):
    """Tiles K_pad·P above hadamard_k_triton.MAX_TILE (n = 28·2048 on a GPU) run as the FWHT of every
    segment, then the K-mix over column blocks. Forced here at n = 12·64 by shrinking the limit (4 column
    blocks), against the dense truth; fp16 checks the fp32 intermediate within torch's own error."""
    if not _backend.backend_status("triton"):
        pytest.skip("triton backend unavailable")
    from symkernels.hadamard import hadamard_k_triton

    monkeypatch.setattr(hadamard_k_triton, "MAX_TILE", 256)
    n = 12 * 64
    x = torch.randn(3, n, dtype=torch.float64)
    truth = hadamard_k.reference_dense(x, 1 / math.sqrt(n))
    out = symkernels.hadamard_transform(x.to(dtype), 1 / math.sqrt(n), backend="triton")
    if dtype == torch.float16:
        assert_within_torch_error(out, truth, hadamard_k.reference_dense(x.to(dtype), 1 / math.sqrt(n)))
    else:
        assert_close(out, truth.to(dtype))
