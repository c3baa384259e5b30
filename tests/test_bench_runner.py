"""The benchmark runner times each case while the sweep that yields it is still on that case.

A sweep's closures commonly capture loop variables; if the runner collected every case before timing,
each closure would time the last iteration's tensors (this happened: every jvp linear row timed M=256).
"""
from __future__ import annotations

import pytest
import torch

from symkernels import _backend
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
    ceilings = harness.Ceilings(torch.device("cpu"), copy_bw=1.0, clone_bw=1.0, quick=True)
    rows = runner.run_pillar("probe", torch.device("cpu"), True, ceilings)
    assert built == [1, 2, 3]
    # every timed call of a case saw that case's value: the runner consumed the generator lazily
    shapes = [r["shape"] for r in rows if r["impl"] == "ours"]
    assert shapes == ["1", "2", "3"]
    assert set(seen) == {1, 2, 3}
    runs_per_case = {s: seen.count(s) for s in (1, 2, 3)}
    assert min(runs_per_case.values()) >= 3  # warm-up + ≥ 3 timed repeats each
    peer_rows = [r for r in rows if r["impl"] == "peer"]
    assert all(r["status"] == "not installed" for r in peer_rows)


def test_roofline_share_is_the_binding_limit_over_the_time():
    ceilings = harness.Ceilings(torch.device("cpu"), copy_bw=100e9, clone_bw=50e9, quick=True)
    ceilings._compute["int8"] = 1e12  # as if measured: 1 TOP/s
    ceilings._bandwidth[1 << 30] = 100e9
    big = 1 << 30  # at or above the DRAM measurement's size: the DRAM rate applies, nothing is measured
    memory_bound = harness.Case(op="m", shape="", dtype="", impls={}, ours="x", bytes_moved=big, flops=10,
                                compute="int8")
    share, limit = ceilings.roofline(memory_bound, 2 * big / 100e9)  # twice the least time
    assert limit == "copy BW" and abs(share - 0.5) < 1e-12
    compute_bound = harness.Case(op="c", shape="", dtype="", impls={}, ours="x", bytes_moved=0, flops=4 * 10 ** 12,
                                 compute="int8")
    share, limit = ceilings.roofline(compute_bound, 8.0)
    assert limit == "int8 GEMM" and abs(share - 0.5) < 1e-12
    # Several ceilings for the same operations: the fastest binds (a slow library GEMM is no limit).
    ceilings._compute["int8dot"] = 4e12
    with_peak = harness.Case(op="c", shape="", dtype="", impls={}, ours="x", flops=4 * 10 ** 12, compute="int8",
                             also_vs=("int8dot", "int8"))
    share, limit = ceilings.roofline(with_peak, 8.0)
    assert limit == "int8dot peak" and abs(share - 0.125) < 1e-12
    # Adds only (a butterfly): half the GEMM's FLOP/s, derived from the same measurement.
    ceilings._compute["fp32"] = 2e11
    adds = harness.Case(op="a", shape="", dtype="", impls={}, ours="x", flops=10 ** 11, compute="fp32add")
    share, limit = ceilings.roofline(adds, 2.0)
    assert limit == "fp32 adds" and abs(share - 0.5) < 1e-12
    assert ceilings.roofline(harness.Case(op="n", shape="", dtype="", impls={}, ours="x"), 1.0) is None
    with pytest.raises(ValueError, match="Case.compute"):
        ceilings.compute("int3")


def test_side_by_side_timing_reports_a_failing_peer_and_keeps_timing_the_others():
    calls = {"ours": 0, "broken": 0}

    def ours():
        calls["ours"] += 1

    def broken():
        calls["broken"] += 1
        raise RuntimeError("no kernel for this shape")

    timings = harness.time_side_by_side({"ours": ours, "broken": broken}, torch.device("cpu"), min_time_s=0.0,
                                        rounds=3)
    assert isinstance(timings["ours"], harness.Timing)
    assert timings["broken"].startswith("failed: RuntimeError: no kernel")
    assert calls["broken"] == 1  # left out of the later rounds
    assert calls["ours"] >= 3 * (3 + 1)  # every round: warm-up + at least 3 repeats


def test_markdown_table_names_the_fastest_peer_and_the_limit(monkeypatch):
    def sweep(device, quick):
        yield harness.Case(op="probe", shape="s", dtype="float32", ours="ours", bytes_moved=1 << 20,
                           impls={"ours": lambda: None, "slow peer": lambda: sum(range(20000)),
                                  "fast peer": lambda: sum(range(200)), "absent": "not installed",
                                  "ours alone": lambda: None}, context=("ours alone",))

    monkeypatch.setitem(harness.SWEEPS, "probe", sweep)
    ceilings = harness.Ceilings(torch.device("cpu"), copy_bw=1e9, clone_bw=1e9, quick=True)
    rows = runner.run_pillar("probe", torch.device("cpu"), True, ceilings)
    table = runner.markdown_table(rows)
    line = table.splitlines()[2]
    assert "| fast peer |" in line and "% copy BW" in line
    assert "slow peer" not in table and "ours alone" not in table  # per-peer ratios live in the CSV rows
    assert {r["impl"] for r in rows if "ours_speedup" in r} == {"slow peer", "fast peer", "ours alone"}


def test_also_vs_reports_a_share_of_each_named_ceiling(monkeypatch):
    ceilings = harness.Ceilings(torch.device("cpu"), copy_bw=1e9, clone_bw=1e9, quick=True)
    ceilings._compute.update({"int8dot": 4e12, "int8": 1e12})  # as if measured
    case = harness.Case(op="g", shape="", dtype="", impls={}, ours="x", flops=10 ** 12, compute="int8",
                        also_vs=("int8dot", "int8"))
    assert ceilings.shares(case, 2.0) == {"%int8dot": 12.5, "%int8": 50.0}
    ceilings._compute["int8dot"] = "none: no int8 dot product"  # an unmeasurable ceiling gives no column
    assert ceilings.shares(case, 2.0) == {"%int8": 50.0}

    def sweep(device, quick):
        yield harness.Case(op="probe", shape="s", dtype="int8", ours="ours", flops=10 ** 6, compute="int8",
                           also_vs=("int8",), impls={"ours": lambda: None})

    monkeypatch.setitem(harness.SWEEPS, "probe", sweep)
    rows = runner.run_pillar("probe", torch.device("cpu"), True, ceilings)
    assert rows[0]["%int8"] > 0
    assert "%int8" not in runner.markdown_table(rows)  # the CSV's: the table's "% of limit" names the binding one


def test_int8_dot_ceiling_is_measured_by_our_micro_kernel():
    from symkernels import _backend

    if not _backend.backend_status("cpu"):
        pytest.skip("native build unavailable")
    ceilings = harness.Ceilings(torch.device("cpu"), copy_bw=1e9, clone_bw=1e9, quick=True)
    rate = ceilings.compute("int8dot")
    flags = _backend.cpu_flags()
    if flags & {"avx512_vnni", "avx_vnni", "avx2"}:
        assert isinstance(rate, float) and rate > 1e9
        assert "int8 dot-product peak" in ceilings.describe()
    else:
        assert isinstance(rate, str)
