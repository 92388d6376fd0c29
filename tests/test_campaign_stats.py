"""The campaign's formulas against the libraries that compute them from raw samples, and the calibration check
on a really trained model: sane, temperature-scaled and label-permuted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from client_app.audit import classification_sums, normalised_entropy
from fal_shared.config import RunConfig
from fal_shared.experiment_data import client_data
from fal_shared.models import build_model
from fal_shared.training import TrainSettings, predict, train_model
from server_app import audit_stats as st
from server_app.campaign import calibration


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (47, 120), (199, 200)])
def test_wilson_matches_scipy(k, n):
    lo, hi = st.wilson(k, n, st.z_value(0.95))
    ref = binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)


def test_binned_auroc_is_exact_up_to_its_bound_and_kappa_matches_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        errors = rng.random(300) < 0.3
        score = np.clip(rng.normal(0.4 + 0.2 * errors, 0.2), 0, 1)
        pos = np.bincount(np.minimum((score[errors] * 100).astype(int), 99), minlength=100)
        neg = np.bincount(np.minimum((score[~errors] * 100).astype(int), 99), minlength=100)
        auroc, bound = st.binned_auroc(pos, neg)
        assert abs(auroc - roc_auc_score(errors, score)) <= bound + 1e-12
        assert bound < 0.01
    a, b = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    b[:300] = a[:300]
    matrix = np.bincount(a * 4 + b, minlength=16).reshape(4, 4)
    assert st.cohen_kappa(matrix) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert st.cohen_kappa(np.diag([5, 0, 0, 0])) == 1.0  # one class only, full agreement


def test_ece_and_pooled_estimates_from_sums_equal_the_direct_computation():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(5) * 0.5, size=400)
    y = rng.integers(0, 5, 400)
    sums, correct = classification_sums(probs, y, bins=15)
    conf = probs.max(axis=1)
    which = np.minimum((conf * 15).astype(int), 14)
    direct = sum(abs(correct[which == b].mean() - conf[which == b].mean()) * np.mean(which == b)
                 for b in range(15) if np.any(which == b))
    assert st.ece(sums["bin-count"], sums["bin-confidence"], sums["bin-correct"]) == pytest.approx(direct)
    # one site: the pooled interval is the site's Wilson interval
    one = st.pooled_accuracy({"0": (1000, 400, float(correct.sum()))}, 1.96)
    assert one["estimate"] == pytest.approx(correct.mean())
    # sites weighted by data size, not by audit size
    two = st.pooled_accuracy({"0": (900, 10, 10.0), "1": (100, 90, 0.0)}, 1.96)
    assert two["estimate"] == pytest.approx(0.9) and two["ci-low"] < 0.9 < two["ci-high"]
    mse = st.pooled_mse({"0": (100, 4, 4.0, 6.0)}, 1.96)
    assert mse["estimate"] == pytest.approx(1.0) and mse["ci-low"] < 1.0 < mse["ci-high"]


@pytest.fixture(scope="module")
def trained_digits():
    """A small CNN really trained on digits (three partitions = three sites), its audit-like samples per site."""
    cfg = RunConfig(train_subset_size=0, num_clients=3)
    sites = [client_data(cfg, p, 3) for p in range(3)]
    x = np.concatenate([d.x for d in sites])
    y = np.concatenate([d.y for d in sites])
    model = build_model("small-cnn", input_shape=sites[0].input_shape, num_outputs=10, seed=0)
    train_model(model, torch.as_tensor(x), y, TrainSettings(epochs=8, batch_size=32, lr=0.05, momentum=0.9),
                seed=0, device=torch.device("cpu"), normalize=sites[0].normalize)
    logits = [predict(model, d.x_test, batch_size=256, device=torch.device("cpu"), normalize=d.normalize).logits
              for d in sites]
    return sites, logits


def _check(sites, logits, transform):
    cfg = RunConfig()
    res, sizes = {}, {}
    for p, (d, lg) in enumerate(zip(sites, logits)):
        probs = torch.softmax(torch.as_tensor(transform(lg)), dim=1).numpy()
        sums, _ = classification_sums(probs, d.y_test, bins=cfg.calibration_bins)
        res[str(p)] = {f"audit-{k}": v for k, v in sums.items()}
        sizes[str(p)] = len(d.ids)
    return calibration(cfg, res, sizes)


def test_calibration_check_flags_a_miscalibrated_model_and_not_a_sane_one(trained_digits):
    sites, logits = trained_digits
    sane = _check(sites, logits, lambda z: z)
    assert sane["flags"] == [], sane
    assert sane["auroc"] > 0.8 and sane["ece"] < 0.1
    # label-permuted outputs (classes 0-4 rotated, 5-9 kept): as confident as before, wrong on half the
    # classes, and the entropy no longer tells the errors apart
    perm = np.concatenate([np.roll(np.arange(5), 2), np.arange(5, 10)])
    permuted = _check(sites, logits, lambda z: z[:, perm])
    assert set(permuted["flags"]) == {"miscalibrated", "uninformative-uncertainty"}, permuted
    assert abs(permuted["auroc"] - 0.5) < 0.1
    # over-confident (temperature 0.02): the ECE flag
    hot = _check(sites, logits, lambda z: z / 0.02)
    assert "miscalibrated" in hot["flags"] or hot["ece"] > sane["ece"]


def test_normalised_entropy_bounds():
    assert normalised_entropy(np.full((1, 10), 0.1))[0] == pytest.approx(1.0)
    assert normalised_entropy(np.eye(10)[:1])[0] == pytest.approx(0.0, abs=1e-9)
