"""Tests of fal_shared.data.partition (client partitions, initial labeled sets)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fal_shared.data.partition import (
    PARTITION_SCHEMES,
    dirichlet_balanced_counts,
    initial_labeled,
    logo_per_client_count,
    partition_indices,
)


def _labels(per_class: list[int]) -> np.ndarray:
    return np.concatenate([np.full(n, c, dtype=np.int64) for c, n in enumerate(per_class)])


def _count_matrix(parts: list[np.ndarray], y: np.ndarray, num_classes: int) -> np.ndarray:
    return np.stack([np.bincount(y[p], minlength=num_classes) for p in parts])


def _assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    allidx = np.concatenate(parts)
    assert allidx.dtype == np.int64
    assert allidx.size == n
    assert np.array_equal(np.sort(allidx), np.arange(n))
    for p in parts:
        assert np.all(np.diff(p) > 0)  # sorted, no duplicates


SCHEME_KW = {
    "iid": {},
    "dirichlet": {"alpha": 0.5, "min_size": 2},
    "dirichlet-balanced": {"alpha": 0.5},
}


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
@pytest.mark.parametrize("k", [1, 3, 7])
def test_disjoint_cover(scheme: str, k: int) -> None:
    y = _labels([30, 25, 20, 15, 11])  # N = 101, not divisible by 3 or 7
    parts = partition_indices(y, k, scheme=scheme, seed=3, **SCHEME_KW[scheme])
    assert len(parts) == k
    _assert_disjoint_cover(parts, y.size)


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_deterministic_and_seed_dependent(scheme: str) -> None:
    y = _labels([50] * 6)
    a = partition_indices(y, 5, scheme=scheme, seed=11, **SCHEME_KW[scheme])
    b = partition_indices(y, 5, scheme=scheme, seed=11, **SCHEME_KW[scheme])
    c = partition_indices(y, 5, scheme=scheme, seed=12, **SCHEME_KW[scheme])
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


def test_iid_sizes_and_class_counts() -> None:
    y = _labels([30, 30, 40])  # N = 100
    parts = partition_indices(y, 4, scheme="iid", seed=0)
    assert [p.size for p in parts] == [25, 25, 25, 25]
    m = _count_matrix(parts, y, 3)
    assert m.sum(axis=0).tolist() == [30, 30, 40]
    parts = partition_indices(y, 3, scheme="iid", seed=0)
    assert [p.size for p in parts] == [34, 33, 33]
    # K = N: one sample each
    parts = partition_indices(y, 100, scheme="iid", seed=0)
    assert all(p.size == 1 for p in parts)


@pytest.mark.parametrize("n,k", [(100, 4), (101, 7), (1000, 10), (57, 57)])
def test_dirichlet_balanced_equal_sizes(n: int, k: int) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=n)
    parts = partition_indices(y, k, scheme="dirichlet-balanced", alpha=0.1, seed=5)
    sizes = [p.size for p in parts]
    assert sizes == [n // k + (1 if i < n % k else 0) for i in range(k)]
    _assert_disjoint_cover(parts, n)


def test_dirichlet_balanced_hand_made_counts() -> None:
    # Near-uniform shares: each of 2 clients gets exactly half of each class.
    y = _labels([50, 50])
    parts = partition_indices(y, 2, scheme="dirichlet-balanced", alpha=1e6, seed=0)
    assert _count_matrix(parts, y, 2).tolist() == [[25, 25], [25, 25]]
    # One client: everything.
    parts = partition_indices(_labels([3, 4, 5]), 1, scheme="dirichlet-balanced", alpha=0.1, seed=0)
    assert parts[0].tolist() == list(range(12))


def test_dirichlet_balanced_counts_matrix() -> None:
    counts = np.array([600, 300, 90, 10])
    x = dirichlet_balanced_counts(counts, 6, alpha=0.1, rng=np.random.default_rng(1))
    assert x.shape == (6, 4)
    assert x.min() >= 0
    assert x.sum(axis=0).tolist() == counts.tolist()
    assert x.sum(axis=1).tolist() == [167, 167, 167, 167, 166, 166]


def test_dirichlet_hand_made_counts() -> None:
    y = _labels([40, 40, 40, 40, 40])
    parts = partition_indices(y, 4, scheme="dirichlet", alpha=0.3, seed=2, min_size=10)
    m = _count_matrix(parts, y, 5)
    assert m.sum(axis=0).tolist() == [40] * 5
    assert m.sum(axis=1).min() >= 10
    # the same with a larger min_size still holds it
    parts = partition_indices(y, 4, scheme="dirichlet", alpha=0.3, seed=2, min_size=30)
    assert min(p.size for p in parts) >= 30


def test_non_contiguous_label_values() -> None:
    y = np.array([7, 7, 3, 3, 3, -1, -1, 100] * 10)
    for scheme in PARTITION_SCHEMES:
        parts = partition_indices(y, 4, scheme=scheme, seed=0, **SCHEME_KW[scheme])
        _assert_disjoint_cover(parts, y.size)


def _mean_max_share(parts: list[np.ndarray], y: np.ndarray, c: int) -> float:
    m = _count_matrix(parts, y, c).astype(float)
    return float(np.mean(m.max(axis=1) / m.sum(axis=1)))


@pytest.mark.parametrize("scheme", ["dirichlet", "dirichlet-balanced"])
def test_alpha_controls_skew(scheme: str) -> None:
    y = _labels([300] * 10)
    near_iid = partition_indices(y, 10, scheme=scheme, alpha=100.0, seed=0)
    skewed = partition_indices(y, 10, scheme=scheme, alpha=0.1, seed=0)
    iid = partition_indices(y, 10, scheme="iid", seed=0)
    s_iid, s_100, s_01 = (_mean_max_share(p, y, 10) for p in (iid, near_iid, skewed))
    assert s_iid < 0.2 and s_100 < 0.2  # uniform would be 0.1
    assert s_01 > 0.45
    assert s_01 > 2.5 * s_100


def test_no_global_rng_use() -> None:
    np.random.seed(123)
    random.seed(123)
    np_state = np.random.get_state()[1].copy()
    py_state = random.getstate()
    y = _labels([20] * 5)
    for scheme in PARTITION_SCHEMES:
        partition_indices(y, 4, scheme=scheme, seed=0, **SCHEME_KW[scheme])
    initial_labeled(50, count=5, seed=0, partition_id=1)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert random.getstate() == py_state


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"scheme": "label-skew", "seed": 0}, r"partition scheme must be one of iid, dirichlet, dirichlet-balanced; got 'label-skew'"),
        ({"scheme": "dirichlet", "seed": 0}, r"needs the Dirichlet concentration alpha"),
        ({"scheme": "dirichlet-balanced", "alpha": None, "seed": 0}, r"needs the Dirichlet concentration alpha"),
        ({"scheme": "dirichlet", "alpha": 0.0, "seed": 0}, r"alpha .* must be a finite number > 0"),
        ({"scheme": "dirichlet-balanced", "alpha": -1, "seed": 0}, r"alpha .* must be a finite number > 0"),
        ({"scheme": "dirichlet", "alpha": float("nan"), "seed": 0}, r"alpha .* finite number > 0"),
        ({"scheme": "iid", "seed": -1}, r"seed must be a non-negative integer"),
        ({"scheme": "dirichlet", "alpha": 1.0, "seed": 0, "min_size": 30}, r"min_size=30 .* impossible"),
    ],
)
def test_errors(kwargs: dict, match: str) -> None:
    y = _labels([25, 25, 25, 25])
    with pytest.raises(ValueError, match=match):
        partition_indices(y, 4, **kwargs)


@pytest.mark.parametrize("k", [0, -2, 101, 2.5, True])
def test_num_partitions_errors(k) -> None:
    y = _labels([50, 50])
    with pytest.raises(ValueError, match=r"num_partitions must be an integer in \[1, 100\]"):
        partition_indices(y, k, scheme="iid", seed=0)


def test_label_errors() -> None:
    with pytest.raises(ValueError, match="labels must be integers"):
        partition_indices(np.array([0.5, 1.0]), 1, scheme="iid", seed=0)
    with pytest.raises(ValueError, match="1-D"):
        partition_indices(np.zeros((2, 2), dtype=int), 1, scheme="iid", seed=0)


def test_dirichlet_gives_up_with_clear_error() -> None:
    # 3 samples of one class over 3 clients with min_size 1: with a tiny alpha one client
    # takes the whole class in every draw, so the retry loop must stop with a clear error.
    y = np.zeros(3, dtype=np.int64)
    with pytest.raises(ValueError, match="no draw gave every one of the 3 clients"):
        partition_indices(y, 3, scheme="dirichlet", alpha=1e-6, seed=0, min_size=1)


def test_initial_labeled() -> None:
    a = initial_labeled(200, count=17, seed=4, partition_id=0)
    assert a.size == 17 and np.unique(a).size == 17 and a.min() >= 0 and a.max() < 200
    assert np.array_equal(a, initial_labeled(200, count=17, seed=4, partition_id=0))
    assert not np.array_equal(a, initial_labeled(200, count=17, seed=4, partition_id=1))
    assert not np.array_equal(a, initial_labeled(200, count=17, seed=5, partition_id=0))
    assert initial_labeled(250, fraction=0.01, seed=0, partition_id=0).size == 2
    with pytest.raises(ValueError, match="exactly one of fraction or count"):
        initial_labeled(10, seed=0, partition_id=0)
    with pytest.raises(ValueError, match="exceeds the partition size"):
        initial_labeled(10, count=11, seed=0, partition_id=0)
    with pytest.raises(ValueError, match=r"fraction must lie in \[0, 1\]"):
        initial_labeled(10, fraction=1.5, seed=0, partition_id=0)


def test_logo_per_client_count() -> None:
    # spec 2.1: per-client budgets 102 / 85 / 79 for FMNIST-LT, CIFAR-10-LT, CIFAR-100-LT
    assert logo_per_client_count(20428, 0.05, 10) == 102
    assert logo_per_client_count(17023, 0.05, 10) == 85
    assert logo_per_client_count(15907, 0.05, 10) == 79
    assert logo_per_client_count(60000, 0.05, 10) == 300
