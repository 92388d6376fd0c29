"""results.json of real runs validates against its documented schema (server_app/results_schema.py).

The docs' results.json page is generated from that schema, so a key the code
writes and the schema does not name fails here, and a documented key the code
no longer writes shows as never present. The Flower-runtime, failure and
labeling tests validate their runs' files too (simulation, deployment, lost
clients, people labeling).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from server_app.inprocess import run_inprocess
from server_app.results_schema import validate_results

RUNS = {
    "entropy": {"strategy": "entropy"},
    "ahfal-dp": {"strategy": "ahfal", "ahfal-dp-epsilon": 5.0, "ahfal-dp-noise-seed": "run-seed",
                 "record-label-histograms": False},
    "ahfal-secure": {"strategy": "ahfal", "ahfal-secure-sum": True},
    "fairfal": {"strategy": "fairfal", "local-only-epochs": 2},
    "fale": {"strategy": "fale", "dataset": "diabetes", "num-cycles": 2},
    # the campaign (server_app/campaign.py): audit labels with top-ups, the random share's shadow model, every
    # rule, a calibration warning (no model is that calibrated), the MLflow tracker in a local store
    "campaign": {"strategy": "entropy", "audit-size": 0.2, "audit-topup": 2, "random-share": 0.5,
                 "calibration-max-ece": 1e-6, "tracker": "mlflow"},
    "campaign-regression": {"strategy": "random", "dataset": "diabetes", "audit-size": 0.2},
    # stopped before the last cycle: every normalised entropy is below 1.0
    "campaign-stop": {"strategy": "entropy", "stop-when": "max-uncertainty", "stop-max-uncertainty": 1.0},
}


def _run(small_run, name: str) -> dict:
    run_inprocess({**small_run, **RUNS[name], "run-name": name}, num_clients=2)
    return json.loads((Path(small_run["output-dir"]) / name / "results.json").read_text())


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_real_runs_results_json_validates(small_run, name):
    data = _run(small_run, name)
    results = validate_results(data)
    cycles = 1 if name == "campaign-stop" else data["config"]["num-cycles"] + 1
    assert results.status == "completed" and len(results.cycles) == cycles
    if name.startswith("campaign"):
        camp = results.cycles[0].campaign
        assert camp is not None and camp.rules and camp.measured is not None
        if name == "campaign":
            assert camp.audit.metric == "accuracy" and camp.audit.pooled.n > 0 and camp.random.pooled is not None
            assert camp.calibration.ece is not None and results.campaign_warnings
            assert results.cycles[1].campaign.random_share_bought > 0
            assert results.tracking.tracker == "mlflow" and results.tracking.run_id
        if name == "campaign-regression":
            assert camp.audit.metric == "mse" and camp.calibration is None
        if name == "campaign-stop":
            assert results.stop.cycle == 0 and "max-uncertainty" in results.stop.reason
            return
    queried = [c for c in results.cycles if c.strategy is not None]
    assert queried, "every run queries at least once"
    record = queried[0].strategy
    if name.startswith("ahfal"):
        assert record.ahfal is not None and record.ahfal.secure_sum == (name == "ahfal-secure")
        assert (record.dp_epsilon_spent is not None) == (name == "ahfal-dp")
        assert (results.cycles[0].labels_per_class_per_client is None) == (name == "ahfal-dp")
    if name == "fairfal":
        assert record.g_bar is not None and record.statistics_round
    if name == "fale":
        assert record.fale is not None and results.cycles[-1].evaluation.where == "federated"
        assert results.strategy_defaults == {"evaluation": "federated"}
    assert results.totals.wall_seconds > 0 and results.totals.final_evaluation is not None


def test_a_key_the_schema_does_not_name_is_an_error_except_in_a_strategys_record(small_run):
    data = _run(small_run, "entropy")
    with pytest.raises(ValidationError, match="surprise"):
        validate_results({**data, "surprise": 1})
    cycle = {**data["cycles"][0], "surprise": 1}
    with pytest.raises(ValidationError, match="surprise"):
        validate_results({**data, "cycles": [cycle]})
    queried = next(c for c in data["cycles"] if "strategy" in c)
    extra = {**queried, "strategy": {**queried["strategy"], "a-new-strategys-value": [1, 2]}}
    validate_results({**data, "cycles": [extra]})  # strategy-specific extras are allowed
