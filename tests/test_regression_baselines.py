"""The BMDAL regression baselines (query/bmdal.py, strategies/regression_baselines.py): picks on hand-built data, settings, end to end.

Hand-built pools use FALE's single-layer linear model, whose BMDAL ``ll``/``grad`` features are
``[x, 1]``, so the right picks follow from the geometry of ``x`` alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fal_shared.config import ConfigError, RunConfig, parse_run_config
from fal_shared.models import build_model
from fal_shared.settings.regression import parse_bmdal
from fal_shared.training import predict
from query import PoolContext, get_selector, run_selection
from query.bmdal import bait_scores
from query.models import ModelBank
from server_app.inprocess import run_inprocess

DEFAULTS = RunConfig().to_flower()


def context(x_pool, x_labeled, *, budget, params=None, y_labeled=None, seed=0, local_only=None) -> PoolContext:
    x_pool, x_labeled = np.asarray(x_pool, np.float32), np.asarray(x_labeled, np.float32)
    d = x_pool.shape[1]
    model = build_model("linear", input_shape=(d,), num_outputs=1, seed=1)
    loaders = {"global": lambda: model, "local-only": (lambda: local_only) if local_only is not None else (lambda: model)}
    bank = ModelBank(loaders, lambda m, x: predict(m, x, batch_size=64, device=torch.device("cpu"), task="regression"),
                     x_pool, x_labeled)
    y = np.zeros(len(x_labeled)) if y_labeled is None else np.asarray(y_labeled, np.float64)
    return PoolContext(
        pool_ids=100 + np.arange(len(x_pool)), labeled_ids=np.arange(len(x_labeled)), labeled_y=y, budget=budget,
        num_classes=1, rng=np.random.default_rng(seed), models=bank, params={**DEFAULTS, **(params or {})},
        task="regression",
    )


def picks(name, ctx) -> list[int]:
    return run_selection(get_selector(name), ctx).positions.tolist()


def col(*values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(-1, 1)


# ------------------------------------------------------------------------------ hand-built picks
def test_maxdist_is_k_center_greedy_from_the_labeled_set():
    # labeled at 0; farthest-first: 4.0, then -3.0 (farther from {0, 4} than 1.0 or 0.5), then 1.0
    ctx = context(col(0.5, 1.0, 4.0, -3.0, 3.9), col(0.0), budget=3)
    assert picks("maxdist", ctx) == [2, 3, 1]


def test_lcmd_takes_the_farthest_point_of_the_largest_cluster():
    # centers 0 and 10 (labeled). Cluster "0" holds 0.1, 0.2, 3.0 (sum of squared distances 9.05), cluster "10"
    # holds 10.5, 11.0 (1.25): pick 3.0. Then cluster "0" has 0.05 left, cluster "10" still 1.25: pick 11.0.
    ctx = context(col(0.1, 0.2, 3.0, 10.5, 11.0), col(0.0, 10.0), budget=2, params={"lcmd-bmdal": "tp_ll"})
    assert picks("lcmd", ctx) == [2, 4]


def test_kmeanspp_seeds_only_where_the_squared_distance_is_positive():
    # TP mode: the labeled 0 and 10 are centers first; only 5 and -5 are at a positive distance
    params = {"badge-bmdal": "tp_ll"}
    for seed in range(5):
        assert sorted(picks("kmeanspp", context(col(0.0, 10.0, 5.0, -5.0, 10.0), col(0.0, 10.0), budget=2, params=params, seed=seed))) == [2, 3]


def test_kmeanspp_draws_proportionally_to_the_squared_distance():
    # D^2 to the labeled 0 is 0, 1, 9: the first pick is 3.0 with probability 0.9, 1.0 with 0.1, never 0.0
    params = {"badge-bmdal": "tp_ll"}
    first = [picks("kmeanspp", context(col(0.0, 1.0, 3.0), col(0.0), budget=1, params=params, seed=s))[0] for s in range(300)]
    counts = np.bincount(first, minlength=3)
    assert counts[0] == 0
    assert 0.84 < counts[2] / 300 < 0.96


def test_bait_picks_the_direction_the_labeled_set_does_not_cover():
    # the labels span x1 (and the bias); x2 and x3 are unknown: BAIT takes the largest point along each of them
    x_labeled = [[t, 0.0, 0.0] for t in (-2.0, -1.0, 1.0, 2.0)]
    x_pool = [[3.0, 0, 0], [-3.0, 0, 0], [0.0, 2.0, 0], [0.0, 0, 1.5], [0.5, 0, 0], [0.0, 1.0, 0]]
    assert picks("bait", context(x_pool, x_labeled, budget=1)) == [2]
    assert sorted(picks("bait", context(x_pool, x_labeled, budget=2))) == [2, 3]
    assert sorted(picks("bait", context(x_pool, x_labeled, budget=2, params={"bait-overselection": 1.0}))) == [2, 3]


def test_bait_scores_are_bmdals_first_greedy_criterion():
    # linear kernel, no transform: score_i = x_i^T C x_i / (||x_i||^2 + sigma^2 + 1e-8), C = X_pool^T X_pool + X_lab^T X_lab
    rng = np.random.default_rng(0)
    xp, xl = rng.normal(size=(30, 4)), rng.normal(size=(6, 4))
    model = build_model("linear", input_shape=(4,), num_outputs=1, seed=0)
    got = bait_scores(model, xp, xl, np.zeros(6), parse_bmdal("p_linear"), sigma=0.1, seed=0)
    c = xp.T @ xp + xl.T @ xl
    want = np.einsum("ij,jk,ik->i", xp, c, xp) / (np.einsum("ij,ij->i", xp, xp) + 0.01 + 1e-8)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_acs_fw_first_pick_is_best_aligned_with_the_pool_embedding():
    # normalised features; the pool's total embedding is (6, 1.1): (1, 0.1) is the best aligned, (0, 1) the worst
    x_pool = [[1.0, 0.0]] * 5 + [[0.0, 1.0], [1.0, 0.1]]
    ctx = context(x_pool, [[1.0, 0.0]], budget=1, params={"acs-fw-bmdal": "p_linear"})
    assert picks("acs-fw", ctx) == [6]


def test_logo_bait_takes_the_highest_bait_score_in_each_cluster():
    rng = np.random.default_rng(1)
    a = rng.normal(scale=0.3, size=(12, 3)) + [8.0, 0.0, 0.0]
    b = rng.normal(scale=0.3, size=(12, 3)) + [-8.0, 0.0, 0.0]
    x_pool, x_labeled = np.vstack([a, b]), rng.normal(size=(5, 3))
    ctx = context(x_pool, x_labeled, budget=2, params={"logo-kmeans-n-init": 3})
    got = picks("logo-bait", ctx)
    model = build_model("linear", input_shape=(3,), num_outputs=1, seed=1)
    scores = bait_scores(model, x_pool, x_labeled, np.zeros(5), parse_bmdal("p_ll_train"), sigma=0.1, seed=0)
    assert sorted(got) == sorted([int(np.argmax(scores[:12])), 12 + int(np.argmax(scores[12:]))])
    assert ctx.diagnostics["logo-clusters-found"] == 2


# ------------------------------------------------------------------------------ behaviour and settings
def test_selection_leaves_global_random_state_and_numpy_alone():
    np.random.seed(5)
    torch.manual_seed(5)
    before_np, before_torch = np.random.random(), torch.rand(1).item()
    np.random.seed(5)
    torch.manual_seed(5)
    rng = np.random.default_rng(2)
    ctx = context(rng.normal(size=(40, 3)), rng.normal(size=(5, 3)), budget=4)  # lcmd's default sketches (torch RNG)
    picks("lcmd", ctx)
    picks("kmeanspp", context(rng.normal(size=(40, 3)), rng.normal(size=(5, 3)), budget=4))  # P mode: numpy RNG
    assert np.random.random() == before_np and torch.rand(1).item() == before_torch
    assert not hasattr(np, "Inf")  # the NumPy 2 alias is given to bmdal_reg's module only


def test_no_labeled_sample_is_a_clear_error():
    ctx = context(col(1.0, 2.0, 3.0), np.zeros((0, 1)), budget=1)
    with pytest.raises(ValueError, match="at least one labeled sample"):
        picks("bait", ctx)


@pytest.mark.parametrize("key", ["bait-bmdal", "acs-fw-bmdal", "lcmd-bmdal", "coreset-bmdal", "badge-bmdal"])
@pytest.mark.parametrize("bad", ["ll_train", "p_rbf", "tp_ll_rp", "p_ll_sketch-5"])
def test_bad_bmdal_configuration_names_the_key(key, bad):
    with pytest.raises(ConfigError, match=key):
        parse_run_config({key: bad})


def test_bmdal_grammar():
    spec = parse_bmdal("tp_grad_rp-512_acs-rf-hyper-64_train")
    assert spec.sel_with_train and spec.base_kernel == "grad"
    assert spec.transforms == (("rp", 512), ("acs-rf-hyper", 64), ("train", None))
    assert parse_bmdal("p_ll").transforms == () and not parse_bmdal("p_ll").sel_with_train


def test_every_setting_has_a_source():
    for key in ("bmdal-sigma", "bait-bmdal", "bait-overselection", "acs-fw-bmdal", "lcmd-bmdal", "coreset-bmdal", "badge-bmdal"):
        info = next(f for f in RunConfig.model_fields.values() if f.alias == key)
        assert info.description and info.json_schema_extra["source"], key


# ------------------------------------------------------------------------------ end to end
STRATEGIES = ["bait", "lcmd", "acs-fw", "coreset", "badge", "logo-bait"]


def _run(tmp_path, strategy, **extra):
    return run_inprocess({
        "strategy": strategy, "dataset": "diabetes", "num-cycles": 1, "rounds-per-cycle": 1, "local-epochs": 2,
        "optimizer": "adam", "lr": 0.01, "budget-mode": "count", "budget-count": 4, "local-only-epochs": 5,
        "logo-kmeans-n-init": 2, "output-dir": str(tmp_path), "state-dir": str(tmp_path / "s"), "run-name": "r", **extra,
    }, num_clients=3)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_runs_a_query_round_on_the_clients(tmp_path, strategy):
    results = _run(tmp_path, strategy)
    assert results["status"] == "completed"
    first, second = results["cycles"]
    assert first["traffic"]["query.select"]["messages-sent"] == 3
    assert first["traffic"]["query.select"]["bytes-sent"] > 3 * 300  # the global linear model went with it
    for pid, ids in first["selected-ids"].items():
        assert len(ids) == len(set(ids)) == first["budgets"][pid] == 4
        assert second["labeled-per-client"][pid] == first["labeled-per-client"][pid] + 4
    assert np.isfinite(second["evaluation"]["mse"])
    if strategy == "logo-bait":
        assert all(d["logo-clusters-found"] >= 1 for d in first["strategy"]["client-diagnostics"].values())
    else:
        assert all("bmdal-kernel" in t for t in first["strategy"]["client-selection-seconds"].values())


def test_a_baseline_runs_from_csv(tmp_path):
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    path = tmp_path / "d.csv"
    header = ",".join([*data.feature_names, "target"])
    np.savetxt(path, np.column_stack([data.data, data.target]), delimiter=",", header=header, comments="")
    results = _run(tmp_path, "lcmd", dataset=f"csv:{path}")
    assert results["status"] == "completed" and results["cycles"][1]["labeled"] == results["cycles"][0]["labeled"] + 12


def test_same_seed_same_selections(tmp_path):
    a = _run(tmp_path / "a", "acs-fw", **{"num-cycles": 2})
    b = _run(tmp_path / "b", "acs-fw", **{"num-cycles": 2})
    assert [c.get("selected-ids") for c in a["cycles"]] == [c.get("selected-ids") for c in b["cycles"]]
