"""AHFAL's statistics round: local DP, secure summation, the strategy's server side."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from client_app.methods.ahfal import (
    ahfal_histogram,
    dp_epsilon_per_cycle,
    noisy_histogram,
)
from client_app.session import ClientSession
from fal_shared.config import RunConfig, parse_run_config
from query.ahfal import server_statistics, sums_from_histograms
from strategies.ahfal import PRIVACY_WARNING, AhfalStrategy

# ------------------------------------------------------------------- local DP


def test_epsilon_split_over_cycles():
    assert dp_epsilon_per_cycle(5.0, 5) == 1.0  # Table 3: 5 over 5 cycles
    assert dp_epsilon_per_cycle(10.0, 5) == 2.0
    assert dp_epsilon_per_cycle(0.0, 5) == 0.0


def test_noisy_histogram_is_laplace_postprocessed():
    counts = np.array([0, 1, 1000, 3])
    assert np.array_equal(noisy_histogram(counts, 0.0, 1.0, np.random.default_rng(0)), counts)
    a = noisy_histogram(counts, 1.0, 1.0, np.random.default_rng(7))
    b = noisy_histogram(counts, 1.0, 1.0, np.random.default_rng(7))
    assert np.array_equal(a, b) and a.dtype == np.int64 and (a >= 0).all()
    # scale = sensitivity / epsilon: mean |noise| of Laplace(b) is b (rounding adds ~1/(12 b))
    rng = np.random.default_rng(1)
    big = np.full(20000, 1000)
    for eps, sens in ((1.0, 1.0), (0.5, 1.0), (1.0, 2.0)):
        dev = np.abs(noisy_histogram(big, eps, sens, rng) - big).mean()
        assert abs(dev - sens / eps) < 0.1 * sens / eps, (eps, sens, dev)
    # small counts are clipped at 0, never negative
    assert (noisy_histogram(np.zeros(5000, dtype=int), 0.2, 1.0, rng) >= 0).all()


def _session(tmp_path, **overrides) -> ClientSession:
    run_config = {**RunConfig().to_flower(), "state-dir": str(tmp_path), "train-subset-size": 300, **overrides}
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 3},
                  state=RecordDict(), run_config=run_config)
    session = ClientSession(ctx, "unit")
    session.ensure_initial_labels()
    return session


def _msg(cycle: int, **config) -> RecordDict:
    return RecordDict({"config": ConfigRecord({"cycle": cycle, **config})})


def _result(reply: RecordDict) -> dict:
    return dict(reply.config_records["result"])


def test_client_dp_ledger_retries_and_budget(tmp_path):
    session = _session(tmp_path, **{"ahfal-dp-epsilon": 2.0, "num-cycles": 2, "ahfal-dp-noise-seed": "run-seed"})
    true = np.array(session.label_histogram())
    first = _result(ahfal_histogram(session, _msg(0)))
    assert first["dp-epsilon"] == 1.0 and first["dp-epsilon-spent"] == 1.0
    assert np.array(first["histogram"]).sum() > 0 and not np.array_equal(first["histogram"], true)
    retry = _result(ahfal_histogram(session, _msg(0)))  # same release, nothing more spent
    assert retry == first
    # a restarted node (empty memory, same state dir) repeats the release instead of drawing again
    restarted = ClientSession(Context(run_id=1, node_id=9, node_config={"partition-id": 0, "num-partitions": 3},
                                      state=RecordDict(), run_config=session.context.run_config), "unit")
    assert _result(ahfal_histogram(restarted, _msg(0))) == first
    second = _result(ahfal_histogram(restarted, _msg(1)))
    assert second["dp-epsilon-spent"] == 2.0
    with pytest.raises(RuntimeError, match="ahfal-dp-epsilon"):
        ahfal_histogram(session, _msg(2))  # a third release would exceed the total budget


def test_client_without_dp_sends_exact_histogram(tmp_path):
    session = _session(tmp_path)
    res = _result(ahfal_histogram(session, _msg(0)))
    assert res["histogram"] == session.label_histogram() and res["dp-epsilon"] == 0.0


def test_system_noise_is_not_the_seeded_noise(tmp_path):
    a = _session(tmp_path / "a", **{"ahfal-dp-epsilon": 1.0, "num-cycles": 1})
    b = _session(tmp_path / "b", **{"ahfal-dp-epsilon": 1.0, "num-cycles": 1})
    draws_a = [_result(ahfal_histogram(a, _msg(0)))["histogram"]]
    draws_b = [_result(ahfal_histogram(b, _msg(0)))["histogram"]]
    # same run seed and partition, OS-entropy noise: the releases differ (P[equal] is negligible)
    assert draws_a != draws_b


# ------------------------------------------------------------- strategy side
class FakePhase:
    """Just enough of server_app's query phase to drive the strategy without training."""

    def __init__(self, cfg, histograms, cycle=0):
        self.cfg, self.cycle, self.hists = cfg, cycle, histograms
        self.recorded, self.sent, self.selected = {}, [], None

    def broadcast(self, action, config=None, *, include_model=False, records=None):
        self.sent.append(action)
        assert action == "ahfal_histogram"
        return {p: RecordDict({"result": ConfigRecord({"histogram": h, "dp-epsilon": 0.5, "dp-epsilon-spent": 0.5})})
                for p, h in enumerate(self.hists)}

    def select(self, selector, params=None, *, per_client=None, include_model=True, budgets=None):
        self.selected = (selector, dict(params or {}), include_model)
        return {}

    def record(self, key, value):
        self.recorded[key] = value


def test_strategy_broadcasts_statistics_to_the_selection():
    hists = [[2, 2, 0, 0], [0, 4, 0, 0], [1, 1, 0, 2]]
    cfg = parse_run_config({"strategy": "ahfal", "ahfal-tau": 22.0, "ahfal-dp-epsilon": 1.0,
                            "record-label-histograms": False})
    phase = FakePhase(cfg, hists)
    AhfalStrategy(cfg).query(phase)
    selector, params, include_model = phase.selected
    assert selector == "ahfal" and include_model
    assert params["ahfal-c-low"] == "0,2"  # sigma = [20.4, 31.2, 0, 23.6] pp vs tau 22
    np.testing.assert_allclose([float(v) for v in params["ahfal-target-distribution"].split(",")],
                               [0.25, 7 / 12, 0, 1 / 6])
    rec = phase.recorded["ahfal"]
    np.testing.assert_allclose(rec["sigma-pp"], server_statistics(sums_from_histograms(hists), 22.0).sigma)
    assert rec["c-high"] == [1, 3]
    assert phase.recorded["dp-epsilon-spent"] == {"0": 0.5, "1": 0.5, "2": 0.5}


def test_strategy_without_toggling_sends_no_global_model():
    cfg = parse_run_config({"strategy": "ahfal", "ahfal-toggling": False})
    phase = FakePhase(cfg, [[1, 2], [3, 4]])
    AhfalStrategy(cfg).query(phase)
    assert phase.selected[2] is False
    assert "dp-epsilon-spent" not in phase.recorded


def test_privacy_with_recorded_histograms_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="fal"):
        AhfalStrategy(parse_run_config({"strategy": "ahfal", "ahfal-secure-sum": True})).validate()
    assert PRIVACY_WARNING in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fal"):
        AhfalStrategy(parse_run_config({"strategy": "ahfal", "ahfal-dp-epsilon": 5.0,
                                        "record-label-histograms": False})).validate()
        AhfalStrategy(parse_run_config({"strategy": "ahfal"})).validate()
    assert PRIVACY_WARNING not in caplog.text


def test_strategy_rejects_regression():
    with pytest.raises(ValueError, match="classification"):
        AhfalStrategy(parse_run_config({"strategy": "ahfal", "dataset": "diabetes"})).validate()


@pytest.mark.parametrize("key,value", [("ahfal-tau", -1.0), ("ahfal-allocation", "greedy"),
                                       ("ahfal-dp-epsilon", -5.0), ("ahfal-secure-sum-frac-bits", 60)])
def test_bad_settings_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        parse_run_config({key: value})
