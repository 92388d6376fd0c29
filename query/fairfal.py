"""FairFAL's client-side statistics and selection (spec section 2; no Flower imports).

FairFAL (Zong & Huang, CVPR 2026, arXiv 2603.10341; authors' code
``chenchenzong/FairFAL@ca14e07``) selects, per client and query:

1. **Statistics** (``query_model_selection``): the class-balanced mean predictions
   ``p_g`` (global model) and ``p_l`` (local-only model) on the client's labeled set,
   the local-global divergence ``d_i`` and the global-imbalance indicator ``g_i``
   (:func:`client_statistics`). Only ``g_i`` is sent; the server averages it into
   ``g-bar``.
2. **Query models** (:func:`choose_query_models`): the global model scores uncertainty
   when ``1 - (1-t)(d_i + g-bar) + (1-2t) d_i g-bar > ratio-threshold`` and gives the
   gradient-embedding probabilities when ``g-bar < g-bar-threshold``; otherwise the
   local-only model does.
3. **Prototype pseudo-labels** (:func:`class_prototypes`, :func:`prototype_pseudo_labels`):
   cosine similarity of the global model's L2-normalised features to the per-class means of
   the normalised features of the client's own labeled samples; classes the client has
   never labeled cannot be pseudo-labels.
4. **Two-stage balanced sampling** (:func:`two_stage_balanced_selection`): per-class quotas
   over all C classes (:func:`query.kernels.balanced_class_quotas`), stage 1 keeps the most
   uncertain ``multiplier x q_c`` samples of each pseudo-class, stage 2 runs k-center greedy
   on BADGE gradient embeddings (factorised, :class:`query.distances.GradientEmbeddings`),
   anchored on the labeled samples of the same *true* class, else seeded with the most
   uncertain candidate.

The functions are pure numpy so that each step can be tested on hand-built predictions
and features; :class:`FairFALSelector` wires them to a :class:`~query.base.PoolContext`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fal_shared.settings.fairfal import FairfalSettings
from query.base import PoolContext, Selector, register_selector
from query.distances import DEFAULT_MAX_BLOCK_ELEMS, PointSet
from query.kernels import GradientEmbeddings, balanced_class_quotas, entropy, k_center_greedy, top_k

__all__ = [
    "DIVERGENCE_EPS",
    "G_BAR_PARAM",
    "ClientStatistics",
    "QueryModelChoice",
    "TwoStageResult",
    "class_balanced_mean",
    "oversampled_indices",
    "local_global_divergence",
    "imbalance_indicator",
    "client_statistics",
    "query_model_ratio",
    "choose_query_models",
    "class_prototypes",
    "prototype_pseudo_labels",
    "two_stage_balanced_selection",
    "fairfal_settings",
    "FairFALSelector",
]

#: Added to the denominator of every term of d_i; a term is 0/0 only when both mean
#: probabilities of a class are exactly 0 (spec 2.4). Not a paper constant.
DIVERGENCE_EPS = 1e-12
#: Seed of the authors' class-balanced resample (FAIR strategy.py make_balanced_indices(seed=42)).
OVERSAMPLE_SEED = 42
#: The selection round's parameter carrying the server's mean g (sent by ``strategies/fairfal.py``).
G_BAR_PARAM = "fairfal-g-bar"


def _labels(y: ArrayLike, n: int, num_classes: int, name: str) -> NDArray[np.intp]:
    arr = np.asarray(y)
    if arr.shape != (n,):
        raise ValueError(f"`{name}` must have shape ({n},), got {arr.shape}.")
    if n and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"`{name}` must be integers, got dtype {arr.dtype}.")
    if n and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"`{name}` must lie in [0, {num_classes}), got [{arr.min()}, {arr.max()}].")
    return arr.astype(np.intp, copy=False)


def _probs(p: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D array (n, C), got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return arr


# ---------------------------------------------------------------- statistics (phase A)


def oversampled_indices(labels: ArrayLike, seed: int = OVERSAMPLE_SEED) -> NDArray[np.intp]:
    """Rows of a class-balanced resample of ``labels``, as the authors draw it (``fairfal-balanced-mean=oversample``).

    Re-implements the behaviour of ``make_balanced_indices`` (FAIR ``query_strategies/strategy.py``):
    one ``numpy.random.default_rng(seed)``; classes in increasing order; the largest classes
    contribute a permutation of their rows (``choice(size=n, replace=False)``), every other class
    all its rows plus ``max - n`` rows drawn with replacement. The final shuffle of theirs is left
    out: it cannot change a mean. Same seed, same labels (in the same order): the same rows.
    """
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    if classes.size == 0:
        return np.zeros(0, dtype=np.intp)
    target = counts.max()
    rows = []
    for c, n in zip(classes, counts):
        idx = np.flatnonzero(y == c)
        if n >= target:
            rows.append(rng.choice(idx, size=target, replace=False))
        else:
            rows.append(np.concatenate([idx, rng.choice(idx, size=target - n, replace=True)]))
    return np.concatenate(rows).astype(np.intp)


def class_balanced_mean(
    probs: ArrayLike, labels: ArrayLike, num_classes: int, *, mode: str = "class-mean"
) -> NDArray[np.float64]:
    """Class-balanced mean prediction on a labeled set (spec 2.2 step 2).

    ``mode="class-mean"``: ``p = (1/|C_i|) sum_{c in C_i} mean_{x: y=c} probs(x)``, where ``C_i``
    are the classes present in ``labels``: the deterministic equivalent of the authors'
    ``predict_balanced_prob_mean`` (every present class oversampled with replacement to the
    size of the largest one, rng seed 42), without its sampling noise.
    ``mode="oversample"``: the mean over the authors' resample (:func:`oversampled_indices`),
    which reproduces their d_i and g_i (up to float32 summation order).

    Returns
    -------
    numpy.ndarray
        float64, shape ``(C,)``, sums to 1 when the rows of ``probs`` do.
    """
    p = _probs(probs, "probs")
    if p.shape[1] != num_classes:
        raise ValueError(f"`probs` has {p.shape[1]} columns, expected num_classes={num_classes}.")
    y = _labels(labels, p.shape[0], num_classes, "labels")
    if y.size == 0:
        raise ValueError("the labeled set is empty: class-balanced means need at least one labeled sample.")
    if mode == "oversample":
        return p[oversampled_indices(y)].mean(axis=0)
    if mode != "class-mean":
        raise ValueError(f"fairfal-balanced-mean must be 'class-mean' or 'oversample', got {mode!r}.")
    counts = np.bincount(y, minlength=num_classes)
    sums = np.zeros((num_classes, num_classes))
    np.add.at(sums, y, p)
    present = counts > 0
    return (sums[present] / counts[present, None]).mean(axis=0)


def local_global_divergence(pbar_global: ArrayLike, pbar_local: ArrayLike, eps: float = DIVERGENCE_EPS) -> float:
    """``d_i = 0.5 mean_c |g_c - l_c| / (0.5 g_c + 0.5 l_c)`` over **all** C classes (step 3).

    In ``[0, 1]``: each term is at most 2 (one of the two probabilities is 0), which is
    what classes absent from the client contribute when the local-only model never
    predicts them.
    """
    g = np.asarray(pbar_global, dtype=np.float64)
    loc = np.asarray(pbar_local, dtype=np.float64)
    if g.ndim != 1 or g.shape != loc.shape or g.size == 0:
        raise ValueError(f"`pbar_global` and `pbar_local` must be equal-length 1-D vectors, got {g.shape} and {loc.shape}.")
    return float(0.5 * np.mean(np.abs(g - loc) / (0.5 * g + 0.5 * loc + eps)))


def imbalance_indicator(pbar_global: ArrayLike, present_classes: ArrayLike) -> float:
    """``g_i = min_{c in C_i} p_g[c] / max_{c in C_i} p_g[c]`` over the client's labeled classes (step 4).

    Near 1 when the global model predicts the locally present classes evenly; small
    when it is biased towards some of them (a globally imbalanced federation).
    """
    g = np.asarray(pbar_global, dtype=np.float64)
    present = np.asarray(present_classes, dtype=np.intp).reshape(-1)
    if present.size == 0:
        raise ValueError("`present_classes` is empty: g_i needs at least one labeled class.")
    vals = g[present]
    top = vals.max()
    if not top > 0:
        raise ValueError("the global model's mean probabilities of the labeled classes are all 0.")
    return float(vals.min() / top)


@dataclass(frozen=True)
class ClientStatistics:
    """One client's FairFAL statistics: only ``g`` leaves the client."""

    pbar_global: NDArray[np.float64]
    pbar_local: NDArray[np.float64]
    divergence: float  # d_i
    g: float  # g_i


def client_statistics(
    probs_global: ArrayLike, probs_local: ArrayLike, labels: ArrayLike, num_classes: int, *, mode: str = "class-mean"
) -> ClientStatistics:
    """Steps 2-4 from the two models' softmax outputs on the labeled set (``mode``: see :func:`class_balanced_mean`)."""
    pg = class_balanced_mean(probs_global, labels, num_classes, mode=mode)
    pl = class_balanced_mean(probs_local, labels, num_classes, mode=mode)
    present = np.flatnonzero(np.bincount(np.asarray(labels, dtype=np.intp), minlength=num_classes))
    return ClientStatistics(pg, pl, local_global_divergence(pg, pl), imbalance_indicator(pg, present))


# --------------------------------------------------------------- query models (step 6)


def query_model_ratio(divergence: float, g_bar: float, t: float = 0.5) -> float:
    """``ratio = 1 - (1-t)(d + g) + (1-2t) d g`` (= ``1 - (d + g)/2`` for ``t = 0.5``)."""
    return float(1.0 - (1.0 - t) * (divergence + g_bar) + (1.0 - 2.0 * t) * divergence * g_bar)


@dataclass(frozen=True)
class QueryModelChoice:
    ratio: float
    uncertainty_global: bool  # M_u: global if ratio > ratio_threshold
    embedding_global: bool  # M_e: global if g_bar < g_bar_threshold


def choose_query_models(
    divergence: float, g_bar: float, *, t: float = 0.5, ratio_threshold: float = 0.75, g_bar_threshold: float = 0.5
) -> QueryModelChoice:
    """Which model scores uncertainty and which gives the embedding probabilities.

    Both comparisons are strict, as in the authors' code: the global model is used only
    when the global distribution looks imbalanced (small ``g_bar``) and, for uncertainty,
    the client is also close to the global model (small ``d_i``).
    """
    for name, value in (("divergence", divergence), ("g_bar", g_bar)):
        if not np.isfinite(value):
            raise ValueError(f"`{name}` must be finite, got {value}.")
    ratio = query_model_ratio(divergence, g_bar, t)
    return QueryModelChoice(ratio, bool(ratio > ratio_threshold), bool(g_bar < g_bar_threshold))


# ---------------------------------------------------------- prototypes (step 8)


def class_prototypes(
    features: ArrayLike, labels: ArrayLike, num_classes: int
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Per-class means of the L2-normalised features of the labeled set, and the class counts.

    Returns ``(prototypes (C, d), counts (C,))``; rows of classes with no labeled sample are 0.
    """
    h = np.asarray(features, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"`features` must be 2-D (n, d), got shape {h.shape}.")
    from sklearn.preprocessing import normalize  # about 2 s of CPU to import: only where FairFAL runs

    y = _labels(labels, h.shape[0], num_classes, "labels")
    counts = np.bincount(y, minlength=num_classes).astype(np.int64)
    protos = np.zeros((num_classes, h.shape[1]))
    np.add.at(protos, y, normalize(h))  # sklearn's normalize leaves all-zero rows at 0
    seen = counts > 0
    protos[seen] /= counts[seen, None]
    return protos, counts


def prototype_pseudo_labels(
    features: ArrayLike, prototypes: ArrayLike, counts: ArrayLike, *, temperature: float = 1.5,
    max_block_elems: int = DEFAULT_MAX_BLOCK_ELEMS,
) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """Pseudo-labels by cosine similarity to the class prototypes; unseen classes masked.

    ``sim_c = <h/|h|, mu_c/|mu_c|>``, ``-inf`` where ``counts[c] == 0``; probabilities
    ``softmax(sim / temperature)``; the pseudo-label is the argmax (ties: lowest class), so
    the temperature changes only the probabilities. Memory beyond the inputs: ``O(n C)``
    plus a block of at most ``max_block_elems`` float64 features.

    Returns
    -------
    (labels (n,), probs (n, C))
    """
    from sklearn.preprocessing import normalize  # see class_prototypes

    if not temperature > 0:
        raise ValueError(f"`temperature` (fairfal-prototype-temperature) must be > 0, got {temperature}.")
    h = np.asarray(features)
    mu = np.asarray(prototypes, dtype=np.float64)
    seen = np.asarray(counts) > 0
    if h.ndim != 2 or mu.ndim != 2 or h.shape[1] != mu.shape[1] or seen.shape != (mu.shape[0],):
        raise ValueError(
            f"shapes do not fit: features {h.shape}, prototypes {mu.shape}, counts {seen.shape}."
        )
    if not seen.any():
        raise ValueError("no class has a prototype: the client has no labeled sample.")
    mu_unit = normalize(mu).T
    # float64 rows of h, normalised, in blocks of at most max_block_elems entries: a 1M x 256 pool
    # would otherwise need two n x d float64 copies (4 GiB) beside its float32 features
    rows = max(1, max_block_elems // max(h.shape[1], 1))
    sim = np.empty((h.shape[0], mu.shape[0]))
    for start in range(0, h.shape[0], rows):
        sim[start : start + rows] = normalize(np.asarray(h[start : start + rows], dtype=np.float64)) @ mu_unit
    sim[:, ~seen] = -np.inf
    from scipy.special import softmax  # scipy costs CPU to import: only where FairFAL pseudo-labels

    probs = softmax(sim / temperature, axis=1)
    return np.argmax(sim, axis=1).astype(np.intp), probs


# ------------------------------------------------------- two-stage sampling (10-11)


@dataclass(frozen=True)
class TwoStageResult:
    positions: NDArray[np.intp]  # into the pool, grouped by class (0..C-1), pick order within a class
    quotas: NDArray[np.int64]  # q_c
    bucket_sizes: NDArray[np.int64]  # |B_c|
    anchored: NDArray[np.bool_]  # classes whose k-center started from same-class labeled anchors


def two_stage_balanced_selection(
    scores: ArrayLike,
    pseudo_labels: ArrayLike,
    embeddings: PointSet,
    budget: int,
    num_classes: int,
    *,
    multiplier: float = 4.0,
    anchors: PointSet | None = None,
    anchor_labels: ArrayLike | None = None,
) -> TwoStageResult:
    """Per-class quotas, then uncertainty pre-selection and k-center greedy per class.

    Parameters
    ----------
    scores
        Uncertainty of every pool sample (normalised entropy), shape ``(n,)``.
    pseudo_labels
        Bucket of every pool sample (prototype pseudo-label), shape ``(n,)``.
    embeddings
        Pool points for stage 2 (FairFAL: :class:`GradientEmbeddings` with the hallucinated
        label), length ``n``.
    budget
        Client budget ``b_i``; the result has ``min(budget, n)`` positions.
    multiplier
        Stage-1 candidate multiplier (``fairfal-candidate-multiplier``), >= 1.
    anchors, anchor_labels
        Labeled points of the same type (true labels) and their classes; the k-center
        traversal of class ``c`` starts from the anchors labeled ``c`` if any, otherwise from
        the most uncertain candidate.
    """
    s = np.asarray(scores)
    n = s.shape[0] if s.ndim == 1 else -1
    if s.ndim != 1:
        raise ValueError(f"`scores` must be 1-D, got shape {s.shape}.")
    y = _labels(pseudo_labels, n, num_classes, "pseudo_labels")
    if len(embeddings) != n:
        raise ValueError(f"`embeddings` has {len(embeddings)} points but there are {n} scores.")
    if not multiplier >= 1:
        raise ValueError(f"`multiplier` (fairfal-candidate-multiplier) must be >= 1, got {multiplier}.")
    if anchors is not None and len(anchors) > 0:
        if anchor_labels is None:
            raise ValueError("`anchor_labels` are required with `anchors`.")
        a_y = _labels(anchor_labels, len(anchors), num_classes, "anchor_labels")
    else:
        anchors, a_y = None, np.zeros(0, dtype=np.intp)

    sizes = np.bincount(y, minlength=num_classes).astype(np.int64)
    quotas = balanced_class_quotas(budget, sizes, num_classes)
    anchored = np.zeros(num_classes, dtype=bool)
    picked: list[NDArray[np.intp]] = []
    for c in np.flatnonzero(quotas):
        q = int(quotas[c])
        bucket = np.flatnonzero(y == c)
        m = min(bucket.size, max(1, int(multiplier * q)))  # int() truncates as the authors' code
        cand = bucket[top_k(s[bucket], m)]  # most uncertain first
        cand_points = embeddings.subset(cand)
        same = np.flatnonzero(a_y == c)
        if anchors is not None and same.size:
            anchored[c] = True
            order = k_center_greedy(cand_points, q, anchors=anchors.subset(same))
        else:
            order = k_center_greedy(cand_points, q, first=0)  # seed: argmax uncertainty
        picked.append(cand[order])
    positions = np.concatenate(picked).astype(np.intp) if picked else np.zeros(0, dtype=np.intp)
    return TwoStageResult(positions, quotas, sizes, anchored)


# ----------------------------------------------------------------------- selector


_ALIASES = {info.alias: name for name, info in FairfalSettings.model_fields.items()}


def fairfal_settings(params: Any) -> FairfalSettings:
    """The ``fairfal-*`` settings among ``params`` (run config + server params), validated.

    Missing keys take their defaults; bad values raise a ValueError naming the key.
    """
    return FairfalSettings.model_validate({k: params[k] for k in _ALIASES if k in params})


@register_selector("fairfal")
class FairFALSelector(Selector):
    """FairFAL's selection round (spec 2.2 steps 2-12) on one client.

    Needs ``params['fairfal-g-bar']`` (the server's mean of the g_i) and the global and
    local-only models. Reports in ``ctx.diagnostics``: ``used-global-uncertainty``,
    ``used-global-embedding``, ``divergence`` (d_i), ``ratio``, ``g-bar``,
    ``pseudo-classes`` (classes with a non-empty bucket), ``anchored-classes``,
    ``prototype-confidence`` (mean max prototype probability).
    """

    @classmethod
    def contract_params(cls, ctx: PoolContext) -> dict[str, Any]:
        """What the server sends (tests/test_selector_contract.py): a g-bar."""
        return {G_BAR_PARAM: 0.4}

    def select(self, ctx: PoolContext) -> np.ndarray:
        if ctx.task != "classification" or ctx.num_classes < 2:
            raise ValueError("the fairfal selector needs a classification task with at least 2 classes.")
        if G_BAR_PARAM not in ctx.params:
            raise ValueError(f"{G_BAR_PARAM}: the fairfal selector needs the server's mean g (a statistics round).")
        g_bar = float(ctx.params[G_BAR_PARAM])
        st = fairfal_settings(ctx.params)
        C, models, clock = ctx.num_classes, ctx.models, time.perf_counter()

        lab_g, lab_l = models.labeled("global"), models.labeled("local-only")
        stats = client_statistics(lab_g.outputs, lab_l.outputs, ctx.labeled_y, C, mode=st.fairfal_balanced_mean)
        choice = choose_query_models(
            stats.divergence, g_bar, t=st.fairfal_t,
            ratio_threshold=st.fairfal_ratio_threshold, g_bar_threshold=st.fairfal_g_bar_threshold,
        )
        unc_kind = "global" if choice.uncertainty_global else "local-only"
        emb_kind = "global" if choice.embedding_global else "local-only"
        ctx.timings["fairfal-models"] = (now := time.perf_counter()) - clock
        clock = now

        pool_g = models.pool("global")
        scores = entropy(models.pool(unc_kind).outputs, normalized=True)
        protos, counts = class_prototypes(lab_g.features, ctx.labeled_y, C)
        pseudo, proto_probs = prototype_pseudo_labels(
            pool_g.features, protos, counts, temperature=st.fairfal_prototype_temperature
        )
        # Gradient embeddings h_g(x) (x) (onehot(y) - p_e(x)): the global model's features, M_e's
        # probabilities; hallucinated y = argmax p_e on the pool, the true label on the anchors.
        pool_emb = GradientEmbeddings(pool_g.features, models.pool(emb_kind).outputs)
        anchors = GradientEmbeddings(lab_g.features, models.labeled(emb_kind).outputs, labels=ctx.labeled_y)
        ctx.timings["fairfal-scores"] = (now := time.perf_counter()) - clock
        clock = now

        result = two_stage_balanced_selection(
            scores, pseudo, pool_emb, ctx.budget, C,
            multiplier=st.fairfal_candidate_multiplier, anchors=anchors, anchor_labels=ctx.labeled_y,
        )
        ctx.timings["fairfal-selection"] = time.perf_counter() - clock
        ctx.diagnostics.update({
            "used-global-uncertainty": choice.uncertainty_global,
            "used-global-embedding": choice.embedding_global,
            "divergence": stats.divergence,
            "ratio": choice.ratio,
            "g-bar": g_bar,
            "pseudo-classes": int((result.bucket_sizes > 0).sum()),
            "anchored-classes": int(result.anchored.sum()),
            "prototype-confidence": float(proto_probs.max(axis=1).mean()) if len(proto_probs) else 0.0,
        })
        return result.positions
