"""Peak memory of one call, from the CPU allocator's own accounting (no GPU needed).

With ``profile_memory=True`` the PyTorch profiler makes c10's CPU allocator report every allocation and
every free of a block it saw allocated, each as a ``[memory]`` event with a signed byte count. Summing
those in time order gives the bytes the call holds at every moment, *including* what C++ kernels
allocate internally (workspaces, temporaries) and what autograd saves; the maximum is the call's peak
above what was already allocated when it started. Blocks allocated before the call and freed during it
are not reported (the allocator does not know their size), so such frees can only make the figure
over-state the peak: it is the high-water mark of new allocations, net of their own frees.

On CUDA the caching allocator keeps its own high-water mark: ``peak_memory(..., device="cuda")`` reads
``torch.cuda.max_memory_allocated`` around the call instead.

``footprint`` adds the bytes the caller says are resident throughout (parameters, optimizer state,
inputs), so that a training step and an inference pass are compared as whole-program footprints, the
way MeZO-style "memory = inference + O(1)" claims are meant.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch


@dataclasses.dataclass(frozen=True)
class PeakMemory:
    peak_bytes: int  # high-water mark of bytes allocated during the call, above its starting point
    retained_bytes: int  # bytes still allocated (by the call) when it returned
    resident_bytes: int  # bytes the caller declared resident throughout (parameters, state, inputs)
    # breakdown=True only: (op, bytes) of the allocations live at the peak, by the innermost op (or
    # record_function label) that made them, largest first; see ``peak_memory``.
    breakdown: tuple = ()

    @property
    def footprint_bytes(self) -> int:
        """Peak whole footprint: resident tensors plus the call's own high-water mark."""
        return self.resident_bytes + self.peak_bytes


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct storages among ``tensors`` (views of one storage are counted once)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


def _breakdown(events, ops, peak_index) -> tuple:
    # The profiler's memory events carry a size but no address, so a free is paired with the most recent
    # still-live allocation of the same size (LIFO: temporaries die in reverse order far more often than
    # not). Good enough to say *what* holds the peak; the total is exact regardless.
    ops = sorted(ops, key=lambda e: e.start_ns())
    live: dict[int, list[str]] = {}
    for e in events[:peak_index + 1]:
        n = e.nbytes()
        if n > 0:
            t, owner = e.start_ns(), "(outside any op)"
            for op in ops:  # innermost = the latest-starting op that still encloses t
                if op.start_ns() > t:
                    break
                if op.end_ns() >= t and op.start_thread_id() == e.start_thread_id():
                    owner = op.name()
            live.setdefault(n, []).append(owner)
        elif n < 0 and live.get(-n):
            live[-n].pop()
    totals: dict[str, int] = {}
    for n, owners in live.items():
        for owner in owners:
            totals[owner] = totals.get(owner, 0) + n
    return tuple(sorted(totals.items(), key=lambda kv: -kv[1]))


def peak_memory(fn: Callable[[], object], resident: Iterable[torch.Tensor] = (), device="cpu",
                breakdown: bool = False) -> PeakMemory:
    """Run ``fn()`` once and return its allocation high-water mark on ``device`` (see the module docstring).
    ``breakdown=True`` (CPU): also attribute the bytes live at the peak to the ops that allocated them."""
    from torch.profiler import ProfilerActivity, profile

    resident_bytes = tensor_bytes(resident)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return PeakMemory(torch.cuda.max_memory_allocated(device) - start, torch.cuda.memory_allocated(device) - start,
                          resident_bytes)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    all_events = list(prof.profiler.kineto_results.events())
    events = sorted((e for e in all_events if e.name() == "[memory]"
                     and e.device_type() == torch.autograd.DeviceType.CPU), key=lambda e: e.start_ns())
    live = peak = 0
    peak_index = -1
    for i, e in enumerate(events):
        live += e.nbytes()
        if live > peak:
            peak, peak_index = live, i
    parts = ()
    if breakdown:
        parts = _breakdown(events, [e for e in all_events if e.name() != "[memory]" and e.duration_ns() > 0],
                           peak_index)
    return PeakMemory(peak, live, resident_bytes, parts)
