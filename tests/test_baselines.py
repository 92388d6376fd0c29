"""Method-specific tests of badge, coreset, noise-stability and logo on hand-built inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fal_shared.config import RunConfig
from fal_shared.training import Prediction
from query import PoolContext, get_selector, run_selection
from query.baselines import (
    add_weight_noise,
    baseline_settings,
    logo_cluster_pick,
    noise_deviations,
)
from query.kernels import GradientEmbeddings, entropy, kmeans_pp_seeding


class FakeBank:
    """Hand-built model outputs per kind (pool and labeled set)."""

    def __init__(self, pool: dict[str, Prediction], labeled: dict[str, Prediction] | None = None) -> None:
        self._pool, self._labeled = pool, labeled or {}
        self.asked: list[tuple[str, str]] = []

    def pool(self, kind: str) -> Prediction:
        self.asked.append((kind, "pool"))
        return self._pool[kind]

    def labeled(self, kind: str) -> Prediction:
        self.asked.append((kind, "labeled"))
        return self._labeled[kind]


def _pred(probs, features) -> Prediction:
    probs = np.asarray(probs, dtype=np.float32)
    return Prediction(outputs=probs, logits=np.log(probs + 1e-9), features=np.asarray(features, dtype=np.float32))


def _ctx(bank, n_pool: int, budget: int, *, params=None, labeled: int = 0, seed: int = 0, num_classes: int = 3):
    return PoolContext(
        pool_ids=np.arange(100, 100 + n_pool),
        labeled_ids=np.arange(labeled),
        labeled_y=np.zeros(labeled, dtype=np.int64),
        budget=budget,
        num_classes=num_classes,
        rng=np.random.default_rng(seed),
        models=bank,
        params=dict(params or {}),
    )


# --------------------------------------------------------------------- BADGE

# Points 0-2 are copies of each other, point 3 has the largest ||g|| and point 4
# has g = 0 (a one-hot prediction). See test_badge_hand_built_picks_max_norm_then_d2.
_BADGE_H = [[1, 0], [1, 0], [1, 0], [4, 0], [1, 1]]
_BADGE_P = [[0.6, 0.2, 0.2], [0.6, 0.2, 0.2], [0.6, 0.2, 0.2], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]


def test_badge_hand_built_picks_max_norm_then_d2():
    # ||g||^2 = ||onehot - p||^2 ||h||^2: points 0-2: (0.16+0.04+0.04)*1 = 0.24,
    # point 3: (0.25+0.25)*16 = 8, point 4: 0. First pick: 3 (max norm). Then the
    # D^2 weights are ||g_i - g_3||^2 > 0 for 0-2 and ||g_3||^2 = 8 for point 4:
    # point 4 carries 8 / (8 + 3 * d) of the mass with d = ||g_0 - g_3||^2.
    g = GradientEmbeddings(np.array(_BADGE_H, float), np.array(_BADGE_P, float)).dense()
    d = float(((g[0] - g[3]) ** 2).sum())
    p4 = 8.0 / (8.0 + 3.0 * d)
    bank = FakeBank({"global": _pred(_BADGE_P, _BADGE_H)})
    seconds = []
    for seed in range(300):
        picks = get_selector("badge").select(_ctx(bank, 5, 2, params={"query-model": "global"}, seed=seed))
        assert picks[0] == 3
        seconds.append(picks[1])
    share4 = np.mean(np.asarray(seconds) == 4)
    assert abs(share4 - p4) < 4 * math.sqrt(p4 * (1 - p4) / 300) + 1e-9
    # 0, 1, 2 are duplicates of each other: equally likely
    counts = np.bincount(seconds, minlength=5)[:3]
    assert counts.min() > 0


def test_badge_never_picks_a_duplicate_of_a_centre():
    # all pool points but one coincide with the max-norm point: after it, only
    # the distinct point has D^2 > 0, so the second pick is forced for every seed.
    h = [[4, 0], [4, 0], [4, 0], [1, 1]]
    p = [[0.5, 0.5, 0.0]] * 3 + [[0.2, 0.5, 0.3]]
    bank = FakeBank({"global": _pred(p, h)})
    for seed in range(20):
        picks = get_selector("badge").select(_ctx(bank, 4, 2, params={"query-model": "global"}, seed=seed))
        assert picks[0] == 0 and picks[1] == 3


def test_badge_uses_the_query_model_and_the_factorised_kernel(monkeypatch):
    rng = np.random.default_rng(3)
    outs = {}
    for kind in ("global", "local-only"):
        logits = rng.normal(size=(40, 3)) * 2
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        outs[kind] = _pred(p, np.abs(rng.normal(size=(40, 5))))
    # the dense n x C*d embedding must never be built
    monkeypatch.setattr(GradientEmbeddings, "dense", lambda self: pytest.fail("dense embedding built"))
    for kind in ("global", "local-only"):
        bank = FakeBank(outs)
        picks = get_selector("badge").select(_ctx(bank, 40, 6, params={"query-model": kind}, seed=5))
        want = kmeans_pp_seeding(
            GradientEmbeddings(outs[kind].features, outs[kind].outputs), 6, np.random.default_rng(5)
        )
        np.testing.assert_array_equal(picks, want)
        assert bank.asked == [(kind, "pool")]


def test_query_model_setting_is_checked():
    bank = FakeBank({"global": _pred(_BADGE_P, _BADGE_H)})
    with pytest.raises(ValueError, match="query-model"):
        get_selector("badge").select(_ctx(bank, 5, 2, params={"query-model": "ensemble"}))


# ------------------------------------------------------------------ Core-Set


def test_coreset_hand_built_picks_with_labeled_anchors():
    # labeled anchor at (10, 0); pool (0,0), (1,0), (10,1), (0,10), (5,5).
    # Squared distances to the anchor: 100, 81, 1, 200, 50 -> first pick 3 (0,10);
    # then min(d, d to (0,10)): 100, 81, 1, -, 50 -> pick 0 (0,0); then
    # min(., d to (0,0)): -, 1, 1, -, 50 -> pick 4 (5,5).
    pool = [[0, 0], [1, 0], [10, 1], [0, 10], [5, 5]]
    probs = [[1 / 3] * 3] * 5
    bank = FakeBank({"global": _pred(probs, pool)}, {"global": _pred([[1 / 3] * 3], [[10, 0]])})
    ctx = _ctx(bank, 5, 3, params={"query-model": "global"}, labeled=1)
    np.testing.assert_array_equal(get_selector("coreset").select(ctx), [3, 0, 4])
    assert ctx.diagnostics["coreset-anchors"] == 1
    # without labels the traversal starts from the origin: max norm (10,1) first
    ctx = _ctx(bank, 5, 3, params={"query-model": "global"}, labeled=0)
    assert get_selector("coreset").select(ctx)[0] == 2


def test_coreset_scores_with_the_local_only_model_when_asked():
    far = [[0, 0], [1, 0], [10, 1], [0, 10], [5, 5]]
    bank = FakeBank(
        {"global": _pred([[1 / 3] * 3] * 5, far), "local-only": _pred([[1 / 3] * 3] * 5, far[::-1])},
        {"global": _pred([[1 / 3] * 3], [[10, 0]]), "local-only": _pred([[1 / 3] * 3], [[10, 0]])},
    )
    ctx = _ctx(bank, 5, 3, params={"query-model": "local-only"}, labeled=1)
    # reversed pool: the same points at positions 4 - i
    np.testing.assert_array_equal(get_selector("coreset").select(ctx), [1, 4, 0])
    assert set(bank.asked) == {("local-only", "pool"), ("local-only", "labeled")}


# ----------------------------------------------------------- Noise Stability


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)
        self.tied = nn.Linear(4, 3)
        self.tied.weight = self.head.weight  # shared: must be perturbed once

    def forward(self, x):
        f = self.bn(self.conv(x)).mean(dim=(2, 3))
        return self.head(f), f


def test_noise_is_scaled_per_layer_and_spares_biases_and_buffers():
    net = _Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    applied = add_weight_noise(net, 0.001, torch.Generator().manual_seed(1))
    after = net.state_dict()
    assert set(applied) == {"conv", "bn", "head"}  # tied is the same tensor as head
    for name in ("conv.weight", "bn.weight", "head.weight"):
        rel = (after[name] - before[name]).norm() / before[name].norm()
        assert rel.item() == pytest.approx(0.001, rel=1e-3), name
    for name in ("conv.bias", "bn.bias", "head.bias", "bn.running_mean", "bn.running_var"):
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    # a larger scale moves each tensor by exactly that fraction of its own norm
    net2 = _Net()
    w0 = net2.conv.weight.detach().clone()
    add_weight_noise(net2, 0.05, torch.Generator().manual_seed(1))
    assert ((net2.conv.weight - w0).norm() / w0.norm()).item() == pytest.approx(0.05, rel=1e-3)
    # same generator seed -> same noise
    net3 = _Net()
    add_weight_noise(net3, 0.001, torch.Generator().manual_seed(1))
    torch.testing.assert_close(net3.state_dict()["conv.weight"], after["conv.weight"])


def _softmax_predict(model, x):
    with torch.no_grad():
        logits, f = model.eval()(torch.as_tensor(x))
    return Prediction(outputs=torch.softmax(logits, 1).numpy(), logits=logits.numpy(), features=f.numpy())


def test_noise_deviations_are_normalised_output_differences():
    net = _Net()
    x = np.random.default_rng(0).normal(size=(7, 1, 5, 5)).astype(np.float32)
    z = noise_deviations(net, x, _softmax_predict, num_copies=3, relative_scale=0.01,
                         generator=torch.Generator().manual_seed(9))
    assert z.shape == (7, 9)
    # recompute by hand with the same noise stream
    import copy

    g = torch.Generator().manual_seed(9)
    out0 = _softmax_predict(net, x).outputs
    for k in range(3):
        noisy = copy.deepcopy(net)
        add_weight_noise(noisy, 0.01, g)
        want = (_softmax_predict(noisy, x).outputs - out0) / np.linalg.norm(out0, axis=1, keepdims=True)
        np.testing.assert_allclose(z[:, 3 * k : 3 * k + 3], want, rtol=1e-5, atol=1e-7)
    assert np.abs(z).max() > 0


class _TorchBank:
    """ModelBank-like access to one torch model (global) for the noise-stability selector."""

    def __init__(self, model, x):
        self._model, self.x_pool = model, x

    def model(self, kind):
        assert kind == "global"
        return self._model

    def predict(self, model, x):
        return _softmax_predict(model, x)


def test_noise_stability_selects_from_a_seeded_subset_by_k_center_from_the_origin():
    net = _Net()
    x = np.random.default_rng(1).normal(size=(30, 1, 5, 5)).astype(np.float32)
    params = {"query-model": "global", "noise-stability-num-copies": 4, "noise-stability-subset-size": 12}
    ctx = _ctx(_TorchBank(net, x), 30, 4, params=params, seed=3)
    picks = get_selector("noise-stability").select(ctx)
    assert ctx.diagnostics["noise-stability-subset"] == 12
    # rebuild the subset and the embedding from the same seed: picks = k-center from the origin
    rng = np.random.default_rng(3)
    subset = np.sort(rng.choice(30, size=12, replace=False))
    g = torch.Generator().manual_seed(int(rng.integers(2**62)))
    z = noise_deviations(net, x[subset], _softmax_predict, num_copies=4, relative_scale=0.001, generator=g)
    norms = (z**2).sum(1)
    assert picks[0] == subset[np.argmax(norms)]  # the most unstable point first
    assert set(picks) <= set(subset)
    # farthest-first: each pick maximises the distance to the picks so far
    chosen = [int(np.argmax(norms))]
    for _ in range(3):
        d = np.min([((z - z[c]) ** 2).sum(1) for c in chosen] + [norms], axis=0)
        d[chosen] = -1
        chosen.append(int(np.argmax(d)))
    np.testing.assert_array_equal(picks, subset[chosen])
    # a subset smaller than the budget is enlarged to the budget
    ctx = _ctx(_TorchBank(net, x), 30, 4, params={**params, "noise-stability-subset-size": 2}, seed=3)
    assert len(get_selector("noise-stability").select(ctx)) == 4
    assert ctx.diagnostics["noise-stability-subset"] == 4


def test_noise_stability_settings_are_validated():
    with pytest.raises(ValueError, match="noise-stability-noise-scale"):
        baseline_settings({"noise-stability-noise-scale": 0.0})
    with pytest.raises(ValueError, match="noise-stability-num-copies"):
        baseline_settings({"noise-stability-num-copies": 0})
    assert baseline_settings({}).noise_stability_num_copies == 30
    assert RunConfig().noise_stability_noise_scale == 0.001


# ---------------------------------------------------------------------- LoGo


def test_logo_cluster_pick_takes_max_score_per_cluster():
    labels = np.array([2, 0, 0, 1, 1, 1, 2])
    scores = np.array([0.1, 0.3, 0.9, 0.5, 0.5, 0.2, 0.7])
    # cluster 0 -> 2 (0.9); cluster 1 -> 3 (tie 0.5 with 4: lower index); cluster 2 -> 6
    np.testing.assert_array_equal(logo_cluster_pick(labels, scores, 3), [2, 3, 6])


def test_logo_cluster_pick_round_robin_fill_when_clusters_run_short():
    # 2 non-empty clusters for a budget of 5: heads first, then num = ceil(3/2) = 2
    # per cluster per pass (cluster 0 first), truncated to the budget.
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.4, 0.3, 0.2, 0.5, 0.9, 0.7])
    # by score: cluster 0 = 1 (0.4), 2 (0.3), 3 (0.2), 0 (0.1); cluster 1 = 5 (0.9), 6 (0.7), 4 (0.5)
    # heads 1, 5; pass 0: 2, 3 from cluster 0, then 6, 4 from cluster 1; truncated to 5
    np.testing.assert_array_equal(logo_cluster_pick(labels, scores, 5), [1, 5, 2, 3, 6])
    # a budget past every member takes them all, no repeats
    picks = logo_cluster_pick(labels, scores, 10)
    assert sorted(picks) == list(range(7))
    with pytest.raises(ValueError, match="NaN"):
        logo_cluster_pick(labels, np.array([np.nan] * 7), 2)


def _blobs():
    """3 well-separated blobs of 4 points in local-only feature space."""
    centres = np.array([[0, 0], [20, 0], [0, 20]], float)
    offsets = np.array([[0, 0], [0.5, 0], [0, 0.5], [0.5, 0.5]])
    h = np.concatenate([c + offsets for c in centres])
    # the local-only model is equally confident everywhere (p_max 0.7), so z = 0.3 h
    p_local = np.tile([0.7, 0.1, 0.1, 0.1], (12, 1))
    for i in range(12):
        p_local[i] = np.roll(p_local[i], i % 4)
    # the global model is most uncertain about points 2, 7 and 9 (one per blob)
    p_global = np.tile([0.85, 0.05, 0.05, 0.05], (12, 1))
    p_global[[2, 7, 9]] = [0.25, 0.25, 0.25, 0.25]
    p_global[[1, 5, 11]] = [0.4, 0.4, 0.1, 0.1]  # second most uncertain per blob
    return h, p_local, p_global


def test_logo_clusters_with_local_only_and_picks_global_entropy():
    h, p_local, p_global = _blobs()
    bank = FakeBank({"local-only": _pred(p_local, h), "global": _pred(p_global, np.zeros((12, 2)))})
    ctx = _ctx(bank, 12, 3, params={"logo-kmeans-n-init": 3}, num_classes=4)
    picks = get_selector("logo").select(ctx)
    assert sorted(picks) == [2, 7, 9]
    assert ctx.diagnostics["logo-clusters-found"] == 3
    # swapping the roles (entropy of the local-only model) would give other picks:
    # local-only entropies are all equal, so the heads would be the lowest indices
    assert sorted(picks) != [0, 4, 8]


def test_logo_fills_round_robin_when_kmeans_finds_fewer_clusters():
    # only 2 distinct points in z-space: KMeans(n_clusters=4) leaves 2 clusters,
    # LoGo's fill takes the next highest global entropy in each.
    h = np.array([[0, 0]] * 4 + [[10, 10]] * 4, float)
    p_local = np.tile([0.7, 0.3], (8, 1))
    ent = np.array([0.1, 0.5, 0.3, 0.2, 0.45, 0.35, 0.4, 0.05])
    # probabilities with increasing entropy for increasing `ent`
    p_global = np.stack([0.5 + (0.5 - ent), 0.5 - (0.5 - ent)], 1)
    bank = FakeBank({"local-only": _pred(p_local, h), "global": _pred(p_global, np.zeros((8, 2)))})
    ctx = _ctx(bank, 8, 4, params={"logo-kmeans-n-init": 2}, num_classes=2, seed=4)
    out = run_selection(get_selector("logo"), ctx)
    assert ctx.diagnostics["logo-clusters-found"] == 2
    # heads: 1 (cluster of points 0-3), 4 (points 4-7); fill num = ceil(2/2) = 1: 2 and 6
    assert sorted(out.positions) == [1, 2, 4, 6]
    assert entropy(p_global)[1] == entropy(p_global)[:4].max()
