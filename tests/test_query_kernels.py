"""Tests for query.kernels / query.distances: hand-built inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from query.distances import DenseFeatures, GradientEmbeddings, PointSet
from query.kernels import (
    balanced_class_quotas,
    entropy,
    k_center_greedy,
    kmeans_pp_seeding,
    largest_remainder,
    top_k,
)

# A small 2-D point set whose farthest-first traversals are worked out by hand
# in the tests below (squared distances in the comments).
#                 0       1       2        3        4        5
POINTS_2D = np.array([[0, 0], [1, 0], [10, 0], [10, 1], [0, 10], [5, 5]], dtype=np.float64)


def _brute_sq_dists(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Reference (n, m) squared distances by explicit differences."""
    return ((A[:, None, :] - B[None, :, :]) ** 2).sum(axis=2)


def _random_probs(rng: np.random.Generator, n: int, c: int, dtype=np.float64) -> np.ndarray:
    logits = rng.normal(size=(n, c)) * 2.0
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).astype(dtype)


# ------------------------------------------------------------------------- entropy


def test_entropy_known_values():
    p = np.array([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    h = entropy(p)
    np.testing.assert_allclose(h, [1.5 * math.log(2), 0.0, math.log(3)], atol=1e-9)
    hn = entropy(p, normalized=True)
    np.testing.assert_allclose(hn, [1.5 * math.log(2) / math.log(3), 0.0, 1.0], atol=1e-9)


def test_entropy_keeps_float32_and_validates():
    p = np.full((4, 8), 1 / 8, dtype=np.float32)
    h = entropy(p, normalized=True)
    assert h.dtype == np.float32
    np.testing.assert_allclose(h, 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="probs"):
        entropy(np.ones(3))
    with pytest.raises(ValueError, match="normalized"):
        entropy(np.ones((3, 1)), normalized=True)


# -------------------------------------------------------------------- point sets


def test_dense_features_distances():
    pts = DenseFeatures(POINTS_2D)
    np.testing.assert_allclose(pts.sq_norms(), [0, 1, 100, 101, 100, 50])
    # distances to point 3 = (10, 1)
    np.testing.assert_allclose(pts.sq_dists_to(pts, 3), [101, 82, 1, 0, 181, 41])
    other = DenseFeatures(np.array([[0.0, 10.0], [1.0, 1.0]]))
    np.testing.assert_allclose(pts.sq_dists_to_many(other, [0, 1]), _brute_sq_dists(POINTS_2D, other.X))
    np.testing.assert_allclose(pts.min_sq_dists_to(other), [2, 1, 82, 81, 0, 32])
    assert len(pts) == 6
    sub = pts.subset([4, 1])
    np.testing.assert_allclose(sub.X, POINTS_2D[[4, 1]])
    np.testing.assert_allclose(sub.sq_norms(), [100, 1])


def test_distances_clip_round_off_at_zero():
    # Large norm, tiny separation: the expansion cancels catastrophically in float32.
    X = np.array([[1000.0, 1000.0], [1000.0, 1000.001]], dtype=np.float32)
    pts = DenseFeatures(X)
    d = pts.sq_dists_to(pts, 0)
    assert d.dtype == np.float32
    assert (d >= 0).all()
    assert d[0] == 0.0


def test_point_sets_reject_mismatches():
    dense = DenseFeatures(np.zeros((3, 2)))
    grad = GradientEmbeddings(np.zeros((3, 2)), np.full((3, 2), 0.5))
    with pytest.raises(TypeError, match="other"):
        dense.sq_dists_to(grad, 0)
    with pytest.raises(ValueError, match="dimension"):
        dense.sq_dists_to(DenseFeatures(np.zeros((2, 5))), 0)
    with pytest.raises(ValueError, match="X"):
        DenseFeatures(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="labels"):
        GradientEmbeddings(np.zeros((3, 2)), np.full((3, 2), 0.5), labels=[0, 1, 2])
    with pytest.raises(ValueError, match="rows"):
        GradientEmbeddings(np.zeros((3, 2)), np.full((4, 2), 0.5))


@pytest.mark.parametrize("with_labels", [False, True])
def test_gradient_embeddings_factorised_equals_dense(with_labels):
    rng = np.random.default_rng(0)
    n, m, d, c = 40, 25, 100, 10  # C * d = 1000
    h = rng.normal(size=(n, d))
    p = _random_probs(rng, n, c)
    labels = rng.integers(0, c, size=n) if with_labels else None
    g = GradientEmbeddings(h, p, labels=labels)
    # The anchors are a different set (true labels), as in FairFAL step 9.
    h2 = rng.normal(size=(m, d))
    p2 = _random_probs(rng, m, c)
    anchors = GradientEmbeddings(h2, p2, labels=rng.integers(0, c, size=m))

    G, G2 = g.dense(), anchors.dense()
    assert G.shape == (n, c * d) and g.embedding_dim == 1000
    # dense() layout: block for class c is h * (1[c = y] - p_c)
    y = labels if with_labels else p.argmax(axis=1)
    a = -p.copy()
    a[np.arange(n), y] += 1
    np.testing.assert_allclose(G.reshape(n, c, d), a[:, :, None] * h[:, None, :])
    np.testing.assert_array_equal(g.labels, y)

    np.testing.assert_allclose(g.sq_norms(), (G**2).sum(axis=1), rtol=1e-10)
    full = _brute_sq_dists(G, G2)
    np.testing.assert_allclose(g.sq_dists_to_many(anchors, np.arange(m)), full, rtol=1e-9, atol=1e-9)
    for j in (0, 7, m - 1):
        np.testing.assert_allclose(g.sq_dists_to(anchors, j), full[:, j], rtol=1e-9, atol=1e-9)
    self_full = _brute_sq_dists(G, G)
    np.testing.assert_allclose(g.sq_dists_to(g, 3), self_full[:, 3], rtol=1e-9, atol=1e-9)
    assert g.sq_dists_to(g, 3)[3] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(
        g.min_sq_dists_to(anchors, max_block_elems=n * 4), full.min(axis=1), rtol=1e-9, atol=1e-9
    )
    sub = g.subset([5, 2])
    np.testing.assert_allclose(sub.dense(), G[[5, 2]])


def test_gradient_embeddings_float32_close_to_float64():
    rng = np.random.default_rng(1)
    h = rng.normal(size=(200, 256))
    p = _random_probs(rng, 200, 10)
    g64 = GradientEmbeddings(h, p)
    g32 = GradientEmbeddings(h.astype(np.float32), p.astype(np.float32))
    assert g32.dtype == np.float32
    d64, d32 = g64.sq_dists_to(g64, 11), g32.sq_dists_to(g32, 11)
    scale = g64.sq_norms() + g64.sq_norms()[11]
    assert np.max(np.abs(d64 - d32) / scale) < 1e-5


# ------------------------------------------------------------------ k-center greedy


def test_k_center_from_origin():
    pts = DenseFeatures(POINTS_2D)
    # min_dist = ||x||^2 -> 3 (101); then (0,10): min(100, 181) = 100 -> 4;
    # then (5,5): 41 -> 5; then 1 and 2 tie at 1 -> lowest index 1; then 2; then 0.
    np.testing.assert_array_equal(k_center_greedy(pts, 4), [3, 4, 5, 1])
    np.testing.assert_array_equal(k_center_greedy(pts, 5), [3, 4, 5, 1, 2])


def test_k_center_with_first():
    pts = DenseFeatures(POINTS_2D)
    # from (0,0): 3 (101), then 4 (100), then 5 (41), then tie 1/2 at 1 -> 1
    np.testing.assert_array_equal(k_center_greedy(pts, 5, first=0), [0, 3, 4, 5, 1])
    # from (5,5): 0 and 4 tie at 50 -> 0
    np.testing.assert_array_equal(k_center_greedy(pts, 2, first=5), [5, 0])
    with pytest.raises(ValueError, match="first"):
        k_center_greedy(pts, 2, first=6)


@pytest.mark.parametrize("max_block_elems", [1, 6, 1 << 22])
def test_k_center_with_anchors(max_block_elems):
    pts = DenseFeatures(POINTS_2D)
    anchors = DenseFeatures(np.array([[0.0, 0.0], [10.0, 0.0]]))
    # min_dist to anchors = [0, 1, 0, 1, 100, 50] -> 4; (0,10) leaves 5 at 50 -> 5;
    # then 1 and 3 tie at 1 -> 1; then 3.
    got = k_center_greedy(pts, 4, anchors=anchors, max_block_elems=max_block_elems)
    np.testing.assert_array_equal(got, [4, 5, 1, 3])
    # anchors + forced first: 0 first (0 already at distance 0), then continue from anchors
    np.testing.assert_array_equal(k_center_greedy(pts, 3, anchors=anchors, first=0), [0, 4, 5])
    # an empty anchor set means "no anchors": origin start
    empty = DenseFeatures(np.zeros((0, 2)))
    np.testing.assert_array_equal(k_center_greedy(pts, 2, anchors=empty), [3, 4])


def test_k_center_anchor_blocks_bound_memory():
    """The anchor pass must never build a block larger than max_block_elems (n x |anchors|)."""

    class Spy(DenseFeatures):
        widths: list[int] = []

        def sq_dists_to_many(self, other, indices):
            out = super().sq_dists_to_many(other, indices)
            Spy.widths.append(out.shape[1])
            return out

    rng = np.random.default_rng(2)
    pts = Spy(rng.normal(size=(50, 3)))
    anchors = Spy(rng.normal(size=(1000, 3)))
    got = k_center_greedy(pts, 5, anchors=anchors, max_block_elems=500)
    assert max(Spy.widths) == 10 and sum(Spy.widths) == 1000
    ref = _brute_sq_dists(pts.X, anchors.X).min(axis=1)
    assert got[0] == int(np.argmax(ref))


@pytest.mark.parametrize("n, m, elems", [(1000, 30, 300), (700, 5000, 4096), (300, 3, 1), (64, 10, 10**6)])
def test_min_sq_dists_blocks_bound_memory_and_equal_the_full_matrix(n, m, elems):
    """Row and column blocks of at most max_block_elems entries; the minima are those of the full n x m matrix."""

    class Spy(DenseFeatures):
        shapes: list[tuple[int, int]] = []

        def sq_dists_to_many(self, other, indices):
            out = super().sq_dists_to_many(other, indices)
            Spy.shapes.append(out.shape)
            return out

    rng = np.random.default_rng(n + m)
    pts, anchors = Spy(rng.normal(size=(n, 6))), Spy(rng.normal(size=(m, 6)))
    Spy.shapes = []
    got = pts.min_sq_dists_to(anchors, max_block_elems=elems)
    assert max(r * c for r, c in Spy.shapes) <= max(elems, 1)
    assert sum(r * c for r, c in Spy.shapes) == n * m  # every pair exactly once
    np.testing.assert_allclose(got, _brute_sq_dists(pts.X, anchors.X).min(axis=1), rtol=1e-12, atol=1e-12)
    # the same picks as with one n x m block (matrix products of other shapes may round the last bit differently)
    plain, plain_anchors = DenseFeatures(pts.X), DenseFeatures(anchors.X)
    np.testing.assert_array_equal(k_center_greedy(plain, 20, anchors=plain_anchors, max_block_elems=elems),
                                  k_center_greedy(plain, 20, anchors=plain_anchors, max_block_elems=n * m))


def test_k_center_budget_edges_and_duplicates():
    pts = DenseFeatures(POINTS_2D)
    np.testing.assert_array_equal(k_center_greedy(pts, 6), np.arange(6))
    np.testing.assert_array_equal(k_center_greedy(pts, 100), np.arange(6))
    assert k_center_greedy(pts, 0).shape == (0,)
    with pytest.raises(ValueError, match="budget"):
        k_center_greedy(pts, -1)
    # all points identical: distances are all 0 but picks stay distinct, lowest index first
    dup = DenseFeatures(np.ones((5, 3)))
    np.testing.assert_array_equal(k_center_greedy(dup, 4), [0, 1, 2, 3])


def test_k_center_on_gradient_embeddings_matches_dense():
    rng = np.random.default_rng(3)
    h = rng.normal(size=(120, 30))
    p = _random_probs(rng, 120, 8)
    g = GradientEmbeddings(h, p)
    anchors = GradientEmbeddings(rng.normal(size=(15, 30)), _random_probs(rng, 15, 8), rng.integers(0, 8, 15))
    dense, dense_anchors = DenseFeatures(g.dense()), DenseFeatures(anchors.dense())
    for kwargs_g, kwargs_d in [
        ({}, {}),
        ({"anchors": anchors}, {"anchors": dense_anchors}),
        ({"first": 17}, {"first": 17}),
    ]:
        a = k_center_greedy(g, 20, **kwargs_g)
        b = k_center_greedy(dense, 20, **kwargs_d)
        np.testing.assert_array_equal(a, b)
        assert len(set(a.tolist())) == 20


# ------------------------------------------------------------------ k-means++ seeding


def test_kmeans_pp_first_pick_is_max_norm_and_deterministic():
    rng = np.random.default_rng(4)
    h = rng.normal(size=(300, 64))
    p = _random_probs(rng, 300, 10)
    g = GradientEmbeddings(h, p)
    expected_first = int(np.argmax((g.dense() ** 2).sum(axis=1)))
    a = kmeans_pp_seeding(g, 40, np.random.default_rng(123))
    b = kmeans_pp_seeding(g, 40, np.random.default_rng(123))
    c = kmeans_pp_seeding(g, 40, np.random.default_rng(124))
    assert a[0] == expected_first == c[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(a) == 40 and len(np.unique(a)) == 40
    assert a.min() >= 0 and a.max() < 300


def test_kmeans_pp_samples_proportional_to_squared_distance():
    # First centre = index 1 (largest norm). D^2 from it: index 0 -> 1, index 2 -> 3.
    # D^2 sampling picks index 0 with probability 1/4 (D sampling would give 0.366).
    X = np.array([[9.0, 0.0], [10.0, 0.0], [10.0 - math.sqrt(3.0), 0.0]])
    pts = DenseFeatures(X)
    rng = np.random.default_rng(5)
    trials = 4000
    second = np.array([kmeans_pp_seeding(pts, 2, rng)[1] for _ in range(trials)])
    assert set(np.unique(second)) == {0, 2}
    freq = np.mean(second == 0)
    assert abs(freq - 0.25) < 0.03, freq


def test_kmeans_pp_zero_distance_fallback():
    # All points coincide: first = index 0 (max-norm tie -> lowest index), then sum D^2 == 0
    # and the rest is a uniform draw without replacement from the remaining points.
    pts = DenseFeatures(np.ones((6, 2)))
    got = kmeans_pp_seeding(pts, 4, np.random.default_rng(7))
    assert got[0] == 0
    expected_rest = np.random.default_rng(7).choice(np.arange(1, 6), size=3, replace=False)
    np.testing.assert_array_equal(got[1:], expected_rest)
    assert len(np.unique(got)) == 4
    # Two locations: after one centre in each, D^2 is 0 everywhere and the fallback fills.
    two = DenseFeatures(np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    for seed in range(5):
        got = kmeans_pp_seeding(two, 4, np.random.default_rng(seed))
        assert got[0] == 0 and got[1] in (2, 3, 4)
        assert len(np.unique(got)) == 4
    # A model certain on every sample: all gradient embeddings are 0.
    zero_grad = GradientEmbeddings(np.ones((5, 4)), np.tile([1.0, 0.0, 0.0], (5, 1)))
    got = kmeans_pp_seeding(zero_grad, 3, np.random.default_rng(9))
    assert got[0] == 0 and len(np.unique(got)) == 3


def test_kmeans_pp_budget_edges_and_rng_check():
    pts = DenseFeatures(POINTS_2D)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(kmeans_pp_seeding(pts, 6, rng), np.arange(6))
    np.testing.assert_array_equal(kmeans_pp_seeding(pts, 9, rng), np.arange(6))
    assert kmeans_pp_seeding(pts, 0, rng).shape == (0,)
    assert kmeans_pp_seeding(pts, 1, rng).tolist() == [3]
    with pytest.raises(ValueError, match="rng"):
        kmeans_pp_seeding(pts, 2, 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="budget"):
        kmeans_pp_seeding(pts, -2, rng)


@pytest.mark.parametrize("kernel", ["kcenter", "kmeanspp"])
@pytest.mark.parametrize("budget", [1, 7, 49, 50, 80])
def test_selection_contract(kernel, budget):
    """Shared contract: min(budget, n) unique in-range indices, deterministic under a seed."""
    rng = np.random.default_rng(10)
    pts: PointSet = GradientEmbeddings(rng.normal(size=(50, 6)), _random_probs(rng, 50, 4))

    def run(seed):
        if kernel == "kcenter":
            return k_center_greedy(pts, budget)
        return kmeans_pp_seeding(pts, budget, np.random.default_rng(seed))

    got = run(0)
    assert got.dtype.kind == "i"
    assert len(got) == min(budget, 50) == len(np.unique(got))
    assert got.min() >= 0 and got.max() < 50
    np.testing.assert_array_equal(got, run(0))


# -------------------------------------------------------------------------- top_k


def test_top_k_stable_ties():
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    np.testing.assert_array_equal(top_k(scores, 3), [1, 2, 4])
    np.testing.assert_array_equal(top_k(scores, 4), [1, 2, 4, 3])
    np.testing.assert_array_equal(top_k(scores, 10), [1, 2, 4, 3, 0])
    assert top_k(scores, 0).shape == (0,)
    np.testing.assert_array_equal(top_k(np.array([-np.inf, 0.0, np.inf]), 2), [2, 1])
    np.testing.assert_array_equal(top_k(np.array([0, 5, 5, 1], dtype=np.uint8), 2), [1, 2])


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.uint8])
def test_top_k_of_a_small_budget_equals_the_full_stable_sort(dtype):
    """The linear-time path (k < n / 4) picks the same indices in the same order as sorting everything."""
    rng = np.random.default_rng(0)
    for trial in range(40):
        n = int(rng.integers(8, 400))
        scores = rng.integers(0, 6, size=n).astype(dtype)  # many ties
        if dtype in (np.float64, np.float32) and trial % 3 == 0:
            scores[rng.integers(0, n, size=3)] = np.inf
            scores[rng.integers(0, n, size=3)] = -np.inf
        full = (n - 1 - np.argsort(scores[::-1], kind="stable")[::-1]).astype(np.intp)
        for k in {1, 2, n // 8, n // 4 - 1, n // 4, n - 1, n}:
            np.testing.assert_array_equal(top_k(scores, k), full[:k])


def test_top_k_rejects_nan_and_bad_args():
    with pytest.raises(ValueError, match="NaN.*index 2"):
        top_k(np.array([0.1, 0.5, np.nan, 0.3]), 2)
    with pytest.raises(ValueError, match="scores"):
        top_k(np.zeros((2, 2)), 1)
    with pytest.raises(ValueError, match="`k`"):
        top_k(np.zeros(3), -1)


# ----------------------------------------------------------------- class quotas


def _reference_quotas(budget, sizes, num_classes):
    """Scalar transcription of FairFAL's quota loop (round-robin over a fixed can-grow list)."""
    quota = {c: budget // num_classes for c in range(num_classes)}
    order = sorted(range(num_classes), key=lambda c: sizes[c], reverse=True)
    for c in order[: budget % num_classes]:
        quota[c] += 1
    leftover = 0
    for c in range(num_classes):
        if quota[c] > sizes[c]:
            leftover += quota[c] - sizes[c]
            quota[c] = sizes[c]
    can_grow = [c for c in order if sizes[c] > quota[c]]
    j = 0
    while leftover > 0 and can_grow:
        c = can_grow[j % len(can_grow)]
        if quota[c] < sizes[c]:
            quota[c] += 1
            leftover -= 1
        elif all(quota[k] >= sizes[k] for k in can_grow):
            break
        j += 1
    return [quota[c] for c in range(num_classes)]


def test_quotas_remainder_goes_to_largest_buckets():
    np.testing.assert_array_equal(balanced_class_quotas(10, [5, 20, 20], 3), [3, 4, 3])
    np.testing.assert_array_equal(balanced_class_quotas(2, [3, 7, 7, 1], 4), [0, 1, 1, 0])
    # equal buckets: ties go to the lower class index
    np.testing.assert_array_equal(balanced_class_quotas(4, [5, 5, 5], 3), [2, 1, 1])


def test_quotas_caps_and_round_robin_redistribution():
    # base 3 each -> caps [1, 3, 0, 3], leftover 5 -> round robin over classes 1, 3 (by size)
    # +1, +1, +1, +1 (class 3 now full at 5), +1 to class 1.
    got = balanced_class_quotas(12, [1, 10, 0, 5], 4)
    np.testing.assert_array_equal(got, [1, 6, 0, 5])
    assert got.sum() == 12


def test_quotas_empty_buckets_and_budget_above_pool():
    np.testing.assert_array_equal(balanced_class_quotas(9, [0, 4, 100], 3), [0, 4, 5])
    np.testing.assert_array_equal(balanced_class_quotas(50, [2, 3, 0], 3), [2, 3, 0])
    np.testing.assert_array_equal(balanced_class_quotas(5, [0, 0, 0], 3), [0, 0, 0])
    np.testing.assert_array_equal(balanced_class_quotas(0, [4, 4], 2), [0, 0])


def test_quotas_match_reference_loop_on_random_inputs():
    rng = np.random.default_rng(11)
    for _ in range(300):
        c = int(rng.integers(1, 12))
        sizes = rng.integers(0, 30, size=c) * (rng.random(c) < 0.8)
        budget = int(rng.integers(0, 200))
        got = balanced_class_quotas(budget, sizes, c)
        assert got.tolist() == _reference_quotas(budget, sizes.tolist(), c)
        assert got.sum() == min(budget, sizes.sum())
        assert (got <= sizes).all()


def test_quotas_validate():
    with pytest.raises(ValueError, match="bucket_sizes"):
        balanced_class_quotas(5, [1, 2], 3)
    with pytest.raises(ValueError, match="bucket_sizes"):
        balanced_class_quotas(5, [1, -2, 3], 3)
    with pytest.raises(ValueError, match="budget"):
        balanced_class_quotas(-1, [1, 2, 3], 3)
    with pytest.raises(ValueError, match="num_classes"):
        balanced_class_quotas(1, [], 0)


# ------------------------------------------------------------ largest remainder


def test_largest_remainder_known_values():
    np.testing.assert_array_equal(largest_remainder([1, 1, 1], 10), [4, 3, 3])
    np.testing.assert_array_equal(largest_remainder([0.5, 0.3, 0.2], 7), [4, 2, 1])  # 3.5 2.1 1.4
    np.testing.assert_array_equal(largest_remainder([0, 1, 3], 5), [0, 1, 4])  # 0 1.25 3.75
    # AHFAL paper rule: weight 1/n_c for seen classes, 1 for missing ones (n = [10, 0, 5, 20])
    # exact shares of 20: 1.48 14.81 2.96 0.74 -> floors 1 14 2 0, 3 units to fractions .96 .81 .74
    w = np.array([1 / 10, 1.0, 1 / 5, 1 / 20])
    np.testing.assert_array_equal(largest_remainder(w, 20), [1, 15, 3, 1])
    np.testing.assert_array_equal(largest_remainder([2.0, 0.0], 0), [0, 0])


def test_largest_remainder_sums_exactly():
    rng = np.random.default_rng(12)
    for _ in range(500):
        w = rng.random(int(rng.integers(1, 30))) ** 3 * (rng.random() * 1e6 + 1e-6)
        w[rng.random(w.size) < 0.2] = 0.0
        if w.sum() == 0:
            w[0] = 1.0
        total = int(rng.integers(0, 10_000))
        got = largest_remainder(w, total)
        assert got.sum() == total
        assert (got >= 0).all() and (got[w == 0] == 0).all()
        exact = w / w.sum() * total
        assert np.all(np.abs(got - exact) < 1.0 + 1e-9)


def test_largest_remainder_validates():
    with pytest.raises(ValueError, match="weights"):
        largest_remainder([1.0, -1.0], 3)
    with pytest.raises(ValueError, match="positive sum"):
        largest_remainder([0.0, 0.0], 3)
    with pytest.raises(ValueError, match="total"):
        largest_remainder([1.0], -3)
