"""The Gaunt op's rows in the GPU checks (tests/gpu_cases.py): smoke and compile gate. Its CUDA kernel is
native (no Triton kernel serves its CUDA key), so the decomposition probe has nothing to trace."""
from __future__ import annotations

import symkernels
from symkernels.gaunt import ops
from tests.gpu_cases import ALL_FLOATS, BF16, F16, F32, F64, SmokeOp, cuda, dtype_name, randn

SMOKE = [
    SmokeOp("gaunt", ops.IMPLEMENTED, ALL_FLOATS, ((4, 1, 1), (7, 2, 3)),
            lambda s, d, g: (randn(g, s[0], (s[1] + 1) ** 2, dtype=d), randn(g, s[0], (s[2] + 1) ** 2, dtype=d)),
            lambda a, d, be: symkernels.gaunt_tensor_product(a[0], a[1], backend=be), half_rule="table"),
]


def gate_cases():
    from symkernels.gaunt import coefficients
    from symkernels.gaunt import triton as gt

    def launch(l1, l2, lo, dtype, rows=4096):
        n_beta, n_alpha = coefficients.grid_size(l1, l2, lo)
        g = n_beta * n_alpha
        n1, n2, no = (l1 + 1) ** 2, (l2 + 1) ** 2, (lo + 1) ** 2
        gt.gaunt_tensor_product(cuda(rows, n1, dtype=dtype), cuda(rows, n2, dtype=dtype), cuda(n1, g, dtype=dtype),
                                cuda(n2, g, dtype=dtype), cuda(g, no, dtype=dtype))

    # Every supported degree (L1 = L2 = L, Lo ∈ {L, 2L}) and dtype, and the mixed degrees the tests run.
    shapes = [(l, l, lo) for l in range(coefficients.MAX_L + 1) for lo in sorted({l, 2 * l})]
    shapes += [(12, 3, 10), (12, 3, 12), (12, 12, 2), (10, 2, 12), (7, 8, 15), (6, 1, 4)]
    for dtype in (F16, BF16, F32, F64):
        for l1, l2, lo in shapes:
            yield f"gaunt L={l1}x{l2}->{lo} {dtype_name(dtype)}", lambda a=l1, b=l2, c=lo, d=dtype: launch(a, b, c, d)
