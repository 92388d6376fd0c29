"""FALE's settings and bad configs, and the loop hooks FALE relies on (train_rounds, evaluation_model_key)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord

from fal_shared.config import ConfigError, RunConfig, parse_run_config
from fal_shared.experiment_data import test_data as held_out_data
from fal_shared.models import build_model
from server_app.inprocess import run_inprocess
from strategies import STRATEGIES, FALStrategy, create_strategy
from strategies.fale import fale_budget


def cfg(**kw):
    return parse_run_config({"strategy": "fale", "dataset": "diabetes", "evaluation": "federated", "num-cycles": 1, **kw})


def test_defaults_are_documented_and_valid():
    c = cfg()
    assert (c.fale_budget_count, c.fale_budget_fraction, c.fale_block_size, c.fale_fit_intercept) == (0, 0.05, 1000, False)
    for key in ("fale-budget-count", "fale-budget-fraction", "fale-block-size", "fale-fit-intercept", "fale-max-draws"):
        info = next(f for f in RunConfig.model_fields.values() if f.alias == key)
        assert info.description and info.json_schema_extra["source"]
    create_strategy(c)
    create_strategy(cfg(strategy="fale-local", evaluation="central"))


@pytest.mark.parametrize(
    ("key", "value"),
    [("fale-block-size", 0), ("fale-budget-fraction", 0.0), ("fale-budget-fraction", 1.5), ("fale-budget-count", -1),
     ("fale-max-draws", 0)],
)
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        cfg(**{key: value})


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"evaluation": "central"}, "evaluation"),
        ({"dataset": "digits"}, "regression"),
        ({"model": "mlp"}, "model"),
    ],
)
def test_configs_fale_cannot_run_fail_before_anything_runs(overrides, key):
    with pytest.raises(ValueError, match=key):
        create_strategy(cfg(**overrides))


def test_budget_rules():
    assert fale_budget(cfg(**{"fale-budget-count": 7}), 100) == 7
    assert fale_budget(cfg(**{"fale-budget-fraction": 0.05}), 101) == 6  # ceil
    assert fale_budget(cfg(**{"fale-budget-fraction": 1.0}), 101) == 101
    with pytest.raises(ValueError, match="fale-budget-count"):
        fale_budget(cfg(**{"fale-budget-count": 500}), 354)


def _base(tmp_path, **kw):
    return {"dataset": "diabetes", "output-dir": str(tmp_path), "state-dir": str(tmp_path / "s"), "run-name": "e",
            "num-cycles": 1, "rounds-per-cycle": 1, "local-epochs": 1, "evaluation": "federated", **kw}


def test_budget_larger_than_the_data_fails_the_run_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="fale-budget-count"):
        run_inprocess(_base(tmp_path, strategy="fale", **{"fale-budget-count": 355}), num_clients=3)
    results = json.loads((Path(tmp_path) / "e" / "results.json").read_text())
    assert results["status"] == "failed" and "fale-budget-count" in results["error"]


# ------------------------------------------------------------------- the generic loop hooks
class _ClosedForm(FALStrategy):
    """Buys random labels, trains nothing, installs an all-zero linear model (tests only)."""

    tasks = ("regression",)
    initial_labels = False
    key: str | None = None

    def train_rounds(self, cycle):
        return 0

    def evaluation_model_key(self, cycle, state):
        return self.key if state.get("done") else None

    def query(self, phase):
        phase.select("random", include_model=False)
        model = build_model("linear", input_shape=(10,), num_outputs=1)
        for p in model.parameters():
            p.data.zero_()
        phase.replace_model(ArrayRecord(model.state_dict()))
        phase.state["done"] = True


@pytest.fixture
def closed_form(monkeypatch):
    def register(name, key=None):
        cls = type(name, (_ClosedForm,), {"name": name, "key": key})
        monkeypatch.setitem(STRATEGIES, name, cls)
        return name
    return register


def test_no_training_keeps_the_replaced_model(tmp_path, closed_form):
    name = closed_form("test-closed-form")
    results = run_inprocess(_base(tmp_path, strategy=name, **{"budget-mode": "count", "budget-count": 5}), num_clients=3)
    c0, c1 = results["cycles"]
    assert c0["labeled"] == 0 and c1["labeled"] == 15
    assert c0["train-rounds"] == c1["train-rounds"] == 0 and "train" not in c1["traffic"]
    # cycle 1 evaluates the installed zero model, not a re-initialised one: MSE = mean(y^2)
    test = held_out_data(parse_run_config(_base(tmp_path, strategy="random")), 3)
    assert c1["evaluation"]["mse"] == pytest.approx(float(np.mean(test.y**2)), rel=1e-6)


def test_client_state_model_needs_federated_evaluation(tmp_path, closed_form):
    name = closed_form("test-state-model", key="somewhere")
    with pytest.raises(ValueError, match='evaluation="federated"'):
        run_inprocess(_base(tmp_path, strategy=name, evaluation="central", **{"budget-mode": "count", "budget-count": 5}),
                      num_clients=3)
    # federated, but no node holds that model: the clients say so
    with pytest.raises(RuntimeError, match="holds none"):
        run_inprocess(_base(tmp_path / "b", strategy=name, **{"budget-mode": "count", "budget-count": 5}), num_clients=3)


@pytest.mark.parametrize(
    "path",
    sorted(p for pat in ("fale-*.toml", "regression-random-*.toml") for p in (Path(__file__).resolve().parents[1] / "experiments").glob(pat)),
    ids=lambda p: p.name,
)
def test_experiment_files_are_valid_run_configs(path):
    import tomllib

    c = parse_run_config(tomllib.loads(path.read_text()))
    create_strategy(c)  # the strategy's own checks pass too
    assert c.task == "regression" and c.resolved_model() == "linear" and c.regression_alpha == 5.0
    if c.strategy.startswith("fale"):
        assert c.fale_budget_count == 15000 and c.num_cycles == 1
    else:
        assert c.budget_count * c.num_clients * c.num_cycles == 15000
