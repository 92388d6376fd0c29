"""Reusable selection kernels for the query strategies (no Flower imports).

Plain functions over numpy arrays and :class:`~query.distances.PointSet` objects;
the strategies (FairFAL, LoGo, BADGE, Core-Set, Noise Stability, AHFAL, ...)
compose them. Every kernel is vectorised over samples: the only Python loops run
over picks (``budget`` iterations), anchor blocks or classes.

Contents
--------
* :func:`entropy`: Shannon entropy of probability rows (optionally / log C).
* :class:`DenseFeatures`, :class:`GradientEmbeddings`: point sets with
  squared-distance queries (re-exported from :mod:`query.distances`).
* :func:`k_center_greedy`: farthest-first traversal (Core-Set, FairFAL stage 2,
  Noise Stability).
* :func:`kmeans_pp_seeding`: BADGE's k-means++ seeding.
* :func:`top_k`: stable, NaN-rejecting top-k.
* :func:`balanced_class_quotas`: FairFAL's per-class quotas (spec 2.2 step 10).
* :func:`largest_remainder`: integer apportionment (AHFAL class budgets).
"""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import ArrayLike, NDArray

from query.distances import DEFAULT_MAX_BLOCK_ELEMS, DenseFeatures, GradientEmbeddings, PointSet

__all__ = [
    "DenseFeatures",
    "GradientEmbeddings",
    "PointSet",
    "balanced_class_quotas",
    "entropy",
    "k_center_greedy",
    "kmeans_pp_seeding",
    "largest_remainder",
    "top_k",
]


def _check_count(value: object, name: str) -> int:
    """Return ``value`` as a non-negative Python int or raise a ValueError naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}.")
    if value < 0:
        raise ValueError(f"`{name}` must be a non-negative integer, got {value}.")
    return int(value)


# --------------------------------------------------------------------------- scores


def entropy(
    probs: ArrayLike, *, normalized: bool = False, eps: float = 1e-12
) -> NDArray[np.floating]:
    """Shannon entropy (natural log) of each row of a probability matrix.

    ``H = -sum_c p_c log(p_c + eps)``; the ``eps`` makes ``0 log 0 = 0`` without a
    warning and matches the reference code (FairFAL step 7, ``1e-12``).

    Parameters
    ----------
    probs
        Probabilities, shape ``(n, C)``; rows should sum to 1.
    normalized
        Divide by ``log C`` so that the result lies in ``[0, 1]`` (FairFAL's
        ``H / log C``). Requires ``C >= 2``.
    eps
        Added inside the logarithm; must be >= 0.

    Returns
    -------
    numpy.ndarray
        Shape ``(n,)``, float32 for float32 input, else float64.
    """
    p = np.asarray(probs)
    if p.ndim != 2:
        raise ValueError(f"`probs` must be a 2-D array (n, C), got shape {p.shape}.")
    if p.dtype not in (np.float32, np.float64):
        p = p.astype(np.float64)
    if not eps >= 0:
        raise ValueError(f"`eps` must be >= 0, got {eps}.")
    num_classes = p.shape[1]
    h = -np.einsum("ij,ij->i", p, np.log(p + p.dtype.type(eps)))
    if normalized:
        if num_classes < 2:
            raise ValueError(
                f"`normalized=True` needs at least 2 classes (log C > 0); `probs` has {num_classes}."
            )
        h /= p.dtype.type(np.log(num_classes))
    return h


def top_k(scores: ArrayLike, k: int) -> NDArray[np.intp]:
    """Indices of the ``k`` largest scores, highest first; ties go to the lower index.

    Parameters
    ----------
    scores
        1-D scores; NaN is rejected (a NaN score would otherwise sort to an
        arbitrary place and silently corrupt a selection). ``+-inf`` are allowed.
    k
        Number of indices; ``k >= len(scores)`` returns a full ranking.

    Returns
    -------
    numpy.ndarray
        ``min(k, n)`` distinct indices.

    Raises
    ------
    ValueError
        If ``scores`` is not 1-D, contains NaN, or ``k`` is negative.
    """
    s = np.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"`scores` must be 1-D, got shape {s.shape}.")
    k = _check_count(k, "k")
    if np.issubdtype(s.dtype, np.inexact) and np.isnan(s).any():
        bad = np.flatnonzero(np.isnan(s))
        raise ValueError(
            f"`scores` contains {bad.size} NaN value(s) (first at index {bad[0]}); "
            "NaN scores must not reach a selection."
        )
    n = s.shape[0]
    if 0 < k < n // 4:
        # Linear time for a budget much smaller than the pool (a 1M-sample pool, a budget of a few
        # thousand): the k-th largest value by introselect, then a sort of only the candidates. The
        # same indices in the same order as the full sort below: everything above the k-th largest
        # value, and of the values equal to it the lowest indices.
        kth = np.partition(s, n - k)[n - k]
        above = np.flatnonzero(s > kth)
        cand = np.sort(np.concatenate([above, np.flatnonzero(s == kth)[: k - len(above)]]))
        return cand[_descending_stable(s[cand])].astype(np.intp)
    return _descending_stable(s)[:k].astype(np.intp)


def _descending_stable(s: NDArray) -> NDArray[np.intp]:
    """Positions of ``s`` by descending value, equal values by increasing position.

    Without negating (negation breaks unsigned ints): a stable ascending sort of
    the reversed array, read backwards.
    """
    order = np.argsort(s[::-1], kind="stable")[::-1]
    return len(s) - 1 - order


# ---------------------------------------------------------------- diversity kernels


def k_center_greedy(
    points: PointSet,
    budget: int,
    *,
    anchors: PointSet | None = None,
    first: int | None = None,
    max_block_elems: int = DEFAULT_MAX_BLOCK_ELEMS,
) -> NDArray[np.intp]:
    """Greedy k-center (farthest-first traversal) with squared Euclidean distance.

    Keeps one vector ``min_dist`` (squared distance of every point to its nearest
    centre) and updates it with one distance query per pick, so memory is
    ``O(n)`` and time ``O(budget * n * cost_of_one_distance)``; no ``n x n``
    matrix is formed. Squared distances give the same picks as distances.

    Initial centres, in this order of precedence:

    * ``anchors`` (e.g. the labelled set, Core-Set; FairFAL's same-class
      anchors): ``min_dist`` = squared distance to the nearest anchor, computed
      in blocks (see :meth:`PointSet.min_sq_dists_to`);
    * otherwise, if ``first`` is None, the **origin**: ``min_dist = ||x||^2``,
      so the first pick is the point of largest norm (Noise Stability);
    * otherwise nothing, and ``first`` is the first pick (FairFAL without
      anchors: ``first = argmax`` uncertainty among the candidates).

    ``first`` may be combined with ``anchors``: it is then picked first and the
    traversal continues from the anchors plus ``first``.

    Parameters
    ----------
    points
        The candidates.
    budget
        Number of picks.
    anchors
        Optional point set of the same type; an empty one is treated as None.
    first
        Optional index of a forced first pick.
    max_block_elems
        Bound on the temporary ``(n, m)`` block used for the anchors.

    Returns
    -------
    numpy.ndarray
        Indices in pick order. ``budget >= n`` returns ``arange(n)`` (all points,
        in index order, without computing any distance); ``budget == 0`` returns
        an empty array. Ties are broken by the lowest index (``np.argmax``);
        already-picked points have ``min_dist = -inf`` and are never re-picked,
        even when duplicates make every remaining distance 0.
    """
    n = len(points)
    budget = _check_count(budget, "budget")
    if first is not None:
        first = _check_count(first, "first")
        if first >= n:
            raise ValueError(f"`first` must be < len(points) = {n}, got {first}.")
    if budget >= n:
        return np.arange(n, dtype=np.intp)
    if budget == 0:
        return np.empty(0, dtype=np.intp)

    if anchors is not None and len(anchors) > 0:
        min_dist = points.min_sq_dists_to(anchors, max_block_elems=max_block_elems)
    elif first is None:
        min_dist = points.sq_norms()
    else:
        min_dist = np.full(n, np.inf, dtype=points.dtype)

    picks = np.empty(budget, dtype=np.intp)
    for t in range(budget):
        j = first if (t == 0 and first is not None) else int(np.argmax(min_dist))
        picks[t] = j
        if t + 1 < budget:  # the last update would be wasted work
            np.minimum(min_dist, points.sq_dists_to(points, j), out=min_dist)
        min_dist[j] = -np.inf
    return picks


def kmeans_pp_seeding(
    points: PointSet, budget: int, rng: np.random.Generator
) -> NDArray[np.intp]:
    """BADGE's k-means++ seeding: max-norm first centre, then D^2 sampling.

    Hand-written rather than ``sklearn.cluster.kmeans_plusplus`` because that
    function needs a dense ``X`` (so no factorised :class:`GradientEmbeddings`,
    whose dense form is ``n x C*d``), draws its first centre uniformly at random
    instead of BADGE's largest-gradient-norm point, and adds greedy local trials
    that BADGE does not use.

    1. First centre: ``argmax ||g||^2`` (ties: lowest index), deterministic.
    2. Each next centre is drawn with probability ``D(x)^2 / sum D^2``, where
       ``D(x)`` is the distance to the nearest chosen centre; chosen points have
       weight 0 and are never re-picked.
    3. If ``sum D^2 == 0`` (every remaining point coincides with a chosen centre,
       e.g. duplicates, or all embeddings are 0 because the model is certain),
       the remaining picks are drawn uniformly without replacement from the
       points not yet chosen. (LoGo's copy of BADGE drops into ``pdb`` here.)

    Parameters
    ----------
    points
        The candidates (typically :class:`GradientEmbeddings`).
    budget
        Number of centres.
    rng
        Seeded ``numpy.random.Generator``; the result is a deterministic
        function of ``points``, ``budget`` and the generator's state.

    Returns
    -------
    numpy.ndarray
        Distinct indices in pick order; ``budget >= n`` returns ``arange(n)``
        and ``budget == 0`` an empty array (``rng`` untouched in both cases).
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"`rng` must be a numpy.random.Generator (e.g. np.random.default_rng(seed)), "
            f"got {type(rng).__name__}."
        )
    n = len(points)
    budget = _check_count(budget, "budget")
    if budget >= n:
        return np.arange(n, dtype=np.intp)
    if budget == 0:
        return np.empty(0, dtype=np.intp)

    picks = np.empty(budget, dtype=np.intp)
    chosen = np.zeros(n, dtype=bool)
    j = int(np.argmax(points.sq_norms()))
    # float64 weights: the cumulative sum over n terms must not lose small D^2.
    d2 = np.empty(n, dtype=np.float64)
    d2[:] = points.sq_dists_to(points, j)
    for t in range(budget):
        picks[t] = j
        chosen[j] = True
        d2[j] = 0.0
        if t + 1 == budget:
            break
        if t > 0:
            # Chosen points already hold 0 and distances are clipped at 0, so they stay 0.
            np.minimum(d2, points.sq_dists_to(points, j), out=d2)
            d2[j] = 0.0  # round-off could leave a tiny positive self-distance
        cum = np.cumsum(d2)
        total = cum[-1]
        if not total > 0.0:
            # Degenerate case (see docstring): uniform fill without replacement.
            remaining = np.flatnonzero(~chosen)
            picks[t + 1 :] = rng.choice(remaining, size=budget - t - 1, replace=False)
            return picks
        u = rng.random() * total
        j = int(np.searchsorted(cum, u, side="right"))
        # side="right" lands on an index with cum[j] > u >= cum[j-1], i.e. d2[j] > 0;
        # only u rounding up to `total` can overshoot, then take the last positive one.
        if j >= n:
            j = int(np.flatnonzero(d2)[-1])
    return picks


# ------------------------------------------------------------------ budget splitting


def balanced_class_quotas(
    budget: int, bucket_sizes: ArrayLike, num_classes: int
) -> NDArray[np.int64]:
    """FairFAL's per-class quotas (spec 2.2 step 10, ``balanced_sample_by_pred_kmeans_maxscore``).

    1. ``q_c = budget // C`` for **all** ``C`` classes (also those with empty buckets);
    2. the remainder ``budget % C`` gives +1 to the classes with the largest
       buckets (order: bucket size descending, ties by lower class index);
    3. cap ``q_c <= |B_c|``;
    4. the capped-off leftover is handed out +1 at a time, round-robin in the same
       order, over the classes that still have spare capacity, until none is left
       or every bucket is exhausted.

    The total is ``min(budget, sum |B_c|)``.

    Parameters
    ----------
    budget
        Client budget ``b_i``.
    bucket_sizes
        ``|B_c|`` for ``c = 0..C-1`` (number of pool samples pseudo-labelled ``c``).
    num_classes
        ``C``; must equal ``len(bucket_sizes)``.

    Returns
    -------
    numpy.ndarray
        int64 quotas, shape ``(C,)``.
    """
    budget = _check_count(budget, "budget")
    num_classes = _check_count(num_classes, "num_classes")
    if num_classes == 0:
        raise ValueError("`num_classes` must be >= 1.")
    sizes = np.asarray(bucket_sizes)
    if sizes.shape != (num_classes,):
        raise ValueError(
            f"`bucket_sizes` must have shape ({num_classes},) (one entry per class), got {sizes.shape}."
        )
    if sizes.size and not np.issubdtype(sizes.dtype, np.integer):
        if not np.all(np.mod(sizes, 1) == 0):
            raise ValueError("`bucket_sizes` must contain integers.")
    sizes = sizes.astype(np.int64)
    if (sizes < 0).any():
        raise ValueError("`bucket_sizes` must be non-negative.")

    order = np.argsort(-sizes, kind="stable")  # largest bucket first, ties by class index
    quotas = np.full(num_classes, budget // num_classes, dtype=np.int64)
    quotas[order[: budget % num_classes]] += 1
    np.minimum(quotas, sizes, out=quotas)

    leftover = min(budget, int(sizes.sum())) - int(quotas.sum())
    # Round-robin +1 over classes with spare capacity, one full pass at a time
    # (a pass visits every class that can still grow once, in `order`).
    while leftover > 0:
        growable = order[quotas[order] < sizes[order]]
        step = growable[:leftover]
        quotas[step] += 1
        leftover -= step.size
    return quotas


def largest_remainder(weights: ArrayLike, total: int) -> NDArray[np.int64]:
    """Hamilton / largest-remainder apportionment of ``total`` proportionally to ``weights``.

    Each entry gets ``floor(total * w_c / sum w)``; the units still missing go,
    one each, to the largest fractional parts (ties by lower index). The result
    sums to exactly ``total``. Used for AHFAL's class budgets (``b_c`` proportional
    to ``1 / n_{i,c}``, or 1 for missing classes).

    Parameters
    ----------
    weights
        Non-negative finite 1-D weights with a positive sum (unless ``total == 0``).
    total
        Non-negative integer to split.

    Returns
    -------
    numpy.ndarray
        int64, same length as ``weights``. Zero weights get 0.
    """
    total = _check_count(total, "total")
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"`weights` must be a non-empty 1-D array, got shape {w.shape}.")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("`weights` must be finite and non-negative.")
    s = w.sum()
    if total == 0:
        return np.zeros(w.size, dtype=np.int64)
    if not s > 0:
        raise ValueError(f"`weights` must have a positive sum to apportion total={total}.")
    exact = w * (total / s)
    base = np.floor(exact).astype(np.int64)
    frac = exact - base
    missing = total - int(base.sum())
    if missing > 0:
        # Only entries with positive weight may receive a unit.
        order = np.argsort(-np.where(w > 0, frac, -1.0), kind="stable")
        base[order[:missing]] += 1
    elif missing < 0:
        # Only possible through float round-off (exact quotas sum to `total`):
        # take units back from the smallest fractional parts among positive entries.
        order = np.argsort(np.where(base > 0, frac, np.inf), kind="stable")
        base[order[:-missing]] -= 1
    return base
