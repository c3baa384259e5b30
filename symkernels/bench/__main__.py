"""``python -m symkernels.bench [pillar ...] [--quick] [--device cpu|cuda] [--out DIR]``

Runs each named pillar's sweep (all registered pillars by default), prints one Markdown table per
pillar — median time, speed-up of ours over each peer, GB/s and % of the same-run copy bandwidth
(into allocated memory, and as clone(), which pays for the output allocation like any out-of-place op) —
and writes CSV (one row per case × implementation, with date and versions) and a PNG plot per pillar
under ``bench/results/<device-name>/`` (``--quick`` runs: its ``quick/`` subfolder, not committed).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import os
import platform
import sys
from pathlib import Path

import torch

from symkernels import _backend
from symkernels.bench import harness

PILLARS = ("hadamard", "gaunt", "quarot", "jvp", "jacobi")


def _load_sweeps() -> dict[str, str]:
    """Import every pillar's bench module; returns {pillar: reason} for those that failed."""
    failed = {}
    for pillar in PILLARS:
        try:
            importlib.import_module(f"symkernels.bench.{pillar}")
        except ModuleNotFoundError as exc:
            if exc.name == f"symkernels.bench.{pillar}":
                failed[pillar] = "no benchmark module yet"
            else:
                failed[pillar] = f"import failed: {exc}"
        except Exception as exc:  # a broken sweep must not hide the others
            failed[pillar] = f"import failed: {type(exc).__name__}: {exc}"
    return failed


def _progress(iterable, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, unit="case", leave=False, file=sys.stderr)
    except ImportError:
        return iterable


def _fmt_time(seconds: float) -> str:
    for unit, factor in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= factor:
            return f"{seconds / factor:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def run_pillar(pillar: str, device: torch.device, quick: bool, copy_bw: float, clone_bw: float) -> list[dict]:
    rows = []
    # Cases are timed as the sweep yields them (never collected first): a case's tensors are freed before
    # the next is built, and a closure over a sweep's loop variable cannot silently time another case.
    for case in _progress(harness.SWEEPS[pillar](device, quick), pillar):
        if case.check is not None:
            case.check()
        timings = {}
        for name, impl in case.impls.items():
            if isinstance(impl, str):
                timings[name] = impl
                continue
            try:
                timings[name] = harness.time_callable(impl, device, min_time_s=0.05 if quick else 0.3)
            except Exception as exc:  # a peer that breaks is reported, not fatal
                timings[name] = f"failed: {type(exc).__name__}: {str(exc)[:80]}"
        ours = timings.get(case.ours)
        for name, t in timings.items():
            row = {"pillar": pillar, "op": case.op, "shape": case.shape, "dtype": case.dtype, "impl": name,
                   "ours": name == case.ours}
            if isinstance(t, str):
                row.update(median_s="", q20_s="", q80_s="", status=t)
            else:
                row.update(median_s=t.median_s, q20_s=t.q20_s, q80_s=t.q80_s, status="ok")
                if case.bytes_moved:
                    row["GB/s"] = case.bytes_moved / t.median_s / 1e9
                    row["%copy_bw"] = 100 * case.bytes_moved / t.median_s / copy_bw
                    row["%clone_bw"] = 100 * case.bytes_moved / t.median_s / clone_bw
                if case.flops:
                    row["GFLOP/s"] = case.flops / t.median_s / 1e9
                if isinstance(ours, harness.Timing) and name != case.ours:
                    row["ours_speedup"] = t.median_s / ours.median_s
            row.update({k: v for k, v in case.extra.items()})
            rows.append(row)
    return rows


def markdown_table(rows: list[dict], ours_label: str = "ours") -> str:
    """One line per case: ours' time, its GB/s and % of copy bandwidth, then × speed-up over each peer."""
    cases: dict[tuple, list[dict]] = {}
    for r in rows:
        cases.setdefault((r["op"], r["shape"], r["dtype"]), []).append(r)
    peers = []
    for r in rows:
        if not r["ours"] and r["impl"] not in peers:
            peers.append(r["impl"])
    extras = sorted({k for r in rows for k in r} - {"pillar", "op", "shape", "dtype", "impl", "ours", "median_s",
                                                     "q20_s", "q80_s", "status", "GB/s", "%copy_bw", "%clone_bw",
                                                     "GFLOP/s", "ours_speedup"})
    header = (["op", "shape", "dtype", "ours", "time", "GB/s", "% copy BW", "% clone BW", "GFLOP/s"]
              + [f"vs {p}" for p in peers] + extras)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (op, shape, dtype), group in cases.items():
        mine = next((r for r in group if r["ours"]), None)
        if mine is None:
            continue
        cells = [op, shape, dtype, mine["impl"]]
        if mine["status"] == "ok":
            cells += [_fmt_time(mine["median_s"]), f"{mine['GB/s']:.1f}" if "GB/s" in mine else "",
                      f"{mine['%copy_bw']:.0f}%" if "%copy_bw" in mine else "",
                      f"{mine['%clone_bw']:.0f}%" if "%clone_bw" in mine else "",
                      f"{mine['GFLOP/s']:.1f}" if "GFLOP/s" in mine else ""]
        else:
            cells += [mine["status"], "", "", "", ""]
        for p in peers:
            r = next((r for r in group if r["impl"] == p), None)
            if r is None:
                cells.append("")
            elif "ours_speedup" in r:
                cells.append(f"{r['ours_speedup']:.2f}×")
            else:
                cells.append(r["status"] if r["status"] != "ok" else "")
        cells += [str(mine.get(k, "")) for k in extras]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "torch": torch.__version__, "cuda": str(torch.version.cuda), "python": platform.python_version(),
            "threads": str(torch.get_num_threads())}
    build = _backend.build_info()
    info["triton"] = build.get("triton", "absent")
    info["simd"] = build.get("simd", "n/a")
    return info


def write_results(out_dir: Path, pillar: str, rows: list[dict], meta: dict[str, str]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    csv_path = out_dir / f"{pillar}.csv"
    fields = list(meta) + sorted({k for r in rows for k in r}, key=lambda k: (k not in rows[0], k))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({**meta, **r})
    written.append(csv_path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(matplotlib not installed: no PNG for {pillar})", file=sys.stderr)
        return written
    ok = [r for r in rows if r["status"] == "ok"]
    labels = list(dict.fromkeys(f"{r['op']} {r['shape']} {r['dtype']}" for r in ok))
    impls = list(dict.fromkeys(r["impl"] for r in ok))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels) + 3), 4.5))
    width = 0.8 / max(1, len(impls))
    for i, impl in enumerate(impls):
        xs, ys = [], []
        for j, label in enumerate(labels):
            r = next((r for r in ok if r["impl"] == impl and f"{r['op']} {r['shape']} {r['dtype']}" == label), None)
            if r is not None:
                xs.append(j + i * width)
                ys.append(r["median_s"] * 1e3)
        ax.bar(xs, ys, width=width, label=impl)
    ax.set_yscale("log")
    ax.set_ylabel("median time (ms, log)")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_title(f"symkernels {pillar} — {meta['device']} — {meta['date']}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    png_path = out_dir / f"{pillar}.png"
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    written.append(png_path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m symkernels.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pillars", nargs="*", help=f"which sweeps to run (default: all of {', '.join(PILLARS)})")
    parser.add_argument("--quick", action="store_true", help="small shapes and short timing: a smoke run")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda if available, else cpu")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: bench/results/<device-name>/ in the repo or cwd)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    failed = _load_sweeps()
    wanted = args.pillars or [p for p in PILLARS if p in harness.SWEEPS]
    unknown = [p for p in wanted if p not in PILLARS]
    if unknown:
        parser.error(f"unknown pillar(s) {unknown}; choose from {PILLARS}")
    meta = {"device": harness.device_name(device), "mode": "quick" if args.quick else "full", **_versions()}
    repo_root = Path(__file__).resolve().parents[2]
    # Quick (smoke) runs go to a git-ignored subfolder so they never overwrite the committed full results.
    out_dir = args.out or ((repo_root if (repo_root / "bench").is_dir() else Path.cwd()) / "bench" / "results" /
                           meta["device"] / ("quick" if args.quick else ""))
    print(f"# symkernels benchmarks on {meta['device']}")
    print(f"{', '.join(f'{k} {v}' for k, v in meta.items() if k != 'device')}")
    copy_bw, clone_bw = harness.copy_bandwidth(device, nbytes=(64 << 20) if args.quick else (256 << 20))
    meta["THP_MEM_ALLOC_ENABLE"] = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
    print(f"same-run bandwidth (read + write): copy_ into allocated memory {copy_bw / 1e9:.1f} GB/s, "
          f"clone (allocation included, THP_MEM_ALLOC_ENABLE={meta['THP_MEM_ALLOC_ENABLE']}) {clone_bw / 1e9:.1f} GB/s\n")
    status = 0
    for pillar in wanted:
        if pillar not in harness.SWEEPS:
            print(f"## {pillar}\n\nnot run: {failed.get(pillar, 'no sweep registered')}\n")
            status = status or (1 if pillar in failed and failed[pillar].startswith("import failed") else 0)
            continue
        rows = run_pillar(pillar, device, args.quick, copy_bw, clone_bw)
        print(f"## {pillar}\n")
        print(markdown_table(rows))
        paths = write_results(out_dir, pillar, rows, meta) if rows else []
        print("\n" + "".join(f"written: {os.path.relpath(p)}\n" for p in paths))
    return status


if __name__ == "__main__":
    sys.exit(main())
