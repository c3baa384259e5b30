"""max_pool2d_dual / avg_pool2d_dual against torch.func.jvp of F.max_pool2d / F.avg_pool2d (float64)."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import jvp

from symkernels._testing import assert_close
from symkernels.jvp import avg_pool2d_dual, max_pool2d_dual

D = torch.float64
CASES = [  # (kwargs, input spatial size): odd sizes, strides, padding, dilation, ceil mode
    (dict(kernel_size=2), (8, 6)),
    (dict(kernel_size=3, stride=2, padding=1), (7, 9)),
    (dict(kernel_size=(2, 3), stride=(1, 2), ceil_mode=True), (5, 8)),
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("T", [None, 3])
def test_pool_dual_matches_func_jvp(kind, case, T):
    kw, hw = CASES[case]
    if kind == "max" and case == 1:
        kw = dict(kw, dilation=2)
    g = torch.Generator().manual_seed(case)
    x = torch.randn(2, 3, *hw, dtype=D, generator=g)
    x_t = torch.randn(*((T,) if T else ()), *x.shape, dtype=D, generator=g)
    ours, plain = (max_pool2d_dual, F.max_pool2d) if kind == "max" else (avg_pool2d_dual, F.avg_pool2d)
    y, y_t = ours(x, x_t, **kw)
    want = [jvp(lambda x: plain(x, **kw), (x,), (t,)) for t in (x_t if T else [x_t])]
    assert_close(y, want[0][0])
    assert_close(y_t, torch.stack([w[1] for w in want]) if T else want[0][1])
    assert y_t.abs().max() > 0.1
    # Unbatched input, and no tangent (a zero one).
    y1, y1_t = ours(x[1], x_t[..., 1, :, :, :], **kw)
    assert_close(y1, y[1])
    assert_close(y1_t, y_t[..., 1, :, :, :])
    assert torch.count_nonzero(ours(x, None, **kw)[1]) == 0


def test_pool_dual_bad_inputs():
    x = torch.randn(2, 3, 6, 6)
    with pytest.raises(ValueError, match=r"max_pool2d_dual: x_t must have the shape of x \[2, 3, 6, 6\]"):
        max_pool2d_dual(x, torch.randn(2, 3, 6, 5), 2)
    with pytest.raises(TypeError, match=r"avg_pool2d_dual: x_t must have the dtype of x"):
        avg_pool2d_dual(x, x.double(), 2)
    with pytest.raises(ValueError, match=r"avg_pool2d_dual: x must have shape \[N, C, H, W\] or \[C, H, W\]"):
        avg_pool2d_dual(torch.randn(6, 6), None, 2)
