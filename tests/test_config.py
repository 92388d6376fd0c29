"""Run config: generated tables in sync, clear errors naming the setting."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fal_shared.config import ConfigError, RunConfig, parse_run_config

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_run_config_equals_model_defaults():
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    defaults = RunConfig().to_flower()
    assert table == defaults, "run `python -m fal_shared.config --write` after changing settings"


def test_the_docs_generate_the_run_config_and_node_config_tables():
    """The reference pages hold no copy of the tables: the docs build writes them (tests/test_docs.py checks the result)."""
    for page, name in (("run-config.md", "run-config"), ("node-config.md", "node-config")):
        text = (ROOT / "docs" / "reference" / page).read_text()
        assert f"<!-- generated: {name} -->" in text
        assert "| key | default |" not in text, f"{page}: a hand-copied table"


def test_every_setting_is_documented():
    for name, info in RunConfig.model_fields.items():
        assert info.alias, name
        assert info.description and len(info.description) > 10, name


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"no-such-key": 1}, "no-such-key: unknown run-config key"),
        ({"partition": "banana"}, "partition: got 'banana'; allowed values"),
        ({"alpha": 0}, "alpha: must be > 0"),
        ({"alpha": -1.5}, "alpha: must be > 0"),
        ({"initial-labeled-fraction": 0.0}, "initial-labeled-fraction: must be in (0, 1]"),
        ({"budget-fraction": 1.5}, "budget-fraction: must be in (0, 1]"),
        ({"budget-fraction": 0.5, "num-cycles": 3}, "is more than every client's whole data"),
        ({"budget-mode": "count", "budget-count": 0}, "budget-count: must be >= 1"),
        ({"dataset": "imagenet"}, "dataset: unknown dataset 'imagenet'; valid: digits"),
        ({"model": "vgg"}, "model: unknown model 'vgg'; valid: auto, resnet8"),
        ({"output-dir": "relative/path"}, "output-dir: must be an absolute path"),
        ({"query-model": "other"}, "query-model: got 'other'; allowed values: 'global', 'local' or 'local-only'"),
        ({"num-clients": -1}, "num-clients"),
        ({"strategy": "random", "dataset": "diabetes", "model": "resnet8"},
         "model: 'resnet8' is an image model, but dataset 'diabetes' is a regression dataset"),
        ({"dataset": "digits", "model": "linear"}, "model: 'linear' is the regression model"),
        ({"train-min-fraction": 0}, "train-min-fraction"),
        ({"query-missing-client": "retry"}, "query-missing-client: got 'retry'; allowed values: 'skip' or 'fail'"),
    ],
)
def test_bad_values_name_the_setting(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        parse_run_config(overrides)
    assert fragment in str(err.value)


def test_budgets_are_capped_by_the_pool():
    cfg = parse_run_config({"budget-fraction": 0.05})
    assert cfg.budget_for(client_size=101, remaining_pool=50) == 6  # ceil(5.05)
    assert cfg.budget_for(client_size=101, remaining_pool=3) == 3
    assert cfg.budget_for(client_size=0, remaining_pool=0) == 0
    count = parse_run_config({"budget-mode": "count", "budget-count": 7})
    assert count.budget_for(client_size=1000, remaining_pool=5) == 5
    assert count.budget_for(client_size=1000, remaining_pool=500) == 7


def test_initial_count_has_at_least_one_label_when_there_is_data():
    cfg = parse_run_config({"initial-labeled-fraction": 0.05})
    assert cfg.initial_count(0) == 0
    assert cfg.initial_count(3) == 1
    assert cfg.initial_count(200) == 10


def test_lr_schedule_steps_per_round_like_logo():
    cfg = parse_run_config({"lr": 0.1, "rounds-per-cycle": 100, "lr-decay-fraction": 0.75})
    assert cfg.lr_for_round(75) == pytest.approx(0.1)
    assert cfg.lr_for_round(76) == pytest.approx(0.01)


def test_task_follows_dataset():
    assert parse_run_config({"dataset": "diabetes"}).task == "regression"
    assert parse_run_config({"dataset": "csv:/tmp/x.csv"}).task == "regression"
    assert parse_run_config({}).task == "classification"
