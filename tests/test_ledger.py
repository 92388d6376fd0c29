"""The label ledger: atomic persistence, reload, idempotent purchases."""

from __future__ import annotations

import numpy as np
import pytest

from client_app.ledger import LabelLedger, LedgerError
from client_app.oracle import GroundTruthOracle


def test_record_persists_and_reloads(tmp_path):
    path = tmp_path / "run" / "partition-0.json"
    ledger = LabelLedger(path)
    ledger.record(np.array([5, 3]), np.array([1, 0]), cycle=0, strategy="initial-random", query_token="initial")
    ledger.record(np.array([9]), np.array([2]), cycle=1, strategy="entropy", query_token="cycle-1-select")
    again = LabelLedger(path)
    assert again.labeled_ids().tolist() == [5, 3, 9]
    assert again.labels().tolist() == [1, 0, 2]
    assert again.purchase("cycle-1-select").tolist() == [9]
    assert again.purchase("cycle-2-select") is None
    assert again.class_counts(4).tolist() == [1, 1, 1, 0]
    assert [e.strategy for e in again.entries] == ["initial-random", "initial-random", "entropy"]
    assert not list(path.parent.glob(".ledger-*")), "temporary files must not be left behind"


def test_never_buys_twice(tmp_path):
    ledger = LabelLedger(tmp_path / "l.json")
    ledger.record(np.array([1, 2]), np.array([0, 1]), cycle=0, strategy="s", query_token="t0")
    with pytest.raises(LedgerError, match="already labeled"):
        ledger.record(np.array([2, 3]), np.array([1, 1]), cycle=1, strategy="s", query_token="t1")
    with pytest.raises(LedgerError, match="already in the ledger"):
        ledger.record(np.array([7]), np.array([1]), cycle=1, strategy="s", query_token="t0")
    assert LabelLedger(tmp_path / "l.json").labeled_ids().tolist() == [1, 2]


def test_failed_write_keeps_memory_and_disk_consistent(tmp_path, monkeypatch):
    ledger = LabelLedger(tmp_path / "l.json")
    ledger.record(np.array([1]), np.array([0]), cycle=0, strategy="s", query_token="t0")

    def broken_write(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("client_app.ledger.atomic_write_text", broken_write)
    with pytest.raises(OSError, match="disk full"):
        ledger.record(np.array([2]), np.array([1]), cycle=1, strategy="s", query_token="t1")
    monkeypatch.undo()
    assert ledger.labeled_ids().tolist() == [1] and ledger.purchase("t1") is None
    assert LabelLedger(tmp_path / "l.json").labeled_ids().tolist() == [1]


def test_corrupt_ledger_is_a_clear_error(tmp_path):
    path = tmp_path / "l.json"
    path.write_text("{not json")
    with pytest.raises(LedgerError, match="unreadable"):
        LabelLedger(path)


def test_regression_labels_are_floats(tmp_path):
    ledger = LabelLedger(tmp_path / "r.json", task="regression")
    ledger.record(np.array([4]), np.array([0.25]), cycle=0, strategy="s", query_token="t")
    assert LabelLedger(tmp_path / "r.json", task="regression").labels().tolist() == [0.25]


def test_ground_truth_oracle_counts_and_rejects_foreign_ids():
    oracle = GroundTruthOracle(np.array([10, 20, 30]), np.array([1, 2, 3]))
    assert oracle.label(np.array([30, 10])).tolist() == [3, 1]
    assert oracle.labels_revealed == 2
    with pytest.raises(KeyError, match="not in this client's partition"):
        oracle.label(np.array([99]))


def test_a_reread_ledger_sees_every_change_made_by_another_writer(tmp_path):
    """Reads are cached per process while the file is unchanged; any rewrite of the file is seen."""
    import json
    import os

    path = tmp_path / "ledger.json"
    a = LabelLedger(path)
    a.record(np.array([1, 2]), np.array([0, 1]), cycle=0, strategy="s", query_token="t0")
    b = LabelLedger(path)  # from the cache
    assert b.labeled_ids().tolist() == [1, 2]
    b.record(np.array([3]), np.array([2]), cycle=1, strategy="s", query_token="t1")
    assert LabelLedger(path).labeled_ids().tolist() == [1, 2, 3]
    assert a.labeled_ids().tolist() == [1, 2]  # an object is a snapshot; a new one reads the file
    payload = json.loads(path.read_text())  # another process rewrites the file (atomically, as every writer does)
    payload["entries"] = payload["entries"][:1]
    payload["queries"] = {"t0": [1]}
    tmp = tmp_path / "other.json"
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)
    assert LabelLedger(path).labeled_ids().tolist() == [1]
