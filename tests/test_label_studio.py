"""The Label Studio oracle against a real Label Studio server (SQLite, free port, temporary data folder).

A short experiment with 2 sites whose oracle is Label Studio: a helper plays
the person and answers every task through Label Studio's API as its web page
does (POST /api/tasks/<id>/annotations/), with the true labels. The first
ServerApp (a separate process, the sites with it) is killed while the first
query's labels are pending; a fresh one with the same run name resumes. The
run must end with exactly the labels, choices and accuracies of the
simulation oracle, and the projects must hold one task per queried sample
with the global model's prediction.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from client_app.ledger import LabelLedger
from fal_shared.config import RunConfig, parse_run_config
from fal_shared.experiment_data import client_data
from server_app.app import run_experiment
from server_app.inprocess import run_inprocess

pytestmark = pytest.mark.label_studio
ROOT = Path(__file__).resolve().parents[1]


def _ls(server):
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=server.url, api_key=server.token)


def _project_id(ls, title: str) -> int | None:
    found = [p for p in ls.projects.list(title=title) if p.title == title]
    return found[0].id if found else None


def _tasks(ls, title: str, query: str) -> list:
    pid = _project_id(ls, title)
    return [] if pid is None else [t for t in ls.tasks.list(project=pid, fields="all") if t.data.get("query") == query]


def _answer(ls, tasks, cfg, partition: int) -> int:
    """The person: label each unanswered task with its true class, as the Label Studio page does."""
    data = client_data(cfg, partition, cfg.num_clients)
    done = 0
    for t in tasks:
        if t.annotations:
            continue
        sid = int(t.data["sample_id"])
        label = int(data.y[data.rows(np.array([sid]))[0]])
        ls.annotations.create(id=t.id, result=[{"from_name": "label", "to_name": "image", "type": "choices",
                                                "value": {"choices": [str(label)]}}])
        done += 1
    return done


def _wait_for(what: str, check, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the ServerApp process exited ({proc.returncode}) while waiting for {what}:\n"
                                 + (log.read_text()[-3000:] if log else ""))
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{log.read_text()[-3000:]}" if log else ""))


def test_two_sites_label_in_label_studio_and_the_run_survives_a_serverapp_restart(label_studio, small_run, tmp_path):
    overrides = {**small_run, "strategy": "entropy", "num-cycles": 1, "label-poll-seconds": 0.5}
    reference = run_inprocess({**overrides, "run-name": "reference", "state-dir": str(tmp_path / "ref-state")}, num_clients=2)
    token_file = tmp_path / "ls-token"
    token_file.write_text(label_studio.token + "\n")
    nodes = [
        {"oracle": "label-studio", "label-studio-url": label_studio.url, "label-studio-token-file": str(token_file),
         "label-studio-project": "site-0"},
        {"oracle": "label-studio", "label-studio-url": label_studio.url, "label-studio-token": label_studio.token,
         "label-studio-project": "site-1"},
    ]
    run_config = {**RunConfig().to_flower(), **overrides, "num-clients": 2}
    cfg = parse_run_config(run_config)
    ls = _ls(label_studio)
    folder = Path(small_run["output-dir"]) / "test-run"
    log = tmp_path / "serverapp-1.log"

    # the first ServerApp, with the sites, in a process of its own
    script = ("import json, sys; from server_app.inprocess import run_inprocess; "
              "run_inprocess(json.loads(sys.argv[1]), num_clients=2, node_configs=json.loads(sys.argv[2]))")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(overrides), json.dumps(nodes)], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for pid in (0, 1):  # the initial labels are asked of the people too
            tasks = _wait_for(f"the initial tasks of site {pid}", lambda: _tasks(ls, f"site-{pid}", "initial"), 180, proc, log)
            assert _answer(ls, tasks, cfg, pid) == reference["clients"][str(pid)]["initial-labeled"]

        def query_pending():
            if not (folder / "checkpoint.json").exists():
                return None
            saved = json.loads((folder / "checkpoint.json").read_text())
            ready = saved["stage"] == "labels" and all(_tasks(ls, f"site-{p}", "cycle-0-select") for p in (0, 1))
            return ready and log.read_text().count("[FAL] waiting for labels") >= 2

        _wait_for("the first query's tasks", query_pending, 300, proc, log)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the ServerApp dies while the labels are pending
        proc.wait(timeout=30)
    assert json.loads((folder / "results.json").read_text())["status"] == "running"  # no time to say goodbye
    for pid in (0, 1):
        ledger = LabelLedger(Path(small_run["state-dir"]) / "test-run" / f"partition-{pid}.json")
        assert len(ledger.pending_ids("cycle-0-select")) == reference["cycles"][0]["budgets"][str(pid)]
        _answer(ls, _tasks(ls, f"site-{pid}", "cycle-0-select"), cfg, pid)  # meanwhile, the people label

    # a fresh ServerApp and fresh sites, same run name: it resumes and completes
    from client_app.app import app as client_app
    from server_app.inprocess import InProcessGrid

    grid = InProcessGrid(client_app, run_config, [{"partition-id": i, "num-partitions": 2, **nodes[i]} for i in range(2)])
    results = run_experiment(grid, run_config)
    assert results["status"] == "completed" and len(results["resumed"]) == 1
    assert not [kind for kind, _ in grid.log if kind == "query.select"], "resuming must not select again"
    # exactly the simulation oracle's run
    for mine, ref in zip(results["cycles"], reference["cycles"], strict=True):
        assert mine["evaluation"]["accuracy"] == ref["evaluation"]["accuracy"]
        assert mine["labeled-per-client"] == ref["labeled-per-client"]
        assert mine.get("selected-ids") == ref.get("selected-ids")
    for pid in (0, 1):
        mine = LabelLedger(Path(small_run["state-dir"]) / "test-run" / f"partition-{pid}.json")
        ref = LabelLedger(tmp_path / "ref-state" / "reference" / f"partition-{pid}.json")
        assert dict(zip(mine.labeled_ids().tolist(), mine.labels().tolist())) == dict(
            zip(ref.labeled_ids().tolist(), ref.labels().tolist()))
        assert {e.labeled_by for e in mine.entries} == {label_studio.user} and all(e.labeled_at for e in mine.entries)
        assert mine.pending_queries() == {}
        # the project holds one task per queried sample, the query's with the global model's prediction
        tasks = list(ls.tasks.list(project=_project_id(ls, f"site-{pid}"), fields="all"))
        assert sorted(int(t.data["sample_id"]) for t in tasks) == sorted(mine.labeled_ids().tolist())
        queried = [t for t in tasks if t.data["query"] == "cycle-0-select"]
        assert len(queried) == reference["cycles"][0]["budgets"][str(pid)]
        priorities = sorted(t.data["priority"] for t in queried)
        assert priorities == list(range(1, len(queried) + 1))
        for t in queried:
            (prediction,) = t.predictions
            (item,) = prediction.result
            assert item["from_name"] == "label" and 0 <= int(item["value"]["choices"][0]) < 10
            assert 0 < prediction.score <= 1 and "cycle 0 global model" in prediction.model_version
            assert t.data["image"].startswith("data:image/png;base64,")


def test_unreachable_label_studio_keeps_labels_pending_and_a_bad_token_is_a_clear_error(label_studio, small_run, tmp_path):
    from client_app.oracle import LabelRequest, OracleUnavailable
    from client_app.oracles.label_studio import LabelStudioOracle
    from fal_shared.settings.labeling import NodeLabelingConfig
    from launcher.flower_processes import free_port

    request = LabelRequest("r", 0, "cycle-0-select", 0, [1, 2], "classification", 10)
    down = LabelStudioOracle(NodeLabelingConfig(oracle="label-studio", label_studio_url=f"http://127.0.0.1:{free_port()}",
                                                label_studio_token="x" * 10))
    with pytest.raises(OracleUnavailable, match="unreachable"):
        down.collect(request)
    refused = LabelStudioOracle(NodeLabelingConfig(oracle="label-studio", label_studio_url=label_studio.url,
                                                   label_studio_token="wrong-token-123"))
    with pytest.raises(RuntimeError, match="refused .*401.*check label-studio-token"):
        refused.collect(request)
    # a project someone made with another labeling interface is named, with the config to use
    ls = _ls(label_studio)
    other = ls.projects.create(title="not-fal", label_config='<View><Text name="t" value="$t"/>'
                               '<Choices name="c" toName="t"><Choice value="a"/></Choices></View>')
    wrong = LabelStudioOracle(NodeLabelingConfig(oracle="label-studio", label_studio_url=label_studio.url,
                                                 label_studio_token=label_studio.token, label_studio_project=other.id))
    with pytest.raises(ValueError, match=f"project {other.id} .* does not have the labeling interface"):
        wrong.collect(request)
    # a regression project (a table of the features, a number) is accepted by Label Studio
    table = LabelStudioOracle(NodeLabelingConfig(oracle="label-studio", label_studio_url=label_studio.url,
                                                 label_studio_token=label_studio.token, label_studio_project="tabular"))
    reg = LabelRequest("r", 0, "q", 0, [5], "regression", 1, hints={5: {"priority": 1.0, "prediction": 2.5}},
                       features=lambda sid: {"feature 1": 0.5, "feature 2": -1.0})
    table.submit(reg)
    (task,) = list(ls.tasks.list(project=_project_id(ls, "tabular"), fields="all"))
    assert task.data["features"] == {"feature 1": 0.5, "feature 2": -1.0}
    assert task.predictions[0].result[0]["value"] == {"number": 2.5}
    ls.annotations.create(id=task.id, result=[{"from_name": "label", "to_name": "features", "type": "number",
                                               "value": {"number": 151.0}}])
    (answer,) = table.collect(reg)
    assert (answer.sample_id, answer.value, answer.skipped, answer.by) == (5, 151.0, False, label_studio.user)
