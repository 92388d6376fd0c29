"""Node state that survives a SuperNode restart (client_app.node_state), alone and in whole runs.

A restart in the in-process grid (``InProcessGrid.restart_node``) gives the node a new id and an empty
``context.state``, as a restarted SuperNode process has; its state folder on disk stays.
"""

from __future__ import annotations

import stat

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from client_app.app import app as client_app
from client_app.ledger import LabelLedger
from client_app.methods.fale import THETA_KEY
from client_app.node_state import NodeState
from fal_shared.config import RunConfig
from server_app.app import run_experiment
from server_app.inprocess import InProcessGrid


def test_records_survive_a_restart_and_secrets_are_private(tmp_path):
    folder = tmp_path / "run" / "partition-0.node"
    kept = NodeState(RecordDict(), folder)
    secret = ConfigRecord({"cycle": 2, "sk": b"\x00\x01secret", "ids": [3, 1, 2]})
    arrays = ArrayRecord(numpy_ndarrays=[np.arange(6, dtype=np.float64).reshape(2, 3)])
    kept.put("fale", secret)
    kept.put("local-model", arrays)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())

    after = NodeState(RecordDict(), folder)  # a new process: empty memory, same folder
    assert dict(after.get_config("fale")) == dict(secret)
    np.testing.assert_array_equal(after.get_arrays("local-model").to_numpy_ndarrays()[0], arrays.to_numpy_ndarrays()[0])
    assert "fale" in after.memory  # cached after the first read
    assert after.get("never-written") is None
    kept.put("fale", ConfigRecord({"cycle": 3}))  # replaced, not appended
    assert dict(NodeState(RecordDict(), folder).get_config("fale")) == {"cycle": 3}
    assert kept.clear() == 2 and not folder.exists() and kept.clear() == 0


def test_bad_keys_and_wrong_record_kinds_are_named(tmp_path):
    kept = NodeState(RecordDict(), tmp_path)
    with pytest.raises(ValueError, match="node state key '../x'"):
        kept.put("../x", ConfigRecord({}))
    kept.put("cfg", ConfigRecord({"a": 1}))
    with pytest.raises(TypeError, match="'cfg' is a ConfigRecord, not an ArrayRecord"):
        kept.get_arrays("cfg")


N = 3


def _run(tmp_path, restart_after=None, **extra):
    """A whole run in process; restart partition 1's node right after the first ``restart_after`` round."""
    overrides = {
        "dataset": "diabetes", "seed": 4, "run-name": "t", "output-dir": str(tmp_path / "out"),
        "state-dir": str(tmp_path / "state"), **extra,
    }
    run_config = {**RunConfig().to_flower(), **overrides, "num-clients": N}
    grid = InProcessGrid(client_app, run_config, [{"partition-id": i, "num-partitions": N} for i in range(N)])
    send, restarted = grid.send_and_receive, {}

    def send_and_restart(messages, *, timeout=None):
        messages = list(messages)
        replies = send(messages, timeout=timeout)
        if messages and messages[0].metadata.message_type == restart_after and not restarted:
            old = sorted(grid.contexts)[1]
            restarted["node"] = grid.restart_node(old)
        return replies

    grid.send_and_receive = send_and_restart
    return run_experiment(grid, run_config), grid, restarted


def _theta(grid, pid):
    ctx = next(c for c in grid.contexts.values() if int(c.node_config["partition-id"]) == pid)
    return ctx.state.array_records[THETA_KEY].to_numpy_ndarrays()[0]


def test_fale_finishes_its_protocol_on_a_node_restarted_in_the_middle(tmp_path):
    fale = {"strategy": "fale", "num-cycles": 1, "evaluation": "federated", "fale-budget-count": 40, "fale-block-size": 32}
    plain, plain_grid, _ = _run(tmp_path / "plain", **fale)
    # partition 1 restarts after masking its data: its mask secrets are needed for the scores and the model
    results, grid, restarted = _run(tmp_path / "restart", restart_after="query.fale_mask", **fale)
    assert restarted and results["status"] == "completed", results.get("error")
    assert ("query.fale_scores", restarted["node"]) in grid.log  # the new node went on with the protocol
    assert results["cycles"][0]["selected-ids"] == plain["cycles"][0]["selected-ids"]
    np.testing.assert_allclose(_theta(grid, 1), _theta(plain_grid, 1), rtol=1e-6, atol=1e-9)
    assert results["cycles"][1]["evaluation"]["mse"] == pytest.approx(plain["cycles"][1]["evaluation"]["mse"], rel=1e-6)
    ids = LabelLedger(tmp_path / "restart" / "state" / "t" / "partition-1.json").labeled_ids().tolist()
    assert len(ids) == len(set(ids)) == results["cycles"][1]["labeled-per-client"]["1"]
    # the run completed: query.finish had every node delete its node-state files; the ledgers stay
    assert ("query.finish", restarted["node"]) in grid.log
    assert not list((tmp_path / "restart" / "state" / "t").glob("*.node"))
    assert len(list((tmp_path / "restart" / "state" / "t").glob("partition-*.json"))) == N


def test_a_restarted_node_queries_with_the_local_model_it_trained(tmp_path):
    local = {"strategy": "entropy", "dataset": "digits", "query-model": "local", "num-cycles": 1, "rounds-per-cycle": 1,
             "local-epochs": 1, "model": "mlp"}
    plain, _, _ = _run(tmp_path / "plain", **local)
    # partition 1 restarts after the cycle's training (the evaluation round follows it on the server): it
    # must select with the model it trained before the restart, not fail or train again
    results, grid, restarted = _run(tmp_path / "restart", restart_after="train", **local)
    assert restarted and results["status"] == "completed", results.get("error")
    assert ("query.select", restarted["node"]) in grid.log
    assert results["cycles"][0]["selected-ids"] == plain["cycles"][0]["selected-ids"]
