"""Data-parallel training step, forward gradients vs DistributedDataParallel with backprop (gloo, CPU, 127.0.0.1).

    python -m symkernels.bench.jvp_distributed [--world 2] [--steps 30] [--tangents 1 16] [--batch 64]

The model is the digits example's CNN (symkernels.jvp.examples.DigitsCNN, 1898 parameters), each rank a
batch of random 8×8 images:
  fg (T tangents)  ForwardGradientSGD(process_group=world): per step ONE all-reduce of T + 1 numbers
  DDP backprop     the same architecture in plain torch.nn (nn.Conv2d, F.relu), DistributedDataParallel and
                   torch.optim.SGD: per step the all-reduce of the gradient buckets
Bytes: the all-reduce payload each rank contributes per step, counted where it is issued (dist.all_reduce
for the optimizer, a DDP communication hook for DDP). A ring all-reduce puts 2(p−1)/p times the payload on
each rank's link (p = 2: once). Time: the median step over ``--steps`` steps after 3 warm-up steps, on rank
0, with 1 thread per rank.
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _plain_cnn(cnn) -> torch.nn.Module:
    """DigitsCNN's architecture in plain torch.nn, with its parameters (the backprop baseline)."""
    class PlainCNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, cnn.conv1.out_channels, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(cnn.conv1.out_channels, cnn.conv2.out_channels, 3, padding=1)
            self.head = torch.nn.Linear(cnn.head.in_features, 10)

        def forward(self, x):
            h = F.max_pool2d(F.relu(self.conv1(x.view(-1, 1, 8, 8))), 2)
            return self.head(F.max_pool2d(F.relu(self.conv2(h)), 2).flatten(1))

    plain = PlainCNN()
    plain.load_state_dict(cnn.state_dict())
    return plain


def _timed_steps(step, steps: int) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        dist.barrier()  # every rank starts the step together: the time is the slowest rank's step
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rank(rank: int, world: int, port: int, args, results) -> None:
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from symkernels.jvp import ForwardGradientSGD
    from symkernels.jvp.examples import DigitsCNN

    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(args.batch, 64, generator=g), torch.randint(0, 10, (args.batch,), generator=g)
    torch.manual_seed(0)
    cnn = DigitsCNN()
    rows = []

    payload = [0]
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(tensor, *a, **kw):
        payload[0] += tensor.numel() * tensor.element_size()
        return real_all_reduce(tensor, *a, **kw)

    params = [p.detach() for p in cnn.parameters()]
    names = [n for n, _ in cnn.named_parameters()]

    def loss_fn(ps, xb, yb):
        return F.cross_entropy(torch.func.functional_call(cnn, dict(zip(names, ps)), (xb,)), yb)

    for T in args.tangents:
        opt = ForwardGradientSGD(params, lr=1e-9, num_tangents=T, distribution="rademacher")
        dist.all_reduce = counting_all_reduce
        try:
            payload[0] = 0
            opt.step(loss_fn, x, y)
            per_step = payload[0]
            seconds = _timed_steps(lambda: opt.step(loss_fn, x, y), args.steps)
        finally:
            dist.all_reduce = real_all_reduce
        rows.append((f"forward gradient, T={T}", per_step, seconds))

    ddp = torch.nn.parallel.DistributedDataParallel(_plain_cnn(cnn))
    ddp_payload = [0]

    def counting_hook(state, bucket):
        ddp_payload[0] += bucket.buffer().numel() * bucket.buffer().element_size()
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting_hook)
    sgd = torch.optim.SGD(ddp.parameters(), lr=1e-9)

    def ddp_step():
        sgd.zero_grad(set_to_none=True)
        F.cross_entropy(ddp(x), y).backward()
        sgd.step()

    ddp_step()
    ddp_payload[0] = 0
    ddp_step()
    rows.append(("DDP backprop", ddp_payload[0], _timed_steps(ddp_step, args.steps)))
    if rank == 0:
        results.put(rows)
    dist.destroy_process_group()


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--tangents", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--batch", type=int, default=64, help="examples per rank")
    args = parser.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, args.world, port, args, results)) for r in range(args.world)]
    for p in procs:
        p.start()
    try:
        rows = results.get(timeout=900)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    print(f"{args.world} ranks, gloo on 127.0.0.1, 1 thread per rank, batch {args.batch} per rank, DigitsCNN")
    print("| method | all-reduce payload per rank per step | median step time |")
    print("|---|---|---|")
    for name, nbytes, seconds in rows:
        print(f"| {name} | {nbytes} B | {1e3 * seconds:.2f} ms |")
    return rows


if __name__ == "__main__":
    main()
