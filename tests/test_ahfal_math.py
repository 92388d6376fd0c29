"""AHFAL's pure math (query/ahfal.py): statistics, budgets, scoring, selection.

Hand-built histograms and fixed model outputs; every expected value is worked
out in the comments.
"""

from __future__ import annotations

import numpy as np
import pytest

from fal_shared.data.partition import partition_indices
from query.ahfal import (
    AhfalSelector,
    StatisticSums,
    ahfal_select,
    client_statistics,
    hybrid_scores,
    paper_class_budgets,
    parse_class_list,
    reference_class_budgets,
    select_per_class,
    server_statistics,
    sums_from_histograms,
)
from query.base import PoolContext, run_selection

# ------------------------------------------------------------------ statistics
# Three clients, four classes; class 2 is held by nobody, client B has one class.
#   A [2,2,0,0] -> p = [.5, .5, 0, 0]
#   B [0,4,0,0] -> p = [0, 1, 0, 0]
#   C [1,1,0,2] -> p = [.25, .25, 0, .5]
HISTS = [[2, 2, 0, 0], [0, 4, 0, 0], [1, 1, 0, 2]]
# class 0: mean .25, deviations (.25, -.25, 0) -> var .125/3 -> sigma 20.412 pp
# class 1: mean 7/12, deviations (-1/12, 5/12, -4/12) -> var (1+25+16)/144/3 = 42/432 -> 31.180 pp
# class 2: 0;  class 3: mean 1/6, deviations (-1/6, -1/6, 1/3) -> var (1+1+4)/36/3 = 1/18 -> 23.570 pp
SIGMA_PP = [20.412414523193153, 31.180478223116177, 0.0, 23.570226039551585]


def test_server_statistics_hand_built():
    stats = server_statistics(sums_from_histograms(HISTS), tau=12.0)
    np.testing.assert_allclose(stats.sigma, SIGMA_PP, rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, 100 * np.std([[.5, .5, 0, 0], [0, 1, 0, 0], [.25, .25, 0, .5]], axis=0))
    assert stats.c_low == [2]  # only the class nobody has (sigma 0) is below 12 pp
    assert stats.c_high == [0, 1, 3]
    np.testing.assert_allclose(stats.target, [0.25, 7 / 12, 0.0, 1 / 6])  # paper: mean of p_i
    assert stats.num_clients == 3
    # tau is compared in percentage points: 22 > 20.41 lets class 0 in, 25 > 23.57 class 3 too
    assert server_statistics(sums_from_histograms(HISTS), tau=22.0).c_low == [0, 2]
    assert server_statistics(sums_from_histograms(HISTS), tau=25.0).c_low == [0, 2, 3]
    # pooled target (reference code): sum n_i / sum |L_i| = [3, 7, 0, 2] / 12
    pooled = server_statistics(sums_from_histograms(HISTS), tau=12.0, target="pooled")
    np.testing.assert_allclose(pooled.target, [3 / 12, 7 / 12, 0, 2 / 12])


def test_client_without_labels_is_left_out_of_n():
    with_empty = sums_from_histograms(HISTS + [[0, 0, 0, 0]])
    assert with_empty.num_clients == 3
    np.testing.assert_allclose(server_statistics(with_empty, 12.0).sigma, SIGMA_PP, rtol=1e-12)
    assert client_statistics([0, 0, 0]).contributes == 0
    with pytest.raises(ValueError, match="no client has labels"):
        server_statistics(sums_from_histograms([[0, 0], [0, 0]]), 12.0)


def test_statistics_depend_on_sums_only():
    # fixed-point sums (as the secure path delivers them) give the same classes
    plain = sums_from_histograms(HISTS)
    bits = 32
    fixed = StatisticSums(
        counts=plain.counts,
        proportions=np.round(plain.proportions * 2**bits) / 2**bits,
        squares=np.round(plain.squares * 2**bits) / 2**bits,
        num_clients=plain.num_clients,
    )
    a, b = server_statistics(plain, 12.0), server_statistics(fixed, 12.0)
    np.testing.assert_allclose(a.sigma, b.sigma, atol=1e-6)
    assert a.c_low == b.c_low


def test_statistics_reject_bad_input():
    with pytest.raises(ValueError, match="ahfal-tau"):
        server_statistics(sums_from_histograms(HISTS), -1.0)
    with pytest.raises(ValueError, match="ahfal-target"):
        server_statistics(sums_from_histograms(HISTS), 12.0, target="median")
    with pytest.raises(ValueError, match="non-negative"):
        sums_from_histograms([[1, -1]])
    with pytest.raises(ValueError, match="different lengths"):
        sums_from_histograms([[1, 2], [1, 2, 3]])


def _sigma_for(scheme: str, alpha: float | None, seed: int) -> np.ndarray:
    """sigma_c of 10 clients' initial 10 % labeled sets on a 10-class, 6000-sample label vector."""
    y = np.repeat(np.arange(10), 600)
    parts = partition_indices(y, 10, scheme=scheme, alpha=alpha, seed=seed)
    rng = np.random.default_rng(seed)
    hists = [np.bincount(y[rng.choice(p, size=int(np.ceil(0.1 * len(p))), replace=False)], minlength=10) for p in parts]
    return server_statistics(sums_from_histograms(hists), tau=12.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_tau_in_percentage_points_separates_iid_from_skewed(seed):
    near_iid = _sigma_for("dirichlet", 100.0, seed)
    skewed = _sigma_for("dirichlet", 0.1, seed)
    assert len(near_iid.c_low) >= 8, near_iid.sigma  # most classes use the hybrid score
    assert len(skewed.c_high) >= 8, skewed.sigma  # most classes use the local score
    # the unit matters: as proportions (not x100) every class would be "below 12"
    assert (skewed.sigma / 100 < 12).all()


# --------------------------------------------------------------------- budgets
def test_paper_budgets_eq4_largest_remainder():
    # w = [1/10, 1, 1/5, 1/20], sum 1.35; exact shares of 10: .741 7.407 1.481 .370
    # floors 0 7 1 0, the 2 missing units to the largest fractions (.741, .481)
    np.testing.assert_array_equal(paper_class_budgets([10, 0, 5, 20], 10), [1, 7, 2, 0])
    # a client with one class: w = [1, 1/30, 1]; shares 2.459 .082 2.459 -> 2 0 2, tie -> lower index
    np.testing.assert_array_equal(paper_class_budgets([0, 30, 0], 5), [3, 0, 2])


def test_paper_budgets_zero_budget():
    np.testing.assert_array_equal(paper_class_budgets([10, 0, 5, 20], 0), [0, 0, 0, 0])
    np.testing.assert_array_equal(paper_class_budgets([10, 0, 5, 20], 0, [0, 0, 0, 0]), [0, 0, 0, 0])


def test_paper_budgets_shortfall_redistributed_by_weight():
    # [1, 7, 2, 0] but class 1's bucket holds 2: deficit 5 over classes 0, 2, 3 by w = [.1, .2, .05]:
    # exact 1.43 2.86 .71 -> 1 2 0, 2 units to .86 and .71 -> +[1, 3, 1] -> [2, 2, 5, 1]
    np.testing.assert_array_equal(paper_class_budgets([10, 0, 5, 20], 10, [5, 2, 5, 5]), [2, 2, 5, 1])
    # a missing class with an empty bucket (a class nobody has) gives its share away
    np.testing.assert_array_equal(paper_class_budgets([0, 30, 0], 5, [0, 10, 10]), [0, 0, 5])
    # budget larger than the whole pool: every bucket is taken, never more
    np.testing.assert_array_equal(paper_class_budgets([10, 0, 5, 20], 10, [1, 1, 1, 1]), [1, 1, 1, 1])


def test_paper_budgets_always_feasible_and_exact():
    rng = np.random.default_rng(3)
    for _ in range(300):
        c = int(rng.integers(1, 12))
        counts = rng.integers(0, 30, c) * (rng.random(c) < 0.7)
        cap = rng.integers(0, 15, c)
        budget = int(rng.integers(0, 60))
        b = paper_class_budgets(counts, budget, cap)
        assert b.sum() == min(budget, cap.sum())
        assert (b >= 0).all() and (b <= cap).all()


def test_reference_budgets_missing_class_first():
    # L = 20, target uniform: r = [2, 0, 1, 1]; class 1 is missing -> min(5, 8 // 1) = 5
    # the other 3: inverse ratios [1/2.01, 100, 1/1.01, 1/1.01] -> floors [0, 2, 0, 0] -> t = [0, 7, 0, 0]
    # 1 unit left -> lowest projected ratio (n + t) / (28 * .25): [1.43, 1, .71, .71] -> class 2
    np.testing.assert_array_equal(reference_class_budgets([10, 0, 5, 5], [.25] * 4, 8, [100] * 4), [0, 7, 1, 0])


def test_reference_budgets_tiers_and_capacity():
    # L = 50, B = 6, target 14 each -> needs [0, 9, 9, 4] = 22 > 6 -> tiers in ratio order
    # r = [2.4, .4, .4, .8]: class 1 (r < .5) gets ceil(6 * .5) = 3, then the last 3 go one each
    # in ratio order (1, 2, 3) -> [0, 4, 1, 1]
    np.testing.assert_array_equal(reference_class_budgets([30, 5, 5, 10], [.25] * 4, 6, [100] * 4), [0, 4, 1, 1])
    # class 1's bucket holds 2: the 2 cut units go in ratio order to classes with room -> class 2
    np.testing.assert_array_equal(
        reference_class_budgets([30, 5, 5, 10], [.25] * 4, 6, [10, 2, 10, 10]), [0, 2, 3, 1]
    )
    np.testing.assert_array_equal(reference_class_budgets([30, 5, 5, 10], [.25] * 4, 0, [10] * 4), [0] * 4)


def test_reference_budgets_always_feasible_and_exact():
    rng = np.random.default_rng(5)
    for _ in range(300):
        c = int(rng.integers(1, 12))
        counts = rng.integers(0, 30, c) * (rng.random(c) < 0.7)
        target = rng.random(c) * (rng.random(c) < 0.8)
        target = target / target.sum() if target.sum() > 0 else np.full(c, 1 / c)
        cap = rng.integers(0, 15, c)
        budget = int(rng.integers(0, 60))
        b = reference_class_budgets(counts, target, budget, cap)
        assert b.sum() == min(budget, cap.sum())
        assert (b >= 0).all() and (b <= cap).all()


# ------------------------------------------------------ scoring and selection
# Eight pool samples, three classes; local (L) and global (G) softmax outputs.
LOCAL = np.array([
    [0.5, 0.3, 0.2],     # 0: pseudo 0, H_L 1.0297
    [0.9, 0.05, 0.05],   # 1: pseudo 0, H_L 0.3944
    [0.1, 0.8, 0.1],     # 2: pseudo 1, H_L 0.6390
    [0.2, 0.6, 0.2],     # 3: pseudo 1, H_L 0.9503
    [0.05, 0.05, 0.9],   # 4: pseudo 2, H_L 0.3944
    [0.25, 0.25, 0.5],   # 5: pseudo 2, H_L 1.0397
    [0.7, 0.2, 0.1],     # 6: pseudo 0, H_L 0.8018
    [0.1, 0.1, 0.8],     # 7: pseudo 2, H_L 0.6390
])
GLOBAL = np.array([
    [0.98, 0.01, 0.01],  # 0: H_G 0.1119 -> hybrid 0.5708
    [0.34, 0.33, 0.33],  # 1: H_G 1.0985 -> hybrid 0.7465
    [0.4, 0.3, 0.3],     # 2: global argmax 0 (matters for the reference rule)
    [1 / 3, 1 / 3, 1 / 3],
    [0.05, 0.05, 0.9],
    [0.25, 0.25, 0.5],
    [0.7, 0.2, 0.1],     # 6: H_G 0.8018 -> hybrid 0.8018
    [0.1, 0.1, 0.8],
])
LOW = np.array([True, False, False])  # C_low = {0}


def test_hybrid_scores_eq3():
    scores, pseudo, hybrid = hybrid_scores(LOCAL, GLOBAL, LOW)
    np.testing.assert_array_equal(pseudo, [0, 0, 1, 1, 2, 2, 0, 2])
    np.testing.assert_array_equal(hybrid, [1, 1, 0, 0, 0, 0, 1, 0])
    np.testing.assert_allclose(scores[[0, 1, 6]], [0.5708, 0.7465, 0.8018], atol=1e-4)
    np.testing.assert_allclose(scores[[2, 3]], [0.6390, 0.9503], atol=1e-4)
    # reference rule: samples 2 and 3 have global argmax 0 (C_low) -> they are averaged too
    _, _, ref = hybrid_scores(LOCAL, GLOBAL, LOW, rule="reference")
    np.testing.assert_array_equal(ref, [1, 1, 1, 1, 0, 0, 1, 0])  # 3: uniform global, argmax 0
    # no toggling: local entropy everywhere, no global model needed
    s, _, h = hybrid_scores(LOCAL, None, LOW, toggling=False)
    assert not h.any()
    with pytest.raises(ValueError, match="global model"):
        hybrid_scores(LOCAL, None, LOW)


def test_selection_exact_indices():
    # labeled counts [0, 10, 5]: w = [1, .1, .2]; B = 3 -> exact 2.31 .23 .46 -> [2, 0, 1]
    # class 0 by hybrid score: 6 (.80) > 1 (.75) > 0 (.57); class 2 by H_L: 5 (1.04)
    ids, info = ahfal_select(LOCAL, GLOBAL, [0, 10, 5], 3, LOW)
    np.testing.assert_array_equal(ids, [6, 1, 5])
    np.testing.assert_array_equal(info["class-budgets"], [2, 0, 1])
    # ablation w/o toggling: class 0 by H_L: 0 (1.03) > 6 (.80)
    np.testing.assert_array_equal(ahfal_select(LOCAL, None, [0, 10, 5], 3, LOW, toggling=False)[0], [0, 6, 5])
    # ablation w/o class balancing: top-3 of the hybrid scores: 5 (1.04), 3 (.95), 6 (.80)
    np.testing.assert_array_equal(ahfal_select(LOCAL, GLOBAL, [0, 10, 5], 3, LOW, class_balancing=False)[0], [5, 3, 6])
    # both off = local entropy top-B: 5 (1.040), 0 (1.030), 3 (.950)
    np.testing.assert_array_equal(
        ahfal_select(LOCAL, None, [0, 10, 5], 3, LOW, toggling=False, class_balancing=False)[0], [5, 0, 3]
    )


def test_selection_budget_larger_than_bucket_and_zero():
    # counts [0, 50, 50]: w = [1, .02, .02], B = 7 -> [7, 0, 0], but bucket 0 holds 3 samples:
    # the 4 over go to classes 1 and 2 by equal weight -> [3, 2, 2]
    ids, info = ahfal_select(LOCAL, GLOBAL, [0, 50, 50], 7, LOW)
    np.testing.assert_array_equal(info["class-budgets"], [3, 2, 2])
    np.testing.assert_array_equal(ids, [6, 1, 0, 3, 2, 5, 7])
    assert ahfal_select(LOCAL, GLOBAL, [0, 50, 50], 0, LOW)[0].size == 0
    # budget larger than the pool: the whole pool
    assert sorted(ahfal_select(LOCAL, GLOBAL, [0, 50, 50], 20, LOW)[0]) == list(range(8))


def test_selection_reference_allocation():
    # target uniform, counts [0, 10, 5], B = 3: class 0 missing -> min(5, 3) = 3 -> bucket of class 0
    ids, info = ahfal_select(LOCAL, GLOBAL, [0, 10, 5], 3, LOW, target=[1 / 3] * 3, allocation="reference")
    np.testing.assert_array_equal(info["class-budgets"], [3, 0, 0])
    np.testing.assert_array_equal(ids, [6, 1, 0])


def test_select_per_class_fill():
    np.testing.assert_array_equal(select_per_class([.1, .9, .5], [0, 0, 1], [0, 0, 0], fill_to=2), [1, 2])


class _Pred:
    def __init__(self, outputs):
        self.outputs = outputs


class _Bank:
    def __init__(self):
        self.asked = []

    def pool(self, kind):
        self.asked.append(kind)
        return _Pred({"local": LOCAL, "global": GLOBAL}[kind])


def _ctx(params, budget=3, labeled_y=(1,) * 10 + (2,) * 5):
    return PoolContext(
        pool_ids=np.arange(100, 108), labeled_ids=np.arange(len(labeled_y)), labeled_y=np.array(labeled_y),
        budget=budget, num_classes=3, rng=np.random.default_rng(0), models=_Bank(), params=params,
    )


def test_selector_uses_server_statistics_and_models():
    ctx = _ctx({"ahfal-c-low": "0"})
    out = run_selection(AhfalSelector(), ctx)
    np.testing.assert_array_equal(out.ids, [106, 101, 105])
    assert ctx.models.asked == ["local", "global"]
    assert out.diagnostics["class-budgets"] == "2,0,1"
    # ablation w/o toggling never asks for the global model; private runs do not report b_c
    ctx = _ctx({"ahfal-c-low": [0], "ahfal-toggling": False, "ahfal-dp-epsilon": 5.0})
    np.testing.assert_array_equal(run_selection(AhfalSelector(), ctx).ids, [100, 106, 105])
    assert ctx.models.asked == ["local"]
    assert "class-budgets" not in ctx.diagnostics
    # C_low empty: no global model needed either
    ctx = _ctx({"ahfal-c-low": ""})
    run_selection(AhfalSelector(), ctx)
    assert ctx.models.asked == ["local"]


def test_selector_rejects_bad_params():
    with pytest.raises(ValueError, match="ahfal-c-low"):
        run_selection(AhfalSelector(), _ctx({}))
    with pytest.raises(ValueError, match="ahfal-c-low"):
        parse_class_list("0,7", 3)
    with pytest.raises(ValueError, match="ahfal-target-distribution"):
        run_selection(AhfalSelector(), _ctx({"ahfal-c-low": "0", "ahfal-allocation": "reference",
                                             "ahfal-target-distribution": "0.5,0.5"}))
