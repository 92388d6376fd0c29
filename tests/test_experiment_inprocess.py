"""The FAL loop end to end with real Flower messages, in-process (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client_app.app import app as client_app
from client_app.ledger import LabelLedger
from fal_shared.config import RunConfig
from server_app.app import run_experiment
from server_app.inprocess import InProcessGrid, run_inprocess


def _grid(overrides, n=3, num_partitions=None):
    run_config = {**RunConfig().to_flower(), **overrides, "num-clients": n}
    nodes = [{"partition-id": i, "num-partitions": num_partitions or n} for i in range(n)]
    return InProcessGrid(client_app, run_config, nodes), run_config


def _ledger(overrides, pid):
    return LabelLedger(Path(overrides["state-dir"]) / overrides["run-name"] / f"partition-{pid}.json")


def test_short_experiment_records_every_cycle(small_run):
    results = run_inprocess({**small_run, "strategy": "entropy"}, num_clients=3)
    assert results["status"] == "completed"
    cycles = results["cycles"]
    assert [c["cycle"] for c in cycles] == [0, 1, 2]
    for prev, cur in zip(cycles, cycles[1:]):
        for pid, ids in prev["selected-ids"].items():
            # every client bought exactly its budget, and the next cycle trained on it
            assert len(ids) == prev["budgets"][pid] > 0
            assert cur["labeled-per-client"][pid] == prev["labeled-per-client"][pid] + len(ids)
    for c in cycles:
        ev = c["evaluation"]
        assert 0.0 <= ev["accuracy"] <= 1.0 and len(ev["per-class-accuracy"]) == 10
        assert set(c["seconds"]) >= {"train", "evaluate"}
        assert c["traffic"]["train"]["bytes-sent"] > 0 and c["traffic"]["train"]["messages-sent"] == 3 * 2
        assert sum(sum(h) for h in c["labels-per-class-per-client"].values()) == c["labeled"]
    assert cycles[0]["traffic"]["query.select"]["bytes-received"] > 0
    assert "query" in cycles[0]["seconds"] and "selection-client-max" in cycles[0]["seconds"]
    # the results files exist and agree
    folder = Path(small_run["output-dir"]) / "test-run"
    on_disk = json.loads((folder / "results.json").read_text())
    assert on_disk["status"] == "completed" and len(on_disk["cycles"]) == 3
    assert (folder / "cycles.csv").read_text().count("\n") == 4
    # the ledgers hold exactly what the results say was bought, nothing twice
    for pid in range(3):
        ledger = _ledger(small_run, pid)
        ids = ledger.labeled_ids()
        assert len(set(ids.tolist())) == len(ids) == cycles[-1]["labeled-per-client"][str(pid)]
        bought = np.concatenate([np.array(c["selected-ids"][str(pid)]) for c in cycles[:-1]])
        assert set(bought.tolist()) <= set(ids.tolist())


def test_same_seed_same_selections(small_run, tmp_path):
    a = run_inprocess({**small_run, "strategy": "random", "num-cycles": 1}, num_clients=2)
    b = run_inprocess({**small_run, "strategy": "random", "num-cycles": 1, "run-name": "again",
                       "state-dir": str(tmp_path / "state2")}, num_clients=2)
    c = run_inprocess({**small_run, "strategy": "random", "num-cycles": 1, "run-name": "other-seed",
                       "seed": 1, "state-dir": str(tmp_path / "state3")}, num_clients=2)
    assert a["cycles"][0]["selected-ids"] == b["cycles"][0]["selected-ids"]
    assert a["cycles"][0]["evaluation"]["accuracy"] == b["cycles"][0]["evaluation"]["accuracy"]
    assert a["cycles"][0]["selected-ids"] != c["cycles"][0]["selected-ids"]


def test_client_restart_mid_experiment_loses_and_rebuys_nothing(small_run):
    overrides = {**small_run, "strategy": "entropy", "num-cycles": 2}
    grid, run_config = _grid(overrides)
    send = grid.send_and_receive
    restarted = {}

    def send_and_restart(messages, *, timeout=None):
        messages = list(messages)
        replies = send(messages, timeout=timeout)
        if messages and messages[0].metadata.message_type == "query.select" and not restarted:
            # node of partition 1 crashes right after the first query: new process, new node id
            old = sorted(grid.contexts)[1]
            restarted["node"] = grid.restart_node(old)
            restarted["labeled"] = _ledger(overrides, 1).labeled_ids().tolist()
        return replies

    grid.send_and_receive = send_and_restart
    results = run_experiment(grid, run_config)
    assert results["status"] == "completed"
    ledger = _ledger(overrides, 1)
    ids = ledger.labeled_ids().tolist()
    assert ids[: len(restarted["labeled"])] == restarted["labeled"], "labels bought before the restart are kept"
    assert len(set(ids)) == len(ids)
    assert len(ids) == results["cycles"][-1]["labeled-per-client"]["1"]
    # the restarted node served partition 1 afterwards
    assert ("query.select", restarted["node"]) in grid.log


def test_lost_reply_is_retried_without_buying_twice(small_run):
    overrides = {**small_run, "strategy": "random", "num-cycles": 1}
    grid, run_config = _grid(overrides)
    send = grid.send_and_receive

    def drop_first_select_reply(messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "query.select" and not getattr(grid, "_dropped", False):
            grid._dropped = True
            grid.drop_reply_next.add(messages[0].metadata.dst_node_id)
        return send(messages, timeout=timeout)

    grid.send_and_receive = drop_first_select_reply
    results = run_experiment(grid, run_config)
    assert results["status"] == "completed"
    selects = [entry for entry in grid.log if entry[0] == "query.select"]
    assert len(selects) == 3 + 1  # one retry
    for pid in range(3):
        ledger = _ledger(overrides, pid)
        assert len(ledger.entries) == len(set(ledger.labeled_ids().tolist()))
        assert ledger.purchase("cycle-0-select").tolist() == results["cycles"][0]["selected-ids"][str(pid)]


def test_crashing_client_fails_the_run_with_its_reason(small_run):
    overrides = {**small_run, "strategy": "random", "query-retries": 0}
    grid, run_config = _grid(overrides)
    send = grid.send_and_receive

    def crash_on_select(messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "query.select":
            grid.fail_next[messages[1].metadata.dst_node_id] = "RuntimeError: GPU on fire"
        return send(messages, timeout=timeout)

    grid.send_and_receive = crash_on_select
    with pytest.raises(Exception, match="partition 1 .*GPU on fire"):
        run_experiment(grid, run_config)
    saved = json.loads((Path(small_run["output-dir"]) / "test-run" / "results.json").read_text())
    assert saved["status"] == "failed" and "GPU on fire" in saved["error"]
    assert len(saved["cycles"]) == 0 or saved["cycles"][0]["cycle"] == 0
    # labels bought before the crash are still in the ledgers
    assert len(_ledger(overrides, 0)) > 0


def test_bad_setups_fail_before_any_training(small_run):
    grid, run_config = _grid({**small_run}, n=3, num_partitions=2)
    grid.contexts[sorted(grid.contexts)[2]].node_config["partition-id"] = 1  # two nodes, same partition
    with pytest.raises(ValueError, match="partition-id 1 is served by two nodes"):
        run_experiment(grid, run_config)
    assert not [t for t, _ in grid.log if t == "train"]

    grid, run_config = _grid({**small_run}, n=3, num_partitions=2)  # fewer partitions than nodes
    with pytest.raises(Exception, match=r"partition-id=2 is outside 0..1 \(num-partitions=2\)"):
        run_experiment(grid, run_config)
    assert not [t for t, _ in grid.log if t == "train"]

    grid, run_config = _grid({**small_run, "budget-mode": "count", "budget-count": 500}, n=2)
    with pytest.raises(ValueError, match="budget-count: 500 labels x 2 cycles = 1000 exceeds the largest client pool"):
        run_experiment(grid, run_config)
    assert not [t for t, _ in grid.log if t == "train"]

    grid, run_config = _grid({**small_run, "strategy": "does-not-exist"}, n=2)
    with pytest.raises(ValueError, match="unknown strategy 'does-not-exist'; valid strategies: .*entropy.*random"):
        run_experiment(grid, run_config)
    assert grid.log == []

    grid, run_config = _grid({**small_run, "strategy": "entropy", "dataset": "diabetes"}, n=2)
    with pytest.raises(ValueError, match="strategy 'entropy' supports classification tasks"):
        run_experiment(grid, run_config)


def test_zero_size_pool_is_handled(small_run):
    # 100% initial labels: every pool is empty, queries buy nothing, the run completes
    results = run_inprocess({**small_run, "initial-labeled-fraction": 1.0, "num-cycles": 0, "strategy": "random"},
                            num_clients=2)
    assert results["status"] == "completed"
    # budget (ceil 3%) at least the remaining pool: each client buys its whole pool and no more
    results = run_inprocess({**small_run, "initial-labeled-fraction": 0.97, "budget-fraction": 0.03,
                             "num-cycles": 1, "strategy": "entropy", "run-name": "tiny-pool"}, num_clients=2)
    first, last = results["cycles"]
    for pid, info in results["clients"].items():
        pool = info["data-size"] - info["initial-labeled"]
        assert first["budgets"][pid] == pool == len(first["selected-ids"][pid])
        assert last["labeled-per-client"][pid] == info["data-size"]


def test_federated_evaluation_matches_central(small_run, tmp_path):
    central = run_inprocess({**small_run, "num-cycles": 0, "strategy": "random"}, num_clients=3)
    fed = run_inprocess({**small_run, "num-cycles": 0, "strategy": "random", "evaluation": "federated",
                         "run-name": "fed", "state-dir": str(tmp_path / "s2")}, num_clients=3)
    # same seed, same model: the clients' test shares together are the whole test set
    assert fed["cycles"][0]["evaluation"]["accuracy"] == pytest.approx(central["cycles"][0]["evaluation"]["accuracy"])
    assert "evaluate" in fed["cycles"][0]["traffic"]


def test_two_select_rounds_in_one_cycle_buy_twice(small_run):
    from strategies.base import STRATEGIES, FALStrategy, register_strategy

    if "test-two-selects" not in STRATEGIES:

        @register_strategy("test-two-selects")
        class TwoSelects(FALStrategy):
            tasks = ("classification",)

            def query(self, phase):
                first = phase.select("random", include_model=False, budgets={p: 2 for p in phase.clients})
                second = phase.select("random", include_model=False, budgets={p: 3 for p in phase.clients})
                phase.record("rounds", [{str(p): v.tolist() for p, v in r.items()} for r in (first, second)])

    results = run_inprocess({**small_run, "strategy": "test-two-selects", "num-cycles": 1}, num_clients=2)
    first, second = results["cycles"][0]["strategy"]["rounds"]
    for pid in ("0", "1"):
        assert len(first[pid]) == 2 and len(second[pid]) == 3
        assert not set(first[pid]) & set(second[pid])
        assert results["cycles"][0]["selected-ids"][pid] == first[pid] + second[pid]
        assert results["cycles"][1]["labeled-per-client"][pid] == results["cycles"][0]["labeled-per-client"][pid] + 5
