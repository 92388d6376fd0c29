"""Compare every registered classification strategy on the same Fashion-MNIST partitions (a script, not a test).

For each strategy and seed, one whole FAL experiment runs in this process
(``server_app.inprocess.run_inprocess``: the real ServerApp loop and ClientApp
handlers with real Flower messages). A seed fixes the training subset, the
Dirichlet partitions, the initial labels and the per-cycle model inits, so all
strategies of a seed start from the same clients and labels and differ only
in what they query. Prints a table of mean +- sample std (ddof=1) over seeds of
the final global test accuracy, the final balanced accuracy, the query time
(server wall time of all query phases, summed over cycles) and the run time.

The kernel timings (k-center greedy, BADGE seeding at n=50000) are in
``benchmarks/selection_kernels.py``.

Usage::

    # smoke scale, measured 2 min 17 s on 2 shared CPU cores (model=mlp: the
    # cnn4conv default spends most of a small run evaluating the 10,000 test images)
    python benchmarks/baselines_comparison.py --seeds 0,1,2 --train-subset-size 3000 \\
        --num-clients 5 --num-cycles 2 --rounds-per-cycle 5 --local-epochs 1 \\
        --set model=mlp --set local-only-epochs=20 --set noise-stability-num-copies=10

    # CPU-sized comparison with the LoGo/FairFAL backbone (cnn4conv), alpha 0.1, 3 seeds, 10 clients
    python benchmarks/baselines_comparison.py --seeds 0,1,2 --train-subset-size 6000 \\
        --num-clients 10 --num-cycles 3 --rounds-per-cycle 10 --local-epochs 2 --json baselines.json

Strategies that fail (e.g. one that needs settings this script does not set)
are reported as failed with the error, and the others still run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

from server_app.inprocess import run_inprocess  # noqa: E402
from strategies import STRATEGIES  # noqa: E402


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def classification_strategies() -> list[str]:
    return sorted(name for name, cls in STRATEGIES.items() if "classification" in cls.tasks)


def run_one(strategy: str, seed: int, base: dict[str, Any], num_clients: int, out: Path, verbose: bool) -> dict[str, Any]:
    overrides = {
        **base,
        "strategy": strategy,
        "seed": seed,
        "run-name": f"{strategy}-seed{seed}",
        "output-dir": str(out),
        "state-dir": str(out / "state"),
    }
    start = time.perf_counter()
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    try:
        with sink:
            results = run_inprocess(overrides, num_clients=num_clients)
    except Exception as err:  # report and go on with the other strategies
        return {"strategy": strategy, "seed": seed, "error": f"{type(err).__name__}: {err}".splitlines()[0][:200]}
    wall = time.perf_counter() - start
    cycles = results["cycles"]
    final = cycles[-1]["evaluation"]
    return {
        "strategy": strategy,
        "seed": seed,
        "status": results["status"],
        "accuracy": float(final["accuracy"]),
        "balanced-accuracy": float(final.get("balanced-accuracy", float("nan"))),
        "accuracy-per-cycle": [float(c["evaluation"]["accuracy"]) for c in cycles],
        "query-seconds": float(sum(c["seconds"].get("query", 0.0) for c in cycles)),
        "selection-client-max-seconds": float(sum(c["seconds"].get("selection-client-max", 0.0) for c in cycles)),
        "wall-seconds": wall,
        "labeled-fraction": float(cycles[-1]["labeled-fraction"]),
    }


def _mean_std(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    v = np.asarray(values, dtype=float)
    std = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{format(v.mean(), fmt)} +- {format(std, fmt)}"


def table(rows: list[dict[str, Any]], strategies: list[str]) -> str:
    header = (f"{'strategy':<16} {'runs':>4}  {'final accuracy':>17}  {'balanced acc.':>17}  "
              f"{'query s (sum)':>15}  {'run s':>13}")
    lines = [header, "-" * len(header)]
    for name in strategies:
        ok = [r for r in rows if r["strategy"] == name and "error" not in r]
        bad = [r for r in rows if r["strategy"] == name and "error" in r]
        lines.append(
            f"{name:<16} {len(ok):>4}  {_mean_std([r['accuracy'] for r in ok], '.4f'):>17}  "
            f"{_mean_std([r['balanced-accuracy'] for r in ok], '.4f'):>17}  "
            f"{_mean_std([r['query-seconds'] for r in ok], '.2f'):>15}  "
            f"{_mean_std([r['wall-seconds'] for r in ok], '.1f'):>13}"
        )
        for r in bad:
            lines.append(f"{'':<16} seed {r['seed']} failed: {r['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default="", help="comma-separated names; default: every registered classification strategy")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-root", default="/work/shared/datasets/fashion-mnist")
    parser.add_argument("--partition", default="dirichlet-balanced", choices=["iid", "dirichlet", "dirichlet-balanced"])
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--train-subset-size", type=int, default=6000)
    parser.add_argument("--test-subset-size", type=int, default=0, help="evaluate on a seeded subset of the test set; 0 = all")
    parser.add_argument("--num-cycles", type=int, default=3)
    parser.add_argument("--rounds-per-cycle", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other run-config key for every run (repeatable), e.g. --set noise-stability-num-copies=10")
    parser.add_argument("--output-dir", default="", help="where the runs' results go; default: a temporary folder")
    parser.add_argument("--json", default="", help="also write every run's numbers to this JSON file")
    parser.add_argument("--verbose", action="store_true", help="show the runs' logs")
    args = parser.parse_args(argv)

    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    strategies = [s for s in args.strategies.split(",") if s] or classification_strategies()
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        parser.error(f"unknown strategies {unknown}; registered: {', '.join(sorted(STRATEGIES))}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    base: dict[str, Any] = {
        "dataset": args.dataset,
        "data-root": args.data_root,
        "partition": args.partition,
        "alpha": args.alpha,
        "train-subset-size": args.train_subset_size,
        "test-subset-size": args.test_subset_size,
        "num-cycles": args.num_cycles,
        "rounds-per-cycle": args.rounds_per_cycle,
        "local-epochs": args.local_epochs,
        "device": "cpu",
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set needs KEY=VALUE, got {item!r}")
        base[key] = _parse_value(value)
    out = Path(args.output_dir) if args.output_dir else Path(tempfile.mkdtemp(prefix="fal-baselines-"))
    print(
        f"{args.dataset} {args.partition} alpha={args.alpha} clients={args.num_clients} subset={args.train_subset_size} "
        f"cycles={args.num_cycles} rounds={args.rounds_per_cycle} local-epochs={args.local_epochs} seeds={seeds} "
        f"extra={ {k: base[k] for k in base if k not in ('dataset', 'data-root')} }\nresults under {out}",
        flush=True,
    )
    rows = []
    start = time.perf_counter()
    for seed in seeds:
        for name in strategies:
            row = run_one(name, seed, base, args.num_clients, out, args.verbose)
            rows.append(row)
            what = row.get("error") or f"accuracy {row['accuracy']:.4f}, query {row['query-seconds']:.2f} s, run {row['wall-seconds']:.1f} s"
            print(f"  seed {seed} {name:<16} {what}", flush=True)
    print(f"\nfinal global test accuracy after {args.num_cycles} queries, mean +- std over {len(seeds)} seed(s) "
          f"(total {time.perf_counter() - start:.0f} s)\n")
    print(table(rows, strategies))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
