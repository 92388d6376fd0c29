"""Selection parity: our selectors pick what the authors' selection functions picked on the same inputs.

The inputs (one Fashion-MNIST client as indices, two small trained resnet8
models) are ``tests/fixtures/parity/inputs.npz``; what the authors' code chose
on them is in ``tests/fixtures/parity/<repo>-<method>.npz``, written by
``benchmarks/parity/make_fixtures.py`` (the README beside the fixtures names
each repository, commit and function). Here only our code runs, on the CPU,
through the real :class:`query.models.ModelBank` and ``run_selection``.

Scores are compared value by value with ``atol`` 1e-5: both sides compute in
float32 with different batch sizes and operation orders (measured differences
are below 3e-6); selections are compared exactly.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import sklearn
import torch

import query.baselines
from query import get_selector, run_selection
from query.ahfal import hybrid_scores, server_statistics, sums_from_histograms
from query.feal import aleatoric_uncertainty, epistemic_uncertainty
from query.kafal import ksas_scores
from query.kernels import entropy
from fal_shared.heads import evidential_alpha
from tests import parity_fixture as pf
from tests.conftest import SHARED_DATASETS

SCORE_ATOL = 1e-5


@pytest.fixture(scope="module")
def inputs() -> pf.ParityInputs:
    return pf.load_inputs()


@pytest.fixture(scope="module")
def ds():
    if not SHARED_DATASETS.exists():
        pytest.skip(f"shared datasets not found at {SHARED_DATASETS}")
    return pf.train_set(SHARED_DATASETS)


def select(inputs, ds, name, params, **kw):
    ctx = pf.context(inputs, ds, params, **kw)
    return run_selection(get_selector(name), ctx).ids, ctx


def log_probs(ctx, kind: str) -> np.ndarray:
    return torch.log_softmax(torch.as_tensor(ctx.models.pool(kind).logits), dim=1).numpy()


# ------------------------------------------------------------------ dgitj/FAL (AHFAL's code)


def test_entropy_matches_dgitj(inputs, ds):
    ref = pf.load_reference("dgitj-entropy")
    ids, ctx = select(inputs, ds, "entropy", {"query-model": "local"})  # their client model
    np.testing.assert_allclose(entropy(ctx.models.pool("local").outputs), ref["scores"], atol=SCORE_ATOL)
    np.testing.assert_array_equal(ids, ref["selected"])  # same picks, same (descending-score) order


def test_coreset_matches_dgitj(inputs, ds):
    ref = pf.load_reference("dgitj-coreset")
    ids, _ = select(inputs, ds, "coreset", {"query-model": "local"})
    np.testing.assert_array_equal(ids, ref["selected"])  # the greedy's pick order too


def test_ksas_matches_dgitj(inputs, ds):
    ref = pf.load_reference("dgitj-kafal")
    ids, ctx = select(inputs, ds, "kafal", {})
    scores = ksas_scores(log_probs(ctx, "local"), log_probs(ctx, "global"), inputs.client_histogram("full"))
    np.testing.assert_allclose(scores, ref["full_scores"], atol=SCORE_ATOL)
    assert set(ids) == set(ref["full_selected"])  # theirs lists them by increasing score


def test_ksas_with_an_unlabeled_class_is_the_authors_limit_not_their_nan(inputs, ds):
    # A client without labels of some class: log 0 = -inf, and current torch's kl_div gives NaN for every sample
    # (the reference then selects an arbitrary tail of the shuffled pool). Ours leaves those classes out of the
    # KL, which is what their formula gives in the limit n_c -> 0 (recorded with n_c = 1e-30).
    ref = pf.load_reference("dgitj-kafal")
    assert np.isnan(ref["missing_scores"]).all()
    ids, ctx = select(inputs, ds, "kafal", {}, variant="missing")
    scores = ksas_scores(log_probs(ctx, "local"), log_probs(ctx, "global"), inputs.client_histogram("missing"))
    np.testing.assert_allclose(scores, ref["missing_eps_scores"], atol=SCORE_ATOL)
    expected = inputs.pool_ids[np.argsort(-ref["missing_eps_scores"], kind="stable")[: inputs.budget]]
    assert set(ids) == set(expected)


def _ahfal_params(inputs, variant):
    stats = server_statistics(sums_from_histograms([inputs.client_histogram(variant), *inputs.histograms]), 12.0,
                              target="pooled")
    params = {
        "ahfal-c-low": ",".join(map(str, stats.c_low)),
        "ahfal-target-distribution": ",".join(repr(float(v)) for v in stats.target),
        "ahfal-allocation": "reference", "ahfal-hybrid-rule": "reference", "ahfal-target": "pooled",
    }
    return stats, params


@pytest.mark.parametrize("variant", ["full", "missing"])
def test_ahfal_server_statistics_match_dgitj(inputs, variant):
    ref = pf.load_reference("dgitj-ahfal")
    stats, _ = _ahfal_params(inputs, variant)
    np.testing.assert_allclose(stats.target, ref[f"{variant}_target"], atol=1e-6)
    np.testing.assert_allclose(stats.sigma, ref[f"{variant}_sigma"], atol=1e-4)  # percentage points
    assert 0 < len(stats.c_low) < 10  # both branches of the hybrid score are exercised


@pytest.mark.parametrize("variant", ["full", "missing"])
def test_ahfal_reference_matches_dgitj(inputs, ds, variant):
    ref = pf.load_reference("dgitj-ahfal")
    stats, params = _ahfal_params(inputs, variant)
    ids, ctx = select(inputs, ds, "ahfal", params, variant=variant)
    scores, pseudo, _ = hybrid_scores(ctx.models.pool("local").outputs, ctx.models.pool("global").outputs, stats.low,
                                      rule="reference")
    np.testing.assert_allclose(scores, ref[f"{variant}_scores"], atol=SCORE_ATOL)
    np.testing.assert_array_equal(pseudo, ref[f"{variant}_pseudo"])
    budgets = np.array([int(v) for v in ctx.diagnostics["class-budgets"].split(",")])
    np.testing.assert_array_equal(budgets, ref[f"{variant}_class_budgets"])
    assert set(ids) == set(ref[f"{variant}_selected"])


def test_feal_matches_dgitj(inputs, ds):
    ref = pf.load_reference("dgitj-feal")
    ids, ctx = select(inputs, ds, "feal", {})
    alpha_g = evidential_alpha(torch.as_tensor(ctx.models.pool("global").logits, dtype=torch.float64))
    alpha_l = evidential_alpha(torch.as_tensor(ctx.models.pool("local").logits, dtype=torch.float64))
    np.testing.assert_allclose(aleatoric_uncertainty(alpha_g), ref["aleatoric_global"], atol=SCORE_ATOL)
    np.testing.assert_allclose(aleatoric_uncertainty(alpha_l), ref["aleatoric_local"], atol=SCORE_ATOL)
    np.testing.assert_allclose(epistemic_uncertainty(alpha_g), ref["epistemic_global"], atol=SCORE_ATOL * 10)
    np.testing.assert_array_equal(ids, ref["selected"])  # relaxation walk order too


# ------------------------------------------------------------------ chenchenzong/FairFAL


def _fairfal_cases():
    ref = pf.load_reference("fairfal")
    return [(v, k) for v in ("full", "missing") for k in range(len(ref[f"{v}_g_bars"]))]


@pytest.mark.parametrize("variant", ["full", "missing"])
def test_fairfal_statistics_match_with_oversampling(inputs, ds, variant):
    from query.fairfal import client_statistics

    ref = pf.load_reference("fairfal")
    ctx = pf.context(inputs, ds, {}, variant=variant)
    lab_g, lab_l = ctx.models.labeled("global").outputs, ctx.models.labeled("local-only").outputs
    ours = client_statistics(lab_g, lab_l, ctx.labeled_y, 10, mode="oversample")
    np.testing.assert_allclose(ours.pbar_global, ref[f"{variant}_pbar_global"], atol=1e-6)
    np.testing.assert_allclose(ours.pbar_local, ref[f"{variant}_pbar_local"], atol=1e-6)
    assert ours.divergence == pytest.approx(float(ref[f"{variant}_d"]), abs=1e-6)
    assert ours.g == pytest.approx(float(ref[f"{variant}_g"]), abs=1e-6)
    # the default (exact class means) differs by the resampling noise only
    exact = client_statistics(lab_g, lab_l, ctx.labeled_y, 10)
    assert exact.g == pytest.approx(float(ref[f"{variant}_g"]), abs=0.05)
    assert exact.g != pytest.approx(float(ref[f"{variant}_g"]), abs=1e-4)


@pytest.mark.parametrize("variant,case", _fairfal_cases())
def test_fairfal_matches_authors(inputs, ds, variant, case):
    ref = pf.load_reference("fairfal")
    g_bar = float(ref[f"{variant}_g_bars"][case])
    params = {"fairfal-g-bar": g_bar, "fairfal-balanced-mean": "oversample"}
    ctx = pf.context(inputs, ds, params, variant=variant)
    out = run_selection(get_selector("fairfal"), ctx)
    unc_model, emb_model = ref[f"{variant}_models"][case]
    assert out.diagnostics["used-global-uncertainty"] == (unc_model == "global")
    assert out.diagnostics["used-global-embedding"] == (emb_model == "global")
    assert out.diagnostics["divergence"] == pytest.approx(float(ref[f"{variant}_d"]), abs=1e-6)
    kind = "global" if unc_model == "global" else "local-only"
    np.testing.assert_allclose(entropy(ctx.models.pool(kind).outputs, normalized=True), ref[f"scores_{unc_model}"],
                               atol=SCORE_ATOL)
    assert set(out.ids) == set(ref[f"{variant}_selected"][case])


@pytest.mark.parametrize("variant", ["full", "missing"])
def test_fairfal_pseudo_labels_and_quotas_match_authors(inputs, ds, variant):
    from query.fairfal import class_prototypes, prototype_pseudo_labels
    from query.kernels import balanced_class_quotas

    ref = pf.load_reference("fairfal")
    ctx = pf.context(inputs, ds, {}, variant=variant)
    protos, counts = class_prototypes(ctx.models.labeled("global").features, ctx.labeled_y, 10)
    pseudo, _ = prototype_pseudo_labels(ctx.models.pool("global").features, protos, counts)
    np.testing.assert_array_equal(pseudo, ref[f"{variant}_pseudo"])
    quotas = balanced_class_quotas(inputs.budget, np.bincount(pseudo, minlength=10), 10)
    for q in ref[f"{variant}_quota"]:  # the quotas do not depend on g-bar
        np.testing.assert_array_equal(quotas, q)


# ------------------------------------------------------------------ ycao5602/KAFAL and JiayiChen815/FEAL


def test_ksas_matches_kafal_authors(inputs, ds):
    ref = pf.load_reference("kafal")
    ids, ctx = select(inputs, ds, "kafal", {})
    scores = ksas_scores(log_probs(ctx, "local"), log_probs(ctx, "global"), inputs.client_histogram("full"))
    np.testing.assert_allclose(scores, ref["full_scores"], atol=SCORE_ATOL)
    assert set(ids) == set(ref["full_selected"])
    assert np.isnan(ref["missing_scores"]).all()  # the same NaN as dgitj/FAL's copy (see above)


def test_feal_matches_feal_authors(inputs, ds):
    ref = pf.load_reference("feal")
    ids, ctx = select(inputs, ds, "feal", {})
    alpha_g = evidential_alpha(torch.as_tensor(ctx.models.pool("global").logits, dtype=torch.float64))
    np.testing.assert_allclose(epistemic_uncertainty(alpha_g), ref["epistemic_global"], atol=SCORE_ATOL * 10)
    np.testing.assert_array_equal(ids, ref["selected"])  # the relaxation's picks, in walk order


# ------------------------------------------------------------------ randomised selectors: BADGE, Noise Stability, LoGo
# The harness matches the random stream: for seed t it seeds the authors' KMeans (or, for Noise Stability, the
# global torch RNG) with the seed our selector draws first from default_rng(t) (the fixture's `seeds`), so each
# seed's picks must be identical, not merely alike. One seed runs by default (a few seconds);
# FAL_PARITY_ALL_SEEDS=1 runs every seed the fixture holds (20, BADGE 5).


def _seeds(name: str) -> list[int]:
    n = len(pf.load_reference(name)["selected"])
    return list(range(n)) if os.environ.get("FAL_PARITY_ALL_SEEDS") else [0]


def _spy(monkeypatch, module, name: str) -> list:
    """Wrap ``module.name`` so that the real function runs and its (args, result) are recorded."""
    real, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((args, out))
        return out

    monkeypatch.setattr(module, name, wrapper)
    return calls


def _kmeans_note(ref) -> str:
    return (f"KMeans picks differ; the fixture was made with scikit-learn {ref['sklearn_version']}, this is "
            f"{sklearn.__version__} (regenerate: tests/fixtures/parity/README.md)")


@pytest.mark.parametrize("t", _seeds("dgitj-badge"))
def test_badge_input_gradient_kmeans_matches_dgitj(inputs, ds, monkeypatch, t):
    ref = pf.load_reference("dgitj-badge")
    assert ref["seeds"][t] == np.random.default_rng(t).integers(2**31 - 1)
    calls = _spy(monkeypatch, query.baselines, "kmeans_closest")
    params = {"badge-variant": "input-gradient-kmeans", "query-model": "local"}
    ids, _ = select(inputs, ds, "badge", params, pool_ids=ref["subset"], budget=int(ref["budget"]), seed=t)
    grads = calls[0][0][0]  # the embedding their KMeans clusters: d(-logit[argmax]) / d(input pixels)
    np.testing.assert_allclose(np.linalg.norm(grads, axis=1), ref["embedding_norms"], rtol=1e-5)
    np.testing.assert_allclose(grads[: len(ref["embedding_head"])], ref["embedding_head"], atol=1e-6)
    np.testing.assert_array_equal(ids, ref["selected"][t], err_msg=_kmeans_note(ref))  # in centre order


@pytest.mark.parametrize("t", _seeds("dgitj-noise-stability"))
def test_noise_stability_feature_topk_matches_dgitj(inputs, ds, monkeypatch, t):
    ref = pf.load_reference("dgitj-noise-stability")
    assert ref["torch_seeds"][t] == np.random.default_rng(t).integers(2**62)
    calls = _spy(monkeypatch, query.baselines, "feature_noise_scores")
    params = {"noise-stability-variant": "feature-topk", "query-model": "local",
              "noise-stability-num-copies": 50, "noise-stability-subset-size": 0}  # their num_sampling; whole pool
    ids, _ = select(inputs, ds, "noise-stability", params, pool_ids=ref["subset"], budget=int(ref["budget"]), seed=t)
    if t == 0:  # the score it ranks by, value by value (mean |h_k(x) - h(x)|, of order 1e-3)
        np.testing.assert_allclose(calls[0][1], ref["uncertainty"], rtol=1e-4, atol=1e-8)
    np.testing.assert_array_equal(ids, ref["selected"][t])  # by decreasing score


@pytest.mark.parametrize("t", _seeds("dgitj-logo"))
def test_logo_local_features_matches_dgitj(inputs, ds, monkeypatch, t):
    ref = pf.load_reference("dgitj-logo")
    assert ref["seeds"][t] == np.random.default_rng(t).integers(2**31 - 1)
    calls = _spy(monkeypatch, query.baselines, "logo_kmeans")
    ids, _ = select(inputs, ds, "logo", {"logo-variant": "local-features"}, seed=t)
    np.testing.assert_array_equal(calls[0][1], ref["cluster_labels"][t], err_msg=_kmeans_note(ref))
    np.testing.assert_array_equal(ids, ref["selected"][t])  # one per cluster, in cluster order


@pytest.mark.parametrize("t", _seeds("logo"))
def test_logo_matches_logo_authors(inputs, ds, monkeypatch, t):
    ref = pf.load_reference("logo")
    assert ref["seeds"][t] == np.random.default_rng(t).integers(2**31 - 1)
    calls = _spy(monkeypatch, query.baselines, "logo_kmeans")
    ids, ctx = select(inputs, ds, "logo", {}, seed=t)  # the default: (1 - p_max) h of the local-only model
    z = calls[0][0][0]
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), ref["embedding_norms"], rtol=1e-5, atol=SCORE_ATOL)
    np.testing.assert_allclose(z[: len(ref["embedding_head"])], ref["embedding_head"], atol=1e-6)
    np.testing.assert_array_equal(calls[0][1], ref["cluster_labels"][t], err_msg=_kmeans_note(ref))
    assert set(ids) == set(ref["selected"][t])  # theirs returns list(set(...)): no order


def test_defaults_are_not_the_ahfal_papers_variants(inputs, ds):
    # Why badge-variant and logo-variant exist: the defaults (the methods' authors' algorithms) pick other
    # samples than dgitj/FAL's re-implementations on the same inputs and seed.
    badge, logo = pf.load_reference("dgitj-badge"), pf.load_reference("dgitj-logo")
    ids, _ = select(inputs, ds, "badge", {"query-model": "local"}, pool_ids=badge["subset"], budget=int(badge["budget"]))
    assert len(set(ids) & set(badge["selected"][0])) < 0.8 * len(ids)
    ids, _ = select(inputs, ds, "logo", {})
    assert len(set(ids) & set(logo["selected"][0])) < 0.8 * len(ids)
