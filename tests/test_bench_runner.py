"""The benchmark runner times each case while the sweep that yields it is still on that case.

A sweep's closures commonly capture loop variables; if the runner collected every case before timing,
each closure would time the last iteration's tensors (this happened: every jvp linear row timed M=256).
"""
from __future__ import annotations

import torch

from symkernels.bench import __main__ as runner
from symkernels.bench import harness


def test_cases_are_timed_as_they_are_yielded(monkeypatch):
    seen: list[int] = []
    built: list[int] = []

    def sweep(device, quick):
        for size in (1, 2, 3):
            built.append(size)
            # deliberately a late-binding closure over the loop variable
            yield harness.Case(op="probe", shape=str(size), dtype="float32", ours="ours",
                               impls={"ours": lambda: seen.append(size), "peer": "not installed"})

    monkeypatch.setitem(harness.SWEEPS, "probe", sweep)
    rows = runner.run_pillar("probe", torch.device("cpu"), True, copy_bw=1.0, clone_bw=1.0)
    assert built == [1, 2, 3]
    # every timed call of a case saw that case's value: the runner consumed the generator lazily
    shapes = [r["shape"] for r in rows if r["impl"] == "ours"]
    assert shapes == ["1", "2", "3"]
    assert set(seen) == {1, 2, 3}
    runs_per_case = {s: seen.count(s) for s in (1, 2, 3)}
    assert min(runs_per_case.values()) >= 3  # warm-up + ≥ 3 timed repeats each
    peer_rows = [r for r in rows if r["impl"] == "peer"]
    assert all(r["status"] == "not installed" for r in peer_rows)
