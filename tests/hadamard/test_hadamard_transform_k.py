"""Non-power-of-two (n = K·2^m) Hadamard transforms: matrices, references, kernels, autograd, errors."""
import hashlib
import math

import pytest
import torch
from hypothesis import given, strategies as st

import symkernels
from symkernels import _backend
from symkernels._testing import assert_close, assert_within_torch_error, random_noncontiguous
from symkernels.hadamard import hk_for, matrices, reference
from tests.conftest import backend_device

# Widths of real models: hidden sizes, MLP widths and head dims from the models' config.json.
LLM_WIDTHS = {
    64: "head dim: Qwen2.5-0.5B",
    96: "head dim: Phi-3-mini",
    128: "head dim: Llama 2/3, Mistral, Qwen2/2.5 ≥ 1.5B",
    896: "hidden: Qwen2.5-0.5B",
    1536: "hidden: Qwen2.5-1.5B",
    2048: "hidden: Llama-3.2-1B, Qwen2.5-3B",
    3072: "hidden: Phi-3-mini, Llama-3.2-3B",
    3584: "hidden: Qwen2-7B, Qwen2.5-7B",
    4096: "hidden: Llama-2-7B, Llama-3-8B, Mistral-7B",
    4864: "MLP: Qwen2.5-0.5B",
    5120: "hidden: Llama-2-13B, Phi-3-medium, Qwen2.5-14B/32B",
    8192: "hidden: Llama-2/3-70B, Qwen2-72B; MLP: Phi-3-mini, Llama-3.2-1B/3B",
    8960: "MLP: Qwen2.5-1.5B",
    11008: "MLP: Llama-2-7B, Qwen2.5-3B",
    13824: "MLP: Llama-2-13B, Qwen2.5-14B",
    14336: "MLP: Llama-3-8B, Mistral-7B",
    17920: "MLP: Phi-3-medium",
    18944: "MLP: Qwen2-7B, Qwen2.5-7B",
    27648: "MLP: Qwen2.5-32B",
    28672: "MLP: Llama-2/3-70B",
    29568: "MLP: Qwen2-72B, Qwen2.5-72B",
}
MODEL_WIDTHS = [n for n in LLM_WIDTHS if n & (n - 1)]  # the ones that need an order K
# No order serves these: 10, 42 (odd parts 5, 21 need K = 20, 84 > n), 184 = 8·23 (92, 184 unreachable,
# 368 > n), 13696 = 428·2^5 (a QuaRot issue's width: 428, 856 unreachable, 1712 > MAX_ORDER), and
# 98304 = 12·2^13 > MAX_SIZE.
UNSUPPORTED_WIDTHS = [10, 6 * 7, 184, 13696, 98304]
SMALL_ORDERS = [12, 20, 28, 36, 44, 52]
# Orders the kernels are checked at: the earlier table's, the new ones of LLM widths (76, 148, 924), the
# largest on the CPU kernel's sign-class route (252 < 256) and the largest order (1020).
KERNEL_ORDERS = [12, 20, 28, 36, 44, 52, 60, 76, 108, 140, 148, 156, 172, 252, 684, 924, 1020]
# Multiples of 4 up to MAX_ORDER no construction here reaches (module docstring).
UNREACHABLE_ORDERS = [92, 116, 184, 188, 232, 236, 260, 268, 292, 324, 356, 372, 376, 404, 412, 428, 436, 452, 472,
                      476, 508, 520, 532, 536, 584, 596, 604, 612, 652, 668, 712, 716, 732, 756, 764, 772, 808, 836,
                      852, 856, 872, 876, 892, 904, 932, 940, 944, 952, 956, 964, 980, 988, 996, 1004, 1012, 1016]
# sha256 (first 16 hex digits) of the int8 matrices of the earlier hand table (commit d5df3dd): the orders
# it had must keep their matrices, so that today's sizes transform bit for bit as before.
EARLIER_TABLE_SHA256 = {
    12: "db7478025ce74776", 20: "d04b560308676ee7", 28: "a24c9c5912c711a9", 36: "1a7aed2f42a8c71d",
    40: "64b7ff1603aae0dc", 44: "7608149d896734a0", 52: "e2278b13940b11ea", 60: "91a505ae266d3871",
    108: "7deb180ca8331131", 140: "902eb66771c67a6b", 156: "1aac7fad336c39a5", 172: "1473e433b76ae27d",
}


def _is_hadamard(h: torch.Tensor) -> bool:
    """±1 entries and H Hᵀ = K·I, in exact integer arithmetic."""
    k = h.shape[0]
    hi = h.to(torch.int32)
    return (h.shape == (k, k) and bool((hi.abs() == 1).all())
            and torch.equal(hi @ hi.T, k * torch.eye(k, dtype=torch.int32)))


@pytest.mark.parametrize("k", matrices.ORDERS)
def test_matrix_is_hadamard(k):
    h = matrices.hadamard_k_matrix(k)
    assert h.dtype == torch.float64 and h.shape == (k, k)
    assert _is_hadamard(h), f"order {k} ({matrices.construction(k)})"


def test_order_table():
    assert len(matrices.ORDERS) == 191
    candidates = [k for k in range(4, matrices.MAX_ORDER + 1, 4) if k & (k - 1)]
    assert [k for k in candidates if k not in matrices.ORDERS] == UNREACHABLE_ORDERS
    assert all(matrices.construction(k) is None for k in UNREACHABLE_ORDERS)
    # no Hadamard matrix of order ≡ 2 (mod 4), or odd and > 1, exists: the rules must not claim one
    assert all(matrices.construction(k) is None for k in (3, 6, 10, 14, 22, 78, 1022))
    with pytest.raises(ValueError, match=r"no Hadamard matrix of order 92 here.*nearest: \[84, 88, 96, 100\]"):
        matrices.hadamard_k_matrix(92)


def test_earlier_orders_keep_their_matrices():
    for k, digest in EARLIER_TABLE_SHA256.items():
        h = matrices.hadamard_k_matrix(k).to(torch.int8)
        assert hashlib.sha256(h.numpy().tobytes()).hexdigest()[:16] == digest, f"order {k} changed"


def test_construction_rules():
    c = matrices.construction
    assert c(12) == ("paley1", 11)      # Paley II over GF(5) serves too: Paley I first
    assert c(28) == ("paley2", 13)      # a prime field before Paley I over GF(3³)
    assert c(244) == ("paley2", 121)    # both over prime powers: GF(11²) before GF(3⁵)
    assert c(40) == ("double", 20) and c(1008) == ("double", 504)
    assert c(76) == ("paley2", 37) and c(148) == ("paley2", 73) and c(924) == ("paley2", 461)
    assert c(464) == ("paley1", 463) and c(684) == ("paley1", 683)
    assert c(156) == ("williamson", 39) and c(172) == ("williamson", 43)
    assert c(1904) == ("kronecker", 28, 68)  # the first order only a Kronecker product reaches
    assert c(64) == ("sylvester", 64) and torch.equal(matrices._build(c(64)), symkernels.hadamard.hadamard_matrix(64))
    h = matrices._build(("kronecker", 12, 20))
    assert _is_hadamard(h)
    assert torch.equal(h, torch.kron(matrices.hadamard_k_matrix(12), matrices.hadamard_k_matrix(20)))
    assert torch.equal(matrices.hadamard_k_matrix(24),
                       torch.kron(matrices.hadamard_k_matrix(12), symkernels.hadamard.hadamard_matrix(2)))


@pytest.mark.parametrize("q", [27, 81, 243])
def test_paley_over_prime_power_fields(q):
    """Fields the order table does not use (Paley I over GF(3³), GF(3⁵); Paley II over GF(3⁴)): moduli of
    degree 4 and 5 need the trial division by quadratics, not only the root test."""
    h = matrices._build(("paley1", q) if q % 4 == 3 else ("paley2", q))
    assert h.shape[0] == (q + 1 if q % 4 == 3 else 2 * (q + 1)) and _is_hadamard(h)


@pytest.mark.parametrize("q", [25, 81, 125])
def test_prime_power_field_is_a_field(q):
    field = matrices._GaloisField(q)
    zero, one = field.elements[0], (1,) + (0,) * (field.e - 1)
    assert len(set(field.elements)) == q and zero == (0,) * field.e

    def power(a, e):
        r = one
        while e:
            if e & 1:
                r = field.mul(r, a)
            a, e = field.mul(a, a), e >> 1
        return r

    # a^(q−1) = 1 for every a ≠ 0 ⇔ every nonzero element is a unit ⇔ the modulus is irreducible
    assert all(power(a, q - 1) == one for a in field.elements[1:])
    assert len({field.mul(a, a) for a in field.elements[1:]}) == (q - 1) // 2
    if q == 25:
        assert field.modulus == [1, 1, 1]  # t² + t + 1, as in the earlier version (keeps H_52)


@pytest.mark.parametrize("n,expected", [(4864, (76, 64)), (18944, (148, 128)), (29568, (924, 32)), (5120, (20, 256)),
                                        (11008, (172, 64)), (59392, (464, 128)), (368, (368, 1)), (96, (12, 8))])
def test_decompose_picks_the_smallest_order(n, expected):
    assert matrices.decompose(n) == expected


@pytest.mark.parametrize("n", [240, 96 * 8, 464 * 4, 76 * 64])
def test_every_order_serving_n_gives_the_same_matrix(n):
    """Doubling is the first rule, so H_K ⊗ H_{n/K} is the same H_n for every K that divides n."""
    h = matrices.hadamard_matrix_any(n)
    serving = [k for k in matrices.ORDERS if n % k == 0 and (n // k) & (n // k - 1) == 0]
    assert len(serving) >= 2
    for k in serving:
        assert torch.equal(torch.kron(matrices.hadamard_k_matrix(k), symkernels.hadamard.hadamard_matrix(n // k)), h)


def test_constructions_differ_from_trivial_permutations():
    # Guards against a construction silently degenerating (e.g. Paley with a wrong character):
    # the orthogonality test would catch most, and here the Paley I core must be skew.
    h = matrices.hadamard_k_matrix(12)
    s = h - torch.eye(12, dtype=torch.float64)
    torch.testing.assert_close(s, -s.T)
    h28 = matrices.hadamard_k_matrix(28)  # Paley II is symmetric
    torch.testing.assert_close(h28, h28.T)


@pytest.mark.parametrize("n", MODEL_WIDTHS)
def test_model_widths_supported(n):
    k, p = matrices.decompose(n)
    assert k * p == n and p & (p - 1) == 0 and k in matrices.ORDERS


@pytest.mark.parametrize("n", UNSUPPORTED_WIDTHS)
def test_unsupported_size_error_lists_nearest(n):
    with pytest.raises(ValueError, match="nearest supported sizes") as info:
        symkernels.hadamard_transform(torch.randn(2, n))
    near = matrices.nearest_supported(n)
    assert str(near[0]) in str(info.value) and str(near[-1]) in str(info.value)
    assert all(matrices.decompose(s) is not None or s & (s - 1) == 0 for s in near)


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
        out = reference.reference_two_pass(x, hk_for(n, x.dtype, x.device, transpose), 0.5)
        assert_close(out, reference.reference_dense(x, 0.5, transpose=transpose), msg=f"n={n}")


def test_dense_matrix_definition_by_index():
    # H_n[k·P + j, k'·P + j'] = H_K[k, k'] · H_P[j, j'] (the documented ordering), checked entrywise.
    n, k, p = 48, 12, 4
    h = matrices.hadamard_matrix_any(n)
    hk = matrices.hadamard_k_matrix(k)
    hp = symkernels.hadamard.hadamard_matrix(p)
    for a in range(n):
        for b in range(0, n, 5):
            assert h[a, b] == hk[a // p, b // p] * hp[a % p, b % p]


@pytest.mark.parametrize("n", [12, 20 * 8, 28 * 2, 36, 44 * 4, 52, 60 * 2, 76 * 4, 108, 140, 148, 156, 172, 924])
def test_kernels_match_truth_small(kernel_backend, n):
    device = backend_device(kernel_backend)
    if kernel_backend == "triton" and n > 64 and not torch.cuda.is_available():
        n = 12 * 4 if n < 100 else n  # the interpreter is slow: big orders only with P = 1
    x = torch.randn(3, n, dtype=torch.float32, device=device)
    out = symkernels.hadamard_transform(x, 1 / math.sqrt(n), backend=kernel_backend)
    assert_close(out, reference.reference_dense(x, 1 / math.sqrt(n)).float(), msg=f"{kernel_backend} n={n}")


# The Triton interpreter is slow: one old order (12) and one new (76) stand for the rest there.
INTERPRETER_WIDTHS = (96, 4864)


@pytest.mark.parametrize("n", list(LLM_WIDTHS))
def test_llm_widths_match_truth(backend, n):
    """One row of every width in LLM_WIDTHS through each backend, vs the fp64 dense truth."""
    if backend == "triton" and not torch.cuda.is_available() and n not in INTERPRETER_WIDTHS:
        pytest.skip(f"Triton interpreter: INTERPRETER_WIDTHS {INTERPRETER_WIDTHS} cover it")
    device = backend_device(backend)
    x = torch.randn(1, n, device=device)
    scale = 1 / math.sqrt(n)
    for transpose in (False, True) if n & (n - 1) else (False,):
        out = symkernels.hadamard_transform(x, scale, transpose=transpose, backend=backend)
        truth = reference.reference_dense(x, scale, transpose=transpose).float()
        assert_close(out, truth, msg=f"{backend} n={n} ({LLM_WIDTHS[n]}) transpose={transpose}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_within_torch_error(kernel_backend, dtype):
    if kernel_backend == "triton" and dtype == torch.bfloat16 and not torch.cuda.is_available():
        pytest.skip("no bf16 in the Triton interpreter")
    device = backend_device(kernel_backend)
    n = 20 * 4
    x = torch.randn(4, n, device=device).to(dtype)
    truth = reference.reference_dense(x, 0.25)
    torch_out = (x @ matrices.hadamard_matrix_any(n, dtype=dtype, device=device).T) * 0.25
    out = symkernels.hadamard_transform(x, 0.25, backend=kernel_backend)
    assert out.dtype == dtype
    if dtype == torch.float64:
        assert_close(out, truth)
    else:
        assert_within_torch_error(out, truth, torch_out, msg=f"{kernel_backend} {dtype}")


def test_inverse_round_trip(backend):
    device = backend_device(backend)
    n = 12 * 8
    x = torch.randn(5, n, device=device)
    y = symkernels.hadamard_transform(x, 1 / math.sqrt(n), backend=backend)
    back = symkernels.hadamard_transform(y, 1 / math.sqrt(n), transpose=True, backend=backend)
    assert_close(back, x)


def test_nan_and_inf_propagate(kernel_backend):
    device = backend_device(kernel_backend)
    x = torch.randn(2, 24, device=device)
    x[0, 3] = float("nan")
    x[1, 5] = float("inf")
    out = symkernels.hadamard_transform(x, backend=kernel_backend)
    ref = reference.reference_two_pass(x, hk_for(24, x.dtype, x.device), 1.0)
    assert torch.equal(out.isnan(), ref.isnan()) and bool(out[0].isnan().all())
    assert torch.equal(out.isfinite(), ref.isfinite())


@pytest.mark.parametrize("k", [12, 28])
def test_gradcheck_and_forward_ad(backend, k):
    if backend == "reference" and k != 12:
        pytest.skip("the reference is plain torch autograd; one size is enough")
    if backend == "triton" and not torch.cuda.is_available():
        pytest.skip("~100 interpreted launches per gradcheck; test_triton_backward_matches_reference covers it")
    device = backend_device(backend)
    x = torch.randn(1, k * 2, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda t: symkernels.hadamard_transform(t, 0.3, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_triton_backward_matches_reference():
    """Backward and double backward of the Triton path vs the reference's autograd, a few launches."""
    if not _backend.backend_status("triton"):
        pytest.skip("triton unavailable")
    device = backend_device("triton")
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
    assert_close(ggt, reference.reference_dense(v, 0.3))


def test_jvp_matches_reference(kernel_backend):
    device = backend_device(kernel_backend)
    x, t = torch.randn(2, 40, device=device), torch.randn(2, 40, device=device)
    _, tangent = torch.func.jvp(lambda a: symkernels.hadamard_transform(a, 0.5, backend=kernel_backend), (x,), (t,))
    assert_close(tangent, reference.reference_dense(t, 0.5).float())
    batched = torch.vmap(lambda a: symkernels.hadamard_transform(a, 0.5, backend=kernel_backend))(x[:, None, :])
    assert_close(batched[:, 0], reference.reference_dense(x, 0.5).float())


def test_opcheck_dispatcher_op():
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    for n, dtype in ((12, torch.float32), (56, torch.float64), (0, torch.float32)):
        rows = 3 if n else 0
        n = n or 20
        x = torch.randn(rows, n, dtype=dtype, requires_grad=rows > 0)
        hk = hk_for(n, dtype, x.device)
        torch.library.opcheck(torch.ops.symkernels.hadamard_transform_k.default, (x, hk, 0.5))


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
    truth = reference.reference_dense(x, 0.5).float()
    backends = ["reference"] + [b for b in ("cpu", "triton") if _backend.backend_status(b)]
    for b in backends:
        if b == "triton" and torch.cuda.is_available():
            continue
        out = symkernels.hadamard_transform(x, 0.5, backend=b)
        assert out.shape == x.shape
        assert_close(out, truth, msg=f"{b} n={n} batch={batch}")


def test_random_hadamard_orthogonal_and_matches_transform(backend):
    device = backend_device(backend)
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


@pytest.mark.parametrize("k", KERNEL_ORDERS)
def test_cpu_orders_both_mix_routes(k):
    """Orders from 12 to 1020, forward and transposed, at P = 16 (FMA mix) and P = 32, 64 (the sign-class
    mix for K ≥ 56, with 1-byte class lists below K = 256 and 2-byte ones above, and 1, 2 or 4 vector slabs
    per tile), vs the fp64 two-pass reference. 2·H_K is not ±1, so with half the scale it takes the general
    FMA mix: both routes must give the same rows."""
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    gen = torch.Generator().manual_seed(k)
    for p in (16, 32, 64):
        n = k * p
        assert matrices.decompose(n) == (k, p)
        x = torch.randn(2, n, generator=gen)
        for transpose in (False, True):
            hk = hk_for(n, torch.float32, x.device, transpose)
            out = _cpu_op(x, hk, 0.5)
            truth = reference.reference_two_pass(x.double(), hk.double(), 0.5)
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
    truth = reference.reference_two_pass(x.double(), hk.double(), 0.125)
    out = _cpu_op(x, hk, 0.125)
    assert out.dtype == dtype
    if dtype == torch.float64:
        assert_close(out, truth)
    else:
        torch_out = reference.reference_two_pass(x.float(), hk.float(), 0.125).to(dtype)
        assert_within_torch_error(out, truth, torch_out, msg=f"{dtype}")


def test_cpu_sign_class_mix_any_pm1_matrix_and_specials():
    """Any ±1 matrix takes the sign-class route (not only Hadamard ones: unbalanced classes, more padding),
    a non-contiguous batch, and NaN/Inf propagate like the two-pass reference."""
    if not _backend.backend_status("cpu"):
        pytest.skip("cpu backend unavailable")
    gen = torch.Generator().manual_seed(3)
    for k, p in ((64, 32), (300, 32)):  # 1-byte and 2-byte class lists
        hk = (torch.randint(0, 2, (k, k), generator=gen) * 2 - 1).float()
        x = random_noncontiguous((2, 3, k * p), dtype=torch.float32, generator=gen)
        assert_close(_cpu_op(x, hk, 0.3), reference.reference_two_pass(x.double(), hk.double(), 0.3).float(),
                     msg=f"random ±1 K={k}")
    n = 108 * 64
    hk = hk_for(n, torch.float32, torch.device("cpu"))
    x = torch.randn(3, n, generator=gen)
    x[0, 5] = float("nan")
    x[1, 700] = float("inf")
    x[2, 3], x[2, 64 * 50 + 3] = float("inf"), float("-inf")  # same column j in two segments
    out, ref = _cpu_op(x, hk, 1.0), reference.reference_two_pass(x.double(), hk.double(), 1.0)
    assert torch.equal(out.isnan(), ref.isnan()) and bool(out[0].isnan().all())
    assert torch.equal(out.isfinite(), ref.isfinite())
    assert torch.equal(out.isinf() & (out > 0), ref.isinf() & (ref > 0))


@pytest.mark.parametrize("n", [172 * 32, 108 * 64, 924 * 32, 924 * 16])
def test_cpu_fused_quantize_equals_unfused(n):
    """The fused rotate+quantize shares the row code: bit-identical to quantize(hadamard_transform(x)), on
    the sign-class route with 1-byte (K < 256) and 2-byte lists (29568 = 924·2^5, Qwen2-72B) and on the
    FMA route (P = 16: fewer than two fp32 vectors)."""
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
    hk = matrices.hadamard_k_matrix(k).float().contiguous()
    for p in (32, 64):
        x = torch.randn(2, k * p)
        for _ in range(2):
            assert_close(_cpu_op(x, hk, 1.0), reference.reference_two_pass(x.double(), hk.double(), 1.0).float())
            hk[:, 7] *= -1  # same tensor, same storage, new contents (still ±1: still the sign-class route)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_triton_two_pass_kronecker(dtype, monkeypatch):
    """Tiles K_pad·P above hadamard_triton.MAX_TILE (n = 28·2048 on a GPU) run as the FWHT of every
    segment, then the K-mix over column blocks. Forced here at n = 12·64 by shrinking the limit (4 column
    blocks), against the dense truth; fp16 checks the fp32 intermediate within torch's own error."""
    if not _backend.backend_status("triton"):
        pytest.skip("triton backend unavailable")
    from symkernels.hadamard import triton as hadamard_triton

    monkeypatch.setattr(hadamard_triton, "MAX_TILE", 256)
    n = 12 * 64
    x = torch.randn(3, n, dtype=torch.float64)
    truth = reference.reference_dense(x, 1 / math.sqrt(n))
    out = symkernels.hadamard_transform(x.to(dtype), 1 / math.sqrt(n), backend="triton")
    if dtype == torch.float16:
        assert_within_torch_error(out, truth, reference.reference_dense(x.to(dtype), 1 / math.sqrt(n)))
    else:
        assert_close(out, truth.to(dtype))
