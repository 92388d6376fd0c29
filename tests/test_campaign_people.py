"""People label the audit sample (file oracle); the tracker shows the audit curve while the run waits for labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from client_app.ledger import LabelLedger
from server_app.app import run_experiment
from server_app.labels import LabelsPending
from tests.test_labeling import _config, _grid, _person_fills_csvs


def test_people_label_the_audit_sample_and_the_tracker_shows_its_curve_while_waiting(small_run, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run_config = _config(small_run, tmp_path, **{"audit-size": 0.1, "tracker": "mlflow"})
    folder, state = tmp_path / "to-label", Path(small_run["state-dir"])
    grid = _grid(run_config, {i: {"oracle": "file", "label-folder": str(folder)} for i in range(2)})
    with pytest.raises(LabelsPending):  # the initial labels and the audit sample wait for a person
        run_experiment(grid, run_config)
    audit_csvs = sorted(folder.glob("*/partition-*/audit-0/labels.csv"))
    assert len(audit_csvs) == 2
    rows = list(csv.DictReader(open(audit_csvs[0])))
    assert rows and all(r["prediction"] == "" for r in rows)  # no model guess to anchor the person
    _person_fills_csvs(state, run_config)
    with pytest.raises(LabelsPending):  # cycle 0 trains, measures the audit sample, queries, waits again
        run_experiment(grid, run_config)
    results = json.loads((Path(small_run["output-dir"]) / "test-run" / "results.json").read_text())
    assert results["status"] == "waiting-for-labels" and results["cycles"] == []
    client = MlflowClient(results["tracking"]["uri"])
    run_id = results["tracking"]["run-id"]
    curve = client.get_metric_history(run_id, "audit/estimate")
    assert [m.step for m in curve] == [0]  # the audit curve is there while the run waits for the query labels
    low = client.get_metric_history(run_id, "audit/ci-low")[0].value
    assert 0 <= low <= curve[0].value
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags["fal.status"] == "waiting-for-labels"
    while True:
        _person_fills_csvs(state, run_config)
        try:
            results = run_experiment(grid, run_config)
            break
        except LabelsPending:
            pass
    assert results["status"] == "completed" and results["tracking"]["run-id"] == run_id  # the same MLflow run
    assert [m.step for m in client.get_metric_history(run_id, "audit/estimate")] == [0, 1, 2]
    assert client.get_run(run_id).info.status == "FINISHED"
    for pid in range(2):
        ledger = LabelLedger(state / "test-run" / f"partition-{pid}.json")
        audit = set(ledger.audit_ids().tolist())
        assert audit and not audit & set(ledger.labeled_ids().tolist())
        assert {e.labeled_by for e in ledger.entries if e.sample_id in audit} == {"dr.a"}
