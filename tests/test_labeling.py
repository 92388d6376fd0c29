"""Labels that people give later: the pending ledger, the file oracle with fal-label, waiting, quorum, resume.

Everything here is in process (the real ServerApp loop and ClientApp handlers
through Flower messages); the Label Studio oracle is tested against a real
server in ``test_label_studio.py``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from client_app.app import app as client_app
from client_app.labeling import LabelError, parse_label
from client_app.ledger import LabelLedger, LedgerError
from fal_shared.config import RunConfig, parse_run_config
from fal_shared.experiment_data import client_data
from launcher import label as fal_label
from server_app.app import run_experiment
from server_app.checkpoint import ResumeError
from server_app.inprocess import InProcessGrid, run_inprocess
from server_app.results_schema import validate_results
from server_app.labels import LabelsPending


# ------------------------------------------------------------------ ledger
def test_pending_query_is_neither_labeled_nor_in_the_pool_and_answers_are_final(tmp_path):
    path = tmp_path / "partition-0.json"
    ledger = LabelLedger(path)
    ledger.record(np.array([1, 2]), np.array([0, 1]), cycle=0, strategy="initial-random", query_token="initial")
    ledger.request(np.array([7, 5, 9]), cycle=0, strategy="entropy", query_token="q0", info={"oracle": "file"})
    assert ledger.pending_ids().tolist() == [7, 5, 9] and len(ledger) == 2
    assert ledger.unavailable_ids().tolist() == [1, 2, 5, 7, 9]
    with pytest.raises(LedgerError, match="already labeled, pending or skipped"):
        ledger.request(np.array([5]), cycle=1, strategy="entropy", query_token="q1", info={})
    report = ledger.answer("q0", [(7, 3.0, "ana@site", "2026-11-01T10:00:00Z")], [(9, "unclear", "ana@site", "")])
    assert report.labeled == [7] and report.skipped == [9] and not report.complete
    again = LabelLedger(path)  # persisted, with who and when
    assert again.pending_ids("q0").tolist() == [5]
    entry = again.label_of(7)
    assert (entry.label, entry.labeled_by, entry.labeled_at, entry.query_token) == (3.0, "ana@site", "2026-11-01T10:00:00Z", "q0")
    assert [(s.sample_id, s.reason) for s in again.skipped()] == [(9, "unclear")]
    # a bought label is never changed; an id the query did not choose is refused
    report = again.answer("q0", [(7, 4.0, "bob", ""), (5, 1.0, "bob", "")])
    assert report.labeled == [5] and report.complete and "already labeled 3" in report.ignored[0]
    assert again.label_of(7).label == 3.0 and again.pending_queries() == {}
    with pytest.raises(LedgerError, match="did not choose"):
        again.answer("q0", [(1, 0.0, "", "")])
    assert LabelLedger(path).labels().tolist() == [0, 1, 3, 1]


def test_version_1_ledgers_still_load(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"version": 1, "task": "classification", "queries": {"initial": [4]},
                                "entries": [[4, 2.0, 0, "initial-random", "initial"]]}))
    ledger = LabelLedger(path)
    assert ledger.labels().tolist() == [2] and ledger.pending_ids().tolist() == []


def test_labels_are_validated_with_clear_errors():
    assert parse_label(" 3 ", "classification", 10) == 3.0 and parse_label("3.0", "classification", 10) == 3.0
    assert parse_label("-1.5e2", "regression", 1) == -150.0
    for bad, match in (("10", "class index 0..9"), ("2.5", "class index"), ("cat", "'cat' is not a class index"),
                       ("", "empty"), (None, "empty")):
        with pytest.raises(LabelError, match=match):
            parse_label(bad, "classification", 10)
    for bad in ("nan", "inf", "abc"):
        with pytest.raises(LabelError):
            parse_label(bad, "regression", 1)


# ------------------------------------------------------- the file oracle
def _config(small_run, tmp_path, n=2, **extra):
    return {**RunConfig().to_flower(), **small_run, "strategy": "entropy", "num-clients": n,
            "label-poll-seconds": 0.05, "label-wait-seconds": 0.3, **extra}


def _grid(run_config, node_extra):
    n = run_config["num-clients"]
    nodes = [{"partition-id": i, "num-partitions": n, **node_extra.get(i, {})} for i in range(n)]
    return InProcessGrid(client_app, run_config, nodes)


def _person_fills_csvs(state_dir: Path, run_config, *, skip: set[int] = frozenset(), only: set[int] | None = None):
    """A person: fills every pending labels.csv with the true labels and imports it with fal-label."""
    cfg = parse_run_config(run_config)
    imported = []
    for row in fal_label.status(state_dir):
        if only is not None and row["partition"] not in only:
            continue
        data = client_data(cfg, row["partition"], cfg.num_clients)
        path = Path(row["where"]) / "labels.csv"
        rows = list(csv.DictReader(open(path)))
        for r in rows:
            sid = int(r["sample_id"])
            r["label"] = "unclear" if sid in skip else str(int(data.y[data.rows(np.array([sid]))[0]]))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        assert fal_label.main(["import", str(path), "--state-dir", str(state_dir), "--labeler", "dr.a"]) == 0
        imported.append(path)
    return imported


def test_file_oracle_run_stops_resumes_and_matches_the_simulation_oracle(small_run, tmp_path, capsys):
    reference = run_inprocess({**small_run, "strategy": "entropy", "run-name": "reference",
                               "state-dir": str(tmp_path / "ref-state")}, num_clients=2)
    run_config = _config(small_run, tmp_path)
    folder = tmp_path / "to-label"
    grid = _grid(run_config, {i: {"oracle": "file", "label-folder": str(folder)} for i in range(2)})
    state = Path(small_run["state-dir"])
    stops, csvs = 0, []
    while True:
        try:
            results = run_experiment(grid, run_config)  # a fresh ServerApp each time: only the disk survives
            break
        except LabelsPending as err:
            stops += 1
            assert "run-name='test-run'" in str(err)
            saved = json.loads((Path(small_run["output-dir"]) / "test-run" / "results.json").read_text())
            assert saved["status"] == "waiting-for-labels"
            csvs = _person_fills_csvs(state, run_config)
            assert len(csvs) == 2  # one per site
    assert stops == 3  # initial labels and each query: the deadline passed before the person answered
    assert results["status"] == "completed" and len(results["resumed"]) == 2
    validate_results(json.loads((Path(small_run["output-dir"]) / "test-run" / "results.json").read_text()))
    assert [c["cycle"] for c in results["cycles"]] == [0, 1, 2]
    # the same numbers as the simulation oracle: same choices, same labels, same accuracies
    for mine, ref in zip(results["cycles"], reference["cycles"]):
        assert mine["evaluation"]["accuracy"] == ref["evaluation"]["accuracy"]
        assert mine["labeled-per-client"] == ref["labeled-per-client"]
        assert mine.get("selected-ids") == ref.get("selected-ids")
    for pid in range(2):
        mine = LabelLedger(state / "test-run" / f"partition-{pid}.json")
        ref = LabelLedger(tmp_path / "ref-state" / "reference" / f"partition-{pid}.json")
        assert dict(zip(mine.labeled_ids().tolist(), mine.labels().tolist())) == dict(
            zip(ref.labeled_ids().tolist(), ref.labels().tolist()))
        assert {e.labeled_by for e in mine.entries if e.query_token != "initial"} == {"dr.a"}
    # resuming never selected again: one select per client per query, and the second wait polled first
    assert sum(1 for kind, _ in grid.log if kind == "query.select") == 2 * 2
    assert results["cycles"][0]["labeling"]["polls"] >= 1
    assert not (Path(small_run["output-dir"]) / "test-run" / "checkpoint.json").exists()
    # a CSV for another query (cycle 0's, long done), unknown ids, bad labels: clear errors, nothing imported
    assert fal_label.main(["import", str(csvs[0]), "--state-dir", str(state)]) == 1
    assert "which is already fully labeled; pending queries there: none" in capsys.readouterr().err


def test_fal_label_import_rejects_unknown_ids_bad_labels_and_changes(small_run, tmp_path, capsys):
    run_config = _config(small_run, tmp_path, **{"num-cycles": 1})
    grid = _grid(run_config, {0: {"oracle": "file", "label-folder": str(tmp_path / "f")}})
    with pytest.raises(LabelsPending, match=r"partition 0: \d+"):
        run_experiment(grid, run_config)
    state = str(small_run["state-dir"])
    (row,) = fal_label.status(Path(state))
    assert row["partition"] == 0 and row["oracle"] == "file" and row["imported"] == 0
    path = Path(row["where"]) / "labels.csv"
    rows = list(csv.DictReader(open(path)))
    assert {"image", "prediction", "confidence", "priority", "label"} <= set(rows[0])
    assert all((Path(row["where"]) / r["image"]).read_bytes()[:4] == b"\x89PNG" for r in rows)

    def write(changes, name="filled.csv"):
        out = tmp_path / name
        edited = [dict(r) for r in rows]
        for k, value in changes.items():
            edited[k].update(value)
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(edited)
        return str(out)

    bad = write({0: {"label": "12"}, 1: {"sample_id": "999999", "label": "1"}, 2: {"label": "two"}})
    assert fal_label.main(["import", bad, "--state-dir", state]) == 1
    err = capsys.readouterr().err
    assert "nothing imported, 3 problem(s)" in err
    assert "row 2 " in err and "'12' is not a class index 0..9" in err
    assert "row 3 (sample 999999): unknown sample id" in err and "'two' is not a class index" in err
    assert not (Path(row["where"]) / "answers.json").exists()
    other = write({0: {"query": "cycle-7-select"}} | {k: {"query": "cycle-7-select"} for k in range(1, len(rows))})
    assert fal_label.main(["import", other, "--state-dir", state]) == 1
    assert "for query 'cycle-7-select' of run 'test-run' partition 0, which was never asked" in capsys.readouterr().err
    ok = write({0: {"label": "3"}, 1: {"label": "skip"}})
    assert fal_label.main(["import", ok, "--state-dir", state]) == 0
    assert "imported 1 label(s) and 1 skip(s)" in capsys.readouterr().out
    changed = write({0: {"label": "4"}})
    assert fal_label.main(["import", changed, "--state-dir", state]) == 1
    assert "already imported as label 3" in capsys.readouterr().err
    assert fal_label.status(Path(state))[0]["imported"] == 2


def test_skipped_samples_are_reported_not_bought_and_not_offered_again(small_run, tmp_path):
    run_config = _config(small_run, tmp_path, **{"label-wait-seconds": 30.0})
    state = Path(small_run["state-dir"])
    grid = _grid(run_config, {1: {"oracle": "file", "label-folder": str(tmp_path / "f")}})
    send = grid.send_and_receive
    skipped: list[int] = []

    def person_answers_while_the_server_waits(messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "query.labels":
            for row in fal_label.status(state):
                first = int(next(csv.DictReader(open(Path(row["where"]) / "labels.csv")))["sample_id"])
                if row["query"] != "initial":  # the person cannot tell the first sample of every query
                    skipped.append(first)
                _person_fills_csvs(state, run_config, skip=set(skipped))
        return send(messages, timeout=timeout)

    grid.send_and_receive = person_answers_while_the_server_waits
    results = run_experiment(grid, run_config)
    assert results["status"] == "completed" and len(skipped) == 2
    c0, c1, c2 = results["cycles"]
    assert c0["labeling"]["skipped-ids"] == {"1": [skipped[0]]} and c0["labeling"]["late-partitions"] == []
    assert c1["labeled-per-client"]["1"] == c0["labeled-per-client"]["1"] + c0["budgets"]["1"] - 1
    assert c1["labeled-per-client"]["0"] == c0["labeled-per-client"]["0"] + c0["budgets"]["0"]
    assert skipped[0] not in c1["selected-ids"]["1"]
    ledger = LabelLedger(state / "test-run" / "partition-1.json")
    assert [(s.sample_id, s.reason, s.by) for s in ledger.skipped()] == [(skipped[0], "unclear", "dr.a"), (skipped[1], "unclear", "dr.a")]
    assert skipped[0] not in ledger and len(ledger) == c2["labeled-per-client"]["1"]


def test_quorum_goes_on_without_a_late_site(small_run, tmp_path):
    run_config = _config(small_run, tmp_path, **{"label-wait-quorum": 0.5, "label-wait-seconds": 0.2})
    grid = _grid(run_config, {1: {"oracle": "file", "label-folder": str(tmp_path / "f")}})
    results = run_experiment(grid, run_config)  # nobody ever labels partition 1
    assert results["status"] == "completed"
    c0, c1, c2 = results["cycles"]
    initial = results["initial-labeling"]["pending-after"]["1"]  # its initial labels never came either
    assert results["initial-labeling"]["late-partitions"] == [1] and initial > 0
    assert c0["labeling"]["late-partitions"] == [1] and c0["labeling"]["pending-after"] == {"1": initial + c0["budgets"]["1"]}
    assert c1["labeling"]["pending-after"] == {"1": initial + c0["budgets"]["1"] + c1["budgets"]["1"]}
    assert c2["labeled-per-client"]["1"] == 0 and c2["labeled-per-client"]["0"] > 0  # the others trained
    assert not set(c0["selected-ids"]["1"]) & set(c1["selected-ids"]["1"])  # pending samples are not chosen again

    # the same with quorum 1: the run stops, naming what it waits for
    run_config = _config(small_run, tmp_path, **{"run-name": "all", "label-wait-seconds": 0.2})
    grid = _grid(run_config, {1: {"oracle": "file", "label-folder": str(tmp_path / "g")}})
    with pytest.raises(LabelsPending, match=r"partition 1: \d+\); only 1 of 2 sites are done, label-wait-quorum=1 needs 2"):
        run_experiment(grid, run_config)


# ------------------------------------------------------------------ resume
def test_a_run_that_crashed_in_its_query_phase_resumes_there_with_the_same_numbers(small_run, tmp_path):
    overrides = {**small_run, "strategy": "entropy", "query-retries": 0}
    reference = run_inprocess({**overrides, "run-name": "reference", "state-dir": str(tmp_path / "s2")}, num_clients=2)
    run_config = {**RunConfig().to_flower(), **overrides, "num-clients": 2}
    grid = _grid(run_config, {})
    grid.fail_at[("query.select", 4)] = "RuntimeError: power cut"  # partition 1's select of cycle 1
    with pytest.raises(Exception, match="power cut"):
        run_experiment(grid, run_config)
    saved = json.loads((Path(small_run["output-dir"]) / "test-run" / "checkpoint.json").read_text())
    assert (saved["cycle"], saved["stage"]) == (1, "query")
    results = run_experiment(grid, run_config)  # partition 0 replays its cycle-1 choice, partition 1 makes it
    assert results["status"] == "completed" and len(results["resumed"]) == 1
    assert [c["evaluation"]["accuracy"] for c in results["cycles"]] == [c["evaluation"]["accuracy"] for c in reference["cycles"]]
    assert [c["selected-ids"] for c in results["cycles"][:2]] == [c["selected-ids"] for c in reference["cycles"][:2]]
    assert results["cycles"][1]["strategy"]["client-diagnostics"]["0"] == {"replayed": True}
    trains = [kind for kind, _ in grid.log if kind == "train"]
    assert len(trains) == 2 * 2 * 3  # cycles 0 and 1 were not trained again after the crash


def test_resume_refuses_a_changed_config_and_a_completed_run(small_run, tmp_path):
    run_config = _config(small_run, tmp_path, **{"num-cycles": 1})
    grid = _grid(run_config, {0: {"oracle": "file", "label-folder": str(tmp_path / "f")}})
    with pytest.raises(LabelsPending):  # the initial labels
        run_experiment(grid, run_config)
    _person_fills_csvs(Path(small_run["state-dir"]), run_config)
    with pytest.raises(LabelsPending):  # the first query's
        run_experiment(grid, run_config)
    with pytest.raises(ResumeError, match=r"differs \(lr: 0.05 -> 0.1\); resume with the same settings"):
        run_experiment(grid, {**run_config, "lr": 0.1})
    _person_fills_csvs(Path(small_run["state-dir"]), run_config)
    results = run_experiment(grid, {**run_config, "label-poll-seconds": 0.01})  # how long to wait may change
    assert results["status"] == "completed"
    with pytest.raises(ResumeError, match="already completed"):
        run_experiment(grid, run_config)


def test_bad_oracle_node_config_is_a_clear_error(small_run, tmp_path):
    run_config = _config(small_run, tmp_path, **{"num-cycles": 0})
    for node, match in (
        ({"oracle": "label-studi"}, "oracle: Input should be 'ground-truth', 'label-studio' or 'file'"),
        ({"oracle": "label-studio"}, "oracle=label-studio needs label-studio-url"),
        ({"oracle": "file", "label-foldr": "/x"}, "label-foldr: unknown oracle key"),
    ):
        with pytest.raises(Exception, match=match):
            run_experiment(_grid({**run_config, "run-name": f"bad{len(match)}"}, {0: node}), {**run_config, "run-name": f"bad{len(match)}"})
