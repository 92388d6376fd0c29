"""Splitting a training set over federated clients.

:func:`partition_indices` gives each of ``K`` clients a disjoint set of sample
indices, deterministically from ``(labels, seed, num_partitions, scheme, alpha,
min_size)``. Every server and client process computes the same partition from
the run config, so no index lists have to be shipped. Schemes:

``iid``
    A seeded permutation cut into ``K`` contiguous pieces; sizes ``N // K``, the
    first ``N % K`` clients get one more.
``dirichlet``
    Label-Dirichlet of Hsu et al. 2019 as implemented in NIID-Bench
    (``partition_data``, ``noniid-labeldir``) and Yurochkin et al. 2019; client
    sizes differ. See :func:`dirichlet_partition`.
``dirichlet-balanced``
    Equal-size label-Dirichlet clients, LoGo/FairFAL ``dir_balance`` (spec
    section 1). See :func:`dirichlet_balanced_partition`.

The index arrays returned are sorted (a client's local index ``i`` is the
``i``-th smallest global index it holds), int64, and together cover every index
exactly once. All randomness comes from :func:`fal_shared.data._common.make_rng`
(stream ``"partition/<scheme>"``); no global RNG is read or changed (unlike
FairFAL's ``dir_balance``, which seeds with 0 and calls ``torch.manual_seed``).
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np

from ._common import check_seed, make_rng

__all__ = [
    "PARTITION_SCHEMES",
    "dirichlet_balanced_counts",
    "dirichlet_balanced_partition",
    "dirichlet_partition",
    "iid_partition",
    "initial_labeled",
    "logo_per_client_count",
    "partition_indices",
]

PARTITION_SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "dirichlet-balanced")
DEFAULT_MIN_SIZE = 10  # NIID-Bench's min_require_size
_MAX_DIRICHLET_ATTEMPTS = 1000
_SINKHORN_ITERATIONS = 5  # FairFAL dir_balance


def partition_indices(
    labels: np.ndarray | Sequence[int],
    num_partitions: int,
    *,
    scheme: str,
    alpha: float | None = None,
    seed: int,
    min_size: int = DEFAULT_MIN_SIZE,
) -> list[np.ndarray]:
    """Split sample indices over ``num_partitions`` clients.

    Parameters
    ----------
    labels
        Integer class label per sample, shape ``(N,)``. Any integer values are
        allowed; classes are the sorted distinct values.
    num_partitions
        Number of clients ``K``, ``1 <= K <= N``.
    scheme
        ``"iid"``, ``"dirichlet"`` or ``"dirichlet-balanced"`` (see the module
        docstring).
    alpha
        Dirichlet concentration (> 0), required by the two Dirichlet schemes and
        ignored by ``iid``. Small = skewed (0.1: a few classes per client), large
        = close to IID (100).
    seed
        Run seed (non-negative integer).
    min_size
        ``dirichlet`` only: redraw until every client has at least this many
        samples (NIID-Bench default 10). Must satisfy ``min_size * K <= N``.

    Returns
    -------
    list of numpy.ndarray
        ``K`` sorted int64 arrays of global indices, disjoint, covering ``0..N-1``.

    Raises
    ------
    ValueError
        Unknown scheme, ``alpha`` missing or ``<= 0`` for a Dirichlet scheme,
        ``num_partitions`` out of ``[1, N]``, bad labels / seed / min_size, or no
        ``dirichlet`` draw reaching ``min_size`` within 1000 attempts.
    """
    y = _check_labels(labels)
    n = int(y.size)
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(
            f"partition scheme must be one of {', '.join(PARTITION_SCHEMES)}; got {scheme!r}"
        )
    k = _check_num_partitions(num_partitions, n)
    check_seed(seed)
    if scheme == "iid":
        return iid_partition(n, k, seed=seed)
    a = _check_alpha(alpha, scheme)
    if scheme == "dirichlet":
        return dirichlet_partition(y, k, alpha=a, seed=seed, min_size=min_size)
    return dirichlet_balanced_partition(y, k, alpha=a, seed=seed)


# --------------------------------------------------------------------------------------
# iid
# --------------------------------------------------------------------------------------
def iid_partition(num_samples: int, num_partitions: int, *, seed: int) -> list[np.ndarray]:
    """Shuffled equal split: ``N // K`` each, the first ``N % K`` clients get one more."""
    n = int(num_samples)
    k = _check_num_partitions(num_partitions, n)
    perm = make_rng(seed, "partition/iid").permutation(n)
    return [np.sort(part).astype(np.int64) for part in np.array_split(perm, k)]


# --------------------------------------------------------------------------------------
# dirichlet (NIID-Bench / Hsu et al. 2019)
# --------------------------------------------------------------------------------------
def dirichlet_partition(
    labels: np.ndarray | Sequence[int],
    num_partitions: int,
    *,
    alpha: float,
    seed: int,
    min_size: int = DEFAULT_MIN_SIZE,
) -> list[np.ndarray]:
    """Label-Dirichlet partition with unequal client sizes (NIID-Bench ``noniid-labeldir``).

    One attempt, with ``N`` samples and ``K`` clients:

    1. Start with empty clients. For each class ``c`` (sorted label values):
       shuffle the indices of class ``c``; draw ``p ~ Dir(alpha * 1_K)``; set
       ``p_i = 0`` for every client that already holds ``>= N / K`` samples;
       renormalise ``p`` (uniform over the clients below ``N / K`` if all shares
       are 0); cut the shuffled indices at ``floor(cumsum(p)[:-1] * n_c)`` and
       append piece ``i`` to client ``i``.
    2. If the smallest client has fewer than ``min_size`` samples, discard the
       attempt and repeat step 1 (the Generator continues, so the next attempt
       differs); give up with ``ValueError`` after 1000 attempts.

    The result is deterministic in ``(labels, K, alpha, seed, min_size)``; the
    random stream is ``make_rng(seed, "partition/dirichlet")``.
    """
    y = _check_labels(labels)
    n = int(y.size)
    k = _check_num_partitions(num_partitions, n)
    a = _check_alpha(alpha, "dirichlet")
    if isinstance(min_size, bool) or not isinstance(min_size, numbers.Integral) or min_size < 0:
        raise ValueError(f"min_size must be a non-negative integer, got {min_size!r}")
    if min_size * k > n:
        raise ValueError(
            f"min_size={min_size} per client is impossible with {n} samples over "
            f"{k} partitions (needs min_size * num_partitions <= {n})"
        )
    rng = make_rng(seed, "partition/dirichlet")
    classes = np.unique(y)
    class_idx = [np.flatnonzero(y == c) for c in classes]
    cap = n / k
    for _ in range(_MAX_DIRICHLET_ATTEMPTS):
        parts: list[list[np.ndarray]] = [[] for _ in range(k)]
        sizes = np.zeros(k, dtype=np.int64)
        for idx_c in class_idx:
            idx_c = rng.permutation(idx_c)
            p = rng.dirichlet(np.full(k, a))
            p = np.where(sizes < cap, p, 0.0)
            total = p.sum()
            if not np.isfinite(total) or total <= 0:
                p = (sizes < cap).astype(np.float64)
                if p.sum() == 0:  # cannot happen (sum of sizes < N), kept as a guard
                    p = np.ones(k)
                total = p.sum()
            p = p / total
            cuts = (np.cumsum(p) * idx_c.size).astype(np.int64)[:-1]
            for i, piece in enumerate(np.split(idx_c, cuts)):
                if piece.size:
                    parts[i].append(piece)
                    sizes[i] += piece.size
        if sizes.min() >= min_size:
            return [
                np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, dtype=np.int64)
                for p in parts
            ]
    raise ValueError(
        f"dirichlet partition: no draw gave every one of the {k} clients at least "
        f"min_size={min_size} samples in {_MAX_DIRICHLET_ATTEMPTS} attempts (alpha={a}, "
        f"{n} samples); raise alpha, lower min_size or use fewer partitions"
    )


# --------------------------------------------------------------------------------------
# dirichlet-balanced (LoGo / FairFAL dir_balance)
# --------------------------------------------------------------------------------------
def dirichlet_balanced_counts(
    class_counts: np.ndarray | Sequence[int],
    num_partitions: int,
    *,
    alpha: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The ``K x C`` count matrix of the equal-size Dirichlet partition.

    Steps (FairFAL ``util/data_simulator.py:dir_balance``, with a seeded numpy
    Generator in place of torch's global RNG):

    1. ``P``: ``K`` rows drawn from ``Dir(alpha * 1_C)``; then 5 times: divide
       each row by its sum (+1e-12), then each column by its sum (+1e-12).
    2. Per class ``j`` with ``n_j`` samples: shares ``P[:, j] / sum``; client ``i``
       gets ``floor(share_i * n_j)``, and the ``n_j - sum(floors)`` remaining
       samples go one each to the clients with the largest fractional parts
       (ties: lower client index first).
    3. Quotas ``q_i = N // K`` plus one for the first ``N % K`` clients. While a
       client is over quota, go through the classes in order and move samples of
       class ``j`` from over-quota clients (largest movable amount first) to
       under-quota clients (largest deficit first), never taking a client below
       its quota. Row sums then equal ``q``, column sums ``n_j``.

    Returns
    -------
    numpy.ndarray
        int64 matrix ``x`` with ``x[i, j]`` samples of class ``j`` for client ``i``.
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    k, c = int(num_partitions), int(counts.size)
    n = int(counts.sum())
    p = rng.dirichlet(np.full(c, float(alpha)), size=k)  # (K, C)
    for _ in range(_SINKHORN_ITERATIONS):
        p = p / (p.sum(axis=1, keepdims=True) + 1e-12)
        p = p / (p.sum(axis=0, keepdims=True) + 1e-12)

    x = np.zeros((k, c), dtype=np.int64)
    for j in range(c):
        n_j = int(counts[j])
        if n_j == 0:
            continue
        col = np.clip(p[:, j], 0.0, None)
        if not np.isfinite(col).all() or col.sum() <= 0:
            col = np.full(k, 1.0 / k)
        col = col / col.sum()
        real = col * n_j
        base = np.floor(real).astype(np.int64)
        remain = n_j - int(base.sum())
        if remain > 0:
            order = np.argsort(-(real - base), kind="stable")
            base[order[:remain]] += 1
        elif remain < 0:  # float round-off; take from the largest entries
            order = np.argsort(-base, kind="stable")
            base[order[:-remain]] -= 1
        x[:, j] = base

    quota = np.full(k, n // k, dtype=np.int64)
    quota[: n % k] += 1
    surplus = x.sum(axis=1) - quota  # > 0: too many, < 0: too few
    while np.any(surplus != 0):
        moved = 0
        for j in range(c):
            receivers = [int(i) for i in np.argsort(surplus, kind="stable") if surplus[i] < 0]
            if not receivers:
                break
            for d in receivers:
                donors = [i for i in range(k) if surplus[i] > 0 and x[i, j] > 0]
                donors.sort(key=lambda s: -min(x[s, j], surplus[s]))
                for s in donors:
                    if surplus[d] >= 0:
                        break
                    t = int(min(x[s, j], surplus[s], -surplus[d]))
                    if t <= 0:
                        continue
                    x[s, j] -= t
                    x[d, j] += t
                    surplus[s] -= t
                    surplus[d] += t
                    moved += t
        if moved == 0:  # impossible: an over-quota client always holds some class
            raise RuntimeError("dirichlet-balanced: rebalancing made no progress")
    assert np.array_equal(x.sum(axis=0), counts) and np.array_equal(x.sum(axis=1), quota)
    return x


def dirichlet_balanced_partition(
    labels: np.ndarray | Sequence[int],
    num_partitions: int,
    *,
    alpha: float,
    seed: int,
) -> list[np.ndarray]:
    """Equal-size label-Dirichlet partition (LoGo/FairFAL ``dir_balance``).

    The count matrix comes from :func:`dirichlet_balanced_counts` (classes are
    the sorted label values); then, per class, its indices are shuffled and
    client ``i`` takes the next ``x[i, j]`` of them. Client ``i`` ends with
    exactly ``N // K`` samples, plus one for ``i < N % K``. Random stream:
    ``make_rng(seed, "partition/dirichlet-balanced")`` (the run seed, not
    FairFAL's fixed seed 0).
    """
    y = _check_labels(labels)
    n = int(y.size)
    k = _check_num_partitions(num_partitions, n)
    a = _check_alpha(alpha, "dirichlet-balanced")
    rng = make_rng(seed, "partition/dirichlet-balanced")
    classes = np.unique(y)
    class_idx = [np.flatnonzero(y == cl) for cl in classes]
    counts = np.array([idx.size for idx in class_idx], dtype=np.int64)
    x = dirichlet_balanced_counts(counts, k, alpha=a, rng=rng)
    parts: list[list[np.ndarray]] = [[] for _ in range(k)]
    for j, idx in enumerate(class_idx):
        idx = rng.permutation(idx)
        start = 0
        for i in range(k):
            take = int(x[i, j])
            if take:
                parts[i].append(idx[start:start + take])
                start += take
    return [
        np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, dtype=np.int64)
        for p in parts
    ]


# --------------------------------------------------------------------------------------
# Initial labeled sets and LoGo's budget formula
# --------------------------------------------------------------------------------------
def initial_labeled(
    partition_size: int,
    *,
    seed: int,
    partition_id: int,
    fraction: float | None = None,
    count: int | None = None,
) -> np.ndarray:
    """Local indices of a client's initial labeled set (uniform, without replacement).

    Give exactly one of ``fraction`` (``floor(fraction * partition_size)``
    samples, e.g. FALE's 1% per client) or ``count`` (e.g.
    :func:`logo_per_client_count` for LoGo/FairFAL's equal count per client).
    The draw uses ``make_rng(seed, "initial-labeled", partition_id)``, so clients
    draw independently and reproducibly.

    Returns
    -------
    numpy.ndarray
        Sorted int64 local indices in ``[0, partition_size)``.
    """
    if isinstance(partition_size, bool) or not isinstance(partition_size, numbers.Integral) \
            or partition_size < 0:
        raise ValueError(f"partition_size must be a non-negative integer, got {partition_size!r}")
    if (fraction is None) == (count is None):
        raise ValueError("initial_labeled: give exactly one of fraction or count")
    if fraction is not None:
        f = float(fraction)
        if not (0.0 <= f <= 1.0):
            raise ValueError(f"initial labeled fraction must lie in [0, 1], got {fraction!r}")
        m = int(math.floor(f * partition_size))
    else:
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
            raise ValueError(f"initial labeled count must be a non-negative integer, got {count!r}")
        if count > partition_size:
            raise ValueError(
                f"initial labeled count {count} exceeds the partition size {partition_size}"
            )
        m = int(count)
    rng = make_rng(seed, "initial-labeled", check_seed(partition_id, "partition_id"))
    return np.sort(rng.choice(partition_size, size=m, replace=False)).astype(np.int64)


def logo_per_client_count(num_train: int, ratio: float, num_clients: int) -> int:
    """LoGo/FairFAL per-client count: ``int(round(N, -2) * ratio / K)``.

    Used for both the initial labeled set (``ratio = query_ratio``) and the
    per-query budget (LOGO ``main.py:get_dataset``: ``n_query =
    round(total_data, -2) * query_ratio``, budget ``int(n_query / num_users)``).
    Python's ``round`` and float arithmetic are kept as in the reference, e.g.
    FMNIST-LT 20,428 -> 102, CIFAR-10-LT 17,023 -> 85, CIFAR-100-LT 15,907 -> 79
    with ``ratio = 0.05, K = 10``.
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, numbers.Integral) \
            or num_clients < 1:
        raise ValueError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    return int(round(int(num_train), -2) * float(ratio) / num_clients)


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------
def _check_labels(labels: object) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


def _check_num_partitions(num_partitions: object, n: int) -> int:
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, numbers.Integral) \
            or not (1 <= num_partitions <= n):
        raise ValueError(
            f"num_partitions must be an integer in [1, {n}] (1 to the number of samples), "
            f"got {num_partitions!r}"
        )
    return int(num_partitions)


def _check_alpha(alpha: object, scheme: str) -> float:
    if alpha is None:
        raise ValueError(
            f"partition scheme {scheme!r} needs the Dirichlet concentration alpha "
            f"(a number > 0, e.g. 0.1 for strong skew, 100 for near-IID)"
        )
    try:
        a = float(alpha)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        a = float("nan")
    if not math.isfinite(a) or a <= 0:
        raise ValueError(
            f"Dirichlet alpha for partition scheme {scheme!r} must be a finite number > 0, "
            f"got {alpha!r}"
        )
    return a
