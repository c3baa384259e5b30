"""Data-parallel forward gradients over torch.distributed (gloo, CPU, loopback only): the ranks end with
identical parameters, equal to one process training on the concatenated batch, and a rank that raises
makes the others fail with a clear error instead of hanging. Every wait is bounded."""
import datetime
import multiprocessing
import os
import queue
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from symkernels.jvp import Conv2d, ForwardGradientAdam, ForwardGradientSGD, Linear

COLLECTIVE_TIMEOUT_S = 20  # the process group's timeout: a hung collective raises after this
WAIT_S = 120  # the parent's bound on a whole run (spawning interpreters on a loaded 2-core machine is slow)
BATCH_PER_RANK, STEPS = 4, 3


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(Conv2d(1, 3, 3, padding=1, activation="relu"), torch.nn.MaxPool2d(2),
                               Conv2d(3, 4, 3, stride=2, padding=1, activation="tanh"), torch.nn.Flatten(),
                               Linear(16, 3)).double()


def _data(world_size):
    g = torch.Generator().manual_seed(1)
    n = world_size * BATCH_PER_RANK
    return torch.randn(n, 1, 8, 8, dtype=torch.float64, generator=g), torch.randint(0, 3, (n,), generator=g)


def _train(variant, x, y, rank=0, fail_at_step=None):
    """STEPS optimizer steps on (x, y); returns the final parameters and the losses the optimizer reported.
    The optimizer's process group is the default: the world group when initialised (ranks), else none."""
    model = _model()
    params = [p.detach() for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    if rank:  # a different start and seed on other ranks: construction must adopt the first rank's
        for p in params:
            p.add_(1.0)

    def loss_fn(ps, xb, yb):
        return F.cross_entropy(torch.func.functional_call(model, dict(zip(names, ps)), (xb,)), yb)

    kw = dict(num_tangents=3, seed=5 + 100 * rank)
    if variant == "sgd":
        opt = ForwardGradientSGD(params, lr=0.1, momentum=0.9, **kw)
    elif variant == "adam":
        opt = ForwardGradientAdam(params, lr=0.01, **kw)
    else:  # local guess: a parameter-sized estimate, all-reduced like a gradient
        kw.update(num_tangents=1, guess="local", local_loss=loss_fn)
        opt = ForwardGradientSGD(params, lr=0.1, **kw)
    losses = []
    for step in range(STEPS):
        if step == fail_at_step:
            raise ValueError(f"rank {rank} fails on purpose")
        losses.append(float(opt.step(loss_fn, x, y)))
    return [p.clone() for p in params], losses


def _worker(rank, world_size, port, variant, results):
    try:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        x, y = _data(world_size)
        mine = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
        failing = variant == "raise" and rank == 1
        params, losses = _train("sgd" if variant == "raise" else variant, x[mine], y[mine], rank,
                                fail_at_step=1 if failing else None)
        # Plain lists: a tensor would travel as a shared-memory handle that dies with this process.
        results.put((rank, "ok", ([p.tolist() for p in params], losses)))
        dist.destroy_process_group()
    except BaseException as exc:  # reported to the parent; the process then exits (its peers see it go)
        results.put((rank, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def _run_ranks(world_size, variant):
    """Spawn world_size ranks; return {rank: (status, payload)}. Bounded: every rank is joined or killed."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = _free_loopback_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, variant, results)) for r in range(world_size)]
    for p in procs:
        p.start()
    out = {}
    try:
        for _ in range(world_size):
            rank, status, payload = results.get(timeout=WAIT_S)
            out[rank] = (status, payload)
    except queue.Empty:
        pass
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
    return out


# 4 ranks pass too but take ~60 s on the shared 2-core machine: SYMKERNELS_DIST_RANKS_4=1 adds them.
@pytest.mark.parametrize("world_size,variant", [(2, "sgd"), (2, "adam"), (2, "local")] +
                         ([(4, "adam")] if os.environ.get("SYMKERNELS_DIST_RANKS_4") == "1" else []))
def test_ranks_agree_and_equal_one_process_on_the_concatenated_batch(world_size, variant):
    out = _run_ranks(world_size, variant)
    assert sorted(out) == list(range(world_size)), f"ranks missing after {WAIT_S} s: {sorted(out)}"
    for rank, (status, payload) in out.items():
        assert status == "ok", f"rank {rank}: {payload}"
    as_tensors = lambda payload: ([torch.tensor(p, dtype=torch.float64) for p in payload[0]], payload[1])  # noqa: E731
    params0, losses0 = as_tensors(out[0][1])
    for rank in range(1, world_size):  # the same averaged numbers and seeds: bit-identical updates
        params, losses = as_tensors(out[rank][1])
        assert all(torch.equal(a, b) for a, b in zip(params0, params)), f"rank {rank} diverged from rank 0"
        assert losses == losses0
    x, y = _data(world_size)
    single_params, single_losses = _train(variant, x, y)  # one process, no process group
    start = [p.detach() for p in _model().parameters()]
    assert any(not torch.allclose(a, b) for a, b in zip(params0, start)), "training did not move the parameters"
    for a, b in zip(params0, single_params):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.tensor(losses0), torch.tensor(single_losses), rtol=1e-10, atol=1e-12)


def test_a_failing_rank_does_not_hang_the_others():
    out = _run_ranks(2, "raise")
    assert sorted(out) == [0, 1], f"ranks missing after {WAIT_S} s: {sorted(out)}"
    assert out[1][0] == "error" and "rank 1 fails on purpose" in out[1][1]
    status, message = out[0]
    assert status == "error", "rank 0 should fail once its peer is gone"
    assert "ForwardGradientSGD: the all-reduce of the forward-gradient estimates over 2 ranks failed" in message
