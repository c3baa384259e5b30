"""JVP pillar sweep: fused linear+GELU dual vs PyTorch's forward-mode paths, plus forward / fwd+bwd.

Per case (M rows, N = K features, T tangents, tangents in x and W, fp32):
  ours              symkernels.jvp.linear_dual (dispatcher: the C++ kernel on CPU)
  ours seeded-W     the same with a seeded Rademacher weight tangent (W_t generated, never read)
  torch.func.jvp    T=1: jvp of gelu(linear); T>1: a Python loop of T jvps
  vmap(jvp)         T>1 only: torch.func.vmap over jvp
  dual tensors      forward_ad make_dual (T=1 only; T>1 is a loop, reported as such)
  forward           plain gelu(linear) — the unit a JVP's cost is read in
  forward+backward  gelu(linear) plus backward to x, W, b
The `flops` column counts 2MNK(1 + 2T) (primal, x- and W-tangent GEMMs).

Row duals (layer_norm_dual, rms_norm_dual, softmax_dual over R rows of N, tangent in x only): ours vs
torch.func.jvp (T=1) / vmap(jvp) (T>1) of the plain torch op, and the plain forward. These are memory-bound:
bytes are (1 + T) reads and (1 + T) writes of R·N floats.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from symkernels.bench.harness import Case, sweep
from symkernels.jvp import layer_norm_dual, linear_dual, rms_norm_dual, softmax_dual


def _plain(x, w, b):
    return F.gelu(F.linear(x, w, b))


def _dual_tensors(x, w, b, x_t, w_t):
    with fwAD.dual_level():
        y = _plain(fwAD.make_dual(x, x_t), fwAD.make_dual(w, w_t), b)
        return fwAD.unpack_dual(y).tangent


def _fwd_bwd(x, w, b):
    y = _plain(x, w, b)
    y.backward(torch.ones_like(y))


@sweep("jvp")
def cases(device: torch.device, quick: bool) -> Iterable[Case]:
    if quick:
        shapes = [(16, 1024, 1), (64, 1024, 1), (64, 1024, 4), (64, 1024, 8), (256, 1024, 1)]
    else:
        shapes = [(M, NK, T) for NK in (1024, 4096) for M in (16, 64, 256, 4096) for T in (1, 4, 8, 16)
                  # On a 2-core CPU the biggest cases take minutes per call; keep the sweep to ≤ ~150 GFLOP/case.
                  if device.type == "cuda" or 2 * M * NK * NK * (1 + 2 * T) <= 150e9]
    g = torch.Generator(device="cpu").manual_seed(0)
    for M, NK, T in shapes:
        yield _linear_case(M, NK, T, g, device)
    yield from _row_cases(device, quick)
    # Forward-gradient step memory/time and attention dual cases (symkernels/bench/jvp_training.py).
    from symkernels.bench import jvp_conv, jvp_training

    yield from jvp_training.cases(device, quick)
    yield from jvp_conv.cases(device, quick)  # conv2d_dual vs torch.func.jvp / vmap(jvp) (bench/jvp_conv.py)


def _linear_case(M: int, NK: int, T: int, g: torch.Generator, device: torch.device) -> Case:
    # One call per case: the closures below bind this case's tensors, not the last loop iteration's.
    N = K = NK
    r = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    x, w, b = r(M, K), r(N, K) / K ** 0.5, r(N)
    x_t, w_t = r(T, M, K), r(T, N, K) / K ** 0.5
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    impls = {
        "ours": (lambda: linear_dual(x, x_t[0], w, w_t[0], b, None, "gelu")) if T == 1 else
                (lambda: linear_dual(x, x_t, w, w_t, b, None, "gelu")),
        "ours seeded-W": lambda: linear_dual(x, x_t if T > 1 else x_t[0], w, None, b, None, "gelu", weight_seed=7,
                                             distribution="rademacher", num_tangents=T if T > 1 else None),
        "torch.func.jvp": (lambda: torch.func.jvp(_plain, (x, w, b), (x_t[0], w_t[0], torch.zeros_like(b))))
                          if T == 1 else
                          (lambda: [torch.func.jvp(_plain, (x, w, b), (x_t[i], w_t[i], torch.zeros_like(b)))
                                    for i in range(T)]),
        "vmap(jvp)": "T=1: same as torch.func.jvp" if T == 1 else
                     (lambda: torch.func.vmap(lambda xt, wt: torch.func.jvp(_plain, (x, w, b),
                                                                            (xt, wt, torch.zeros_like(b))))(x_t, w_t)),
        "dual tensors": (lambda: _dual_tensors(x, w, b, x_t[0], w_t[0])) if T == 1 else
                        (lambda: [_dual_tensors(x, w, b, x_t[i], w_t[i]) for i in range(T)]),
        "forward": lambda: _plain(x, w, b),
        "forward+backward": lambda: _fwd_bwd(xg, wg, bg),
    }

    def check(x=x, w=w, b=b, x_t=x_t, w_t=w_t, T=T):
        _, y_t = linear_dual(x, x_t[:1], w, w_t[:1], b, None, "gelu")
        _, ref = torch.func.jvp(_plain, (x, w, b), (x_t[0], w_t[0], torch.zeros_like(b)))
        torch.testing.assert_close(y_t[0], ref, atol=2e-3, rtol=2e-3)

    itemsize = 4
    return Case(op="linear_gelu_dual", shape=f"M={M} N=K={NK} T={T}", dtype="float32", impls=impls, ours="ours",
                bytes_moved=itemsize * ((1 + T) * (M * K + N * K + M * N) + N),
                flops=2 * M * N * K * (1 + 2 * T), extra={"T": T}, check=check,
                context=("ours seeded-W", "forward", "forward+backward"))


# op name -> (our dual, the plain torch function it differentiates), both taking (x, weight-or-None).
_ROW_OPS = {
    "layer_norm_dual": (lambda x, x_t, w: layer_norm_dual(x, x_t, w),
                        lambda x, w: F.layer_norm(x, x.shape[-1:], w, eps=1e-5)),
    "rms_norm_dual": (lambda x, x_t, w: rms_norm_dual(x, x_t, w), lambda x, w: F.rms_norm(x, x.shape[-1:], w, eps=1e-6)),
    "softmax_dual": (lambda x, x_t, w: softmax_dual(x, x_t), lambda x, w: torch.softmax(x, -1)),
}


def _row_cases(device: torch.device, quick: bool) -> Iterable[Case]:
    shapes = [(1024, 1024, 1), (1024, 1024, 4)] if quick else \
        [(R, N, T) for R, N in ((4096, 1024), (16384, 4096)) for T in (1, 4)]
    g = torch.Generator(device="cpu").manual_seed(1)
    for name, (ours, plain) in _ROW_OPS.items():
        for R, N, T in shapes:
            x, w = torch.randn(R, N, generator=g).to(device), torch.randn(N, generator=g).to(device)
            x_t = torch.randn(T, R, N, generator=g).to(device)
            impls = {
                "ours": (lambda x=x, x_t=x_t, w=w: ours(x, x_t[0], w)) if T == 1 else
                        (lambda x=x, x_t=x_t, w=w: ours(x, x_t, w)),
                "torch.func.jvp": (lambda x=x, x_t=x_t, w=w: torch.func.jvp(lambda a: plain(a, w), (x,), (x_t[0],)))
                                  if T == 1 else "T>1: see vmap(jvp)",
                "vmap(jvp)": "T=1: same as torch.func.jvp" if T == 1 else
                             (lambda x=x, x_t=x_t, w=w: torch.func.vmap(
                                 lambda t: torch.func.jvp(lambda a: plain(a, w), (x,), (t,)))(x_t)),
                "forward": lambda x=x, w=w: plain(x, w),
            }

            def check(x=x, x_t=x_t, w=w):
                _, y_t = ours(x, x_t[0], w)
                _, ref = torch.func.jvp(lambda a: plain(a, w), (x,), (x_t[0],))
                torch.testing.assert_close(y_t, ref, atol=1e-4, rtol=1e-4)

            yield Case(op=name, shape=f"R={R} N={N} T={T}", dtype="float32", impls=impls, ours="ours",
                       bytes_moved=4 * 2 * (1 + T) * R * N, extra={"T": T}, check=check, context=("forward",))
