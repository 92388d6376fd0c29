"""FALE on rank-deficient features (kegg-undirected has two identical columns): min-norm theta, float32-safe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client_app.methods.fale import load_theta
from fal_shared.models import build_model
from fedsvd import FedSVDClient, TrustedAuthority, fale_fit, masked_least_squares


def _duplicated_column_data(seed=0):
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal((n, 6)) for n in (300, 500, 200)]
    parts = [np.hstack([p, p[:, 2:3]]) for p in parts]  # column 6 duplicates column 2: rank 6 of 7
    ys = [p[:, :6] @ np.arange(1.0, 7.0) + 0.1 * rng.standard_normal(len(p)) for p in parts]
    return parts, ys


def test_masked_least_squares_cuts_the_round_off_singular_value():
    parts, ys = _duplicated_column_data()
    rng = np.random.default_rng(1)
    ta = TrustedAuthority(3, seed=1)
    clients = [FedSVDClient(x, **ta.client_package(i), block_size=64) for i, x in enumerate(parts)]
    idx = [np.arange(0, 300, 7), np.arange(0, 500, 11), np.arange(0, 200, 5)]
    scales = [rng.uniform(0.5, 2.0, len(i)) for i in idx]
    a, b = zip(*(c.mask_labelled(i, y[i], s, seed=3) for c, i, y, s in zip(clients, idx, ys, scales, strict=True)))
    theta = clients[0].unmask_model(masked_least_squares(a, b))
    # the minimum-norm weighted LS of the unmasked problem: the duplicated weight is split evenly
    xl = np.vstack([p[i] for p, i in zip(parts, idx, strict=True)])
    yl = np.concatenate([y[i] for y, i in zip(ys, idx, strict=True)])
    sw = np.concatenate(scales)
    expected = np.linalg.pinv(sw[:, None] * xl) @ (sw * yl)
    np.testing.assert_allclose(theta, expected, rtol=1e-8, atol=1e-10)
    assert theta[2] == pytest.approx(theta[6], rel=1e-8)
    # control: LAPACK's own cutoff (eps) keeps the round-off singular value and theta explodes
    exploded = clients[0].unmask_model(masked_least_squares(a, b, rcond=np.finfo(np.float64).eps))
    assert np.linalg.norm(exploded) > 1e6 * np.linalg.norm(theta)


def test_fale_theta_predicts_the_same_in_the_float32_linear_model():
    parts, ys = _duplicated_column_data(2)
    res = fale_fit(parts, ys, 80, seed=0, block_size=64)
    assert np.linalg.norm(res.theta) < 20
    x = np.vstack(parts)
    model = load_theta(build_model("linear", input_shape=(7,), num_outputs=1), res.theta, False)
    with torch.no_grad():
        pred32 = model(torch.as_tensor(x, dtype=torch.float32))[0].view(-1).double().numpy()
    np.testing.assert_allclose(pred32, x @ res.theta, atol=1e-4)


def test_load_theta_with_and_without_intercept():
    model = build_model("linear", input_shape=(3,), num_outputs=1)
    load_theta(model, np.array([1.0, 2.0, 3.0, 0.5]), True)
    assert model.head.weight.tolist() == [[1.0, 2.0, 3.0]] and model.head.bias.item() == 0.5
    load_theta(model, np.array([1.0, 2.0, 3.0]), False)
    assert model.head.bias.item() == 0.0
    with pytest.raises(ValueError, match="needs \\(4,\\)"):
        load_theta(model, np.ones(3), True)
