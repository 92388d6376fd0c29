"""FairFAL's pure functions and selector on hand-built predictions and features (query/fairfal.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fal_shared.config import ConfigError, parse_run_config
from fal_shared.training import Prediction
from query.base import PoolContext, run_selection
from query.distances import DenseFeatures, GradientEmbeddings
from query.fairfal import (
    FairFALSelector,
    choose_query_models,
    class_balanced_mean,
    class_prototypes,
    client_statistics,
    fairfal_settings,
    imbalance_indicator,
    local_global_divergence,
    prototype_pseudo_labels,
    query_model_ratio,
    two_stage_balanced_selection,
)
from query.kernels import k_center_greedy

# ------------------------------------------------------------------ statistics


def test_class_balanced_mean_weights_classes_not_samples():
    probs = np.array([[0.8, 0.2, 0.0], [0.6, 0.4, 0.0], [0.2, 0.2, 0.6]])
    labels = np.array([0, 0, 2])
    # class 0 mean [0.7, 0.3, 0], class 2 mean [0.2, 0.2, 0.6]; class 1 absent -> average of the two
    np.testing.assert_allclose(class_balanced_mean(probs, labels, 3), [0.45, 0.25, 0.3])
    # the plain sample mean would be different (class 0 counted twice)
    assert not np.allclose(probs.mean(axis=0), [0.45, 0.25, 0.3])


def test_class_balanced_mean_rejects_empty_and_bad_labels():
    with pytest.raises(ValueError, match="empty"):
        class_balanced_mean(np.zeros((0, 3)), np.zeros(0, dtype=int), 3)
    with pytest.raises(ValueError, match="labels"):
        class_balanced_mean(np.full((1, 3), 1 / 3), np.array([3]), 3)


def test_divergence_hand_computed():
    g = np.array([0.5, 0.5, 0.0])
    loc = np.array([1.0, 0.0, 0.0])
    # terms |g-l| / ((g+l)/2): 0.5/0.75 = 2/3, 0.5/0.25 = 2, 0/0 -> 0 (eps); d = 0.5 * mean = 4/9
    assert local_global_divergence(g, loc) == pytest.approx(4 / 9)
    assert local_global_divergence(g, g) == 0.0
    # disjoint supports: every term is 2 or 0 -> the maximum 1 when all classes are covered
    assert local_global_divergence([1, 0], [0, 1]) == pytest.approx(1.0)


def test_imbalance_indicator_only_uses_present_classes():
    pg = np.array([0.6, 0.3, 0.1])
    assert imbalance_indicator(pg, [0, 1]) == pytest.approx(0.5)
    assert imbalance_indicator(pg, [0, 1, 2]) == pytest.approx(1 / 6)
    assert imbalance_indicator(pg, [2]) == 1.0
    with pytest.raises(ValueError, match="present_classes"):
        imbalance_indicator(pg, [])


def test_client_statistics_from_model_outputs():
    labels = np.array([0, 0, 1])
    probs_g = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.3, 0.6, 0.1]])  # class means [.6,.3,.1], [.3,.6,.1]
    probs_l = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    st = client_statistics(probs_g, probs_l, labels, 3)
    np.testing.assert_allclose(st.pbar_global, [0.45, 0.45, 0.1])
    np.testing.assert_allclose(st.pbar_local, [0.5, 0.5, 0.0])
    # g over classes {0, 1}: 0.45 / 0.45
    assert st.g == pytest.approx(1.0)
    expected_d = 0.5 * np.mean([0.05 / 0.475, 0.05 / 0.475, 0.1 / 0.05])
    assert st.divergence == pytest.approx(expected_d)


# -------------------------------------------------------------- model choice


@pytest.mark.parametrize(
    "d, g_bar, unc_global, emb_global",
    [
        (0.10, 0.30, True, True),  # ratio 0.8 > 0.75; g 0.3 < 0.5
        (0.30, 0.30, False, True),  # ratio 0.7: the client diverges too much -> local uncertainty
        (0.25, 0.25, False, True),  # ratio exactly 0.75: strict ">" -> local
        (0.24, 0.25, True, True),  # ratio 0.755
        (0.00, 0.50, False, False),  # ratio 0.75; g exactly 0.5: strict "<" -> local embedding
        (0.00, 0.49, True, True),  # ratio 0.755; g 0.49
        (0.00, 0.51, False, False),  # balanced federation: local models for both
    ],
)
def test_model_choice_each_side_of_each_threshold(d, g_bar, unc_global, emb_global):
    choice = choose_query_models(d, g_bar)
    assert choice.ratio == pytest.approx(1 - (d + g_bar) / 2)
    assert (choice.uncertainty_global, choice.embedding_global) == (unc_global, emb_global)


def test_model_ratio_general_t_and_custom_thresholds():
    # 1 - 0.8 * 0.3 + 0.6 * 0.02
    assert query_model_ratio(0.1, 0.2, t=0.2) == pytest.approx(0.772)
    assert choose_query_models(0.1, 0.2, t=0.2, ratio_threshold=0.77).uncertainty_global
    assert not choose_query_models(0.1, 0.2, t=0.2, ratio_threshold=0.78).uncertainty_global
    assert choose_query_models(0.1, 0.6, g_bar_threshold=0.7).embedding_global
    with pytest.raises(ValueError, match="g_bar"):
        choose_query_models(0.1, float("nan"))


# ---------------------------------------------------------------- prototypes


def test_prototypes_are_means_of_normalised_features():
    feats = np.array([[2.0, 0.0], [0.0, 3.0], [0.0, -1.0]])
    protos, counts = class_prototypes(feats, np.array([0, 0, 1]), 3)
    np.testing.assert_allclose(protos, [[0.5, 0.5], [0.0, -1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(counts, [2, 1, 0])


def test_pseudo_labels_cosine_and_unseen_classes_masked():
    protos = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    counts = np.array([3, 2, 0])  # class 2 never labeled
    pool = np.array([[5.0, 1.0], [0.1, 2.0], [-4.0, 0.1], [-1.0, -1.0]])
    labels, probs = prototype_pseudo_labels(pool, protos, counts, temperature=1.5)
    # [-4, 0.1] points at class 2, which is masked -> its best seen class is 1 (cos > 0 with [0, 1])
    np.testing.assert_array_equal(labels, [0, 1, 1, 0])  # last: tie cos=-0.707 -> lowest class
    assert np.all(probs[:, 2] == 0.0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    # scale invariance (cosine) and temperature only sharpens the probabilities
    labels2, probs2 = prototype_pseudo_labels(pool * 7.0, protos * 0.1, counts, temperature=0.1)
    np.testing.assert_array_equal(labels2, labels)
    assert probs2[0].max() > probs[0].max()
    sim = 5 / math.sqrt(26)
    assert probs[0, 0] == pytest.approx(1 / (1 + math.exp((1 / math.sqrt(26) - sim) / 1.5)))
    with pytest.raises(ValueError, match="no class has a prototype"):
        prototype_pseudo_labels(pool, protos, np.zeros(3))


def test_pseudo_labels_in_blocks_equal_one_block():
    rng = np.random.default_rng(4)
    pool = rng.standard_normal((103, 8)).astype(np.float32)  # float32 features, as a model gives them
    protos, counts = class_prototypes(rng.standard_normal((20, 8)), rng.integers(0, 4, 20), 5)
    whole = prototype_pseudo_labels(pool, protos, counts, max_block_elems=10**9)
    for elems in (1, 8 * 7, 8 * 50):  # one row, 7 rows, 50 rows per block (the last block short)
        labels, probs = prototype_pseudo_labels(pool, protos, counts, max_block_elems=elems)
        np.testing.assert_array_equal(labels, whole[0])
        np.testing.assert_allclose(probs, whole[1], rtol=1e-12, atol=0)


# -------------------------------------------------------- two-stage sampling


def _line_points(xs) -> DenseFeatures:
    return DenseFeatures(np.column_stack([np.asarray(xs, float), np.zeros(len(xs))]))


def test_quotas_remainder_caps_and_never_pseudo_labeled_classes():
    # buckets: class 0 has 10 samples, class 1 has 2, class 2 none (never a pseudo-label)
    pseudo = np.array([0] * 10 + [1] * 2)
    scores = np.linspace(0, 1, 12)
    res = two_stage_balanced_selection(scores, pseudo, _line_points(np.arange(12)), 7, 3)
    # 7 // 3 = 2 each, remainder +1 to the largest bucket (0) -> [3, 2, 2]; cap class 2 at 0 and
    # hand its 2 round-robin to classes with spare room (only class 0) -> [5, 2, 0]
    np.testing.assert_array_equal(res.quotas, [5, 2, 0])
    np.testing.assert_array_equal(res.bucket_sizes, [10, 2, 0])
    np.testing.assert_array_equal(np.bincount(pseudo[res.positions], minlength=3), [5, 2, 0])
    assert len(np.unique(res.positions)) == 7
    # remainder order among equal buckets: lower class first
    res = two_stage_balanced_selection(np.zeros(9), np.repeat([0, 1, 2], 3), _line_points(np.arange(9)), 5, 3)
    np.testing.assert_array_equal(res.quotas, [2, 2, 1])


def test_stage1_keeps_only_the_most_uncertain_candidates():
    # one class, quota 1, multiplier 2 -> candidates = the 2 most uncertain samples (positions 3, 1)
    scores = np.array([0.1, 0.8, 0.2, 0.9, 0.0])
    pts = _line_points([0.0, 1.0, 2.0, 1.5, 100.0])  # position 4 is far away but certain
    res = two_stage_balanced_selection(scores, np.zeros(5, int), pts, 1, 2, multiplier=2.0)
    np.testing.assert_array_equal(res.positions, [3])  # no anchors: seeded with the most uncertain
    # budget 2, multiplier 2 -> 4 candidates (3, 1, 2, 0): the far but certain position 4 is not one of
    # them, so after the seed (x=1.5) the farthest candidate is x=0 (position 0)
    res = two_stage_balanced_selection(scores, np.zeros(5, int), pts, 2, 2, multiplier=2.0)
    np.testing.assert_array_equal(res.positions, [3, 0])
    # multiplier 4 -> min(5, 8) candidates: now position 4 (x=100) is the farthest
    res = two_stage_balanced_selection(scores, np.zeros(5, int), pts, 2, 2, multiplier=4.0)
    np.testing.assert_array_equal(res.positions, [3, 4])
    with pytest.raises(ValueError, match="multiplier"):
        two_stage_balanced_selection(scores, np.zeros(5, int), pts, 1, 2, multiplier=0.5)


def test_stage2_k_center_anchored_on_same_class_labels():
    # pool: class 0 at x = 0, 1, 5, 9 ; class 1 at x = 20, 21, 30
    xs = [0.0, 1.0, 5.0, 9.0, 20.0, 21.0, 30.0]
    pseudo = np.array([0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.5, 0.9, 0.4, 0.3, 0.9, 0.8, 0.1])
    # labeled anchors: class 0 at x=10 (true label 0), class 1 at x=0 (true label 1, far from its bucket)
    anchors, a_y = _line_points([10.0, 0.0]), np.array([0, 1])
    res = two_stage_balanced_selection(
        scores, pseudo, _line_points(xs), 4, 2, multiplier=4.0, anchors=anchors, anchor_labels=a_y,
    )
    np.testing.assert_array_equal(res.quotas, [2, 2])
    assert res.anchored.tolist() == [True, True]
    # class 0: min sq dist to anchor 10 -> 0:100, 1:81, 5:25, 9:1 -> pick x=0 (pos 0); then
    #   dists min(., to 0): 1:1, 5:25, 9:1 -> x=5 (pos 2)
    # class 1: anchor x=0 only (the class-0 anchor at 10 is ignored): 20:400, 21:441, 30:900 -> 30 (pos 6);
    #   then 20: min(400,100)=100, 21: min(441,81)=81 -> 20 (pos 4)
    np.testing.assert_array_equal(res.positions, [0, 2, 6, 4])
    # without anchors each class is seeded with its most uncertain candidate, then farthest-first
    res = two_stage_balanced_selection(scores, pseudo, _line_points(xs), 4, 2, multiplier=4.0)
    assert not res.anchored.any()
    np.testing.assert_array_equal(res.positions, [1, 3, 4, 6])


def _gradient_embeddings(rng, n, d, c, labels=None):
    h = rng.normal(size=(n, d))
    logits = rng.normal(size=(n, c)) * 2
    p = np.exp(logits - logits.max(1, keepdims=True))
    return GradientEmbeddings(h, p / p.sum(1, keepdims=True), labels=labels)


def test_factorised_gradient_embeddings_match_dense_in_fairfal_selection():
    rng = np.random.default_rng(3)
    n, d, c = 40, 6, 4
    pool = _gradient_embeddings(rng, n, d, c)  # hallucinated labels
    a_y = np.array([0, 0, 2, 3, 3])
    anchors = _gradient_embeddings(rng, 5, d, c, labels=a_y)  # true labels
    dense_pool, dense_anchors = DenseFeatures(pool.dense()), DenseFeatures(anchors.dense())
    # distances: factorised == dense (pool-to-pool and pool-to-anchor)
    brute = ((pool.dense()[:, None] - anchors.dense()[None]) ** 2).sum(-1)
    np.testing.assert_allclose(pool.sq_dists_to_many(anchors, np.arange(5)), brute, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(pool.sq_dists_to(pool, 7), dense_pool.sq_dists_to(dense_pool, 7), atol=1e-9)
    # and the whole two-stage selection picks the same samples
    scores = rng.random(n)
    pseudo = rng.integers(0, c, size=n)
    kw = dict(multiplier=4.0, anchor_labels=a_y)
    fact = two_stage_balanced_selection(scores, pseudo, pool, 9, c, anchors=anchors, **kw)
    dense = two_stage_balanced_selection(scores, pseudo, dense_pool, 9, c, anchors=dense_anchors, **kw)
    np.testing.assert_array_equal(fact.positions, dense.positions)
    assert len(fact.positions) == 9
    # k-center on the candidates alone, factorised vs dense
    np.testing.assert_array_equal(k_center_greedy(pool, 6, first=0), k_center_greedy(dense_pool, 6, first=0))


# ------------------------------------------------------------------ selector


class _FakeModels:
    """ModelBank stand-in with fixed predictions per (kind, where)."""

    def __init__(self, preds):
        self.preds = preds
        self.asked: list[tuple[str, str]] = []

    def pool(self, kind):
        self.asked.append((kind, "pool"))
        return self.preds[(kind, "pool")]

    def labeled(self, kind):
        self.asked.append((kind, "labeled"))
        return self.preds[(kind, "labeled")]


def _selector_ctx(g_bar: float, local_agrees: bool, **params) -> PoolContext:
    """3 classes; labeled: two of class 0, one of class 1; a 12-sample pool."""
    rng = np.random.default_rng(0)
    lab_y = np.array([0, 0, 1])
    lab_feats = np.array([[1.0, 0.0, 0.1], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0]])
    lab_g = np.array([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.2, 0.7, 0.1]])
    lab_l = lab_g.copy() if local_agrees else np.array([[0.1, 0.1, 0.8], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]])
    pool_feats = rng.normal(size=(12, 3))
    pool_g = rng.dirichlet(np.ones(3), size=12)
    # the local-only model is certain on the pool: its entropies differ from the global ones
    pool_l = np.tile([0.98, 0.01, 0.01], (12, 1))
    pool_l[5] = [1 / 3, 1 / 3, 1 / 3]
    preds = {
        ("global", "labeled"): Prediction(lab_g, np.log(lab_g), lab_feats),
        ("local-only", "labeled"): Prediction(lab_l, np.log(lab_l), lab_feats),
        ("global", "pool"): Prediction(pool_g, np.log(pool_g), pool_feats),
        ("local-only", "pool"): Prediction(pool_l, np.log(pool_l), pool_feats),
    }
    return PoolContext(
        pool_ids=np.arange(100, 112), labeled_ids=np.array([1, 2, 3]), labeled_y=lab_y, budget=4,
        num_classes=3, rng=np.random.default_rng(1), models=_FakeModels(preds),
        params={"fairfal-g-bar": g_bar, **params},
    )


def test_selector_uses_global_models_when_close_and_imbalanced():
    ctx = _selector_ctx(g_bar=0.2, local_agrees=True)
    out = run_selection(FairFALSelector(), ctx)
    assert len(out.positions) == 4 and len(np.unique(out.positions)) == 4
    diag = out.diagnostics
    assert diag["divergence"] == pytest.approx(0.0)
    assert diag["used-global-uncertainty"] and diag["used-global-embedding"]
    assert ("local-only", "pool") not in ctx.models.asked  # the local-only model only gave d_i
    assert diag["pseudo-classes"] <= 2  # class 2 was never labeled, so never a pseudo-label
    assert diag["anchored-classes"] == diag["pseudo-classes"]
    # same inputs -> same picks
    again = run_selection(FairFALSelector(), _selector_ctx(g_bar=0.2, local_agrees=True))
    np.testing.assert_array_equal(again.positions, out.positions)


def test_selector_switches_to_local_only_model():
    ctx = _selector_ctx(g_bar=0.2, local_agrees=False)
    out = run_selection(FairFALSelector(), ctx)
    assert out.diagnostics["divergence"] > 0.3
    assert out.diagnostics["ratio"] < 0.75
    assert not out.diagnostics["used-global-uncertainty"]
    assert out.diagnostics["used-global-embedding"]  # depends on g-bar only
    assert ("local-only", "pool") in ctx.models.asked
    # multiplier 1: stage 1 alone decides, so the local-only model's only uncertain sample (position 5,
    # uniform prediction) is picked; the global model's scores do not rank it first
    one = {"fairfal-candidate-multiplier": 1.0}
    assert 5 in run_selection(FairFALSelector(), _selector_ctx(0.2, False, **one)).positions
    assert 5 not in run_selection(FairFALSelector(), _selector_ctx(0.2, True, **one)).positions
    # a threshold from the run config changes the choice: ratio-threshold 0 -> always global
    out = run_selection(FairFALSelector(), _selector_ctx(0.2, False, **{"fairfal-ratio-threshold": 0.0}))
    assert out.diagnostics["used-global-uncertainty"]
    out = run_selection(FairFALSelector(), _selector_ctx(0.6, False))
    assert not out.diagnostics["used-global-embedding"]


def test_selector_and_settings_errors_name_the_setting():
    ctx = _selector_ctx(0.2, True)
    ctx.params = {}
    with pytest.raises(ValueError, match="fairfal-g-bar"):
        FairFALSelector().select(ctx)
    with pytest.raises(ValueError, match="fairfal-ratio-threshold"):
        fairfal_settings({"fairfal-ratio-threshold": 1.5})
    with pytest.raises(ConfigError, match="fairfal-candidate-multiplier"):
        parse_run_config({"fairfal-candidate-multiplier": 0.5})
    with pytest.raises(ConfigError, match="fairfal-g-bar-mode"):
        parse_run_config({"fairfal-g-bar-mode": "sometimes"})
    st = fairfal_settings({"fairfal-g-bar": 0.3, "seed": 1})  # unrelated keys are ignored
    assert (st.fairfal_ratio_threshold, st.fairfal_g_bar_threshold, st.fairfal_candidate_multiplier) == (0.75, 0.5, 4.0)
