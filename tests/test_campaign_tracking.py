"""The tracker's grouping (one MLflow run per experiment, one parent per sweep) and the launchers' early checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from fal_shared.config import parse_run_config
from launcher.cli_common import check_campaign
from server_app.inprocess import run_inprocess
from tests.test_sweep import TINY

# the sweep tests' tiny sweep, renamed, with audit labels and the tracker (run with --where strategy=random)
SWEEP = TINY.replace('name = "tiny"', 'name = "tiny-tracked"').replace(
    "score-batch-size = 256\n", 'score-batch-size = 256\naudit-size = 0.1\ntracker = "mlflow"\n')


def test_a_sweep_is_one_mlflow_experiment_with_a_parent_run_and_a_child_per_point(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from launcher.sweep import main

    sweep_file = tmp_path / "sweep.toml"
    assert 'tracker = "mlflow"' in SWEEP
    sweep_file.write_text(SWEEP)
    output = tmp_path / "out"
    args = [str(sweep_file), "--output", str(output), "--scheduler", "processes", "--num-cpus", "1", "--no-report",
            "--progress-seconds", "1", "--where", "strategy=random"]
    assert main(args) == 0
    assert main(args) == 0  # resumed: every run skipped, the parent found again
    client = MlflowClient(f"sqlite:///{output / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny-tracked")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("fal.sweep-parent") == "tiny-tracked"]
    children = [r for r in runs if "fal.run-name" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["fal.run-name"] for r in children} == {"random-seed0", "random-seed1"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["fal.status"] == "completed"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "audit/estimate")] == [0, 1]
        assert run.data.params["tracking-experiment"] == "tiny-tracked"


def test_the_local_store_is_beside_the_results_and_a_failed_log_does_not_fail_the_run(small_run, monkeypatch):
    pytest.importorskip("mlflow")
    run = {**small_run, "num-cycles": 1, "tracker": "mlflow"}
    first = run_inprocess(run, num_clients=2)
    assert first["tracking"]["uri"] == f"sqlite:///{Path(small_run['output-dir']).resolve() / 'mlflow.db'}"

    from mlflow.tracking import MlflowClient

    real = MlflowClient.log_batch

    def broken(self, run_id, metrics=(), **kwargs):  # the server goes away after the run was created
        if metrics:
            raise ConnectionError("tracking server went away")
        return real(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", broken)
    other = run_inprocess({**run, "run-name": "second"}, num_clients=2)
    assert other["status"] == "completed"  # the tracker is a view: the run goes on, the failures are recorded
    assert other["tracking"]["run-id"] != first["tracking"]["run-id"]
    assert any("tracking server went away" in e for e in other["tracking"]["errors"])


def test_launcher_checks_refuse_an_unreachable_tracker_and_an_audit_sample_too_large(tmp_path):
    pytest.importorskip("mlflow")
    from launcher.flower_processes import free_port

    cfg = parse_run_config({"tracker": "mlflow", "tracking-uri": f"http://127.0.0.1:{free_port()}", "num-clients": 2})
    with pytest.raises(ValueError, match="does not answer"):
        check_campaign(cfg)
    cfg = parse_run_config({"audit-mode": "count", "audit-size": 700, "num-clients": 2})
    with pytest.raises(ValueError, match="audit-size: partition 0 would set aside 700"):
        check_campaign(cfg)
    check_campaign(parse_run_config({"audit-size": 0.1, "num-clients": 2}))  # fits: no error
