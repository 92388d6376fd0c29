"""A strategy's own run-config defaults (FALStrategy.run_defaults, strategies.resolve_run_config).

A strategy supplies values for keys the user did not set and refuses a contradicting value the user
did set. "Set" comes from flwr run's override config (the ServerApp's ``grid.run``), a launcher's
overrides, or, when neither is known, a value different from the generic default.
"""

from __future__ import annotations

import argparse

import pytest

from fal_shared.config import RunConfig
from launcher.cli_common import resolve_overrides
from server_app.app import explicit_keys
from server_app.inprocess import InProcessGrid, run_inprocess
from strategies import STRATEGIES, create_strategy, resolve_run_config
from strategies.simple import RandomStrategy

FALE = {"strategy": "fale", "dataset": "diabetes"}


def test_fale_supplies_what_the_user_did_not_set():
    cfg, applied = resolve_run_config(FALE, explicit=set(FALE))
    assert applied == {"num-cycles": 10, "evaluation": "federated"}
    assert (cfg.num_cycles, cfg.evaluation) == (10, "federated")
    create_strategy(cfg)  # runs as it is


def test_a_value_the_user_set_is_kept_even_when_it_equals_the_generic_default():
    cfg, applied = resolve_run_config({**FALE, "num-cycles": 3}, explicit={*FALE, "num-cycles"})
    assert cfg.num_cycles == 3 and applied == {"evaluation": "federated"}


def test_a_contradicting_value_the_user_set_is_refused():
    run = {**FALE, "evaluation": "central"}
    cfg, applied = resolve_run_config(run, explicit=set(run))
    assert "evaluation" not in applied and cfg.evaluation == "central"
    with pytest.raises(ValueError, match='evaluation="federated"'):
        create_strategy(cfg)


def test_without_a_record_of_what_was_set_the_defaults_table_decides():
    # flwr run's fused config holds every key; a value equal to the generic default counts as not set
    fused = {**RunConfig().to_flower(), **FALE, "num-cycles": 4}
    cfg, applied = resolve_run_config(fused)
    assert cfg.num_cycles == 4 and applied == {"evaluation": "federated"}
    cfg, applied = resolve_run_config({**fused, "num-cycles": 3})
    assert cfg.num_cycles == 10


def test_strategies_without_defaults_and_bad_declarations(monkeypatch):
    assert resolve_run_config({"strategy": "bait", "dataset": "diabetes"})[1] == {}
    assert resolve_run_config({"strategy": "fale-local", "dataset": "diabetes"})[1] == {"num-cycles": 10}

    class Bad(RandomStrategy):
        @classmethod
        def run_defaults(cls, cfg):
            return {"no-such-key": 1}

    monkeypatch.setitem(STRATEGIES, "bad-defaults", Bad)
    with pytest.raises(KeyError, match="no-such-key"):
        resolve_run_config({"strategy": "bad-defaults"})


def test_the_grid_reports_what_flwr_run_was_given():
    assert explicit_keys(InProcessGrid(None, {}, [])) is None
    assert explicit_keys(InProcessGrid(None, {}, [], override_config={"strategy": "fale"})) == {"strategy"}


def test_launcher_validates_with_the_strategy_defaults(tmp_path):
    def args(run_config):
        return argparse.Namespace(config=[], run_config=run_config)

    base = f'dataset="diabetes" output-dir="{tmp_path}" state-dir="{tmp_path}/s"'
    cfg, overrides, _ = resolve_overrides(args(f'strategy="fale" {base}'))
    assert (cfg.num_cycles, cfg.evaluation) == (10, "federated") and "num-cycles" not in overrides
    with pytest.raises(ValueError, match="evaluation"):
        resolve_overrides(args(f'strategy="fale" evaluation="central" {base}'))
    assert resolve_overrides(args(f'strategy="fale" num-cycles=3 {base}'))[0].num_cycles == 3


def test_fale_runs_with_the_default_run_config(tmp_path):
    results = run_inprocess({**FALE, "output-dir": str(tmp_path), "state-dir": str(tmp_path / "s"), "run-name": "f"},
                            num_clients=3)
    assert results["status"] == "completed"
    assert results["strategy-defaults"] == {"num-cycles": 10, "evaluation": "federated"}
    assert results["config"]["num-cycles"] == 10 and len(results["cycles"]) == 11
    n_query = [c["strategy"]["fale"]["n-query"] for c in results["cycles"][:-1]]
    assert n_query == [2, 4, 6, 8, 9, 11, 13, 15, 17, 18]  # ceil(n_q (c+1) / 10), n_q = ceil(5% of 354) = 18
    assert all(c["evaluation"]["where"] == "federated" for c in results["cycles"])


def test_clients_apply_the_defaults_the_server_applied(tmp_path, monkeypatch):
    class HalfLabelled(RandomStrategy):
        @classmethod
        def run_defaults(cls, cfg):
            return {"initial-labeled-fraction": 0.5}  # read by the clients only (initial purchase)

    monkeypatch.setitem(STRATEGIES, "half-labelled", HalfLabelled)
    results = run_inprocess({"strategy": "half-labelled", "dataset": "diabetes", "num-cycles": 0,
                             "output-dir": str(tmp_path), "state-dir": str(tmp_path / "s"), "run-name": "h"}, num_clients=3)
    sizes = [c["data-size"] for c in results["clients"].values()]
    assert results["cycles"][0]["labeled"] == sum(-(-n // 2) for n in sizes)
