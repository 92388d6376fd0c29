"""Run the AHFAL authors' code (dgitj/FAL) once, instrumented, and dump what it did.

Imports the reference repository's ``main.py`` from a checkout outside this repository, sets its
global ``config`` module, and runs its ``main()`` unchanged except for what is wrapped here:

* the training split (and optionally the test split) is cut to a seeded subset before their code
  sees it (``--train-subset``: the same ids as this project's ``train-subset-size`` for that seed);
* their partition function (``data/dirichlet_partitioner.py:dirichlet_balanced_partition``) and their
  initial labeled sets are recorded and written as a ``fal-partition/1`` file in full-training-split
  ids, which this project's ``partition = "file"`` reads, so both sides start from the same split;
* wall and CPU seconds of training (``FederatedTrainer.train``), query (``StrategyManager.select_samples``)
  and evaluation (``evaluate_model`` + ``evaluate_per_class_accuracy``) per cycle; the rest of the
  process is fixed cost (imports, data, partition);
* the server model's accuracy per cycle and the samples each client selected.

The checkout: dgitj/FAL at 55f1665 (its last commit) lacks the ``data/`` package that ``main.py``
imports; the package exists only at 08a3a72, so the checkout is 55f1665 with ``data/`` from 08a3a72::

    git --git-dir=<mirror> archive 55f1665 | tar -x -C FAL
    git --git-dir=<mirror> archive 08a3a72 data | tar -x -C FAL

Their loaders use ``download=True``: ``--data-root`` must hold ``MNIST/raw/`` with the four unzipped
IDX files (torchvision's layout), so nothing is downloaded.

    python benchmarks/parity/dgitj_fal.py --checkout /scratch/FAL --data-root /scratch/data \\
        --strategy Random --seed 1 --out /scratch/runs/theirs-random-seed1
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # the process's fixed cost starts here (imports included)

import argparse
import copy
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fal_shared.data.partition_file import write_partition_file  # noqa: E402

COMMIT = "55f1665 (+ data/ from 08a3a72)"


def subset_ids(n: int, size: int, seed: int, salt: int) -> np.ndarray:
    """This project's seeded subset (fal_shared/experiment_data.py: train 104729, test 130363)."""
    if not 0 < size < n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, salt]).choice(n, size=size, replace=False))


class Clock:
    """Wall and CPU seconds (this process and its children: their AHFAL labeled loader forks workers)."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu_by_phase: dict[str, list[float]] = {}

    @staticmethod
    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def wrap(self, phase: str, fn):
        def timed(*args, **kwargs):
            w, c = time.perf_counter(), self.cpu()
            try:
                return fn(*args, **kwargs)
            finally:
                self.wall.setdefault(phase, []).append(time.perf_counter() - w)
                self.cpu_by_phase.setdefault(phase, []).append(self.cpu() - c)
        return timed


def arguments(spec: dict[str, Any], method: dict[str, Any], seed: int, out: Path, checkout: str, data_root: str) -> list[str]:
    """This runner's command line for one run of a parity spec (benchmarks/run_parity.py)."""
    sh = spec["shared"]
    return [
        "--checkout", checkout, "--data-root", data_root, "--out", str(out), "--strategy", method["reference"],
        "--seed", str(seed), "--train-subset", str(sh["train-subset"]), "--test-subset", str(sh.get("test-subset", 0)),
        "--clients", str(sh["clients"]), "--alpha", str(sh["alpha"]),
        "--base", str(sh["initial-per-client"] * sh["clients"]), "--budget", str(sh["budget-per-client"] * sh["clients"]),
        "--cycles", str(sh["trainings"]), "--rounds", str(sh["rounds"]), "--epochs", str(sh["epochs"]),
        "--batch", str(sh["batch"]), "--lr", str(sh["lr"]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", required=True, help="dgitj/FAL working tree (see above)")
    parser.add_argument("--data-root", required=True, help="folder with MNIST/raw/ (unzipped IDX files)")
    parser.add_argument("--out", required=True, help="folder for reference.json and partition.json")
    parser.add_argument("--strategy", required=True, help="their strategy name: Random, Entropy, AHFAL, ...")
    parser.add_argument("--seed", type=int, required=True, help="config.SEED (>= 1: their main ignores 0); trial seed = SEED + 2000000")
    parser.add_argument("--train-subset", type=int, default=0)
    parser.add_argument("--test-subset", type=int, default=0)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--base", type=int, required=True, help="config.BASE: initial labels in all (ceil(BASE/CLIENTS) each)")
    parser.add_argument("--budget", type=int, required=True, help="config.BUDGET: labels per cycle in all (ceil(BUDGET/CLIENTS) each)")
    parser.add_argument("--cycles", type=int, required=True, help="config.CYCLES: trainings (each followed by a query)")
    parser.add_argument("--rounds", type=int, required=True, help="config.COMMUNICATION")
    parser.add_argument("--epochs", type=int, required=True, help="config.EPOCH")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.seed < 1:
        parser.error("--seed must be >= 1 (their main.py ignores --seed 0)")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    checkout = Path(args.checkout).resolve()
    sys.path.insert(0, str(checkout))
    os.chdir(out)  # their logger writes analysis_logs/ into the working directory

    import torch

    torch.set_num_threads(args.threads)
    import config  # their global config module
    import main as fal_main  # their main.py
    from query_strategies.strategy_manager import StrategyManager
    from training.trainer import FederatedTrainer

    config.DATASET, config.DATA_ROOT, config.NUM_CLASSES = "MNIST", str(Path(args.data_root).resolve()), 10
    config.MODEL_ARCHITECTURE, config.ACTIVE_LEARNING_STRATEGY = "resnet8", args.strategy
    config.SEED, config.TRIALS, config.ALPHA, config.CLIENTS, config.RATIO = args.seed, 1, args.alpha, args.clients, 1.0
    config.BASE, config.BUDGET, config.CYCLES = args.base, args.budget, args.cycles
    config.COMMUNICATION, config.EPOCH, config.BATCH, config.LR = args.rounds, args.epochs, args.batch, args.lr
    config.LOCAL_MODEL_UPDATE = "Vanilla"
    sys.argv = ["main.py"]  # every setting is in config; their argparse then changes nothing

    clock = Clock()
    record: dict = {"accuracy": [], "labeled": [], "selected": {}, "initial": {}}
    state: dict = {}
    load_datasets = fal_main.load_datasets

    def subset_datasets():
        train, test, select = load_datasets()
        keep = subset_ids(len(train.targets), args.train_subset, args.seed, 104729)
        for ds in (train, select):
            ds.data, ds.targets = ds.data[keep], ds.targets[keep]
        test_keep = subset_ids(len(test.targets), args.test_subset, args.seed, 130363)
        test.data, test.targets = test.data[test_keep], test.targets[test_keep]
        state.update(keep=keep, n_full=60000, labels_full=None)
        return train, test, select

    partition = fal_main.dirichlet_balanced_partition

    def recorded_partition(dataset, *a, **kw):
        parts = partition(dataset, *a, **kw)
        state["parts"] = [list(p) for p in parts]
        return parts

    update_distribution = FederatedTrainer.update_client_distribution

    def recorded_update(self, c, labeled_set, dataset):
        record["initial"].setdefault(c, list(labeled_set))  # the first call, before any training
        return update_distribution(self, c, labeled_set, dataset)

    train = FederatedTrainer.train

    def recorded_train(self, *a, **kw):
        record["labeled"].append(int(np.sum(self.data_num)))
        return train(self, *a, **kw)

    select = StrategyManager.select_samples

    def recorded_select(self, model, model_server, loader, c, *a, **kw):
        result = select(self, model, model_server, loader, c, *a, **kw)  # (chosen, rest[, AHFAL's class distribution])
        record["selected"].setdefault(str(len(record["labeled"]) - 1), {})[str(c)] = [int(i) for i in result[0]]
        return result

    evaluate = fal_main.evaluate_model

    def recorded_evaluate(*a, **kw):
        acc = evaluate(*a, **kw)
        record["accuracy"].append(float(acc))
        return acc

    fal_main.load_datasets = subset_datasets
    fal_main.dirichlet_balanced_partition = recorded_partition
    FederatedTrainer.update_client_distribution = recorded_update
    FederatedTrainer.train = clock.wrap("train", recorded_train)
    StrategyManager.select_samples = clock.wrap("query", recorded_select)
    fal_main.evaluate_model = clock.wrap("evaluate", recorded_evaluate)
    fal_main.evaluate_per_class_accuracy = clock.wrap("evaluate-per-class", fal_main.evaluate_per_class_accuracy)

    fal_main.main()

    keep = state["keep"]
    import torchvision

    full = torchvision.datasets.MNIST(config.DATA_ROOT, train=True, download=False)
    labels = np.asarray(full.targets)
    to_full = lambda ids: [int(keep[i]) for i in ids]  # noqa: E731
    trial_seed = args.seed + config.TRIAL_SEED_OFFSET
    part_path = write_partition_file(
        out / "partition.json", [to_full(p) for p in state["parts"]], num_train=len(labels), labels=labels,
        initial=[to_full(record["initial"][c]) for c in range(args.clients)], dataset="mnist",
        source=f"dgitj/FAL {COMMIT} dirichlet_balanced_partition(alpha={args.alpha}, seed={trial_seed}) on the "
               f"{len(keep)}-sample subset of seed {args.seed}; initial labels: main.py's first ceil(BASE/CLIENTS) "
               "of each client's shuffled list",
    )
    per_query = {c: {k: to_full(v) for k, v in sel.items()} for c, sel in record["selected"].items()}
    wall_total, cpu_total = time.perf_counter() - _STARTED, Clock.cpu()
    queries = clock.wall.get("query", [])
    used = (args.cycles - 1) * args.clients  # the last cycle's query feeds no training
    summary = {"train": float(np.sum(clock.wall.get("train", []))), "query": float(np.sum(queries[:used])),
               "evaluate": float(np.sum(clock.wall.get("evaluate", [])) + np.sum(clock.wall.get("evaluate-per-class", []))),
               "unused-query": float(np.sum(queries[used:]))}
    result = {
        "side": "theirs", "reference": f"dgitj/FAL {COMMIT}", "strategy": args.strategy, "seed": args.seed,
        "trial-seed": trial_seed, "args": vars(args), "accuracy": record["accuracy"], "labeled": record["labeled"],
        "seconds": {"wall": copy.deepcopy(clock.wall), "cpu": copy.deepcopy(clock.cpu_by_phase),
                    "wall-total": wall_total, "cpu-total": cpu_total, "summary": summary},
        "partition-file": str(part_path), "selected": per_query,
    }
    (out / "reference.json").write_text(json.dumps(result, indent=1))
    print(f"[parity] theirs {args.strategy} seed {args.seed}: accuracy {result['accuracy']} "
          f"({wall_total:.0f} s wall, {cpu_total:.0f} s CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
