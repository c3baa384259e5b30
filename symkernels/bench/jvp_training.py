"""JVP pillar sweep, training side: peak memory and time of a forward-gradient step vs backprop vs inference,
and the attention dual vs PyTorch's forward-mode paths over SDPA (registered through bench/jvp.py).

Forward-gradient step cases (MLP, fp32, SGD without momentum so no optimizer state on either side):
  fg step (seeded)   symkernels.ForwardGradientSGD, T seeded Rademacher tangents, the lean path: weight
                     tangents only as seeds inside linear_dual, the update regenerating them chunk-wise
  fg step (materialised)  the directional derivatives with all T tangent sets materialised (one vmapped
                     jvp; without the update, so its time is a lower bound of such a step)
  backprop step      torch.optim.SGD on autograd gradients
  inference          the forward pass under no_grad
Memory columns: peak footprint = parameters + batch + the allocator's high-water mark during the call
(symkernels.jvp.memory: CPU allocator profiler events, CUDA max_memory_allocated), in MiB, and each as a
multiple of inference. The issue's target: seeded fg step <= 1.2x inference.

Attention cases ([B, H, L, 64], fp32): ours = attention_dual (reference closed form on CPU, Triton on
CUDA); peers: torch.func.jvp over SDPA's math path (the only SDPA backend with forward AD), forward-mode
dual tensors over the same, plain SDPA forward (default backend) and SDPA forward+backward.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from symkernels.bench.harness import Case
from symkernels.jvp import MLP, ForwardGradientSGD, attention_dual
from symkernels.jvp.forward_gradient import directional_derivatives
from symkernels.jvp.memory import peak_memory

MiB = 1 << 20


def _fg_cases(device: torch.device, quick: bool) -> Iterable[Case]:
    # The first is the digits example's model and step (python -m symkernels.jvp.examples: accuracy there).
    configs = [([64, 32, 10], 64, 16), ([784, 1024, 1024, 10], 64, 1)] if quick else \
        [([64, 32, 10], 64, 16)] + [([784, 1024, 1024, 10], 64, T) for T in (1, 4)] + [([2048, 2048, 2048, 10], 256, 1)]
    for sizes, B, T in configs:
        torch.manual_seed(0)
        net = MLP(sizes, activation="relu").to(device)
        params = list(net.parameters())
        for p in params:
            p.requires_grad_(False)
        names = [n for n, _ in net.named_parameters()]
        x = torch.randn(B, sizes[0], device=device)
        y = torch.randint(0, sizes[-1], (B,), device=device)

        def loss_fn(ps, xb, yb, names=names, net=net):
            return F.cross_entropy(torch.func.functional_call(net, dict(zip(names, ps)), (xb,)), yb)

        # Tiny lr: the timed repeats must not change the model's scale.
        opt = ForwardGradientSGD(params, lr=1e-9, num_tangents=T, distribution="rademacher")
        bp_net = MLP(sizes, activation="relu").to(device)
        bp_params = list(bp_net.parameters())
        sgd = torch.optim.SGD(bp_params, lr=1e-9)

        def bp_step(bp_net=bp_net, sgd=sgd, x=x, y=y):
            sgd.zero_grad(set_to_none=True)
            F.cross_entropy(bp_net(x), y).backward()
            sgd.step()

        def inference(net=net, x=x):
            with torch.no_grad():
                net(x)

        impls = {
            "fg step (seeded)": lambda opt=opt, x=x, y=y, loss_fn=loss_fn: opt.step(loss_fn, x, y),
            "fg step (materialised)": lambda params=params, x=x, y=y, loss_fn=loss_fn, T=T: directional_derivatives(
                loss_fn, params, x, y, num_tangents=T, distribution="rademacher", tangent_batch=T, materialize=True),
            "backprop step": bp_step,
            "inference": inference,
        }
        resident = params + [x, y]
        inf = peak_memory(inference, resident, device).footprint_bytes
        fg = peak_memory(impls["fg step (seeded)"], resident, device).footprint_bytes
        mat = peak_memory(impls["fg step (materialised)"], resident, device).footprint_bytes
        sgd.zero_grad(set_to_none=True)  # gradients are allocated inside the measured step, as in training
        bp = peak_memory(bp_step, bp_params + [x, y], device).footprint_bytes
        n_params = sum(p.numel() for p in params)
        yield Case(op="forward_gradient_step", shape=f"MLP {'-'.join(map(str, sizes))} B={B} T={T}", dtype="float32",
                   impls=impls, ours="fg step (seeded)", context=("fg step (materialised)", "inference"),
                   flops=2 * B * n_params * (1 + 2 * T),
                   extra={"T": T, "mem fg MiB": round(fg / MiB, 2), "mem fg-materialised MiB": round(mat / MiB, 2),
                          "mem backprop MiB": round(bp / MiB, 2), "mem inference MiB": round(inf / MiB, 2),
                          "fg/inference mem": round(fg / inf, 3), "backprop/inference mem": round(bp / inf, 3)})


def _sdpa_math(q, k, v, causal):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _attention_cases(device: torch.device, quick: bool) -> Iterable[Case]:
    if quick:
        configs = [(1, 2, L, False) for L in (512, 1024)]
    elif device.type == "cuda":
        configs = [(2, 12, L, c) for L in (512, 1024, 2048, 4096, 8192) for c in (False, True)]
    else:  # the CPU reference holds L×L matrices: one head, and 8192 only non-causal, to bound time and memory
        configs = [(1, 2, L, False) for L in (512, 1024, 2048, 4096)] + [(1, 1, 8192, False)]
    g = torch.Generator(device="cpu").manual_seed(0)
    for B, H, L, causal in configs:
        r = lambda: torch.randn(B, H, L, 64, generator=g).to(device)  # noqa: E731
        q, k, v, qt, kt, vt = r(), r(), r(), r(), r(), r()
        qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

        def dual(q=q, k=k, v=v, qt=qt, kt=kt, vt=vt, causal=causal):
            with fwAD.dual_level():
                o = _sdpa_math(fwAD.make_dual(q, qt), fwAD.make_dual(k, kt), fwAD.make_dual(v, vt), causal)
                return fwAD.unpack_dual(o).tangent

        def fwd_bwd(qg=qg, kg=kg, vg=vg, causal=causal):
            F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal).sum().backward()

        def ours(q=q, k=k, v=v, qt=qt, kt=kt, vt=vt, causal=causal):
            return attention_dual(q, k, v, qt, kt, vt, causal=causal)

        def func_jvp(q=q, k=k, v=v, qt=qt, kt=kt, vt=vt, causal=causal):
            return torch.func.jvp(lambda q, k, v: _sdpa_math(q, k, v, causal), (q, k, v), (qt, kt, vt))

        def forward(q=q, k=k, v=v, causal=causal):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        # Every closure binds this configuration's tensors as defaults (not the last loop iteration's).
        impls = {
            "ours": ours,
            "torch.func.jvp (SDPA math)": func_jvp,
            "dual tensors (SDPA math)": dual,
            "SDPA forward": forward,
            "SDPA forward+backward": fwd_bwd,
        }

        def check(q=q, k=k, v=v, qt=qt, kt=kt, vt=vt, causal=causal, L=L):
            if L > 1024:
                return  # checked at the small sizes; the big ones only cost time
            _, o_t = attention_dual(q, k, v, qt, kt, vt, causal=causal)
            _, ref = torch.func.jvp(lambda q, k, v: _sdpa_math(q, k, v, causal), (q, k, v), (qt, kt, vt))
            torch.testing.assert_close(o_t, ref, atol=2e-3, rtol=2e-3)

        flops = 12 * B * H * L * L * 64 // (2 if causal else 1)  # fwd 4N²d + tangent 8N²d (fwdgrad.md §4)
        yield Case(op="attention_dual", shape=f"B={B} H={H} L={L} d=64{' causal' if causal else ''}", dtype="float32",
                   impls=impls, ours="ours", flops=flops, bytes_moved=4 * 2 * 4 * B * H * L * 64, check=check,
                   context=("SDPA forward", "SDPA forward+backward"))


def cases(device: torch.device, quick: bool) -> Iterable[Case]:
    yield from _fg_cases(device, quick)
    yield from _attention_cases(device, quick)
