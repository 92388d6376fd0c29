"""The failure policy in-process: lost clients, re-admission, num-clients=0.

A node in ``InProcessGrid.down`` does not answer (as a site that lost power or
network): the server must treat it as *lost* and apply ``train-min-fraction``
and ``query-missing-client``; a client whose code raises still fails the run.
The same with real processes (a SuperNode killed and restarted) is
``tests/test_flower_runtime.py::test_deployment_survives_a_supernode_killed_mid_round``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client_app.app import app as client_app
from client_app.ledger import LabelLedger
from fal_shared.config import RunConfig
from server_app.app import run_experiment
from server_app.inprocess import InProcessGrid, run_inprocess
from server_app.results_schema import validate_results


def _grid(overrides, n=3):
    run_config = {**RunConfig().to_flower(), **overrides}
    nodes = [{"partition-id": i, "num-partitions": n} for i in range(n)]
    return InProcessGrid(client_app, run_config, nodes), run_config


def _ledger_ids(overrides, pid) -> list[int]:
    return LabelLedger(Path(overrides["state-dir"]) / overrides["run-name"] / f"partition-{pid}.json").labeled_ids().tolist()


def _intercept(grid, hook):
    """Call ``hook(messages)`` before every round the server sends."""
    send = grid.send_and_receive

    def wrapped(messages, *, timeout=None):
        messages = list(messages)
        hook(messages)
        return send(messages, timeout=timeout)

    grid.send_and_receive = wrapped


def test_client_lost_in_a_training_round_is_left_out_and_readmitted(small_run):
    overrides = {**small_run, "strategy": "entropy", "num-cycles": 2, "num-clients": 3}
    grid, run_config = _grid(overrides)
    node1 = sorted(grid.contexts)[1]
    trains = []

    def lose_partition_1_in_cycle_1_round_1(messages):
        if messages and messages[0].metadata.message_type == "train":
            trains.append(len(messages))
            if len(trains) == 3:  # cycle 0 has 2 rounds; this is cycle 1, round 1
                grid.down.add(node1)
                lose_partition_1_in_cycle_1_round_1.before = _ledger_ids(overrides, 1)
            elif len(trains) == 4:
                grid.down.discard(node1)  # the site is back for round 2

    _intercept(grid, lose_partition_1_in_cycle_1_round_1)
    results = run_experiment(grid, run_config)
    assert results["status"] == "completed"
    validate_results(json.loads(json.dumps(results)))  # the documented schema, lost-clients included
    cycles = results["cycles"]
    assert "lost-clients" not in cycles[0]
    assert cycles[1]["lost-clients"] == [
        {"message-type": "train", "round": 1, "partition": 1, "reason": "partition 1 (node %d): no reply within 3600 s" % node1}
    ]
    assert cycles[1]["traffic"]["train"]["messages-received"] == 3 + 2  # round 1 without partition 1, round 2 with it
    # partition 1 bought its budget in cycle 1's query, on top of everything it had: nothing lost, nothing twice
    ids = _ledger_ids(overrides, 1)
    before = lose_partition_1_in_cycle_1_round_1.before
    assert ids[: len(before)] == before and len(set(ids)) == len(ids)
    assert len(cycles[1]["selected-ids"]["1"]) == cycles[1]["budgets"]["1"] > 0
    assert cycles[2]["labeled-per-client"]["1"] == len(ids)


def test_too_few_training_replies_fail_the_run_naming_the_policy(small_run):
    overrides = {**small_run, "strategy": "random", "num-cycles": 0, "num-clients": 3, "train-min-fraction": 1.0}
    grid, run_config = _grid(overrides)
    node2 = sorted(grid.contexts)[2]
    _intercept(grid, lambda m: grid.down.add(node2) if m and m[0].metadata.message_type == "train" else None)
    with pytest.raises(Exception, match=r"2 of 3 clients replied, but train-min-fraction=1 needs 3; lost: partition 2"):
        run_experiment(grid, run_config)


def test_a_client_error_in_training_still_fails_the_run(small_run):
    overrides = {**small_run, "strategy": "random", "num-cycles": 0, "num-clients": 3}
    grid, run_config = _grid(overrides)
    node0 = sorted(grid.contexts)[0]

    def crash(messages):
        if messages and messages[0].metadata.message_type == "train":
            grid.fail_next[node0] = "RuntimeError: disk full"

    _intercept(grid, crash)
    with pytest.raises(Exception, match="train round 1 of cycle 0 failed: partition 0 .*disk full"):
        run_experiment(grid, run_config)


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_client_lost_in_the_labeling_round(small_run, policy):
    overrides = {**small_run, "strategy": "random", "num-cycles": 2, "num-clients": 3, "query-retries": 1,
                 "node-wait-seconds": 0.5, "query-missing-client": policy}
    grid, run_config = _grid(overrides)
    node2 = sorted(grid.contexts)[2]
    selects = []

    def lose_in_first_select(messages):
        if messages and messages[0].metadata.message_type == "query.select":
            selects.append(1)
            if len(selects) == 1:
                grid.down.add(node2)
            elif len(selects) == 3:  # first select + its retry are over: the site is back
                grid.down.discard(node2)

    _intercept(grid, lose_in_first_select)
    if policy == "fail":
        with pytest.raises(Exception, match=r"query.select failed after 2 attempt\(s\): partition 2"):
            run_experiment(grid, run_config)
        return
    results = run_experiment(grid, run_config)
    assert results["status"] == "completed"
    first, second, last = results["cycles"]
    assert [e["partition"] for e in first["lost-clients"]] == [2]
    assert "2" not in first["selected-ids"] and len(first["selected-ids"]["0"]) == first["budgets"]["0"]
    assert second["labeled-per-client"]["2"] == first["labeled-per-client"]["2"]  # skipped: bought nothing
    assert len(second["selected-ids"]["2"]) == second["budgets"]["2"]  # back in the next cycle
    ids = _ledger_ids(overrides, 2)
    assert len(set(ids)) == len(ids) == last["labeled-per-client"]["2"]


def test_num_clients_0_uses_the_connected_nodes_with_the_same_numbers(small_run, tmp_path):
    base = {**small_run, "strategy": "entropy", "num-cycles": 1}
    explicit = run_inprocess({**base, "num-clients": 3}, num_clients=3)
    grid, run_config = _grid({**base, "num-clients": 0, "run-name": "connected", "state-dir": str(tmp_path / "s2")})
    connected = run_experiment(grid, run_config)
    assert sorted(connected["clients"]) == ["0", "1", "2"]
    assert len(explicit["cycles"]) == len(connected["cycles"]) == 2
    for a, b in zip(explicit["cycles"], connected["cycles"]):
        assert a["evaluation"] == b["evaluation"]
        assert a.get("selected-ids") == b.get("selected-ids")


def test_num_clients_0_starts_without_a_late_partition_and_admits_it(small_run):
    overrides = {**small_run, "strategy": "random", "num-cycles": 1, "num-clients": 0, "node-wait-seconds": 1.0}
    grid, run_config = _grid(overrides)
    late = sorted(grid.contexts)[2]
    parked = grid.contexts.pop(late)  # partition 2's node is not connected yet

    def connect_when_training(messages):
        if messages and messages[0].metadata.message_type == "train" and late not in grid.contexts:
            grid.contexts[late] = parked

    _intercept(grid, connect_when_training)
    results = run_experiment(grid, run_config)
    assert results["status"] == "completed"
    assert sorted(results["clients"]) == ["0", "1", "2"]
    first, last = results["cycles"]
    assert first["labeled-per-client"]["2"] > 0  # set up (initial labels) when it joined
    assert len(first["selected-ids"]["2"]) == first["budgets"]["2"]


def test_num_clients_0_fails_when_too_few_partitions_connect(small_run):
    overrides = {**small_run, "num-cycles": 0, "num-clients": 0, "node-wait-seconds": 1.0, "train-min-fraction": 1.0}
    grid, run_config = _grid(overrides)
    grid.contexts.pop(sorted(grid.contexts)[2])
    with pytest.raises(Exception, match=r"2 of num-partitions=3 partitions connected .*missing 2\).*needs 3"):
        run_experiment(grid, run_config)


class _PushPullGrid:
    """A SuperLink-like grid: replies appear only on the ``ready_after``-th pull."""

    def __init__(self, ready_after: int) -> None:
        self.ready_after, self.pulls, self.sent = ready_after, 0, []

    def push_messages(self, messages):
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id  # as the SuperLink does
            self.sent.append(m)
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, ids):
        self.pulls += 1
        if self.pulls < self.ready_after:
            return []
        from flwr.app import Message, RecordDict

        return [Message(RecordDict(), reply_to=m) for m in self.sent if m.metadata.message_id in ids]

    def get_nodes(self):
        return []


@pytest.mark.parametrize("timeout, ready_after, answered", [(None, 4, True), (0.0, 4, False), (60.0, 4, True)])
def test_metered_grid_waits_as_flower_does(monkeypatch, timeout, ready_after, answered):
    """timeout=None waits until every reply is in (Flower's Grid.send_and_receive); 0 takes what one pull gives."""
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    import server_app.messaging as messaging

    monkeypatch.setattr(messaging, "POLL_SECONDS", 0.0)
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
    inner = _PushPullGrid(ready_after)
    grid = messaging.MeteredGrid(inner)
    msgs = [Message(content=RecordDict({"config": ConfigRecord({"k": n})}), dst_node_id=n, message_type="query") for n in (7, 8)]
    replies = list(grid.send_and_receive(msgs, timeout=timeout))
    assert sorted(r.metadata.src_node_id for r in replies) == ([7, 8] if answered else [])
    assert inner.pulls == (ready_after if answered else 1)


@pytest.mark.parametrize("min_fraction, completes", [(0.5, True), (1.0, False)])
def test_client_lost_after_training_is_left_out_of_the_batchnorm_round(small_run, min_fraction, completes):
    """A site lost in the last FedAvg round is still lost for the BN statistics round: the policy is the same."""
    overrides = {**small_run, "strategy": "random", "model": "resnet8", "num-cycles": 1, "num-clients": 3,
                 "bn-statistics": "recompute", "node-wait-seconds": 0.5, "train-min-fraction": min_fraction}
    grid, run_config = _grid(overrides)
    node2 = sorted(grid.contexts)[2]
    kinds = []

    def lose_from_round_2_to_the_query(messages):
        kind = messages[0].metadata.message_type if messages else ""
        kinds.append(kind)
        if kind == "train" and kinds.count("train") == 2:  # cycle 0, round 2
            grid.down.add(node2)
        elif kind == "query.select":
            grid.down.discard(node2)

    _intercept(grid, lose_from_round_2_to_the_query)
    if not completes:
        with pytest.raises(Exception, match=r"train-min-fraction=1 needs 3"):
            run_experiment(grid, run_config)
        return
    results = run_experiment(grid, run_config)
    assert results["status"] == "completed"
    lost = results["cycles"][0]["lost-clients"]
    assert [(e["message-type"], e["partition"]) for e in lost] == [("train", 2), ("query.bn_stats", 2)]
    assert results["cycles"][0]["traffic"]["query.bn_stats"]["messages-received"] == 2
    assert len(results["cycles"][0]["selected-ids"]["2"]) == results["cycles"][0]["budgets"]["2"]  # back for the query
