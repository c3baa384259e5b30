"""GauntTensorProduct module, many-body products, SH of vectors and the convolution helper."""
import math

import pytest
import torch

from symkernels._testing import assert_close
from symkernels.gaunt import reference
from symkernels.gaunt.modules import (GauntTensorProduct, gaunt_convolution, gaunt_power, gaunt_product,
                                      parse_irreps, spherical_harmonics)

F64 = torch.float64


def _rand(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("normalization", ["integral", "component"])
def test_spherical_harmonics_match_e3nn(normalization):
    o3 = pytest.importorskip("e3nn.o3")
    v = _rand(40, 3)
    v[0] = torch.tensor([0.0, 1.0, 0.0], dtype=F64)  # e3nn's pole: still finite and exact here
    expected = o3.spherical_harmonics(list(range(7)), v, normalize=True, normalization=normalization)
    assert_close(spherical_harmonics(6, v, normalization=normalization), expected)


def test_parse_irreps_and_parity_errors():
    assert parse_irreps("32x0e+32x1o + 32x2e") == [(32, 0), (32, 1), (32, 2)]
    assert parse_irreps("0e+1o") == [(1, 0), (1, 1)]
    with pytest.raises(ValueError, match=r"irrep 1e has parity even, but Gaunt products only exist for parity"):
        parse_irreps("4x0e+4x1e")
    with pytest.raises(ValueError, match="cannot parse irrep"):
        parse_irreps("4x1y")
    with pytest.raises(ValueError, match="appears twice"):
        parse_irreps("4x1o+4x1o")


def test_module_matches_e3nn_layout_reference():
    o3 = pytest.importorskip("e3nn.o3")
    ch = 3
    tp = GauntTensorProduct(f"{ch}x0e+{ch}x1o+{ch}x2e", "1x0e+1x1o", f"{ch}x1o+{ch}x3o", normalization="integral")
    with torch.no_grad():
        tp.weight1.copy_(torch.rand(tp.weight1.shape))
        tp.weight2.copy_(torch.rand(tp.weight2.shape))
        tp.weight_out.copy_(torch.rand(tp.weight_out.shape))
    tp = tp.double()
    dims = tp.dims
    assert dims == (ch * 9, 4, ch * 10)
    x1, x2 = _rand(5, dims[0], seed=1), _rand(5, dims[1], seed=2)
    # independent construction: e3nn's own Irreps slicing, weights per degree applied by hand
    irr1 = o3.Irreps(f"{ch}x0e+{ch}x1o+{ch}x2e")
    a = torch.cat([x1[:, s].reshape(5, ch, 2 * l + 1) for (_, (l, _)), s in zip(irr1, irr1.slices())], -1)
    a = a * torch.cat([tp.weight1[:, l:l + 1].expand(ch, 2 * l + 1) for l in range(3)], -1)
    b = (x2 * torch.cat([tp.weight2[:, l:l + 1].expand(1, 2 * l + 1) for l in range(2)], -1))[:, None, :]
    full = reference.gaunt_tensor_product(a, b, 3)
    full = full * torch.cat([tp.weight_out[:, l:l + 1].expand(ch, 2 * l + 1) for l in range(4)], -1)
    expected = torch.cat([full[..., 1:4].flatten(-2), full[..., 9:16].flatten(-2)], -1)
    assert_close(tp(x1, x2), expected)
    out = tp(x1, x2).square().sum()
    out.backward()
    assert tp.weight1.grad is not None and tp.weight1.grad.abs().sum() > 0


def test_module_equivariance():
    o3 = pytest.importorskip("e3nn.o3")
    irreps1, irreps2, irreps_out = "4x0e+4x1o+4x2e", "4x0e+4x1o", "4x0e+4x1o+4x2e+4x3o"
    tp = GauntTensorProduct(irreps1, irreps2, irreps_out)
    torch.manual_seed(1)
    rot = o3.rand_matrix()
    d = lambda s: o3.Irreps(s).D_from_matrix(rot)  # noqa: E731
    x1, x2 = _rand(6, 36, seed=1, dtype=torch.float32), _rand(6, 16, seed=2, dtype=torch.float32)
    assert_close(tp(x1 @ d(irreps1).T, x2 @ d(irreps2).T), tp(x1, x2) @ d(irreps_out).T)


def test_module_rejects_bad_configs():
    with pytest.raises(ValueError, match="parity"):
        GauntTensorProduct("2x0e+2x1e", "2x0e", "2x0e")
    with pytest.raises(ValueError, match="multiplicities must match"):
        GauntTensorProduct("2x0e", "3x0e", "2x0e")
    with pytest.raises(ValueError, match="one multiplicity for every degree"):
        GauntTensorProduct("2x0e+3x1o", "2x0e", "2x0e")
    with pytest.raises(ValueError, match="identically zero"):
        GauntTensorProduct("2x0e+2x1o", "1x1o", "2x3o")
    tp = GauntTensorProduct("2x0e+2x1o", "1x1o", "2x1o")
    with pytest.raises(ValueError, match=r"x1.shape\[-1\] must be 8"):
        tp(torch.randn(3, 7), torch.randn(3, 3))


def test_gaunt_power_and_product_exact():
    x = _rand(4, 9, seed=3)
    y = _rand(4, 4, seed=4)
    z = _rand(4, 16, seed=5)
    full = reference.gaunt_tensor_product(reference.gaunt_tensor_product(x, y, 3), z, 6)
    for lo in (0, 2, 6):
        assert_close(gaunt_product([x, y, z], lo), full[..., :(lo + 1) ** 2])
    # x^3 at low degree: the truncated intermediates must not lose the high-degree contributions
    cube = reference.gaunt_tensor_product(reference.gaunt_tensor_product(x, x, 4), x, 6)
    assert_close(gaunt_power(x, 3, 1), cube[..., :4])
    assert_close(gaunt_power(x, 1), x)
    with pytest.raises(ValueError, match="nu must be an int"):
        gaunt_power(x, 0)


def test_gaunt_power_pointwise():
    """(f(r))^3 at random points equals the cubed function's coefficients evaluated there (nothing truncated)."""
    x = _rand(9, seed=6)
    v = _rand(30, 3, seed=7)
    value = spherical_harmonics(2, v) @ x
    assert_close(spherical_harmonics(6, v) @ gaunt_power(x, 3), value ** 3)


def test_convolution_helper():
    e, c = 7, 3
    feats, vec = _rand(e, c, 9, seed=1), _rand(e, 3, seed=2)
    w = _rand(e, 3, seed=3)
    dst = torch.tensor([0, 1, 0, 2, 1, 0, 2])
    sh = spherical_harmonics(2, vec)
    weighted = sh * w[:, [0, 1, 1, 1, 2, 2, 2, 2, 2]]
    per_edge = reference.gaunt_tensor_product(feats, weighted[:, None, :], 3)
    assert_close(gaunt_convolution(feats, vec, 3, lmax_sh=2, edge_weights=w), per_edge)
    expected = torch.zeros(3, c, 16, dtype=F64).index_add_(0, dst, per_edge)
    assert_close(gaunt_convolution(feats, vec, 3, lmax_sh=2, edge_weights=w, edge_dst=dst, num_nodes=3), expected)
    with pytest.raises(ValueError, match="edge_vectors must be"):
        gaunt_convolution(feats, vec[:, :2], 3, lmax_sh=2)
