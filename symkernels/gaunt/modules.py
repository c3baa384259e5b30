"""Higher-level Gaunt tools: an e3nn-style module, many-body products, and the convolution helper.

All of them are built on ``gaunt_tensor_product``, so they run on every backend and are differentiable
to any order. Feature layout inside: ``[..., C, (L+1)²]`` (channels, then SH coefficients in e3nn's
order); the module converts from/to e3nn's flat ``mul_ir`` layout.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from symkernels.gaunt.coefficients import NORMALIZATIONS
from symkernels.gaunt.ops import gaunt_tensor_product, lmax_from_size

_IRREP = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(\d+)\s*([eo])\s*$")


def parse_irreps(irreps: str, name: str = "irreps") -> list[tuple[int, int]]:
    """Parse an e3nn Irreps string (``"32x0e+32x1o+32x2e"``) into [(mul, l)], checking Gaunt parity.

    Gaunt products exist only between irreps of parity (−1)^l (the parity of the spherical function Y_l),
    so ``1e`` or ``0o`` are rejected with the reason. Degrees must be distinct.
    """
    if hasattr(irreps, "__iter__") and not isinstance(irreps, str):  # an e3nn Irreps object
        irreps = str(irreps)
    if not isinstance(irreps, str) or not irreps.strip():
        raise ValueError(f"{name} must be a non-empty e3nn irreps string like '8x0e+8x1o', got {irreps!r}")
    out = []
    for term in irreps.split("+"):
        match = _IRREP.match(term)
        if not match:
            raise ValueError(f"{name}: cannot parse irrep {term.strip()!r} (expected e.g. '32x1o')")
        mul, l, p = int(match.group(1) or 1), int(match.group(2)), match.group(3)
        expected = "e" if l % 2 == 0 else "o"
        if p != expected:
            raise ValueError(f"{name}: irrep {l}{p} has parity {'even' if p == 'e' else 'odd'}, but Gaunt products "
                             f"only exist for parity (-1)^l, i.e. {l}{expected} (the parity of Y_{l})")
        if any(l == seen for _, seen in out):
            raise ValueError(f"{name}: degree {l} appears twice; merge it into one '{mul}x{l}{p}' term")
        out.append((mul, l))
    return out


def _degree_index(lmax: int) -> torch.Tensor:
    """The degree l of every flat SH index 0..(lmax+1)²−1."""
    return torch.repeat_interleave(torch.arange(lmax + 1), torch.arange(lmax + 1) * 2 + 1)


class GauntTensorProduct(nn.Module):
    """Channel-wise ("uuu") Gaunt tensor product between e3nn-layout features, with per-degree weights.

    out = w_out ⊙ GTP(w1 ⊙ x1, w2 ⊙ x2), where w1[c, l1], w2[c, l2], w_out[c, l_out] are learnable
    (initialized to 1) and ⊙ scales every coefficient of degree l in channel c — the per-degree
    reparametrization of Luo et al. that stands in for per-path weights.

    Args:
        irreps_in1, irreps_in2, irreps_out: e3nn Irreps strings, e.g. ``"32x0e+32x1o+32x2e"``. Every irrep
            must have parity (−1)^l. All terms of one argument share one multiplicity C; ``irreps_in2`` may
            instead have multiplicity 1 (e.g. edge SH shared by all channels). Missing degrees are zero.
        normalization: 'integral' or 'component' (see ``gaunt_tensor_product``).
        backend: passed to ``gaunt_tensor_product``.

    Input ``[..., dim(irreps_in1)]`` and ``[..., dim(irreps_in2)]`` in e3nn's mul_ir layout; output
    ``[..., dim(irreps_out)]``.
    """

    def __init__(self, irreps_in1: str, irreps_in2: str, irreps_out: str, *, normalization: str = "component",
                 internal_weights: bool = True, backend: str | None = None):
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.irreps = [parse_irreps(irreps_in1, "irreps_in1"), parse_irreps(irreps_in2, "irreps_in2"),
                       parse_irreps(irreps_out, "irreps_out")]
        muls = [{m for m, _ in ir} for ir in self.irreps]
        for name, m in zip(("irreps_in1", "irreps_in2", "irreps_out"), muls):
            if len(m) != 1:
                raise ValueError(f"{name}: a channel-wise product needs one multiplicity for every degree, got {sorted(m)}")
        self.channels = muls[0].pop()
        mul2, mul_out = muls[1].pop(), muls[2].pop()
        if mul2 not in (1, self.channels) or mul_out != self.channels:
            raise ValueError(f"multiplicities must match ('uuu'): irreps_in1 has {self.channels}, irreps_in2 {mul2} "
                             f"(or 1), irreps_out {mul_out}")
        self.mul2 = mul2
        self.lmax = [max(l for _, l in ir) for ir in self.irreps]
        if self.lmax[2] > self.lmax[0] + self.lmax[1]:
            raise ValueError(f"irreps_out has degree {self.lmax[2]} > L1+L2 = {self.lmax[0] + self.lmax[1]}: "
                             "those outputs would be identically zero")
        self.normalization = normalization
        self.backend = backend
        shapes = [(self.channels, self.lmax[0] + 1), (mul2, self.lmax[1] + 1), (self.channels, self.lmax[2] + 1)]
        if internal_weights:
            self.weight1, self.weight2, self.weight_out = (nn.Parameter(torch.ones(s)) for s in shapes)
        else:
            self.weight1 = self.weight2 = self.weight_out = None
        for i, lmax in enumerate(self.lmax):
            self.register_buffer(f"_degree{i}", _degree_index(lmax), persistent=False)

    @property
    def dims(self) -> tuple[int, int, int]:
        return tuple(sum(m * (2 * l + 1) for m, l in ir) for ir in self.irreps)

    def _unflatten(self, x: torch.Tensor, which: int) -> torch.Tensor:
        """e3nn mul_ir [..., Σ mul(2l+1)] → [..., mul, (L+1)²] with zeros for missing degrees."""
        irreps, lmax = self.irreps[which], self.lmax[which]
        mul = irreps[0][0]
        out = x.new_zeros(*x.shape[:-1], mul, (lmax + 1) ** 2)
        offset = 0
        for m, l in irreps:
            size = m * (2 * l + 1)
            out[..., l * l:(l + 1) ** 2] = x[..., offset:offset + size].unflatten(-1, (m, 2 * l + 1))
            offset += size
        return out

    def _flatten(self, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([y[..., l * l:(l + 1) ** 2].flatten(-2) for _, l in self.irreps[2]], dim=-1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        for name, x, dim in (("x1", x1, self.dims[0]), ("x2", x2, self.dims[1])):
            if x.shape[-1] != dim:
                raise ValueError(f"GauntTensorProduct: {name}.shape[-1] must be {dim} (irreps dim), got {x.shape[-1]}")
        a, b = self._unflatten(x1, 0), self._unflatten(x2, 1)
        if self.weight1 is not None:
            a = a * self.weight1.to(a.dtype)[:, self._degree0]
            b = b * self.weight2.to(b.dtype)[:, self._degree1]
        out = gaunt_tensor_product(a, b, self.lmax[2], normalization=self.normalization, backend=self.backend)
        if self.weight_out is not None:
            out = out * self.weight_out.to(out.dtype)[:, self._degree2]
        return self._flatten(out)

    def extra_repr(self) -> str:
        names = ["+".join(f"{m}x{l}{'e' if l % 2 == 0 else 'o'}" for m, l in ir) for ir in self.irreps]
        return f"{names[0]} x {names[1]} -> {names[2]}, normalization={self.normalization!r}"


def gaunt_product(xs: list[torch.Tensor] | tuple[torch.Tensor, ...], lmax_out: int | None = None, *,
                  normalization: str = "integral", backend: str | None = None) -> torch.Tensor:
    """Product of ν spherical functions x_1·…·x_ν projected onto degrees ≤ lmax_out, exactly.

    Multiplies left to right; after k factors it keeps degrees ≤ min(ΣL_1..k, lmax_out + ΣL_k+1..ν):
    higher degrees can no longer reach the output (a product of degrees ≥ d and ≤ D has no component
    below d − D), so the truncation is exact while the intermediates stay small.
    """
    if not isinstance(xs, (list, tuple)) or len(xs) == 0:
        raise ValueError("gaunt_product: xs must be a non-empty list of tensors")
    degrees = []
    for i, x in enumerate(xs):
        l = lmax_from_size(x.shape[-1]) if isinstance(x, torch.Tensor) and x.dim() else None
        if l is None:
            raise ValueError(f"gaunt_product: xs[{i}] must be a tensor [..., (L+1)²]")
        degrees.append(l)
    total = sum(degrees)
    lmax_out = total if lmax_out is None else lmax_out
    if isinstance(lmax_out, bool) or not isinstance(lmax_out, int) or not 0 <= lmax_out <= total:
        raise ValueError(f"gaunt_product: lmax_out must be an int between 0 and {total}, got {lmax_out!r}")
    out, have = xs[0], degrees[0]
    if len(xs) == 1:
        n = (lmax_out + 1) ** 2
        return out[..., :n]
    for k in range(1, len(xs)):
        remaining = sum(degrees[k + 1:])
        keep = min(have + degrees[k], lmax_out + remaining)
        out = gaunt_tensor_product(out, xs[k], keep, normalization=normalization, backend=backend)
        have = keep
    return out


def gaunt_power(x: torch.Tensor, nu: int, lmax_out: int | None = None, *, normalization: str = "integral",
                backend: str | None = None) -> torch.Tensor:
    """x^ν as a spherical function (the many-body product of Luo et al.), projected to degrees ≤ lmax_out
    (default ν·L). Exact; see ``gaunt_product``."""
    if isinstance(nu, bool) or not isinstance(nu, int) or nu < 1:
        raise ValueError(f"gaunt_power: nu must be an int ≥ 1, got {nu!r}")
    return gaunt_product([x] * nu, lmax_out, normalization=normalization, backend=backend)


def spherical_harmonics(lmax: int, vectors: torch.Tensor, *, normalization: str = "integral") -> torch.Tensor:
    """Real SH of the directions of ``vectors`` [..., 3] → [..., (lmax+1)²], in e3nn's basis and order.

    Equal to ``e3nn.o3.spherical_harmonics(range(lmax+1), vectors, normalize=True, normalization=...)``.
    e3nn's polar axis is y: its Y(x, y, z) is the textbook real SH at the point (z, x, y). Written as
    polynomials in the unit vector (Re/Im of (x'+iy')^m times a Legendre polynomial in z'), so it is smooth
    at the poles and differentiable; a zero vector gives NaN, as a direction does not exist.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if vectors.shape[-1] != 3:
        raise ValueError(f"spherical_harmonics: vectors.shape[-1] must be 3, got {vectors.shape[-1]}")
    u = vectors / vectors.norm(dim=-1, keepdim=True)
    xp, yp, zp = u[..., 2], u[..., 0], u[..., 1]  # textbook coordinates (x', y', z') = (z, x, y)
    scale = math.sqrt(4 * math.pi) if normalization == "component" else 1.0
    out = [None] * ((lmax + 1) ** 2)
    cos_m, sin_m = torch.ones_like(xp), torch.zeros_like(xp)  # Re, Im of (x' + i y')^m
    double_factorial = 1.0
    for m in range(lmax + 1):
        if m > 0:
            cos_m, sin_m = xp * cos_m - yp * sin_m, xp * sin_m + yp * cos_m
            double_factorial *= 2 * m - 1
        # Q_l^m(z') = P̄_l^m(z') / sin^m: the same three-term recurrence, started at (2m−1)!!.
        q = {m: torch.full_like(zp, double_factorial)}
        if m + 1 <= lmax:
            q[m + 1] = zp * (2 * m + 1) * double_factorial
        for l in range(m + 2, lmax + 1):
            q[l] = ((2 * l - 1) * zp * q[l - 1] - (l + m - 1) * q[l - 2]) / (l - m)
        for l in range(m, lmax + 1):
            norm = scale * math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - m) / math.factorial(l + m))
            if m == 0:
                out[l * l + l] = norm * q[l]
            else:
                out[l * l + l + m] = math.sqrt(2) * norm * q[l] * cos_m
                out[l * l + l - m] = math.sqrt(2) * norm * q[l] * sin_m
    return torch.stack(out, dim=-1)


def gaunt_convolution(features: torch.Tensor, edge_vectors: torch.Tensor, lmax_out: int, *, lmax_sh: int,
                      edge_weights: torch.Tensor | None = None, edge_dst: torch.Tensor | None = None,
                      num_nodes: int | None = None, normalization: str = "integral",
                      backend: str | None = None) -> torch.Tensor:
    """Equivariant convolution message: features (per edge) × SH of the edge vector, Gaunt-projected.

    Args:
        features: ``[E, C, (L+1)²]`` source-node features gathered per edge.
        edge_vectors: ``[E, 3]``.
        lmax_out: output degree.
        lmax_sh: degree of the edge SH.
        edge_weights: optional per-edge, per-degree weights of the SH (e.g. a radial MLP's output),
            ``[E, lmax_sh+1]`` (shared by channels) or ``[E, C, lmax_sh+1]``.
        edge_dst, num_nodes: if given, messages are summed into ``[num_nodes, C, (lmax_out+1)²]`` by
            destination node (``index_add``); otherwise the per-edge messages ``[E, C, ...]`` are returned.

    The SH is shared by all channels (broadcast inside the product, not copied by the caller).
    """
    if features.dim() != 3:
        raise ValueError(f"gaunt_convolution: features must be [E, C, (L+1)²], got shape {tuple(features.shape)}")
    if edge_vectors.shape != (features.shape[0], 3):
        raise ValueError(f"gaunt_convolution: edge_vectors must be [E, 3] = [{features.shape[0]}, 3], "
                         f"got {tuple(edge_vectors.shape)}")
    sh = spherical_harmonics(lmax_sh, edge_vectors.to(features.dtype), normalization=normalization)[:, None, :]
    if edge_weights is not None:
        w = edge_weights if edge_weights.dim() == 3 else edge_weights[:, None, :]
        if w.shape[-1] != lmax_sh + 1 or w.shape[0] != features.shape[0]:
            raise ValueError(f"gaunt_convolution: edge_weights must be [E, lmax_sh+1] or [E, C, lmax_sh+1], "
                             f"got {tuple(edge_weights.shape)}")
        sh = sh * w[..., _degree_index(lmax_sh).to(w.device)].to(features.dtype)
    messages = gaunt_tensor_product(features, sh, lmax_out, normalization=normalization, backend=backend)
    if edge_dst is None:
        return messages
    if num_nodes is None:
        raise ValueError("gaunt_convolution: num_nodes is required with edge_dst")
    out = messages.new_zeros(num_nodes, *messages.shape[1:])
    return out.index_add_(0, edge_dst, messages)
