"""Run the FairFAL authors' code (chenchenzong/FairFAL) once, instrumented, and dump what it did.

Runs their ``main.py`` as ``__main__`` (``runpy``) from a checkout outside this repository, with its own
command line, after wrapping a few of their functions to record and time what happens:

* the Fashion-MNIST training split (``--train-subset``) and test split (``--test-subset``) are cut to a
  seeded subset when their ``IMBALANCEFashionMNIST`` loads the files, before their long-tail subsampling
  (``gen_imbalanced_data``) and their partition (``util/data_simulator.py:dir_balance``); the training
  subset is stratified (``train-subset / 10`` images of each class), because their long-tail code assumes
  every class has at least ``len(data) / 10`` images;
* their long-tail draws (the ``np.random.shuffle`` calls of ``gen_imbalanced_data``), their partition and
  their initial labeled sets (``random_query_samples``) are recorded and written as a ``fal-partition/1`` file
  in full-training-split ids, which this project's ``partition = "file"`` reads;
* wall and CPU seconds of training (``FedAvg.train`` + ``aggregate``), query (``algo_query_samples``: the
  local-only models, statistics and selection of every client) and evaluation; the rest is fixed cost;
* their ``train_test`` evaluates the test set after every round and only logs it; here only the last
  round of each cycle is evaluated (the others return nan): no state or random draw depends on it.

Their ``dir_balance`` reseeds torch with 0, so every seed shares model inits and shuffles (spec 2.1).
Their training and query datasets draw their long-tail subsets separately from numpy's global RNG, so
the query set's image at an index is another image of the same class than the training set's: recorded
here as ``query-images-equal-train`` (the fraction of positions holding the same image).

    python benchmarks/parity/fairfal.py --checkout /scratch/FairFAL --data-root /scratch/data --seed 1 \\
        --out /scratch/runs/theirs-fairfal-seed1
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import runpy  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fal_shared.data.partition_file import write_partition_file  # noqa: E402
from parity.dgitj_fal import Clock, subset_ids  # noqa: E402

COMMIT = "ca14e07"


def stratified_ids(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size / C`` seeded ids of every class (all ids when size is 0)."""
    if size <= 0:
        return np.arange(len(labels))
    classes = np.unique(labels)
    rng = np.random.default_rng([seed, 104729])
    per = size // len(classes)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), size=per, replace=False) for c in classes]))


def arguments(spec: dict[str, Any], method: dict[str, Any], seed: int, out: Path, checkout: str, data_root: str) -> list[str]:
    """This runner's command line for one run of a parity spec (benchmarks/run_parity.py)."""
    sh = spec["shared"]
    return [
        "--checkout", checkout, "--data-root", data_root, "--out", str(out), "--seed", str(seed),
        "--train-subset", str(sh["train-subset"]), "--test-subset", str(sh.get("test-subset", 0)),
        "--imb-ratio", str(spec["reference"]["imb-ratio"]), "--clients", str(sh["clients"]), "--alpha", str(sh["alpha"]),
        "--query-ratio", str(spec["reference"]["query-ratio"]), "--trainings", str(sh["trainings"]),
        "--rounds", str(sh["rounds"]), "--epochs", str(sh["epochs"]), "--batch", str(sh["batch"]), "--lr", str(sh["lr"]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", required=True, help="chenchenzong/FairFAL working tree at ca14e07")
    parser.add_argument("--data-root", required=True, help="folder with FashionMNIST/raw/ (unzipped IDX files; linked where their class looks)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--train-subset", type=int, default=0)
    parser.add_argument("--test-subset", type=int, default=0)
    parser.add_argument("--imb-ratio", type=float, default=0.05)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.1, help="--dd_beta")
    parser.add_argument("--query-ratio", type=float, default=0.05)
    parser.add_argument("--trainings", type=int, required=True, help="cycles: end_ratio = trainings x query_ratio")
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # their --data_dir gets '/fmnist_lt/' appended; torchvision looks in <root>/<class name>/raw
    data = out / "data" / "fmnist_lt"
    data.mkdir(parents=True, exist_ok=True)
    link = data / "IMBALANCEFashionMNIST"
    if not link.exists():
        link.symlink_to(Path(args.data_root).resolve() / "FashionMNIST", target_is_directory=True)
    checkout = Path(args.checkout).resolve()
    sys.path.insert(0, str(checkout))
    os.chdir(out)

    import torch

    torch.set_num_threads(args.threads)
    import fl_methods.base as fl_base
    import fl_methods.fedavg as fl_fedavg
    import query_strategies as qs
    import util.data_simulator as simulator
    import util.longtail_dataset as longtail

    clock = Clock()
    state: dict[str, Any] = {"lt": {}, "tests": [], "labeled": []}
    lt_cls = longtail.IMBALANCEFashionMNIST
    load_data = lt_cls._load_data

    def subset_load(self):
        x, y = load_data(self)
        keep = stratified_ids(y.numpy(), args.train_subset, args.seed) if self.train else \
            subset_ids(len(y), args.test_subset, args.seed, 130363)
        state["train-keep" if self.train else "test-keep"] = keep
        return x[keep], y[keep]

    gen = lt_cls.gen_imbalanced_data

    def recorded_gen(self, img_num_per_cls):
        draws = []
        shuffle = np.random.shuffle

        def recording_shuffle(a, *rest):
            shuffle(a, *rest)
            draws.append(np.array(a))
        np.random.shuffle = recording_shuffle
        try:
            gen(self, img_num_per_cls)
        finally:
            np.random.shuffle = shuffle
        ids = np.concatenate([d[:n] for d, n in zip(draws, img_num_per_cls)])
        state["lt"][len(state["lt"])] = ids  # 0: the training set, 1: the query set (positions in the subset)
    lt_cls._load_data = subset_load
    lt_cls.gen_imbalanced_data = recorded_gen

    dir_balance = simulator.dir_balance

    def recorded_dir_balance(dataset, a, sample=None, seed=0):
        clients, out_sample = dir_balance(dataset, a, sample, seed)
        if sample is None:
            state["parts"] = {int(k): list(v) for k, v in clients.items()}
        return clients, out_sample
    simulator.dir_balance = recorded_dir_balance

    random_query = qs.random_query_samples

    def recorded_random(*a, **kw):
        labels, a2 = random_query(*a, **kw)
        state["initial"] = {int(k): [int(i) for i in v] for k, v in labels.items()}
        return labels, a2
    qs.random_query_samples = clock.wrap("fixed-initial", recorded_random)

    algo_query = qs.algo_query_samples

    def recorded_query(*a, **kw):
        labels, ratio = algo_query(*a, **kw)
        state.setdefault("g-bar", []).append(float(ratio))
        state.setdefault("selected", []).append({int(k): [int(i) for i in v] for k, v in labels.items()})
        return labels, ratio
    qs.algo_query_samples = clock.wrap("query", recorded_query)

    fl_fedavg.FedAvg.train = clock.wrap("train", fl_fedavg.FedAvg.train)
    fl_base.FederatedLearning.aggregate = clock.wrap("train", fl_base.FederatedLearning.aggregate)
    test = fl_base.FederatedLearning.test

    def final_round_test(self, net, dataset):
        state["tests"].append(None)
        if len(state["tests"]) % args.rounds:
            return float("nan"), float("nan")  # a round before the cycle's last: only logged by train_test
        acc, loss = test(self, net, dataset)
        state["tests"][-1] = float(acc)
        state["labeled"].append(int(sum(len(v) for v in self.dict_users_train_label.values())))
        return acc, loss
    fl_base.FederatedLearning.test = clock.wrap("evaluate", final_round_test)

    end_ratio = round(args.trainings * args.query_ratio, 4)
    sys.argv = [
        "main.py", "--gpu", "-1", "--seed", str(args.seed), "--al_method", "fairfal", "--model", "cnn4conv",
        "--dataset", "fmnist_lt", "--imb_ratio", str(args.imb_ratio), "--partition", "dir_balance",
        "--dd_beta", str(args.alpha), "--num_users", str(args.clients), "--frac", "1.0", "--num_classes", "10",
        "--rounds", str(args.rounds), "--local_ep", str(args.epochs), "--reset", "random",
        "--query_ratio", str(args.query_ratio), "--end_ratio", str(end_ratio), "--local_bs", str(args.batch),
        "--lr", str(args.lr), "--data_dir", str(out / "data"), "--save_dir", str(out),
    ]
    runpy.run_path(str(checkout / "main.py"), run_name="__main__")

    import torchvision

    full = torchvision.datasets.FashionMNIST(str(Path(args.data_root).resolve()), train=True, download=False)
    labels = np.asarray(full.targets)
    keep, lt_train, lt_query = state["train-keep"], state["lt"][0], state["lt"][1]
    to_full = lambda pos: [int(keep[lt_train[p]]) for p in pos]  # noqa: E731
    parts = [to_full(state["parts"][c]) for c in range(args.clients)]
    part_path = write_partition_file(
        out / "partition.json", parts, num_train=len(labels), labels=labels,
        initial=[to_full(state["initial"][c]) for c in range(args.clients)], dataset="fashion-mnist",
        source=f"chenchenzong/FairFAL {COMMIT}: IMBALANCEFashionMNIST(imb_ratio={args.imb_ratio}) of the "
               f"{len(keep)}-image stratified subset of seed {args.seed}, dir_balance(dd_beta={args.alpha}, seed 0), "
               "random_query_samples initial labels",
    )
    accuracy = [t for t in state["tests"] if t is not None]
    wall_total = time.perf_counter() - _STARTED
    summary = {"train": float(np.sum(clock.wall.get("train", []))), "query": float(np.sum(clock.wall.get("query", []))),
               "evaluate": float(np.sum(clock.wall.get("evaluate", []))), "unused-query": 0.0}
    result = {
        "side": "theirs", "reference": f"chenchenzong/FairFAL {COMMIT}", "strategy": "fairfal", "seed": args.seed,
        "args": vars(args), "accuracy": accuracy, "labeled": state["labeled"],
        "seconds": {"wall": clock.wall, "cpu": clock.cpu_by_phase, "wall-total": wall_total, "cpu-total": Clock.cpu(),
                    "summary": summary},
        "partition-file": str(part_path), "g-bar": state.get("g-bar", []),
        "query-images-equal-train": float(np.mean(keep[lt_train] == keep[lt_query])),
        "labeled-after-query": [{str(k): to_full(v) for k, v in sel.items()} for sel in state.get("selected", [])],
    }
    (out / "reference.json").write_text(json.dumps(result, indent=1))
    print(f"[parity] theirs FairFAL seed {args.seed}: accuracy {accuracy} ({wall_total:.0f} s wall, "
          f"{result['seconds']['cpu-total']:.0f} s CPU); query images equal to training images at "
          f"{100 * result['query-images-equal-train']:.1f} % of positions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
