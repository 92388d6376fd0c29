"""badge, coreset, noise-stability and logo through the real ServerApp/ClientApp loop (in-process, digits)."""

from __future__ import annotations

import pytest

from fal_shared.config import RunConfig
from server_app.inprocess import run_inprocess
from strategies import STRATEGIES, create_strategy

BASE = {
    "num-cycles": 1,
    "rounds-per-cycle": 1,
    "local-epochs": 1,
    "train-subset-size": 300,
    "noise-stability-num-copies": 3,
    "local-only-epochs": 5,
    "logo-kmeans-n-init": 2,
}


def _run(tmp_path, strategy: str, **extra):
    overrides = {
        **BASE,
        "strategy": strategy,
        "output-dir": str(tmp_path),
        "state-dir": str(tmp_path / "state"),
        "run-name": "t",
        **extra,
    }
    return run_inprocess(overrides, num_clients=3)


@pytest.mark.parametrize("strategy", ["badge", "coreset", "noise-stability", "logo"])
def test_strategy_runs_one_cycle_through_real_messages(tmp_path, strategy):
    results = _run(tmp_path, strategy)
    assert results["status"] == "completed"
    first, second = results["cycles"]
    assert first["traffic"]["query.select"]["messages-sent"] == 3
    # the global model went out with the selection round (the query model / LoGo's entropy model)
    assert first["traffic"]["query.select"]["bytes-sent"] > 3 * 100_000
    for pid, ids in first["selected-ids"].items():
        assert len(ids) == first["budgets"][pid] > 0
        assert len(set(ids)) == len(ids)
        assert second["labeled-per-client"][pid] == first["labeled-per-client"][pid] + len(ids)
    diagnostics = first.get("strategy", {}).get("client-diagnostics", {})
    if strategy == "noise-stability":
        assert all(d["noise-stability-mean-deviation"] > 0 for d in diagnostics.values())
    if strategy == "logo":
        assert all(d["logo-clusters-found"] >= 1 for d in diagnostics.values())


def test_local_only_query_model_keeps_the_global_model_home(tmp_path):
    results = _run(tmp_path, "badge", **{"query-model": "local-only"})
    first = results["cycles"][0]
    assert results["status"] == "completed"
    assert first["traffic"]["query.select"]["bytes-sent"] < 3 * 20_000  # config only, no weights
    assert all(len(ids) == first["budgets"][p] for p, ids in first["selected-ids"].items())


def test_strategies_are_registered_and_logo_rejects_a_query_model():
    for name in ("badge", "coreset", "noise-stability", "logo"):
        assert "classification" in STRATEGIES[name].tasks
        assert STRATEGIES[name].description and STRATEGIES[name].source
    # badge and coreset also run on regression (BMDAL k-means++ / MaxDist, tests/test_regression_baselines.py)
    assert STRATEGIES["badge"].tasks == STRATEGIES["coreset"].tasks == ("classification", "regression")
    with pytest.raises(ValueError, match="query-model"):
        create_strategy(RunConfig.model_validate({"strategy": "logo", "query-model": "local-only"}))
    with pytest.raises(ValueError, match="classification"):
        create_strategy(RunConfig.model_validate({"strategy": "noise-stability", "dataset": "diabetes"}))
