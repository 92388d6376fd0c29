"""FALE vs FALE-local, Random and the BMDAL baselines on UCI regression: test MSE along a budget, paired t-tests.

The FALE paper's Table 2 setting (Sec. 5.1): 20% uniform test split, the rest over k=10 clients by
a Dirichlet(alpha=5) over 10 target bins, linear model; test MSE when 10%, 20%, ..., 100% of the
total query budget are used; 10 repeats (a new split per repeat, ``seed = repeat``); win/tie/loss
counts of a paired t-test (``scipy.stats.ttest_rel``) at p < 0.05 over the budget checkpoints.

Running every checkpoint through the Flower app is too slow for a small CPU, so this script runs
the *library path*, which tests/test_fale_benchmark_path.py shows gives the same numbers as the
app on the same data and seed:

* FALE: :func:`fale_curve` = the steps of :func:`fedsvd.fale_fit` (same seeds), with the FedSVD
  done once per repeat and reused for every budget (the test checks it equals ``fale_fit`` at every
  budget); the app's ``strategy=fale`` gives the same selection and theta. The sampling stream is
  the same for every budget, so larger budgets extend the smaller ones' draws (nested selections,
  as a growing budget would be).
* FALE-local: the same selection, then :func:`fedavg_linear` = the app's FedAvg cycle
  (``strategy=fale-local``, cycle 1: fresh model seeded ``seed*1000+1``, R rounds of E local epochs
  with the ClientApp's ``train_model`` and seeds, Flower's weighted average in partition order).
* Random: the app's ``strategy=random`` with ``num-cycles=1``, ``budget-mode=count``: the 1%
  initial labels of ``ClientSession.ensure_initial_labels`` plus ``budget // k`` uniform picks per
  client drawn as ``query.random`` does (each checkpoint an independent draw), then the same
  FedAvg. Random gets its initial labels on top of the budget (FALE needs none).
* BAIT, ACS-FW, Core-Set, BADGE, LCMD, LoGo-BAIT (FALE Sec. 5.1): the app's strategies with
  ``budget-mode=count``, ``budget-count=--per-round`` (paper: 5 per client per round), as many
  queries as the budget needs; :func:`fale_baselines.baseline_rows` runs their query rounds in
  process (the selections do not depend on the linear model's weights, see there), and at each
  checkpoint (after ``q`` queries) the app's FedAvg of cycle ``q``. Initial labels on top, as Random.

Evaluation: MSE of the global model on the whole test split, which equals the app's federated
evaluation (each client's share, weighted by counts) and its central evaluation; and the median
squared error over the test rows (robust: on some UCI sets a few test rows far outside the
training range dominate the MSE of any linear model). Win/tie/loss of FALE (and FALE-local) against
every other method for both metrics; ``--plot`` draws both curves.

Full scale (the paper's budget, 10 repeats)::

    python benchmarks/fale_benchmark.py --datasets protein,kegg-undirected --repeats 10 \\
        --total-budget 15000 --checkpoints 10

Smoke scale::

    python benchmarks/fale_benchmark.py --datasets protein --repeats 3 --total-budget 3000 --checkpoints 5 \\
        --methods fale,random,bait
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from client_app.methods.fale import client_features, load_theta  # noqa: E402
from fal_shared.config import RunConfig  # noqa: E402
from fal_shared.experiment_data import ClientData, TestData, client_data, test_data  # noqa: E402
from fal_shared.models import build_model  # noqa: E402
from fal_shared.training import TrainSettings, evaluate, pick_device, train_model  # noqa: E402
from fedsvd import (  # noqa: E402
    FedSVDClient,
    TrustedAuthority,
    leverage_scores,
    masked_least_squares,
    numerical_rank,
    sample_until_distinct,
    server_svd,
)
from fedsvd.server import Selection  # noqa: E402
from launcher.report import paired_wtl  # noqa: E402
from strategies.fale import fale_cycle_budget  # noqa: E402

from benchmarks.fale_baselines import baseline_rows, curves_png, initial_rows, median_squared_error  # noqa: E402

__all__ = [
    "FaleCurvePoint",
    "fale_curve",
    "fedavg_linear",
    "linear_mse",
    "model_mse",
    "random_rows",
    "win_tie_loss",
]


# ------------------------------------------------------------------------------ library path
@dataclass(frozen=True)
class FaleCurvePoint:
    """FALE at one budget: the distinct ``(client, local row)`` pairs and the unmasked theta."""

    n_query: int
    selected: list[tuple[int, int]]
    selection: Selection
    theta: np.ndarray


def fale_curve(
    parts: Sequence[np.ndarray], y_parts: Sequence[np.ndarray], budgets: Sequence[int], *,
    seed: int, block_size: int,
) -> list[FaleCurvePoint]:
    """:func:`fedsvd.fale_fit` at several budgets, with one FedSVD.

    The same role functions and seed streams as ``fale_fit(parts, y_parts, b, seed=seed,
    block_size=block_size)`` for every ``b`` (the trusted authority's masks, the sampling stream
    and the clients' ``P~_i`` seeds are all re-derived from ``seed`` per budget exactly as there),
    so each point equals a separate ``fale_fit`` call; only the FedSVD is not repeated.
    """
    arrays = [np.asarray(x, dtype=np.float64) for x in parts]
    sizes = [a.shape[0] for a in arrays]
    n, d = sum(sizes), arrays[0].shape[1]
    ta_seq, _, _ = np.random.SeedSequence(seed).spawn(3)
    ta = TrustedAuthority(len(arrays), seed=ta_seq)
    clients = [FedSVDClient(x, **ta.client_package(i), block_size=block_size) for i, x in enumerate(arrays)]
    u_masked, s, _ = server_svd([c.mask_data() for c in clients])
    rank = numerical_rank(s, (n, d))
    tau = np.concatenate([leverage_scores(c.recover_left(u), rank=rank) for c, u in zip(clients, u_masked, strict=True)])
    out = []
    for b in budgets:
        _, sample_seq, local_seq = np.random.SeedSequence(seed).spawn(3)  # fresh, as in fale_fit
        selection = sample_until_distinct(tau, int(b), seed=sample_seq)
        per_client = selection.per_client(sizes)
        a_parts, b_parts = [], []
        for c, sel, y, lseed in zip(clients, per_client, y_parts, local_seq.spawn(len(clients)), strict=True):
            a, bb = c.mask_labelled(
                sel.local_indices, np.asarray(y, dtype=np.float64)[sel.local_indices], sel.row_scales,
                seed=tuple(int(w) for w in lseed.generate_state(4)),
            )
            a_parts.append(a)
            b_parts.append(bb)
        theta = clients[0].unmask_model(masked_least_squares(a_parts, b_parts))
        selected = [(i, int(j)) for i, sel in enumerate(per_client) for j in sel.local_indices]
        out.append(FaleCurvePoint(int(b), selected, selection, theta))
    return out


def model_mse(model: torch.nn.Module, test: TestData, cfg: RunConfig) -> float:
    """Test MSE exactly as the app's central evaluation computes it."""
    result = evaluate(
        model, test.x, test.y, num_classes=1, batch_size=cfg.score_batch_size,
        device=pick_device(cfg.device), task="regression", normalize=None,
    )
    return float(result["mse"])


def linear_mse(theta: np.ndarray, test: TestData, cfg: RunConfig) -> float:
    """Test MSE of FALE's theta through the same linear model the clients store and evaluate."""
    model = build_model("linear", input_shape=test.input_shape, num_outputs=1)
    return model_mse(load_theta(model, theta, cfg.fale_fit_intercept), test, cfg)


def fedavg_linear(
    cfg: RunConfig, labelled: Sequence[tuple[np.ndarray, np.ndarray]], *, cycle: int, input_dim: int,
) -> torch.nn.Module:
    """One cycle of the app's FedAvg on the clients' labelled sets (partition order), in process.

    Mirrors ``Experiment.fresh_model`` (seed ``cfg.seed*1000+cycle``), ``CycleFedAvg`` (lr per round
    from ``RunConfig.lr_for_round``), ``client_app.actions.handle_train`` (``train_model`` with seed
    ``default_rng([seed, pid, cycle, round]).integers(2**31)``) and Flower's
    ``aggregate_arrayrecords`` (float32 weighted sum by ``num-examples``, in partition order).
    """
    device = pick_device(cfg.device)
    model = build_model("linear", input_shape=(input_dim,), num_outputs=1, seed=cfg.seed * 1000 + cycle)
    global_state = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    for server_round in range(1, cfg.rounds_per_cycle + 1):
        settings = TrainSettings(
            epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr_for_round(server_round),
            momentum=cfg.momentum, weight_decay=cfg.weight_decay, optimizer=cfg.optimizer, task="regression",
        )
        replies = []
        for pid, (x, y) in enumerate(labelled):
            local = build_model("linear", input_shape=(input_dim,), num_outputs=1)
            local.load_state_dict({k: torch.as_tensor(v) for k, v in global_state.items()})
            seed = int(np.random.default_rng([cfg.seed, pid, cycle, server_round]).integers(2**31))
            train_model(local, x, y, settings, seed=seed, device=device, normalize=None)
            replies.append(({k: v.detach().cpu().numpy() for k, v in local.state_dict().items()}, len(y)))
        total = sum(w for _, w in replies)
        if total == 0:
            raise ValueError("no client holds a label: nothing to train on")
        agg: dict[str, np.ndarray] = {}
        for state, w in replies:  # Flower's aggregate_arrayrecords, same arithmetic
            for k, v in state.items():
                agg[k] = v * (w / total) if k not in agg else agg[k] + v * (w / total)
        global_state = agg
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in global_state.items()})
    return model


def random_rows(cfg: RunConfig, part: ClientData, pid: int, per_client_budget: int) -> np.ndarray:
    """Rows of ``part`` labelled by ``strategy=random`` after one query, in ledger order.

    Initial labels as ``ClientSession.ensure_initial_labels``; then ``budget_for`` picks drawn as
    ``query.random`` draws them (rng ``[seed, pid, cycle 0, salt 1]`` over the pool).
    """
    n = len(part.ids)
    initial = initial_rows(cfg, part, pid)
    pool = np.setdiff1d(np.arange(n), initial)  # data order, as ClientSession.pool()
    budget = max(0, min(per_client_budget, len(pool)))
    if budget == len(pool):
        picks = np.arange(len(pool))
    elif budget == 0:
        picks = np.zeros(0, np.int64)
    else:
        picks = np.random.default_rng([cfg.seed, pid, 0, 1]).choice(len(pool), size=budget, replace=False)
    return np.concatenate([initial, pool[picks]]).astype(np.int64)


def win_tie_loss(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    """Paired t-test per checkpoint (rows: checkpoints, columns: repeats); lower MSE wins.

    The counting of ``fal-report`` (:func:`launcher.report.paired_wtl`, p < 0.05), on arrays.
    """
    rows_a, rows_b = np.atleast_2d(a), np.atleast_2d(b)
    if rows_a.shape != rows_b.shape:
        raise ValueError(f"win_tie_loss: shapes differ ({rows_a.shape} vs {rows_b.shape})")
    w, t, loss, _ = paired_wtl(dict(enumerate(rows_a.tolist())), dict(enumerate(rows_b.tolist())), lower_is_better=True)
    return w, t, loss


# ------------------------------------------------------------------------------ the benchmark
BASELINES = ("bait", "acs-fw", "coreset", "badge", "lcmd", "logo-bait")  # FALE Table 2's order
METHODS = ("fale", "fale-local", "random", *BASELINES)
METRICS = ("mse", "median-se")


def run_config(args: argparse.Namespace, dataset: str, seed: int, **extra) -> RunConfig:
    return RunConfig.model_validate({
        "strategy": "fale", "dataset": dataset, "data-root": args.data_root, "seed": seed,
        "num-clients": args.clients, "regression-alpha": args.regression_alpha, "test-fraction": 0.2,
        "initial-labeled-fraction": args.initial_fraction, "num-cycles": 1, "budget-mode": "count", "budget-count": 1,
        "rounds-per-cycle": args.rounds, "local-epochs": args.local_epochs, "batch-size": args.batch_size,
        "optimizer": "adam", "lr": args.lr, "weight-decay": 0.0, "lr-decay-fraction": 1.0,
        "fale-block-size": args.block_size, "evaluation": "federated", **extra,
    })


def run_repeat(
    args: argparse.Namespace, dataset: str, seed: int, budgets: list[int], methods: Sequence[str] = METHODS,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
    """Both metrics of every method at every budget for one split (``seed``), and seconds per method."""
    cfg = run_config(args, dataset, seed)
    parts = [client_data(cfg, pid, cfg.num_clients) for pid in range(cfg.num_clients)]
    test = test_data(cfg, cfg.num_clients)
    d = parts[0].x.shape[1]
    out: dict[str, dict[str, list[float]]] = {m: {k: [] for k in METRICS} for m in methods}
    seconds = dict.fromkeys(methods, 0.0)

    def add(method: str, model: torch.nn.Module) -> None:
        out[method]["mse"].append(model_mse(model, test, cfg))
        out[method]["median-se"].append(median_squared_error(model, test.x, test.y))

    t0 = time.perf_counter()
    if {"fale", "fale-local"} & set(methods):
        feats = [client_features(p.x, cfg.fale_fit_intercept) for p in parts]
        curve = fale_curve(feats, [p.y for p in parts], budgets, seed=seed, block_size=cfg.fale_block_size)
        for point in curve:
            if "fale" in methods:
                add("fale", load_theta(build_model("linear", input_shape=(d,), num_outputs=1), point.theta, cfg.fale_fit_intercept))
            if "fale-local" in methods:
                rows = [np.array([j for i, j in point.selected if i == pid], dtype=np.int64) for pid in range(len(parts))]
                add("fale-local", fedavg_linear(cfg, [(p.x[r], p.y[r]) for p, r in zip(parts, rows, strict=True)], cycle=1, input_dim=d))
        seconds["fale"] = time.perf_counter() - t0
    if "random" in methods:
        t0 = time.perf_counter()
        for b in budgets:
            rnd = [random_rows(cfg, p, pid, b // cfg.num_clients) for pid, p in enumerate(parts)]
            add("random", fedavg_linear(cfg, [(p.x[r], p.y[r]) for p, r in zip(parts, rnd, strict=True)], cycle=1, input_dim=d))
        seconds["random"] = time.perf_counter() - t0
    queries = [b // (args.per_round * cfg.num_clients) for b in budgets]
    for name in (m for m in methods if m in BASELINES):
        t0 = time.perf_counter()
        bcfg = run_config(args, dataset, seed, strategy=name, evaluation="central",
                          **{"budget-count": args.per_round, "num-cycles": queries[-1]})
        history = baseline_rows(bcfg, parts, queries[-1])
        for q in queries:
            labelled = [(p.x[r], p.y[r]) for p, r in zip(parts, history[q], strict=True)]
            add(name, fedavg_linear(bcfg, labelled, cycle=q, input_dim=d))
        seconds[name] = time.perf_counter() - t0
    return out, seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="protein,kegg-undirected", help="comma-separated regression datasets")
    p.add_argument("--data-root", default="/work/shared/datasets/uci")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    p.add_argument("--repeats", type=int, default=10, help="repeats = split seeds 0..repeats-1 (paper: 10)")
    p.add_argument("--total-budget", type=int, default=15000, help="total labels at 100%% (paper: 15,000)")
    p.add_argument("--checkpoints", type=int, default=10, help="evaluate at 1/c, 2/c, ..., 100%% of the budget (paper: 10)")
    p.add_argument("--per-round", type=int, default=5, help="baselines' labels per client per query (paper: 5)")
    p.add_argument("--clients", type=int, default=10, help="paper: 10")
    p.add_argument("--regression-alpha", type=float, default=5.0, help="Dirichlet over target bins (paper: 5)")
    p.add_argument("--initial-fraction", type=float, default=0.01, help="Random's initial labels per client (paper: 1%%)")
    p.add_argument("--rounds", type=int, default=5, help="FedAvg rounds of FALE-local and Random (paper: not stated)")
    p.add_argument("--local-epochs", type=int, default=25, help="paper: 25 epochs")
    p.add_argument("--batch-size", type=int, default=64, help="paper: not stated")
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (paper: 0.01)")
    p.add_argument("--block-size", type=int, default=1000, help="FedSVD mask block size")
    p.add_argument("--json", default="", help="also write every value and the win/tie/loss tables here")
    p.add_argument("--plot", default="", help="also draw MSE and median squared error curves into this PNG")
    return p.parse_args(argv)


def _table(values: dict[str, np.ndarray], budgets: list[int], repeats: int) -> list[str]:
    lines = ["| labels | " + " | ".join(values) + " |", "|---:|" + "---:|" * len(values)]
    for k, b in enumerate(budgets):
        cells = [f"{v[k].mean():.4f} +- {v[k].std(ddof=1) if repeats > 1 else 0:.4f}" for v in values.values()]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)  # as the ClientApp (client-threads=1); also keeps runs reproducible
    # and BLAS too, as the ClientApp does: multi-threaded OpenBLAS on a shared box made the mask
    # QRs (FedSVD's dominant cost) 2.7x slower here
    threadpool_limits(1)
    datasets = [s.strip() for s in args.datasets.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)}; valid: {', '.join(METHODS)}")
    budgets = [fale_cycle_budget(args.total_budget, c, args.checkpoints) for c in range(args.checkpoints)]
    per_query = args.per_round * args.clients
    if any(m in BASELINES for m in methods) and any(b % per_query for b in budgets):
        raise SystemExit(f"--total-budget/--checkpoints: every checkpoint {budgets} must be a multiple of "
                         f"--per-round x --clients = {per_query} (the baselines query that many labels per round)")
    start = time.perf_counter()
    print(f"# {platform.platform()} | {platform.processor() or platform.machine()} | {os.cpu_count()} CPUs | torch and BLAS threads 1")
    print(f"# budgets {budgets}; repeats {args.repeats}; FedAvg R={args.rounds} x E={args.local_epochs}, "
          f"batch {args.batch_size}, Adam lr {args.lr}; {args.clients} clients, Dirichlet alpha {args.regression_alpha}; "
          f"baselines {args.per_round} labels per client per query")
    summary: dict = {"budgets": budgets, "args": vars(args), "datasets": {}}
    refs = [m for m in ("fale", "fale-local") if m in methods]
    pairs = [(a, b) for a in refs for b in methods if b != a]
    totals = {metric: {pair: np.zeros(3, dtype=int) for pair in pairs} for metric in METRICS}
    curves: dict = {}
    for dataset in datasets:
        t0 = time.perf_counter()
        values = {metric: {m: np.zeros((len(budgets), args.repeats)) for m in methods} for metric in METRICS}
        seconds = dict.fromkeys(methods, 0.0)
        for r in range(args.repeats):
            res, secs = run_repeat(args, dataset, r, budgets, methods)
            for m in methods:
                seconds[m] += secs[m]
                for metric in METRICS:
                    values[metric][m][:, r] = res[m][metric]
            print(f"  {dataset} repeat {r}: " + ", ".join(f"{m} {res[m]['mse'][-1]:.4f}" for m in methods)
                  + f" (MSE at {budgets[-1]}; {time.perf_counter() - t0:.0f} s)", flush=True)
        curves[dataset] = values
        wtl: dict = {}
        for metric in METRICS:
            print(f"\n## {dataset}: test {metric}, mean +- std over {args.repeats} repeats ({time.perf_counter() - t0:.0f} s)")
            print("\n".join(_table(values[metric], budgets, args.repeats)))
            wtl[metric] = {}
            for a, b in pairs:
                w = win_tie_loss(values[metric][a], values[metric][b])
                totals[metric][(a, b)] += w
                wtl[metric][f"{a} vs {b}"] = list(w)
            print(f"\nwin/tie/loss on {metric} (paired t-test, p < 0.05, over the checkpoints): "
                  + "; ".join(f"{k} {w[0]}/{w[1]}/{w[2]}" for k, w in wtl[metric].items()))
        print("\nseconds per method (all repeats): " + ", ".join(f"{m} {s:.0f}" for m, s in seconds.items()))
        summary["datasets"][dataset] = {
            **{metric: {m: values[metric][m].tolist() for m in methods} for metric in METRICS},
            "win-tie-loss": wtl, "seconds": seconds,
        }
    for metric in METRICS:
        print(f"\n## total win/tie/loss on {metric}: "
              + "; ".join(f"{a} vs {b} {w[0]}/{w[1]}/{w[2]}" for (a, b), w in totals[metric].items()))
        for a in refs:
            total = sum((w for (x, _), w in totals[metric].items() if x == a), np.zeros(3, dtype=int))
            print(f"   {a} vs all: {total[0]}/{total[1]}/{total[2]}")
    elapsed = time.perf_counter() - start
    print(f"# wall time {elapsed:.0f} s")
    summary["seconds"] = elapsed
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    if args.plot:
        curves_png(args.plot, budgets, curves)


if __name__ == "__main__":
    main()
