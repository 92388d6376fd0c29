"""BatchNorm statistics: federated precise BN (bn-statistics=recompute) against the moments it must equal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from client_app.app import app as client_app
from fal_shared.batchnorm import (
    batchnorm_layers,
    install_statistics,
    moment_sums,
    pooled_statistics,
    recompute_statistics,
    statistics_rows,
)
from fal_shared.config import RunConfig, parse_run_config
from fal_shared.experiment_data import client_data
from fal_shared.models import build_model
from fal_shared.training import to_tensor
from server_app.experiment import Experiment
from server_app.inprocess import InProcessGrid, run_inprocess
from server_app.results import ResultsRecorder

CPU = torch.device("cpu")


class InputNorm(nn.Module):
    """BatchNorm on the raw input: its input moments are the data's moments."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = self.bn(x)
        return out.mean((2, 3)), out


def test_pooled_statistics_are_the_moments_of_the_union_not_the_average_of_the_clients():
    rng = np.random.default_rng(0)
    # two label-skewed "clients": the same spread around very different means
    a = rng.normal(-2.0, 1.0, size=(40, 3, 4, 4)).astype(np.float32)
    b = rng.normal(+2.0, 1.0, size=(60, 3, 4, 4)).astype(np.float32)
    model = InputNorm(3)
    parts = [moment_sums(model, x, batch_size=16, device=CPU) for x in (a, b)]
    mean, var = pooled_statistics(parts)["bn"]
    union = np.concatenate([a, b]).transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(mean, union.mean(1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(var, union.var(1, ddof=1), rtol=1e-10)
    # what averaging the clients' own statistics gives (bn-statistics=average): the between-client
    # spread (about 4 here) is missing, so the aggregated model would divide by a variance ~5x too small
    averaged = (40 * a.var((0, 2, 3)) + 60 * b.var((0, 2, 3))) / 100
    assert np.all(var > 4 * averaged)


def test_moment_sums_leave_the_model_as_it_was():
    model = build_model("cnn4conv", input_shape=(1, 16, 16), num_outputs=4, seed=0).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = np.random.default_rng(1).integers(0, 256, size=(33, 1, 16, 16), dtype=np.uint8)
    sums = moment_sums(model, x, batch_size=8, device=CPU, normalize=(1 / 255, (0.5,), (0.25,)))
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    layers = batchnorm_layers(model)
    assert set(sums) == {f"{n}.{s}" for n in layers for s in ("count", "sum", "sumsq")}
    # the first BN sees every pixel (16x16 maps) of every sample but the last one: 33 = 4 x 8 + 1, and a
    # batch of one sample cannot be normalised in training mode
    assert sums["body.1.count"][0] == 32 * 16 * 16


def test_recomputed_statistics_make_eval_mode_match_the_full_batch():
    """One batch holding all of x: eval mode with recomputed statistics = training mode on that batch."""
    x = np.random.default_rng(2).normal(3.0, 2.0, size=(64, 1, 16, 16)).astype(np.float32)
    model = build_model("cnn4conv", input_shape=(1, 16, 16), num_outputs=4, seed=0)
    xt = torch.as_tensor(x)
    with torch.no_grad():
        stale = model.eval()(xt)[0]  # initial statistics (mean 0, var 1) do not fit data of mean 3
        recompute_statistics(model, x, batch_size=64, device=CPU)
        recomputed = model.eval()(xt)[0]
        reference = model.train()(xt)[0]
    torch.testing.assert_close(recomputed, reference, rtol=2e-2, atol=2e-2)  # unbiased vs biased variance only
    assert (stale - reference).abs().max() > 10 * (recomputed - reference).abs().max()


def test_install_statistics_names_a_missing_buffer():
    with pytest.raises(KeyError, match="no buffer 'bn.running_mean'"):
        install_statistics({}, {"bn": (np.zeros(2), np.ones(2))})


def _three_client_experiment(small_run, shared_datasets, name, overrides):
    """An Experiment over 3 Dirichlet MNIST clients (ResNet-8), its fresh model's arrays, that model and the partitions."""
    run_config = {**RunConfig().to_flower(), **small_run, "dataset": "mnist", "data-root": str(shared_datasets / "mnist"),
                  "model": "resnet8", "test-subset-size": 100, "partition": "dirichlet", **overrides, "num-clients": 3}
    grid = InProcessGrid(client_app, run_config, [{"partition-id": i, "num-partitions": 3} for i in range(3)])
    cfg = parse_run_config(run_config)
    recorder = ResultsRecorder(Path(small_run["output-dir"]) / name, run_name=name, config=run_config)
    exp = Experiment(grid, cfg, run_name=name, recorder=recorder)
    exp.discover()
    arrays = exp.fresh_model(0)
    model = build_model("resnet8", input_shape=(1, 28, 28), num_outputs=10)
    model.load_state_dict(arrays.to_torch_state_dict())
    return exp, cfg, arrays, model, [client_data(cfg, i, 3) for i in range(3)]


def test_statistics_round_installs_the_pooled_moments_of_every_clients_data(small_run, shared_datasets):
    """The server's global model gets, for its first BN layer, the exact moments of conv1 over all client data."""
    exp, cfg, arrays, model, parts = _three_client_experiment(
        small_run, shared_datasets, "bn", {"train-subset-size": 300, "alpha": 0.1})
    state = exp.recompute_batchnorm(arrays).to_torch_state_dict()
    with torch.no_grad():
        conv1 = torch.cat([model.body[0](to_tensor(p.x, CPU, p.normalize)) for p in parts]).double()
    np.testing.assert_allclose(state["body.1.running_mean"].numpy(), conv1.mean((0, 2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["body.1.running_var"].numpy(), conv1.var((0, 2, 3)).numpy(), rtol=1e-5)
    # the weights are untouched; only running statistics change
    for k, v in arrays.to_torch_state_dict().items():
        if "running_" not in k:
            assert torch.equal(state[k], v), k


def test_fedavg_under_label_skew_collapses_with_averaged_statistics_and_not_with_recomputed(small_run, shared_datasets):
    """The paper-scale failure in miniature: ResNet-8, MNIST, Dirichlet alpha 0.1, lr 0.1.

    With the running statistics averaged like the reference code, the global model predicts one or two
    classes for the whole test set (measured: 9-12 % accuracy over 3 seeds); with the clients' pooled
    statistics it recognises most classes it was trained on (25-34 %) from the very same weights.
    """
    per_class = {}
    for bn in ("average", "recompute"):
        results = run_inprocess({
            **small_run, "run-name": f"collapse-{bn}", "dataset": "mnist", "data-root": str(shared_datasets / "mnist"),
            "train-subset-size": 1500, "test-subset-size": 500, "model": "resnet8", "partition": "dirichlet",
            "alpha": 0.1, "seed": 1, "num-cycles": 0, "rounds-per-cycle": 2, "local-epochs": 2, "batch-size": 32,
            "lr": 0.1, "initial-labeled-fraction": 0.3, "bn-statistics": bn,
        }, num_clients=4)
        per_class[bn] = np.asarray(results["cycles"][0]["evaluation"]["per-class-accuracy"])
        assert ("bn-statistics" in results["cycles"][0]["seconds"]) == (bn == "recompute")
    assert (per_class["average"] > 0.05).sum() <= 2  # collapsed: (almost) every image gets the same class
    assert (per_class["recompute"] > 0.05).sum() >= 4
    assert per_class["recompute"].mean() >= per_class["average"].mean() + 0.1


def test_statistics_rows_are_the_number_asked_for_seeded_and_all_rows_for_zero():
    rows = statistics_rows(1000, 64, [0, 3, 1, 23])
    assert len(rows) == 64 == len(np.unique(rows)) and rows.min() >= 0 and rows.max() < 1000
    assert np.all(np.diff(rows) > 0)  # sorted
    assert np.array_equal(rows, statistics_rows(1000, 64, [0, 3, 1, 23]))  # same seed, same rows
    assert not np.array_equal(rows, statistics_rows(1000, 64, [0, 3, 2, 23]))  # another cycle, other rows
    assert np.array_equal(statistics_rows(50, 0, [0]), np.arange(50))  # 0 = the whole partition
    assert np.array_equal(statistics_rows(50, 64, [0]), np.arange(50))  # more than the partition holds
    with pytest.raises(ValueError, match="bn-statistics-samples"):
        statistics_rows(50, -1, [0])


def test_statistics_round_on_a_subsample_pools_each_clients_moments_weighted_by_its_size(small_run, shared_datasets):
    """bn-statistics-samples=40: each client's subset moments, scaled to its partition size, are what the server installs."""
    exp, cfg, arrays, model, parts = _three_client_experiment(
        small_run, shared_datasets, "bn-sub", {"train-subset-size": 600, "alpha": 0.5, "bn-statistics-samples": 40})
    state = exp.recompute_batchnorm(arrays, cycle=2).to_torch_state_dict()
    assert len({len(p.ids) for p in parts}) > 1  # unequal clients: the weights matter
    weights, means, squares = [], [], []
    with torch.no_grad():
        for i, p in enumerate(parts):
            rows = statistics_rows(len(p.ids), 40, [cfg.seed, i, 2, 23])  # (seed, partition, cycle, salt)
            conv1 = model.body[0](to_tensor(p.x[rows], CPU, p.normalize)).double()
            weights.append(len(p.ids))
            means.append(conv1.mean((0, 2, 3)).numpy())
            squares.append((conv1 * conv1).mean((0, 2, 3)).numpy())
            positions = conv1.shape[2] * conv1.shape[3]
    w = np.asarray(weights, dtype=np.float64) / sum(weights)
    mean = np.tensordot(w, np.asarray(means), axes=1)
    count = sum(weights) * positions  # values per channel the scaled sums stand for
    var = (np.tensordot(w, np.asarray(squares), axes=1) - mean * mean) * count / (count - 1)
    np.testing.assert_allclose(state["body.1.running_mean"].numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["body.1.running_var"].numpy(), var, rtol=1e-5)
