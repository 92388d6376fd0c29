"""How the product's cost grows with the work: clients, pool size, FedSVD rows (a benchmark, not a test).

One entry point, one axis per call; every point runs in a fresh Python process
(``benchmarks/scaling_points.py``), so its peak memory and CPU seconds are its own. After each point
the results file (``--out``) is rewritten with everything measured so far (a stopped run keeps its
points; a rerun skips the points already there unless ``--fresh``), and a table is printed with the
fitted growth exponent ``b`` of ``cost ~ size^b`` (least squares on log-log, over the sizes measured).

Axes::

    # the query phase alone of every classification selector, pool n = 10k, 100k, 1M (MNIST repeated)
    python benchmarks/scaling.py --axis pool
    python benchmarks/scaling.py --axis pool --selectors coreset,badge --sizes 10000,100000
    # the O(n x budget) selectors at a fixed pool and growing budget
    python benchmarks/scaling.py --axis budget --selectors coreset,badge,logo --budgets 100,300,1000
    # FedSVD and FALE (every role in one process) on n synthetic rows
    python benchmarks/scaling.py --axis fedsvd --sizes 10000,100000,1000000
    # whole runs at K = 10, 100, 1,000 clients, in-process and under fal-simulate
    python benchmarks/scaling.py --axis clients --clients 10,100,1000 --runtimes inprocess,simulation
    # the ClientApp's CPU overhead per message at K clients
    python benchmarks/scaling.py --axis overhead --clients 10,100,1000
    # the BatchNorm round: bn-statistics-samples 1024 (default) vs 0 (whole partition), 3 seeds
    python benchmarks/scaling.py --axis bn --bn-samples 1024,0 --seeds 0,1,2

On a shared machine pin it: ``/work/bin/core-slot .venv/bin/python benchmarks/scaling.py ...``,
and read CPU seconds rather than wall time. Results and how to read them: docs/scale/scaling.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.scaling_points import POOL_SELECTORS  # noqa: E402

#: Per axis: the parameter that grows, and the measured values whose growth is fitted.
GROWS = {"pool": "n", "budget": "budget", "fedsvd": "n", "fale": "n", "clients-inprocess": "k",
         "clients-simulation": "k", "overhead": "k", "bn": "seed"}
NOT_FITTED = ("bn",)  # repeats (seeds), not a growing size
FITTED = ("wall-seconds", "cpu-seconds", "selection-cpu-seconds", "peak-rss-mib", "peak-over-before-mib", "peak-pss-mib")


def _ints(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",") if v.strip()]


def points_of(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The points an invocation measures, smallest first (so a stopped run has the cheap ones)."""
    root = str(args.data_root)
    if args.axis in ("pool", "budget"):
        selectors = args.selectors.split(",") if args.selectors else list(POOL_SELECTORS)
        unknown = sorted(set(selectors) - set(POOL_SELECTORS))
        if unknown:
            raise SystemExit(f"--selectors: unknown {unknown}; known: {', '.join(POOL_SELECTORS)}")
        if args.axis == "pool":
            grid = [(n, args.budget) for n in _ints(args.sizes)]
        else:
            grid = [(args.budget_pool, b) for b in _ints(args.budgets)]
        return [{"axis": args.axis, "selector": s, "n": n, "budget": b, "data-root": root}
                for n, b in grid for s in selectors]
    if args.axis == "fedsvd":
        return [{"axis": axis, "n": n, "d": args.d, "k": args.k, "block-size": args.block_size,
                 **({"n-query": args.n_query} if axis == "fale" else {})}
                for n in _ints(args.sizes) for axis in ("fedsvd", "fale")]
    if args.axis == "clients":
        return [{"axis": f"clients-{rt}", "k": k, "rounds": args.rounds, "cycles": args.cycles, "data-root": root}
                for k in _ints(args.clients) for rt in args.runtimes.split(",")]
    if args.axis == "overhead":
        return [{"axis": "overhead", "k": k, "data-root": root} for k in _ints(args.clients)]
    if args.axis == "bn":
        return [{"axis": "bn", "samples": m, "seed": seed, "rounds": args.bn_rounds, "data-root": root}
                for seed in _ints(args.seeds) for m in _ints(args.bn_samples)]
    raise SystemExit(f"unknown axis {args.axis}")


def _key(point: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in point.items() if k != "data-root"}, sort_keys=True)


def run_one(point: dict[str, Any], timeout: float, log: Path) -> dict[str, Any]:
    """Run a point in its own process; its stdout's last line is its measurements (JSON)."""
    started = time.time()
    load = os.getloadavg()
    with open(log, "a") as err:
        err.write(f"\n=== {_key(point)} ({datetime.datetime.now().isoformat(timespec='seconds')})\n")
        err.flush()
        try:
            proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scaling_points.py"), json.dumps(point)],
                                  stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout, cwd=REPO)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s", "started": started}
    out: dict[str, Any] = {"started": started, "load-before": load, "load-after": os.getloadavg()}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {**out, "error": f"exit {proc.returncode}; see {log}"}
    return {**out, **json.loads(lines[-1])}


def series_key(point: dict[str, Any]) -> str:
    """The point without its growing parameter: the points of one fitted series share it."""
    grow = GROWS[point["axis"]]
    return _key({k: v for k, v in point.items() if k != grow})


def fit_exponents(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per series and measured value: the slope of log(value) on log(size) (needs two sizes or more)."""
    by_series: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if "error" not in row["result"] and row["point"]["axis"] not in NOT_FITTED:
            by_series.setdefault(series_key(row["point"]), []).append(row)
    fits: dict[str, dict[str, float]] = {}
    for series, members in by_series.items():
        grow = GROWS[members[0]["point"]["axis"]]
        for metric in FITTED:
            pairs = [(m["point"][grow], m["result"].get(metric)) for m in members]
            pairs = [(x, y) for x, y in pairs if isinstance(y, (int, float)) and y > 0]
            if len({x for x, _ in pairs}) >= 2:
                xs, ys = np.log([x for x, _ in pairs]), np.log([y for _, y in pairs])
                fits.setdefault(series, {})[metric] = float(np.polyfit(xs, ys, 1)[0])
    return fits


def machine() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    return {"host": platform.node(), "cpus": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
            "python": platform.python_version(), "numpy": np.__version__, "commit": commit,
            "memory-gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30}


#: The columns printed per axis (dotted paths into a point's result).
COLUMNS = {
    "pool": ("wall-seconds", "cpu-seconds", "inference-cpu-seconds", "selection-cpu-seconds", "peak-rss-mib",
             "peak-over-before-mib"),
    "fedsvd": ("wall-seconds", "cpu-seconds", "peak-rss-mib", "peak-over-before-mib", "max-relative-singular-value-error"),
    "fale": ("wall-seconds", "cpu-seconds", "peak-rss-mib", "peak-over-before-mib", "theta-relative-error"),
    "clients-inprocess": ("wall-seconds", "cpu-seconds", "peak-rss-mib", "cycles.0.seconds.train",
                          "cycles.0.seconds.bn-statistics", "cycles.0.seconds.query",
                          "cycles.0.per-message.train.wall-minus-compute-ms", "results-bytes", "cycles.1.accuracy"),
    # two or more Ray actors run at once, so wall minus the clients' compute per message means nothing here
    "clients-simulation": ("wall-seconds", "cpu-seconds", "peak-pss-mib", "processes-seen", "cycles.0.seconds.train",
                           "cycles.0.seconds.bn-statistics", "cycles.0.seconds.query", "results-bytes",
                           "longest-fal-log-line", "cycles.1.accuracy"),
    "overhead": ("no-work-message.median-ms", "train-message-training.median-ms", "train-message-overhead.median-ms",
                 "train-message-overhead.p90-ms"),
    "bn": ("accuracy", "phase-cpu-seconds.train", "phase-cpu-seconds.bn-statistics", "bn-share-of-training",
           "bn-share-of-training-wall", "cpu-seconds"),
}
COLUMNS["budget"] = COLUMNS["pool"]


def _get(result: dict[str, Any], path: str) -> Any:
    value: Any = result
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return ""
    return value


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"  # 1440, not 1.44e+03
    return str(value)


def print_table(rows: list[dict[str, Any]], fits: dict[str, dict[str, float]]) -> None:
    """Markdown tables (one per axis) of the rows, then the fitted exponents."""
    for axis in dict.fromkeys(r["point"]["axis"] for r in rows):
        cols = COLUMNS[axis]
        print(f"\n{axis}:\n\n| " + " | ".join(["point", *cols]) + " |")
        print("|" + "---|" * (len(cols) + 1))
        for row in (r for r in rows if r["point"]["axis"] == axis):
            res, grow = row["result"], GROWS[axis]
            label = " ".join(f"{k}={v}" for k, v in sorted(row["point"].items()) if k not in ("axis", "data-root"))
            cells = [res["error"]] if "error" in res else [_cell(_get(res, c)) for c in cols]
            print("| " + " | ".join([label, *cells]) + " |")
    if fits:
        print("\nfitted exponent b of cost ~ size^b:")
        for series, metrics in fits.items():
            print(f"  {series}: " + ", ".join(f"{m} {b:.2f}" for m, b in metrics.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--axis", required=True, choices=["pool", "budget", "fedsvd", "clients", "overhead", "bn"])
    parser.add_argument("--out", type=Path, help="results file (JSON); default scaling-<axis>.json here")
    parser.add_argument("--fresh", action="store_true", help="measure again the points already in --out")
    parser.add_argument("--report", action="store_true", help="measure nothing: print the tables of --out")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per point")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--selectors", default="", help="pool/budget: comma-separated (default: all nine)")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="pool / fedsvd: n values")
    parser.add_argument("--budget", type=int, default=100, help="pool: labels selected per query")
    parser.add_argument("--budgets", default="100,300,1000", help="budget axis: budgets")
    parser.add_argument("--budget-pool", type=int, default=100_000, help="budget axis: pool size")
    parser.add_argument("--d", type=int, default=50, help="fedsvd: columns")
    parser.add_argument("--k", type=int, default=10, help="fedsvd: clients")
    parser.add_argument("--block-size", type=int, default=1000, help="fedsvd: mask block size")
    parser.add_argument("--n-query", type=int, default=500, help="fale: rows to label")
    parser.add_argument("--clients", default="10,100,1000", help="clients / overhead: K values")
    parser.add_argument("--runtimes", default="inprocess,simulation", help="clients: inprocess and/or simulation")
    parser.add_argument("--rounds", type=int, default=2, help="clients: FedAvg rounds per cycle")
    parser.add_argument("--cycles", type=int, default=1, help="clients: cycles")
    parser.add_argument("--bn-samples", default="1024,0", help="bn: bn-statistics-samples values (0 = whole partition)")
    parser.add_argument("--seeds", default="0,1,2", help="bn: seeds")
    parser.add_argument("--bn-rounds", type=int, default=5, help="bn: FedAvg rounds of the cycle")
    args = parser.parse_args(argv)

    out = args.out or Path(f"scaling-{args.axis}.json")
    log = out.with_suffix(".log")
    doc = json.loads(out.read_text()) if out.exists() else {}
    rows = [] if args.fresh else doc.get("rows", [])
    done = {_key(r["point"]) for r in rows if "error" not in r["result"]}
    if args.report:
        print_table(rows, fit_exponents(rows))
        return 0
    print(f"[scaling] axis {args.axis}; results {out}; points' stderr {log}", flush=True)
    for point in points_of(args):
        if _key(point) in done:
            continue
        print(f"[scaling] {_key(point)} ...", flush=True)
        result = run_one(point, args.timeout, log)
        rows = [r for r in rows if _key(r["point"]) != _key(point)] + [{"point": point, "result": result}]
        fits = fit_exponents(rows)
        out.write_text(json.dumps({"machine": machine(), "rows": rows, "fits": fits}, indent=1))
        brief = {c: _get(result, c) for c in ("error", *COLUMNS[point["axis"]]) if _get(result, c) != ""}
        print(f"[scaling]   {brief}", flush=True)
    print_table(rows, fit_exponents(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
