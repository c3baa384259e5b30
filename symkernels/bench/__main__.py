"""``python -m symkernels.bench [pillar ...] [--quick] [--device cpu|cuda] [--out DIR]``

Runs each named pillar's sweep (all registered pillars by default) and prints one Markdown table per
pillar, one line per case: our time, the best peer and our speed-up over it, and the share of the
machine's limit for the case's work (the roofline of ``harness.Ceilings``: same-run copy bandwidth and
GEMM rates) with the limit that binds. The CSV (one row per case × implementation, with date and
versions) holds the rest: every peer's ratio, GB/s, % of copy and clone bandwidth, G(FL)OP/s. A PNG per
pillar plots the times and the roofline shares. All land under ``bench/results/<device-name>/``
(``--quick`` runs: its ``quick/`` subfolder, not committed).
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


def run_pillar(pillar: str, device: torch.device, quick: bool, ceilings: harness.Ceilings) -> list[dict]:
    rows = []
    # Cases are timed as the sweep yields them (never collected first): a case's tensors are freed before
    # the next is built, and a closure over a sweep's loop variable cannot silently time another case.
    for case in _progress(harness.SWEEPS[pillar](device, quick), pillar):
        if case.check is not None:
            case.check()
        timed = {name: impl for name, impl in case.impls.items() if not isinstance(impl, str)}
        timings = {**{name: impl for name, impl in case.impls.items() if isinstance(impl, str)},
                   **harness.time_side_by_side(timed, device, min_time_s=0.05 if quick else 0.3)}
        ours = timings.get(case.ours)
        for name in case.impls:
            t = timings[name]
            row = {"pillar": pillar, "op": case.op, "shape": case.shape, "dtype": case.dtype, "impl": name,
                   "ours": name == case.ours, "context": name in case.context}
            if isinstance(t, str):
                row.update(median_s="", q20_s="", q80_s="", status=t)
            else:
                row.update(median_s=t.median_s, q20_s=t.q20_s, q80_s=t.q80_s, status="ok")
                if case.bytes_moved:
                    row["GB/s"] = case.bytes_moved / t.median_s / 1e9
                    row["%copy_bw"] = 100 * case.bytes_moved / t.median_s / ceilings.copy_bw
                    row["%clone_bw"] = 100 * case.bytes_moved / t.median_s / ceilings.clone_bw
                if case.flops:
                    row["GOP/s"] = case.flops / t.median_s / 1e9
                roofline = ceilings.roofline(case, t.median_s)
                if roofline is not None:
                    row["%roofline"], row["bound"] = 100 * roofline[0], roofline[1]
                row.update(ceilings.shares(case, t.median_s))
                if isinstance(ours, harness.Timing) and name != case.ours:
                    row["ours_speedup"] = t.median_s / ours.median_s
            row.update({k: v for k, v in case.extra.items()})
            rows.append(row)
    return rows


# Columns the CSV has but the Markdown table folds into "best peer" and "% of limit" (which also stands for the
# per-ceiling shares, "%<kind>" of Case.also_vs: the table names the binding one).
_CSV_ONLY = {"pillar", "op", "shape", "dtype", "impl", "ours", "context", "median_s", "q20_s", "q80_s", "status", "GB/s",
             "%copy_bw", "%clone_bw", "GOP/s", "%roofline", "bound", "ours_speedup"}


def markdown_table(rows: list[dict]) -> str:
    """One line per case: ours' time, the fastest peer and ours' speed-up over it (the CSV has every
    peer), and ours' share of the roofline with the limit that binds; then the sweep's own columns."""
    cases: dict[tuple, list[dict]] = {}
    for r in rows:
        cases.setdefault((r["op"], r["shape"], r["dtype"]), []).append(r)
    extras = sorted({k for r in rows for k in r if not k.startswith("%")} - _CSV_ONLY)
    header = ["op", "shape", "dtype", "ours", "time", "best peer", "vs best peer", "% of limit"] + extras
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (op, shape, dtype), group in cases.items():
        mine = next((r for r in group if r["ours"]), None)
        if mine is None:
            continue
        peers = [r for r in group if not r["ours"] and not r.get("context")]
        timed = [r for r in peers if "ours_speedup" in r]
        cells = [op, shape, dtype, mine["impl"]]
        if mine["status"] != "ok":
            cells += [mine["status"], "", "", ""]
        else:
            cells.append(_fmt_time(mine["median_s"]))
            if timed:
                best = min(timed, key=lambda r: r["median_s"])
                cells += [best["impl"], f"{best['ours_speedup']:.2f}×"]
            elif peers:  # no peer could be timed: say why (the first reason; the CSV has all)
                cells += [f"{peers[0]['impl']}: {peers[0]['status']}", ""]
            else:
                cells += ["—", ""]
            cells.append(f"{mine['%roofline']:.0f}% {mine['bound']}" if "%roofline" in mine else "")
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
    fig, (ax, ax_share) = plt.subplots(2, 1, figsize=(max(6, 0.6 * len(labels) + 3), 8), sharex=True,
                                       gridspec_kw={"height_ratios": [2, 1]})
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
    ax.set_title(f"symkernels {pillar} — {meta['device']} — {meta['date']}", fontsize=8)
    ax.legend(fontsize=7)
    # ours' share of the machine's limit for the case's work (the roofline of harness.Ceilings)
    for j, label in enumerate(labels):
        r = next((r for r in ok if r["ours"] and f"{r['op']} {r['shape']} {r['dtype']}" == label), None)
        if r is not None and "%roofline" in r:
            ax_share.bar(j + 0.4 - width / 2, r["%roofline"], width=0.6, color="tab:green")
    ax_share.axhline(100, color="grey", linewidth=0.8, linestyle="--")
    ax_share.set_ylabel("ours: % of limit", fontsize=8)
    ax_share.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
    ax_share.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
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
    ceilings = harness.Ceilings.measure(device, quick=args.quick)
    meta["THP_MEM_ALLOC_ENABLE"] = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
    print(f"same-run bandwidth (read + write): copy_ into allocated memory {ceilings.copy_bw / 1e9:.1f} GB/s, "
          f"clone (allocation included, THP_MEM_ALLOC_ENABLE={meta['THP_MEM_ALLOC_ENABLE']}) "
          f"{ceilings.clone_bw / 1e9:.1f} GB/s\n")
    status = 0
    for pillar in wanted:
        if pillar not in harness.SWEEPS:
            print(f"## {pillar}\n\nnot run: {failed.get(pillar, 'no sweep registered')}\n")
            status = status or (1 if pillar in failed and failed[pillar].startswith("import failed") else 0)
            continue
        rows = run_pillar(pillar, device, args.quick, ceilings)
        print(f"## {pillar}\n")
        print(markdown_table(rows))
        print(f"\n% of limit: the least time the case's work needs at the same-run limits ({ceilings.describe()}), "
              f"over our time")
        paths = write_results(out_dir, pillar, rows, meta) if rows else []
        print("\n" + "".join(f"written: {os.path.relpath(p)}\n" for p in paths))
    return status


if __name__ == "__main__":
    sys.exit(main())
