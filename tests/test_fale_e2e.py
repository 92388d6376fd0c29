"""FALE / FALE-local end to end through the real ServerApp loop and ClientApp handlers (in-process Flower).

Diabetes (442 x 10, embedded in scikit-learn): 354 training samples over 3 clients, 88 test samples.
"""

from __future__ import annotations

import numpy as np
import pytest

from client_app.app import app as client_app
from client_app.ledger import LabelLedger
from client_app.methods.fale import MODEL_KEY, THETA_KEY, client_features
from fal_shared.config import RunConfig
from fal_shared.experiment_data import client_data
from fedsvd import fale_fit
from server_app.app import run_experiment
from server_app.inprocess import InProcessGrid

N_CLIENTS = 3


def overrides(tmp_path, **extra):
    return {
        "strategy": "fale", "dataset": "diabetes", "seed": 4, "num-cycles": 1, "rounds-per-cycle": 2,
        "local-epochs": 3, "optimizer": "adam", "lr": 0.01, "evaluation": "federated",
        "fale-budget-count": 40, "fale-block-size": 32, "run-name": "t",
        "output-dir": str(tmp_path / "out"), "state-dir": str(tmp_path / "state"), **extra,
    }


def run(tmp_path, **extra):
    """Run the experiment; return (results, grid) so tests can look into the nodes' state."""
    run_config = {**RunConfig().to_flower(), **overrides(tmp_path, **extra), "num-clients": N_CLIENTS}
    nodes = [{"partition-id": i, "num-partitions": N_CLIENTS} for i in range(N_CLIENTS)]
    grid = InProcessGrid(client_app, run_config, nodes)
    return run_experiment(grid, run_config), grid, RunConfig.model_validate(run_config)


def node_of(grid, pid):
    return next(ctx for ctx in grid.contexts.values() if int(ctx.node_config["partition-id"]) == pid)


def test_fale_protocol_end_to_end(tmp_path):
    results, grid, cfg = run(tmp_path)
    assert results["status"] == "completed"
    c0, c1 = results["cycles"]
    # no initial labels, no training at all (closed form); one pass of the protocol's rounds
    assert c0["labeled"] == 0 and c0["train-rounds"] == 0 and c1["train-rounds"] == 0
    assert "train" not in c0["traffic"] and "train" not in c1["traffic"]
    assert set(c0["traffic"]) == {
        "evaluate", "query.fale_keys", "query.fale_authority", "query.fale_mask", "query.fale_scores",
        "query.fale_label", "query.fale_model",
    }
    assert c0["traffic"]["query.fale_authority"]["messages-sent"] == 1  # the authority client only
    rec = c0["strategy"]["fale"]
    assert rec["n-query"] == 40 == c1["labeled"] and rec["authority-partition"] == 0
    assert rec["n-draws"] >= 40 and rec["rank"] == 10
    assert rec["leverage-score-sum"] == pytest.approx(10.0, abs=1e-9)  # sum of leverage scores = rank
    # the ledgers hold exactly the selected samples, bought once under FALE's token
    for pid in range(N_CLIENTS):
        ledger = LabelLedger(tmp_path / "state" / "t" / f"partition-{pid}.json", task="regression")
        ids = c0["selected-ids"][str(pid)]
        assert sorted(ledger.labeled_ids().tolist()) == sorted(ids)
        assert ledger.purchase("cycle-0-fale") is not None and c1["labeled-per-client"][str(pid)] == len(ids)
        assert c0["budgets"][str(pid)] == len(ids) == rec["selected-per-client"][str(pid)]
    # cycle 1 evaluates the model every client unmasked, federatedly: it equals theta's test MSE
    ev = c1["evaluation"]
    assert ev["where"] == "federated" and ev["client-model-key"] == MODEL_KEY
    thetas = [node_of(grid, p).state.array_records[THETA_KEY].to_numpy_ndarrays()[0] for p in range(N_CLIENTS)]
    for theta in thetas[1:]:
        np.testing.assert_allclose(theta, thetas[0], rtol=0, atol=0)  # shared Q: the same model everywhere
    errors = []
    for pid in range(N_CLIENTS):
        part = client_data(cfg, pid, N_CLIENTS)
        errors.append((part.x_test.astype(np.float64) @ thetas[0] - part.y_test) ** 2)
    assert ev["mse"] == pytest.approx(float(np.mean(np.concatenate(errors))), rel=1e-5)
    assert ev["mse"] < 0.8 * c0["evaluation"]["mse"]  # the fitted model beats the untrained one


def test_fale_matches_the_library_fale_fit(tmp_path):
    """The app's selection and theta equal fedsvd.fale_fit on the same data and seed."""
    results, grid, cfg = run(tmp_path, **{"fale-fit-intercept": True})
    parts = [client_data(cfg, pid, N_CLIENTS) for pid in range(N_CLIENTS)]
    lib = fale_fit(
        [client_features(p.x, True) for p in parts], [p.y for p in parts], 40, seed=cfg.seed, block_size=cfg.fale_block_size
    )
    app_selected = sorted(
        (pid, int(np.searchsorted(parts[pid].ids, i)))
        for pid in range(N_CLIENTS) for i in results["cycles"][0]["selected-ids"][str(pid)]
    )
    assert app_selected == sorted(lib.selected)
    assert results["cycles"][0]["strategy"]["fale"]["n-draws"] == lib.n_draws
    theta = node_of(grid, 0).state.array_records[THETA_KEY].to_numpy_ndarrays()[0]
    assert theta.shape == (11,)  # 10 features + intercept
    np.testing.assert_allclose(theta, lib.theta, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        results["cycles"][0]["strategy"]["fale"]["singular-values"], lib.singular_values, rtol=1e-10
    )


def test_fale_local_selects_like_fale_then_trains_with_fedavg(tmp_path):
    fale, _, _ = run(tmp_path / "a")
    local, grid, _ = run(tmp_path / "b", strategy="fale-local")
    assert local["status"] == "completed"
    l0, l1 = local["cycles"]
    assert l0["selected-ids"] == fale["cycles"][0]["selected-ids"]  # the same global selection
    assert l0["train-rounds"] == 0 and l1["train-rounds"] == 2  # nothing to train on before the query
    assert l1["traffic"]["train"]["messages-sent"] == 2 * N_CLIENTS
    assert "query.fale_model" not in l0["traffic"]  # no masked least squares
    assert "client-model-key" not in l1["evaluation"]
    assert all(MODEL_KEY not in ctx.state.array_records for ctx in grid.contexts.values())
    assert np.isfinite(l1["evaluation"]["mse"]) and l1["evaluation"]["mse"] < l0["evaluation"]["mse"]


def test_fale_local_runs_with_central_evaluation(tmp_path):
    results, _, _ = run(tmp_path, strategy="fale-local", evaluation="central", **{"fale-budget-count": 0,
                                                                                 "fale-budget-fraction": 0.1})
    c0, c1 = results["cycles"]
    assert c1["labeled"] == int(np.ceil(0.1 * 354)) and c1["evaluation"]["where"] == "central"


def test_lost_label_reply_is_retried_without_buying_twice(tmp_path):
    run_config = {**RunConfig().to_flower(), **overrides(tmp_path), "num-clients": N_CLIENTS}
    grid = InProcessGrid(client_app, run_config, [{"partition-id": i, "num-partitions": N_CLIENTS} for i in range(N_CLIENTS)])
    original = grid.send_and_receive

    def drop_first_label_reply(messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "query.fale_label" and not getattr(grid, "dropped", False):
            grid.dropped = True
            grid.drop_reply_next.add(messages[0].metadata.dst_node_id)
        return original(messages, timeout=timeout)

    grid.send_and_receive = drop_first_label_reply
    results = run_experiment(grid, run_config)
    assert grid.dropped and results["status"] == "completed"
    assert results["cycles"][1]["labeled"] == 40


def test_lost_label_reply_in_a_later_cycle_is_retried_without_buying_twice(tmp_path):
    # cycle 1 extends cycle 0's selection: the client buys only its new rows, and a retry replays that purchase
    run_config = {**RunConfig().to_flower(), **overrides(tmp_path, **{"num-cycles": 2}), "num-clients": N_CLIENTS}
    grid = InProcessGrid(client_app, run_config, [{"partition-id": i, "num-partitions": N_CLIENTS} for i in range(N_CLIENTS)])
    original = grid.send_and_receive
    seen = []

    def drop_second_label_reply(messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "query.fale_label":
            seen.append(len(messages))
            if len(seen) == 2:  # cycle 1's label round, first attempt
                grid.drop_reply_next.add(messages[0].metadata.dst_node_id)
        return original(messages, timeout=timeout)

    grid.send_and_receive = drop_second_label_reply
    results = run_experiment(grid, run_config)
    assert results["status"] == "completed" and seen == [N_CLIENTS, N_CLIENTS, 1]  # one client re-asked
    c0, c1, c2 = results["cycles"]
    assert c1["labeled"] == 20 and c2["labeled"] == 40  # ceil(40 x 1/2), then 40
    for pid in range(N_CLIENTS):
        ledger = LabelLedger(tmp_path / "state" / "t" / f"partition-{pid}.json", task="regression")
        assert sorted(ledger.labeled_ids().tolist()) == sorted(c0["selected-ids"][str(pid)] + c1["selected-ids"][str(pid)])


def test_a_run_stopped_in_a_later_label_round_resumes_with_the_same_curve(tmp_path):
    # the checkpoint holds FedSVD's leverage scores (strategy state, as JSON): the resumed run goes on with
    # the same sampling stream, the clients replay the purchases they made, and nothing runs FedSVD again
    reference, _, _ = run(tmp_path / "ref", **{"num-cycles": 2})
    run_config = {**RunConfig().to_flower(), **overrides(tmp_path, **{"num-cycles": 2, "query-retries": 0}),
                  "num-clients": N_CLIENTS}
    grid = InProcessGrid(client_app, run_config, [{"partition-id": i, "num-partitions": N_CLIENTS} for i in range(N_CLIENTS)])
    grid.fail_at[("query.fale_label", N_CLIENTS + 1)] = "RuntimeError: power cut"  # cycle 1, its first client
    with pytest.raises(Exception, match="power cut"):
        run_experiment(grid, run_config)
    results = run_experiment(grid, run_config)
    assert results["status"] == "completed" and len(results["resumed"]) == 1
    assert [c["evaluation"]["mse"] for c in results["cycles"]] == [c["evaluation"]["mse"] for c in reference["cycles"]]
    assert [c.get("selected-ids") for c in results["cycles"]] == [c.get("selected-ids") for c in reference["cycles"]]
    assert sum(1 for kind, _ in grid.log if kind == "query.fale_mask") == N_CLIENTS  # FedSVD once
