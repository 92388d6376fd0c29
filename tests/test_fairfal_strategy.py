"""FairFAL's server strategy (mock phase) and its real message flow (in-process Flower run)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fal_shared.config import RunConfig
from server_app.app import run_experiment
from server_app.inprocess import InProcessGrid
from strategies import create_strategy
from strategies.fairfal import STATS_ACTION, FairFALStrategy


class _MockPhase:
    """A QueryPhase whose clients answer with fixed g_i and fixed selection diagnostics."""

    def __init__(self, cfg, cycle, state, g_values, use_global):
        self.cfg, self.cycle, self.state = cfg, cycle, state
        self.g_values, self.use_global = g_values, use_global
        self.recorded: dict = {}
        self.calls: list = []

    def broadcast(self, action, config=None, *, include_model=False, records=None):
        self.calls.append(("broadcast", action, include_model))
        return {
            p: RecordDict({"result": ConfigRecord({"labeled": 5, **({"g": g} if g is not None else {})})})
            for p, g in self.g_values.items()
        }

    def select(self, selector, params=None, *, per_client=None, include_model=True, budgets=None):
        self.calls.append(("select", selector, dict(params)))
        self.recorded["client-diagnostics"] = {
            str(p): {"used-global-uncertainty": u, "used-global-embedding": not u} for p, u in self.use_global.items()
        }
        return {}

    def record(self, key, value):
        self.recorded[key] = value


def _run_cycles(mode, g_per_cycle):
    strategy = FairFALStrategy(RunConfig(strategy="fairfal", **{"fairfal-g-bar-mode": mode}))
    state: dict = {}
    phases = []
    for cycle, g_values in enumerate(g_per_cycle):
        phase = _MockPhase(strategy.cfg, cycle, state, g_values, {0: True, 1: False, 2: False})
        strategy.query(phase)
        phases.append(phase)
    return phases


def test_g_bar_frozen_after_first_query_by_default():
    phases = _run_cycles("freeze", [{0: 0.2, 1: 0.4, 2: None}, {0: 0.9, 1: 0.9, 2: 0.9}])
    first, second = phases
    # cycle 0: statistics round with the model, mean over the clients that have a g (2 has no labels)
    assert first.calls[0] == ("broadcast", STATS_ACTION, True)
    assert first.calls[1] == ("select", "fairfal", {"fairfal-g-bar": pytest.approx(0.3)})
    assert first.recorded["g-per-client"] == {"0": 0.2, "1": 0.4}
    # cycle 1: no statistics round, the frozen value is sent again
    assert [c[0] for c in second.calls] == ["select"]
    assert second.calls[0][2] == {"fairfal-g-bar": pytest.approx(0.3)}
    assert second.recorded["g-bar"] == pytest.approx(0.3)
    assert (second.recorded["g-bar-cycle"], second.recorded["statistics-round"]) == (0, False)
    # which clients used the global model, from the selection diagnostics
    assert second.recorded["clients-global-uncertainty"] == [0]
    assert second.recorded["fraction-global-uncertainty"] == pytest.approx(1 / 3)
    assert second.recorded["clients-global-embedding"] == [1, 2]


def test_g_bar_refreshed_every_query_when_asked():
    phases = _run_cycles("refresh", [{0: 0.2, 1: 0.4}, {0: 0.9, 1: 0.7}])
    assert [c[0] for c in phases[1].calls] == ["broadcast", "select"]
    assert phases[1].recorded["g-bar"] == pytest.approx(0.8)
    assert phases[1].recorded["g-bar-cycle"] == 1


def test_no_client_with_labels_is_an_error():
    with pytest.raises(RuntimeError, match="g-bar"):
        _run_cycles("freeze", [{0: None, 1: None}])


def test_regression_config_is_rejected_before_training():
    with pytest.raises(ValueError, match="fairfal"):
        create_strategy(RunConfig(strategy="fairfal", dataset="diabetes"))


def test_real_message_flow(tmp_path):
    """Two query cycles over real Flower messages: g_i is the only statistic sent, g-bar is frozen."""
    overrides = {
        "strategy": "fairfal", "output-dir": str(tmp_path), "state-dir": str(tmp_path / "state"), "run-name": "t",
        "num-cycles": 2, "rounds-per-cycle": 1, "local-epochs": 1, "train-subset-size": 300,
        "local-only-epochs": 3, "num-clients": 3,
    }
    from client_app.app import app as client_app

    run_config = {**RunConfig().to_flower(), **overrides}
    grid = InProcessGrid(client_app, run_config, [{"partition-id": i, "num-partitions": 3} for i in range(3)])
    stats_replies = []
    inner = grid.send_and_receive

    def spy(messages, *, timeout=None):
        replies = list(inner(messages, timeout=timeout))
        stats_replies.extend(r for r in replies if r.metadata.message_type == f"query.{STATS_ACTION}")
        return replies

    grid.send_and_receive = spy
    results = run_experiment(grid, run_config)
    assert results["status"] == "completed"
    c0, c1 = results["cycles"][0], results["cycles"][1]
    # one statistics round (3 replies) in the first query only
    assert len(stats_replies) == 3 and all(not r.has_error() for r in stats_replies)
    for r in stats_replies:
        assert set(r.content["result"].keys()) == {"g", "labeled"}
        assert 0 < r.content["result"]["g"] <= 1
    assert f"query.{STATS_ACTION}" in c0["traffic"] and f"query.{STATS_ACTION}" not in c1["traffic"]
    g = [r.content["result"]["g"] for r in stats_replies]
    assert c0["strategy"]["g-bar"] == pytest.approx(np.mean(g)) == c1["strategy"]["g-bar"]
    # every client bought exactly its budget, and reported its query-model choice
    for cycle in (c0, c1):
        for pid, ids in cycle["selected-ids"].items():
            assert len(ids) == len(set(ids)) == cycle["budgets"][pid]
            diag = cycle["strategy"]["client-diagnostics"][pid]
            assert isinstance(diag["used-global-uncertainty"], bool)
            assert 0 <= diag["divergence"] <= 1
            phases = cycle["strategy"]["client-selection-seconds"][pid]  # the selector's own timings reach the results
            assert set(phases) == {"fairfal-models", "fairfal-scores", "fairfal-selection"}
        assert 0 <= cycle["strategy"]["fraction-global-uncertainty"] <= 1


@pytest.mark.parametrize("alpha", ["0.1", "100"])
def test_experiment_files_express_the_paper_setting(alpha):
    from pathlib import Path

    from flwr.common.config import parse_config_args

    from fal_shared.config import parse_run_config

    path = Path(__file__).resolve().parents[1] / "experiments" / f"fairfal-fmnist-lt-alpha{alpha}.toml"
    cfg = parse_run_config(parse_config_args([str(path)]))  # what `flwr run . --run-config <file>` does
    assert (cfg.strategy, cfg.dataset, cfg.resolved_model(), cfg.partition) == (
        "fairfal", "fashion-mnist", "cnn4conv", "dirichlet-balanced")
    assert cfg.alpha == float(alpha) and cfg.long_tail_factor == 20 and cfg.model_init == "reinit"
    # 20,428 long-tailed samples over 10 equal clients: 5% initial + 8 queries of 102 -> 45% labeled
    client = 20428 // 10
    labeled = cfg.initial_count(client) + cfg.num_cycles * cfg.budget_for(client, client)
    assert labeled / client == pytest.approx(0.45, abs=0.001)
