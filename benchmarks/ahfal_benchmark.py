"""AHFAL vs Entropy vs Random (and AHFAL under local DP / secure summation) on the same partitions.

A script, not a test. For every Dirichlet alpha and seed, every method runs the
full FAL loop in-process (real ServerApp loop, real ClientApp handlers, real
Flower messages; ``server_app.inprocess.run_inprocess``) on the same partition
(partitions, initial labels and model inits depend only on the seed), and the
script prints per alpha and method:

* final test accuracy, mean +- std over seeds;
* the Figure 8 measure: mean per-class accuracy of the low-variance classes minus
  that of the high-variance classes (positive = high-variance classes lag). The
  classes are split by sigma_c of the clients' class shares of the partition
  (percentage points): by ``tau`` when both groups are non-empty, else (e.g. every
  class above tau at alpha = 0.1 with 10 clients) at the median of sigma_c; the
  ``split`` column says which;
* for the DP variants the epsilon spent per client (from the results files).

Methods: ``ahfal``, ``entropy`` (top-B entropy of the client's model after its local
training, ``query-model=local``: the paper's "centralized" Entropy, which its
ablation equates with AHFAL w/o toggling and w/o class balance), ``random``,
``ahfal-dp5`` / ``ahfal-dp10`` (total epsilon 5 / 10 split over the cycles, Table 3),
``ahfal-secure`` (secure summation, + nothing else), ``ahfal-no-toggling``,
``ahfal-no-balance`` (Table 4). Privacy variants run with
``record-label-histograms=false`` and reproducible noise (``ahfal-dp-noise-seed=run-seed``,
a simulation choice: a real deployment keeps the default OS-entropy noise).

Schedule: the paper's MNIST schedule is 10 rounds x 10 local epochs per cycle, 10 %
initial labels + 5 % per cycle up to 40 %, SGD lr 0.1, momentum 0.9, batch 128,
100 % of MNIST (Sec. H). The defaults here are a CPU-sized version of it (a
subset of the training set, fewer rounds/epochs, smaller batches because clients
hold a few hundred labels); every knob is a flag.

Usage::

    # smoke (about 5 minutes on 2 shared cores)
    python benchmarks/ahfal_benchmark.py --subset 3000 --cycles 3 --rounds 3 --local-epochs 1
    # full CPU scale (see the README for the measured table)
    python benchmarks/ahfal_benchmark.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

METHODS: dict[str, dict[str, Any]] = {
    "ahfal": {"strategy": "ahfal"},
    "entropy": {"strategy": "entropy", "query-model": "local"},
    "random": {"strategy": "random"},
    "ahfal-dp5": {"strategy": "ahfal", "ahfal-dp-epsilon": 5.0},
    "ahfal-dp10": {"strategy": "ahfal", "ahfal-dp-epsilon": 10.0},
    "ahfal-secure": {"strategy": "ahfal", "ahfal-secure-sum": True},
    "ahfal-no-toggling": {"strategy": "ahfal", "ahfal-toggling": False},
    "ahfal-no-balance": {"strategy": "ahfal", "ahfal-toggling": False, "ahfal-class-balancing": False},
}
PRIVATE = {"record-label-histograms": False, "ahfal-dp-noise-seed": "run-seed"}


def class_split(cfg_overrides: dict[str, Any], num_clients: int, tau: float) -> tuple[np.ndarray, np.ndarray, str]:
    """(low mask, sigma_c in pp, how split) from the clients' class shares of the partition."""
    from fal_shared.config import parse_run_config
    from fal_shared.experiment_data import client_data
    from query.ahfal import server_statistics, sums_from_histograms

    cfg = parse_run_config(cfg_overrides)
    hists = []
    for pid in range(num_clients):
        data = client_data(cfg, pid, num_clients)
        hists.append(np.bincount(data.y, minlength=data.num_classes))
    stats = server_statistics(sums_from_histograms(hists), tau)
    if stats.low.any() and (~stats.low).any():
        return stats.low, stats.sigma, "tau"
    side = "below" if stats.low.all() else "above"
    return stats.sigma < np.median(stats.sigma), stats.sigma, f"median (all {stats.low.size} {side} tau)"


def run_one(method: str, base: dict[str, Any], num_clients: int, workdir: Path) -> dict[str, Any]:
    from server_app.inprocess import run_inprocess

    overrides = {**base, **METHODS[method]}
    if method.startswith("ahfal-dp") or method == "ahfal-secure":
        overrides.update(PRIVATE)
    name = f"{method}-a{base['alpha']}-s{base['seed']}"
    overrides.update({"run-name": name, "output-dir": str(workdir / "results"), "state-dir": str(workdir / "state")})
    t0 = time.perf_counter()
    results = run_inprocess(overrides, num_clients=num_clients)
    seconds = time.perf_counter() - t0
    final = results["cycles"][-1]["evaluation"]
    eps = [sum(c.get("strategy", {}).get("dp-epsilon-spent", {}).get(str(p), 0.0) for c in results["cycles"])
           for p in range(num_clients)]
    return {"accuracy": final["accuracy"], "per-class": final["per-class-accuracy"], "seconds": seconds,
            "epsilon-per-client": max(eps) if eps else 0.0, "status": results["status"]}


def _fmt(values: list[float], scale: float = 100.0) -> str:
    v = np.asarray(values, dtype=float) * scale
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "n/a"
    return f"{v.mean():.2f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.2f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--data-root", default="", help="default: /work/shared/datasets/<dataset> or ../shared/datasets/<dataset>")
    p.add_argument("--methods", nargs="+", default=["ahfal", "entropy", "random", "ahfal-dp5", "ahfal-dp10"],
                   choices=sorted(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--alphas", nargs="+", type=float, default=[0.1, 1.0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--subset", type=int, default=12000, help="train-subset-size (0 = the whole training set)")
    p.add_argument("--test-subset", type=int, default=0, help="test-subset-size (0 = the whole test set; cheap with mlp)")
    p.add_argument("--cycles", type=int, default=6, help="query phases (paper MNIST: 6 = 10%% -> 40%%)")
    p.add_argument("--rounds", type=int, default=10, help="FedAvg rounds per cycle (paper MNIST: 10)")
    p.add_argument("--local-epochs", type=int, default=2, help="paper MNIST: 10")
    p.add_argument("--batch-size", type=int, default=32, help="paper: 128")
    p.add_argument("--lr", type=float, default=0.05, help="paper: 0.1")
    p.add_argument("--initial-fraction", type=float, default=0.1)
    p.add_argument("--budget-fraction", type=float, default=0.05)
    p.add_argument("--tau", type=float, default=12.0, help="percentage points (ahfal-tau)")
    p.add_argument("--model", default="mlp", help="mlp keeps the CPU schedule under an hour; cnn4conv is the (fashion-)mnist default")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (client-threads)")
    p.add_argument("--json", default="", help="write every run's numbers to this file")
    args = p.parse_args(argv)

    data_root = args.data_root
    if not data_root:
        here = Path(__file__).resolve().parents[1]
        for cand in (Path("/work/shared/datasets") / args.dataset, here.parent / "shared" / "datasets" / args.dataset):
            if cand.exists():
                data_root = str(cand)
                break
    import torch

    torch.set_num_threads(args.threads)
    common = {
        "dataset": args.dataset, "data-root": data_root, "partition": "dirichlet", "train-subset-size": args.subset,
        "test-subset-size": args.test_subset,
        "num-clients": args.clients, "num-cycles": args.cycles, "rounds-per-cycle": args.rounds,
        "local-epochs": args.local_epochs, "batch-size": args.batch_size, "lr": args.lr, "momentum": 0.9,
        "lr-decay-fraction": 1.0, "initial-labeled-fraction": args.initial_fraction,
        "budget-fraction": args.budget_fraction, "ahfal-tau": args.tau, "model": args.model,
        "device": args.device, "client-threads": args.threads, "evaluation": "central",
    }
    print(f"[bench] {args.dataset} subset={args.subset} clients={args.clients} cycles={args.cycles} "
          f"rounds={args.rounds} epochs={args.local_epochs} batch={args.batch_size} lr={args.lr} "
          f"seeds={args.seeds} alphas={args.alphas} cpu threads={args.threads} cores={os.cpu_count()}", flush=True)
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ahfal-bench-") as tmp:
        for alpha in args.alphas:
            for seed in args.seeds:
                base = {**common, "alpha": alpha, "seed": seed}
                low, sigma, how = class_split(base, args.clients, args.tau)
                for method in args.methods:
                    r = run_one(method, base, args.clients, Path(tmp))
                    acc = np.asarray(r["per-class"], dtype=float)
                    gap = float(np.nanmean(acc[low]) - np.nanmean(acc[~low]))
                    rows.append({"alpha": alpha, "seed": seed, "method": method, "split": how,
                                 "low-classes": int(low.sum()), "sigma-pp": [round(float(s), 2) for s in sigma],
                                 "gap": gap, **r})
                    print(f"[bench] alpha={alpha} seed={seed} {method:18s} acc={r['accuracy']:.4f} gap={gap:+.4f} "
                          f"({how} split, {int(low.sum())} low) eps={r['epsilon-per-client']:g} {r['seconds']:.0f}s",
                          flush=True)
    total = time.perf_counter() - t_start
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print()
    print(f"| alpha | method | final accuracy (%) | gap low-high var. classes (pp) | class split | epsilon/client | s/run |")
    print("|---|---|---|---|---|---|---|")
    for alpha in args.alphas:
        for method in args.methods:
            sel = [r for r in rows if r["alpha"] == alpha and r["method"] == method]
            splits = sorted({r["split"] if r["split"] != "tau" else f"tau ({r['low-classes']} low)" for r in sel})
            eps = max(r["epsilon-per-client"] for r in sel)
            print(f"| {alpha:g} | {method} | {_fmt([r['accuracy'] for r in sel])} | {_fmt([r['gap'] for r in sel])} | "
                  f"{', '.join(splits)} | {eps:g} | {np.mean([r['seconds'] for r in sel]):.0f} |")
    print(f"\n[bench] {len(rows)} runs in {total / 60:.1f} min; seeds {args.seeds}; mean +- sample std over seeds")


if __name__ == "__main__":
    main()
