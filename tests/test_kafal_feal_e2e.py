"""kafal, kafal-ksas and feal through the real ServerApp/ClientApp loop (in-process, digits), and their registration."""

from __future__ import annotations

import pytest

from fal_shared.config import ConfigError, RunConfig, parse_run_config
from server_app.inprocess import run_inprocess
from strategies import STRATEGIES


@pytest.fixture
def run(small_run):
    """``run(name, strategy, **run-config)``: a one-cycle in-process run on 3 digits clients."""

    def _run(name: str, strategy: str, **extra):
        overrides = {
            **small_run, "num-cycles": 1, "train-subset-size": 300, "feal-subset-size": 40,
            "run-name": name, "strategy": strategy, **extra,
        }
        return run_inprocess(overrides, num_clients=3)

    return _run


def _check_selection(results):
    assert results["status"] == "completed"
    first, second = results["cycles"]
    assert first["traffic"]["query.select"]["messages-sent"] == 3
    assert first["traffic"]["query.select"]["bytes-sent"] > 3 * 100_000  # the global model went out
    for pid, ids in first["selected-ids"].items():
        assert len(ids) == len(set(ids)) == first["budgets"][pid] > 0
        assert second["labeled-per-client"][pid] == first["labeled-per-client"][pid] + len(ids)
    return first["strategy"]["client-diagnostics"]


@pytest.mark.parametrize("strategy", ["kafal", "kafal-ksas"])
def test_kafal_runs_one_cycle_through_real_messages(run, strategy):
    diagnostics = _check_selection(run("t", strategy))
    assert all(d["kafal-labeled-classes"] >= 1 and d["kafal-mean-discrepancy"] >= 0 for d in diagnostics.values())


def test_feal_runs_one_cycle_through_real_messages(run):
    results = run("t", "feal")
    diagnostics = _check_selection(results)
    assert all(d["feal-subset"] == 40 for d in diagnostics.values())
    evaluation = results["cycles"][-1]["evaluation"]
    assert 0 <= evaluation["accuracy"] <= 1 and evaluation["loss"] > 0


def test_the_objective_changes_training_and_only_training(run):
    """kafal and kafal-ksas select alike and train differently; the train messages carry nothing more."""
    # equal-length run names: the run name travels in every message
    ksas = run("run-a", "kafal-ksas")
    kcfu = run("run-b", "kafal")
    random_kcfu = run("run-c", "random", **{"local-objective": "kcfu"})
    random_ce = run("run-d", "random")
    acc = lambda r: [c["evaluation"]["accuracy"] for c in r["cycles"]]  # noqa: E731
    assert acc(ksas) != acc(kcfu)
    assert acc(random_ce) != acc(random_kcfu)
    # same random selection in cycle 0 (the model is not used), different training
    assert random_ce["cycles"][0]["selected-ids"] == random_kcfu["cycles"][0]["selected-ids"]
    for r in (kcfu, random_kcfu):
        assert r["cycles"][0]["traffic"]["train"]["bytes-sent"] == random_ce["cycles"][0]["traffic"]["train"]["bytes-sent"]


def test_strategies_are_registered_with_their_objectives():
    expected = {"kafal": "kcfu", "kafal-ksas": "cross-entropy", "feal": "edl", "entropy": "cross-entropy"}
    for name, objective in expected.items():
        assert STRATEGIES[name].objective == objective
        assert STRATEGIES[name].description and STRATEGIES[name].source
        assert RunConfig.model_validate({"strategy": name}).resolved_objective() == objective
    cfg = RunConfig.model_validate({"strategy": "ahfal", "local-objective": "kcfu"})
    assert cfg.resolved_objective() == "kcfu" and cfg.resolved_head() == "softmax"
    assert RunConfig.model_validate({"strategy": "feal"}).resolved_head() == "evidential"
    with pytest.raises(ConfigError, match="local-objective: unknown objective 'focal'"):
        parse_run_config({"local-objective": "focal"})
    with pytest.raises(ConfigError, match="local-objective: 'edl' trains classifiers only"):
        parse_run_config({"local-objective": "edl", "dataset": "diabetes"})
    with pytest.raises(ConfigError, match="kafal-mixup-partner"):
        parse_run_config({"kafal-mixup-partner": "ring"})
