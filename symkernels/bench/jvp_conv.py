"""JVP pillar sweep, conv side (registered through bench/jvp.py): conv2d_dual vs PyTorch's forward mode over
F.conv2d + GELU, tangents in x and the weight, fp32, 3x3 kernel, padding 1.

  ours              symkernels.jvp.conv2d_dual (dispatcher: one stacked conv for primal + x tangents, one
                    grouped conv for the weight tangents, in-place chain rule)
  ours seeded-W     the same with a seeded Rademacher weight tangent (generated for the call, never passed)
  torch.func.jvp    T=1: jvp of gelu(conv2d) in (x, W)
  vmap(jvp)         T>1: torch.func.vmap over that jvp
  dual tensors      T=1: forward_ad make_dual
  forward           gelu(conv2d): the unit a JVP's cost is read in
  forward+backward  the same plus backward to x, W, b
The flops column counts 2·B·O·Ho·Wo·C·9·(1 + 2T) (primal, x- and W-tangent convolutions).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from symkernels.bench.harness import Case
from symkernels.jvp import conv2d_dual


def _plain(x, w, b):
    return F.gelu(F.conv2d(x, w, b, padding=1))


def _case(B: int, C: int, HW: int, T: int, g: torch.Generator, device: torch.device) -> Case:
    r = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    x, w, b = r(B, C, HW, HW), r(C, C, 3, 3) / (3 * C ** 0.5), r(C)
    lead = (T,) if T > 1 else ()
    x_t, w_t = r(*lead, B, C, HW, HW), r(*lead, C, C, 3, 3)

    def ours(x=x, w=w, b=b, x_t=x_t, w_t=w_t):
        return conv2d_dual(x, x_t, w, w_t, b, padding=1, activation="gelu")

    def ours_seeded(x=x, w=w, b=b, x_t=x_t, T=T):
        return conv2d_dual(x, x_t, w, None, b, padding=1, activation="gelu", weight_seed=7, distribution="rademacher",
                           num_tangents=T if T > 1 else None)

    def jvp_one(xt, wt, x=x, w=w, b=b):
        return torch.func.jvp(lambda x, w: _plain(x, w, b), (x, w), (xt, wt))

    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))

    def fwd_bwd(xg=xg, wg=wg, bg=bg):
        _plain(xg, wg, bg).sum().backward()

    impls = {"ours": ours, "ours seeded-W": ours_seeded}
    if T == 1:
        def dual(x=x, w=w, b=b, x_t=x_t, w_t=w_t):
            with fwAD.dual_level():
                return fwAD.unpack_dual(_plain(fwAD.make_dual(x, x_t), fwAD.make_dual(w, w_t), b)).tangent

        impls.update({"torch.func.jvp": lambda x_t=x_t, w_t=w_t: jvp_one(x_t, w_t), "dual tensors": dual})
    else:
        impls["vmap(jvp)"] = lambda x_t=x_t, w_t=w_t: torch.func.vmap(jvp_one)(x_t, w_t)
    impls.update({"forward": lambda x=x, w=w, b=b: _plain(x, w, b), "forward+backward": fwd_bwd})

    def check(x=x, w=w, x_t=x_t, w_t=w_t, T=T):
        got = ours()[1]
        want = torch.func.vmap(jvp_one)(x_t, w_t)[1] if T > 1 else jvp_one(x_t, w_t)[1]
        torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)

    flops = 2 * B * C * HW * HW * C * 9 * (1 + 2 * T)
    return Case(op="conv2d_dual", shape=f"B={B} {C}->{C} {HW}x{HW} 3x3 T={T}", dtype="float32", impls=impls,
                ours="ours", flops=flops, check=check, extra={"T": T},
                context=("ours seeded-W", "forward", "forward+backward"))


def cases(device: torch.device, quick: bool) -> Iterable[Case]:
    g = torch.Generator(device="cpu").manual_seed(0)
    configs = [(16, 32, 16, 1), (16, 32, 16, 8)] if quick else [(64, 64, 32, 1), (64, 64, 32, 8)]
    for B, C, HW, T in configs:
        yield _case(B, C, HW, T, g, device)
