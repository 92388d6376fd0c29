"""FairFAL vs Entropy vs Random on long-tailed Fashion-MNIST (a script, not a test).

Runs the real FAL loop in-process (``server_app.inprocess.run_inprocess``: real ServerApp,
real ClientApp handlers, real Flower messages, no Ray) for every (alpha, strategy, seed)
and prints, as mean +- std over seeds:

* final test accuracy and balanced accuracy of the global model (balanced test set);
* minority-class recall: mean recall of the ``--minority-classes`` rarest classes of the
  long-tailed training profile (class 0 is the head, class C-1 the rarest);
* for FairFAL, the fraction of (client, query) pairs whose uncertainty model and whose
  gradient-embedding model was the global model, and the mean g-bar;
* the query-phase compute time per client and query (client-measured, summed over the
  statistics and selection rounds, local-only model training included), and the
  query-phase wall time per query.

The paper's setting (spec 2.1) is 20,428 long-tailed samples, 10 clients, R=100 rounds of
E=5 epochs, 5% + 8 x 5% labels (``experiments/fairfal-fmnist-lt-alpha*.toml``). The
defaults here are a CPU-sized schedule (a training subset, few rounds); the smoke scale is

    python benchmarks/fairfal_benchmark.py --seeds 0 --alphas 0.1 --train-subset-size 3000 \\
        --rounds 2 --num-cycles 2

Every run writes its results JSON under ``--out-dir`` (a temporary folder by default);
``--json`` also writes the summary rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

from fal_shared.data.classification import long_tail_counts  # noqa: E402
from server_app.inprocess import run_inprocess  # noqa: E402

NUM_CLASSES = 10


def _csv(kind):
    return lambda s: [kind(v) for v in s.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strategies", type=_csv(str), default=["fairfal", "entropy", "random"])
    p.add_argument("--alphas", type=_csv(float), default=[0.1, 100.0], help="Dirichlet alphas (dirichlet-balanced)")
    p.add_argument("--seeds", type=_csv(int), default=[0, 1, 2])
    p.add_argument("--data-root", default="/work/shared/datasets/fashion-mnist")
    p.add_argument("--train-subset-size", type=int, default=10000, help="0 = the whole training set (paper)")
    p.add_argument("--test-subset-size", type=int, default=0, help="seeded test subset for evaluation (0 = all 10000)")
    p.add_argument("--long-tail-factor", type=float, default=20.0)
    p.add_argument("--num-clients", type=int, default=10)
    p.add_argument("--num-cycles", type=int, default=8, help="queries (8: 5%% -> 45%% labeled)")
    p.add_argument("--initial-fraction", type=float, default=0.05)
    p.add_argument("--budget-fraction", type=float, default=0.05)
    p.add_argument("--rounds", type=int, default=5, help="FedAvg rounds per cycle (paper 100)")
    p.add_argument("--local-epochs", type=int, default=2, help="paper 5")
    p.add_argument("--batch-size", type=int, default=16, help="paper 64 (with ~100 labels per client)")
    p.add_argument("--lr", type=float, default=0.05, help="paper 0.01 over 100 rounds")
    p.add_argument("--local-only-epochs", type=int, default=50)
    p.add_argument("--minority-classes", type=int, default=3, help="rarest classes averaged for minority recall")
    p.add_argument("--g-bar-mode", choices=["freeze", "refresh"], default="freeze")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out-dir", default="", help="where run results go (default: a temporary folder)")
    p.add_argument("--json", default="", help="also write the summary rows to this file")
    return p.parse_args(argv)


def overrides_for(args: argparse.Namespace, strategy: str, alpha: float, seed: int, out_dir: str) -> dict:
    run_name = f"{strategy}-a{alpha:g}-s{seed}-{os.getpid()}"
    return {
        "strategy": strategy, "dataset": "fashion-mnist", "data-root": args.data_root, "model": "cnn4conv",
        "seed": seed, "long-tail-factor": args.long_tail_factor, "train-subset-size": args.train_subset_size,
        "test-subset-size": args.test_subset_size, "partition": "dirichlet-balanced", "alpha": alpha, "initial-labeled-fraction": args.initial_fraction,
        "budget-fraction": args.budget_fraction, "num-cycles": args.num_cycles, "model-init": "reinit",
        "rounds-per-cycle": args.rounds, "local-epochs": args.local_epochs, "batch-size": args.batch_size,
        "lr": args.lr, "local-only-epochs": args.local_only_epochs, "query-model": "global",
        "fairfal-g-bar-mode": args.g_bar_mode, "device": args.device, "evaluation": "central",
        "output-dir": out_dir, "state-dir": str(Path(out_dir) / "state"), "run-name": run_name,
    }


def minority_classes(args: argparse.Namespace) -> list[int]:
    """The rarest classes of the long-tail profile (the profile decreases with the class index)."""
    counts = long_tail_counts(60000, NUM_CLASSES, args.long_tail_factor)
    return sorted(np.argsort(counts, kind="stable")[: args.minority_classes].tolist())


def summarise_run(results: dict, num_clients: int, minority: list[int]) -> dict:
    final = results["cycles"][-1]["evaluation"]
    per_class = np.asarray(final["per-class-accuracy"], dtype=float)
    queries = [c for c in results["cycles"] if "strategy" in c]
    row = {
        "accuracy": final["accuracy"],
        "balanced-accuracy": final["balanced-accuracy"],
        "minority-recall": float(np.nanmean(per_class[minority])),
        "query-seconds-per-client": float(np.mean([c["seconds"]["query-client-compute-sum"] / num_clients for c in queries])),
        "query-wall-seconds": float(np.mean([c["seconds"]["query"] for c in queries])),
    }
    for what in ("uncertainty", "embedding"):
        flags = [
            bool(d[f"used-global-{what}"])
            for c in queries
            for d in c["strategy"].get("client-diagnostics", {}).values()
            if f"used-global-{what}" in d
        ]
        if flags:
            row[f"global-{what}-fraction"] = float(np.mean(flags))
    g_bars = [c["strategy"]["g-bar"] for c in queries if "g-bar" in c["strategy"]]
    if g_bars:
        row["g-bar"] = float(np.mean(g_bars))
    return row


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.mean(values):.4f}" + (f" +- {np.std(values):.4f}" if len(values) > 1 else "")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="fairfal-bench-")
    minority = minority_classes(args)
    print(f"[bench] {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"device={args.device}; results in {out_dir}", flush=True)
    print(f"[bench] {vars(args)}", flush=True)
    print(f"[bench] minority classes (rarest of the long-tail profile): {minority}", flush=True)
    rows: list[dict] = []
    start_all = time.perf_counter()
    for alpha in args.alphas:
        for strategy in args.strategies:
            for seed in args.seeds:
                t0 = time.perf_counter()
                results = run_inprocess(overrides_for(args, strategy, alpha, seed, out_dir), num_clients=args.num_clients)
                if results.get("status") != "completed":
                    raise RuntimeError(f"{strategy} alpha={alpha} seed={seed}: run {results.get('status')}")
                row = {"strategy": strategy, "alpha": alpha, "seed": seed,
                       **summarise_run(results, args.num_clients, minority), "run-seconds": time.perf_counter() - t0}
                rows.append(row)
                print(f"[bench] {json.dumps(row)}", flush=True)
    total = time.perf_counter() - start_all

    cols = ["accuracy", "balanced-accuracy", "minority-recall", "global-uncertainty-fraction",
            "global-embedding-fraction", "g-bar", "query-seconds-per-client", "query-wall-seconds", "run-seconds"]
    print(f"\nFairFAL benchmark: long-tailed Fashion-MNIST (factor {args.long_tail_factor:g}), "
          f"subset {args.train_subset_size or 'full'}, {args.num_clients} clients, {args.num_cycles} queries, "
          f"R={args.rounds}, E={args.local_epochs}; seeds {args.seeds}; mean +- std over seeds; total {total:.0f} s")
    print("| alpha | strategy | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for alpha in args.alphas:
        for strategy in args.strategies:
            sel = [r for r in rows if r["alpha"] == alpha and r["strategy"] == strategy]
            cells = [_fmt([r[c] for r in sel if c in r]) for c in cols]
            print(f"| {alpha:g} | {strategy} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "seconds": total}, indent=2))


if __name__ == "__main__":
    main()
