"""A labeling campaign end to end in-process: audit labels kept apart, stopping rules that stop a run,
the calibration flag, the random share, and clear errors for impossible settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client_app.app import app as client_app
from client_app.ledger import LabelLedger
from fal_shared.config import ConfigError, RunConfig, parse_run_config
from server_app.app import run_experiment
from server_app.inprocess import InProcessGrid, run_inprocess


def _ledger(run, pid):
    return LabelLedger(Path(run["state-dir"]) / run["run-name"] / f"partition-{pid}.json")


def _grid(overrides, n=3):
    run_config = {**RunConfig().to_flower(), **overrides, "num-clients": n}
    nodes = [{"partition-id": i, "num-partitions": n} for i in range(n)]
    return InProcessGrid(client_app, run_config, nodes), run_config


def test_audit_labels_are_bought_apart_never_trained_on_and_reported_per_site(small_run):
    run = {**small_run, "strategy": "entropy", "audit-size": 0.1, "audit-topup": 2}
    grid, run_config = _grid(run)
    results = run_experiment(grid, run_config)
    assert results["status"] == "completed" and "stop" not in results
    cycles = results["cycles"]
    sizes = {p: c["data-size"] for p, c in results["clients"].items()}
    for k, c in enumerate(cycles):
        audit = c["campaign"]["audit"]
        first = sum(-(-s // 10) for s in sizes.values())  # ceil(0.1 x data size) per site
        assert audit["held"] == first + 3 * 2 * k  # topped up after every evaluation before a query
        pooled = audit["pooled"]
        assert pooled["n"] == audit["held"] and pooled["ci-low"] <= pooled["estimate"] <= pooled["ci-high"]
        assert set(audit["per-site"]) == set(sizes)
        assert set(c["campaign"]["rules"]) == {"stabilizing-predictions", "max-uncertainty", "gain-per-label",
                                               "budget-exhausted"}
        assert c["campaign"]["calibration"]["bins"] == 15 and "ece" in c["campaign"]["calibration"]
    assert cycles[0]["campaign"]["measured"]["kappa"] is None and cycles[1]["campaign"]["measured"]["kappa"] is not None
    assert cycles[1]["campaign"]["measured"]["paired-gain"] is not None
    for pid in range(3):
        ledger = _ledger(run, pid)
        audit_ids, train_ids = set(ledger.audit_ids().tolist()), set(ledger.labeled_ids().tolist())
        assert audit_ids and not audit_ids & train_ids  # kept apart: no audit sample is ever trained on
        assert len(ledger) == cycles[-1]["labeled-per-client"][str(pid)]  # "labeled" counts training labels only
        selected = {i for c in cycles[:-1] for i in c["selected-ids"][str(pid)]}
        assert not selected & audit_ids  # the strategy never chose an audit sample
        assert {e.strategy for e in ledger.entries if e.sample_id in audit_ids} == {"audit"}
    # the query budget is not spent on audit labels: the same labeled counts as a run without them
    plain = run_inprocess({**small_run, "strategy": "entropy", "run-name": "plain"}, num_clients=3)
    assert [c["labeled-per-client"] for c in plain["cycles"]] == [c["labeled-per-client"] for c in cycles]
    # every audit purchase went through query.audit (one per site at setup and per top-up), nothing twice
    assert sum(1 for kind, _ in grid.log if kind == "query.audit") == 3 * (1 + 3 + 2)
    header = (Path(run["output-dir"]) / "test-run" / "cycles.csv").read_text().splitlines()[0].split(",")
    assert {"audit-estimate", "audit-ci-low", "audit-ci-high", "ece", "auroc"} <= set(header)


@pytest.mark.parametrize("rule,extra,stops_at", [
    ("budget-exhausted", {"label-budget": 60}, 0),
    ("stabilizing-predictions", {"stop-kappa": -1.0 + 1e-9, "stop-window": 1}, 1),
    ("gain-per-label", {"audit-size": 0.1, "stop-gain-per-label": 1.0, "stop-window": 1}, 1),
    ("max-uncertainty", {"stop-max-uncertainty": 1.0}, 0),
])
def test_each_stopping_rule_fires_and_stops_the_run_before_buying_more(small_run, rule, extra, stops_at):
    run = {**small_run, "strategy": "entropy", "num-cycles": 3, "stop-when": rule, **extra}
    grid, run_config = _grid(run)
    results = run_experiment(grid, run_config)
    assert results["status"] == "completed"
    assert results["stop"]["cycle"] == stops_at and results["stop"]["reason"].startswith(rule)
    assert len(results["cycles"]) == stops_at + 1
    last = results["cycles"][-1]
    assert last["campaign"]["rules"][rule]["fired"] and last["campaign"]["stop"]
    assert "selected-ids" not in last  # no query phase after the decision
    assert sum(1 for kind, _ in grid.log if kind == "query.select") == 3 * stops_at
    assert sum(1 for kind, _ in grid.log if kind == "query.finish") == 3  # released as a completed run
    for pid in range(3):  # nothing bought after the decision
        ledger = _ledger(run, pid)
        assert ledger.purchase(f"cycle-{stops_at}-select") is None
    saved = json.loads((Path(run["output-dir"]) / "test-run" / "results.json").read_text())
    assert saved["status"] == "completed" and saved["stop"] == results["stop"]


def test_all_combine_waits_for_every_rule(small_run):
    run = {**small_run, "strategy": "random", "num-cycles": 2, "stop-when": "max-uncertainty,stabilizing-predictions",
           "stop-when-combine": "all", "stop-max-uncertainty": 1.0, "stop-kappa": -1.0 + 1e-9, "stop-window": 1}
    results = run_inprocess(run, num_clients=2)
    assert results["stop"]["cycle"] == 1  # max-uncertainty fires at 0, the kappa only from cycle 1
    assert results["cycles"][0]["campaign"]["rules"]["max-uncertainty"]["fired"]


def test_a_miscalibrated_model_is_flagged_in_the_results_and_the_log(small_run, monkeypatch, capsys):
    import client_app.audit as audit

    real = audit.classification_sums

    def permuted(probs, y, bins):  # the model's outputs with classes 0-4 rotated: confidence says nothing
        perm = np.concatenate([np.roll(np.arange(5), 2), np.arange(5, 10)])
        eye = np.eye(10)[np.asarray(y) if len(y) else np.zeros(0, int)]
        confident = 0.9 * eye[:, perm] + 0.01  # a confident model, wrong on classes 0-4
        return real(confident / confident.sum(axis=1, keepdims=True), y, bins)

    monkeypatch.setattr(audit, "classification_sums", permuted)
    results = run_inprocess({**small_run, "strategy": "random", "num-cycles": 1, "audit-size": 0.2}, num_clients=2)
    flags = results["cycles"][0]["campaign"]["calibration"]["flags"]
    assert "miscalibrated" in flags and "uninformative-uncertainty" in flags
    assert {w["flag"] for w in results["campaign-warnings"]} == {"miscalibrated", "uninformative-uncertainty"}
    assert "calibration check: uninformative-uncertainty" in capsys.readouterr().out


def test_random_share_trains_a_shadow_model_on_the_random_labels(small_run):
    run = {**small_run, "strategy": "entropy", "audit-size": 0.1, "random-share": 0.5}
    grid, run_config = _grid(run, n=2)
    results = run_experiment(grid, run_config)
    cycles = results["cycles"]
    initial = sum(c["initial-labeled"] for c in results["clients"].values())
    for k, c in enumerate(cycles):
        camp = c["campaign"]
        assert camp["random"]["pooled"]["n"] == camp["audit"]["pooled"]["n"]
        expected = initial + sum(x["campaign"]["random-share-bought"] for x in cycles[:k])
        assert camp["measured"]["random-arm-labels"] == expected
    assert cycles[0]["campaign"]["random"]["pooled"]["estimate"] == cycles[0]["campaign"]["audit"]["pooled"]["estimate"]
    for pid in range(2):
        ledger = _ledger(run, pid)
        random_ids = ledger.purchase("cycle-0-random")
        strategy_ids = set(cycles[0]["selected-ids"][str(pid)])
        full = len(random_ids) + len(strategy_ids)
        assert len(random_ids) == -(-full // 2)  # ceil(random-share x budget)
        assert not strategy_ids & set(random_ids.tolist())
        # the budget is split: random share + the strategy's picks = the full budget
        assert len(random_ids) + len(strategy_ids) == cycles[1]["labeled-per-client"][str(pid)] - cycles[0]["labeled-per-client"][str(pid)]
    assert sum(1 for kind, _ in grid.log if kind == "query.shadow_train") == 2 * 2 * 3  # 2 sites x 2 rounds x 3 cycles


@pytest.mark.parametrize("overrides,message", [
    ({"stop-when": "kappa"}, "unknown rule(s) 'kappa'"),
    ({"stop-when": "gain-per-label"}, "set audit-size > 0"),
    ({"audit-size": 0.95}, "more than every site's whole data"),
    ({"audit-mode": "count", "audit-size": 1.5}, "number of samples"),
    ({"audit-topup": 3}, "audit-size is 0"),
    ({"random-share": 0.2}, "scored on the audit sample"),
    ({"tracking-uri": "http://127.0.0.1:1"}, "set tracker=\"mlflow\""),
    ({"dataset": "diabetes", "stop-when": "stabilizing-predictions"}, "classification only"),
])
def test_impossible_campaign_settings_fail_before_anything_runs(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_run_config(overrides)


def test_an_audit_sample_larger_than_a_pool_fails_at_setup_before_training(small_run):
    grid, run_config = _grid({**small_run, "audit-mode": "count", "audit-size": 500})
    with pytest.raises(ValueError, match="audit-size: partition 0 would set aside 500 audit samples.*besides its initial labels"):
        run_experiment(grid, run_config)
    assert not any(kind == "train" for kind, _ in grid.log)
