"""The benchmark's in-process library path gives what the Flower app gives (benchmarks/fale_benchmark.py).

FALE: same selected rows and theta as ``strategy=fale`` and as :func:`fedsvd.fale_fit`, at every
budget of one curve. FALE-local and Random: the same labels and the same trained model (test MSE) as
``strategy=fale-local`` / ``strategy=random`` through the app. The BMDAL baselines: the same ids per
query and the same model after two queries (benchmarks/fale_baselines.py).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from client_app.methods.fale import client_features
from fal_shared.config import RunConfig
from fal_shared.experiment_data import client_data
from fal_shared.experiment_data import test_data as held_out_data
from fedsvd import fale_fit
from server_app.inprocess import run_inprocess

_spec = importlib.util.spec_from_file_location(
    "fale_benchmark", Path(__file__).resolve().parents[1] / "benchmarks" / "fale_benchmark.py"
)
bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("fale_benchmark", bench)  # dataclasses look their module up there
_spec.loader.exec_module(bench)
bench_baselines = sys.modules["benchmarks.fale_baselines"]  # imported by the benchmark

K = 3


def settings(tmp_path, **kw):
    return {
        "dataset": "diabetes", "seed": 2, "num-clients": K, "num-cycles": 1, "rounds-per-cycle": 2, "local-epochs": 2,
        "batch-size": 32, "optimizer": "adam", "lr": 0.01, "weight-decay": 0.0, "lr-decay-fraction": 1.0,
        "initial-labeled-fraction": 0.01, "budget-mode": "count", "budget-count": 10, "fale-block-size": 64,
        "evaluation": "central", "run-name": "b", "output-dir": str(tmp_path), "state-dir": str(tmp_path / "s"), **kw,
    }


def data(cfg):
    return [client_data(cfg, p, K) for p in range(K)], held_out_data(cfg, K)


def test_fale_curve_equals_fale_fit_at_every_budget():
    cfg = RunConfig.model_validate(settings(Path("/tmp")))
    parts, _ = data(cfg)
    xs, ys = [client_features(p.x, False) for p in parts], [p.y for p in parts]
    curve = bench.fale_curve(xs, ys, [15, 40, 90], seed=5, block_size=64)
    for point in curve:
        ref = fale_fit(xs, ys, point.n_query, seed=5, block_size=64)
        assert point.selected == ref.selected and point.selection.n_draws == ref.n_draws
        np.testing.assert_allclose(point.theta, ref.theta, rtol=1e-12, atol=1e-14)
    # one sampling stream: a larger budget extends the smaller one's draws
    assert set(curve[0].selected) <= set(curve[1].selected) <= set(curve[2].selected)


def test_fale_library_path_matches_the_app(tmp_path):
    run = settings(tmp_path, strategy="fale", evaluation="federated", **{"fale-budget-count": 60})
    results = run_inprocess(run, num_clients=K)
    cfg = RunConfig.model_validate(run)
    parts, test = data(cfg)
    (point,) = bench.fale_curve([client_features(p.x, False) for p in parts], [p.y for p in parts], [60],
                                seed=cfg.seed, block_size=cfg.fale_block_size)
    app = sorted((p, int(np.searchsorted(parts[p].ids, i))) for p in range(K) for i in results["cycles"][0]["selected-ids"][str(p)])
    assert app == sorted(point.selected)
    # the app's federated evaluation of the clients' unmasked model = the library's test MSE of theta
    assert results["cycles"][1]["evaluation"]["mse"] == pytest.approx(bench.linear_mse(point.theta, test, cfg), rel=1e-6)


def test_fale_over_several_cycles_is_the_library_curve(tmp_path):
    """num-cycles=3: one FedSVD, nested selections at ceil(n_q (c+1) / 3), each the library's point at that budget."""
    run = settings(tmp_path, strategy="fale", evaluation="federated", **{"num-cycles": 3, "fale-budget-count": 60})
    results = run_inprocess(run, num_clients=K)
    cfg = RunConfig.model_validate(run)
    parts, test = data(cfg)
    curve = bench.fale_curve([client_features(p.x, False) for p in parts], [p.y for p in parts], [20, 40, 60],
                             seed=cfg.seed, block_size=cfg.fale_block_size)
    held: set = set()
    for c, point in enumerate(curve):
        cycle = results["cycles"][c]
        new = {(p, int(np.searchsorted(parts[p].ids, i))) for p in range(K) for i in cycle["selected-ids"][str(p)]}
        assert not new & held  # every client bought only rows it did not hold yet
        held |= new
        assert held == set(point.selected) and cycle["strategy"]["fale"]["n-query"] == point.n_query
        assert results["cycles"][c + 1]["labeled"] == point.n_query
        assert results["cycles"][c + 1]["evaluation"]["mse"] == pytest.approx(bench.linear_mse(point.theta, test, cfg), rel=1e-6)
    # the FedSVD ran once; later cycles only sample further, label and refit
    assert set(results["cycles"][1]["traffic"]) == {"evaluate", "query.fale_label", "query.fale_model"}
    assert set(results["cycles"][0]["traffic"]) > {"query.fale_mask", "query.fale_scores"}


def test_fale_local_library_path_matches_the_app(tmp_path):
    run = settings(tmp_path, strategy="fale-local", **{"fale-budget-count": 60})
    results = run_inprocess(run, num_clients=K)
    cfg = RunConfig.model_validate(run)
    parts, test = data(cfg)
    (point,) = bench.fale_curve([client_features(p.x, False) for p in parts], [p.y for p in parts], [60],
                                seed=cfg.seed, block_size=cfg.fale_block_size)
    rows = [np.array(sorted(j for i, j in point.selected if i == p), dtype=np.int64) for p in range(K)]
    for p in range(K):
        assert parts[p].ids[rows[p]].tolist() == results["cycles"][0]["selected-ids"][str(p)]
    torch.set_num_threads(1)
    model = bench.fedavg_linear(cfg, [(parts[p].x[rows[p]], parts[p].y[rows[p]]) for p in range(K)], cycle=1,
                                input_dim=parts[0].x.shape[1])
    assert results["cycles"][1]["evaluation"]["mse"] == pytest.approx(bench.model_mse(model, test, cfg), rel=1e-6)


def test_random_library_path_matches_the_app(tmp_path):
    run = settings(tmp_path, strategy="random", **{"budget-count": 20})
    results = run_inprocess(run, num_clients=K)
    cfg = RunConfig.model_validate(run)
    parts, test = data(cfg)
    rows = [bench.random_rows(cfg, parts[p], p, 20) for p in range(K)]
    for p in range(K):
        bought = results["cycles"][0]["selected-ids"][str(p)]
        assert parts[p].ids[rows[p]].tolist()[-20:] == bought  # the query's picks, in ledger order
        assert len(rows[p]) == results["cycles"][1]["labeled-per-client"][str(p)]
    torch.set_num_threads(1)
    model = bench.fedavg_linear(cfg, [(parts[p].x[rows[p]], parts[p].y[rows[p]]) for p in range(K)], cycle=1,
                                input_dim=parts[0].x.shape[1])
    assert results["cycles"][1]["evaluation"]["mse"] == pytest.approx(bench.model_mse(model, test, cfg), rel=1e-6)


def test_win_tie_loss_counts():
    rng = np.random.default_rng(0)
    base = rng.normal(1.0, 0.05, size=(3, 10))
    better = base - 0.2 + rng.normal(0, 0.01, size=base.shape)  # clearly lower MSE at every checkpoint
    noise = rng.normal(0, 0.01, size=(2, 10))
    mixed = np.vstack([base[0] - 0.2 + noise[0], base[1] + 0.2 + noise[1], base[2] + rng.normal(0, 1e-3, 10)])
    assert bench.win_tie_loss(better, base) == (3, 0, 0)
    assert bench.win_tie_loss(base, better) == (0, 0, 3)
    assert bench.win_tie_loss(mixed, base) == (1, 1, 1)
    assert bench.win_tie_loss(base, base) == (0, 3, 0)


BASELINES = ["bait", "lcmd", "acs-fw", "coreset", "badge", "logo-bait"]


@pytest.mark.parametrize("strategy", BASELINES)
def test_baseline_library_path_matches_the_app(tmp_path, strategy):
    """Two queries of each BMDAL baseline: the same ids per query and the same trained model as the app."""
    run = settings(tmp_path, strategy=strategy, **{"num-cycles": 2, "budget-count": 6, "initial-labeled-fraction": 0.05})
    results = run_inprocess(run, num_clients=K)
    cfg = RunConfig.model_validate(run)
    parts, test = data(cfg)
    history = bench_baselines.baseline_rows(cfg, parts, 2)
    for q in (1, 2):
        for p in range(K):
            new = history[q][p][len(history[q - 1][p]):]
            assert parts[p].ids[new].tolist() == results["cycles"][q - 1]["selected-ids"][str(p)]
    torch.set_num_threads(1)
    model = bench.fedavg_linear(cfg, [(parts[p].x[history[2][p]], parts[p].y[history[2][p]]) for p in range(K)],
                                cycle=2, input_dim=parts[0].x.shape[1])
    assert results["cycles"][2]["evaluation"]["mse"] == pytest.approx(bench.model_mse(model, test, cfg), rel=1e-6)


def test_baseline_selections_do_not_depend_on_the_linear_models_weights():
    """What lets the library path skip FedAvg between queries: BMDAL's ll/grad features of a linear model are [x, 1]."""
    from query import PoolContext, get_selector, run_selection
    from query.models import ModelBank
    from fal_shared.models import build_model
    from fal_shared.training import predict

    cfg = RunConfig.model_validate(settings(Path("/tmp")))
    part = data(cfg)[0][0]
    labelled, pool = np.arange(0, 40, 4), np.setdiff1d(np.arange(len(part.ids)), np.arange(0, 40, 4))

    def picks(name, params, weight_seed):
        model = build_model("linear", input_shape=(part.x.shape[1],), num_outputs=1, seed=weight_seed)
        with torch.no_grad():
            model.head.weight.mul_(50.0 * weight_seed)
        bank = ModelBank({k: (lambda: model) for k in ("global", "local-only")},
                         lambda m, x: predict(m, x, batch_size=64, device=torch.device("cpu"), task="regression"),
                         part.x[pool], part.x[labelled])
        ctx = PoolContext(pool_ids=part.ids[pool], labeled_ids=part.ids[labelled], labeled_y=part.y[labelled], budget=7,
                          num_classes=1, rng=np.random.default_rng(3), models=bank,
                          params={**cfg.to_flower(), **params}, task="regression")
        return run_selection(get_selector(name), ctx).ids.tolist()

    for strategy in BASELINES:
        name, params = bench_baselines.selection_round(RunConfig.model_validate({**settings(Path("/tmp")), "strategy": strategy}))
        assert picks(name, params, 1) == picks(name, params, 2), strategy
