"""Classification baselines: BADGE, Core-Set, Noise Stability and LoGo (no Flower imports).

Each selector scores one client's pool with the query model(s) of the
:class:`~query.models.ModelBank` and returns positions into ``ctx.pool_ids``.
The heavy lifting is in the shared kernels (:mod:`query.kernels`,
:mod:`query.distances`) and sklearn; this module only wires model outputs to
them. Specs: ``shared/spec/algorithms.md`` sections 3 (LoGo), 6 (Noise
Stability) and 7 (BADGE, Core-Set).

* ``badge``: k-means++ seeding (max-norm first centre, then D^2 sampling) on the
  factorised gradient embeddings ``h (x) (onehot(argmax p) - p)`` of the query
  model; the ``n x C*d`` matrix is never built.
* ``coreset``: k-center greedy on the query model's penultimate features with
  the labelled set as the initial centres.
* ``noise-stability``: K copies of the query model with relative Gaussian weight
  noise; the output deviations, normalised by ``||out0||``, are concatenated
  (``K x C`` dims) and k-center greedy runs from the origin over a random pool subset.
* ``logo``: KMeans (``budget`` clusters) on ``(1 - p_max) * h`` of the
  local-only model, then the highest global-model entropy in each cluster,
  with LoGo's round-robin fill when clusters run short.

The query model of badge / coreset / noise-stability is ``params['query-model']``
(global | local | local-only), as ``entropy`` (``query/simple.py``).

``badge-variant``, ``noise-stability-variant`` and ``logo-variant`` select the
AHFAL paper's own versions of these three methods (:mod:`query.baseline_variants`).

Every selector refuses NaN model outputs with a ValueError naming the model:
a diverged model must not silently drive a label purchase.

Contract-test hook: each selector's ``contract_params(ctx)`` returns the
server-sent parameters it needs on the contract test's tiny synthetic pool
(``tests/test_selector_contract.py``).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from fal_shared.settings.baselines import BaselineSettings
from query.base import PoolContext, Selector, random_pool_subset, register_selector
from query.baseline_variants import InputGradient, feature_noise_scores, kmeans_closest
from query.kernels import DenseFeatures, GradientEmbeddings, entropy, k_center_greedy, kmeans_pp_seeding, top_k

__all__ = [
    "BadgeSelector",
    "CoreSetSelector",
    "NoiseStabilitySelector",
    "LoGoSelector",
    "add_weight_noise",
    "check_finite",
    "logo_cluster_pick",
    "logo_kmeans",
    "noise_deviations",
]

QUERY_MODEL_KINDS = ("global", "local", "local-only")
_BASELINE_KEYS = tuple(info.alias for info in BaselineSettings.model_fields.values())


# ------------------------------------------------------------------- helpers


def baseline_settings(params: Mapping[str, Any]) -> BaselineSettings:
    """The baseline settings found in ``params`` (validated), defaults for the rest.

    Raises ``ValueError`` (pydantic's, naming the key) for an out-of-range value.
    """
    return BaselineSettings.model_validate({k: params[k] for k in _BASELINE_KEYS if k in params})


def query_model_kind(params: Mapping[str, Any]) -> str:
    kind = str(params.get("query-model", "global"))
    if kind not in QUERY_MODEL_KINDS:
        raise ValueError(f"query-model: got {kind!r}; allowed values: {', '.join(QUERY_MODEL_KINDS)}")
    return kind


def check_finite(arr: np.ndarray, what: str) -> np.ndarray:
    """Raise a ValueError naming ``what`` if ``arr`` holds NaN or inf."""
    arr = np.asarray(arr)
    if not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.isfinite(arr).sum())
        raise ValueError(
            f"{what} contains {bad} NaN/inf value(s) (diverged model?); NaN scores must not reach a selection"
        )
    return arr


# --------------------------------------------------------------------- BADGE


@register_selector("badge")
class BadgeSelector(Selector):
    """BADGE (Ash et al. 2020): k-means++ seeding on last-layer gradient embeddings.

    ``g(x) = h(x) (x) (onehot(argmax p) - p)`` of the query model, kept factorised
    (:class:`~query.distances.GradientEmbeddings`); first centre = largest
    ``||g||``, then D^2 sampling from ``ctx.rng`` (spec 7).
    """

    @classmethod
    def contract_params(cls, ctx: PoolContext) -> dict[str, Any]:
        return {"query-model": "global"}

    def select(self, ctx: PoolContext) -> np.ndarray:
        kind = query_model_kind(ctx.params)
        if baseline_settings(ctx.params).badge_variant == "input-gradient-kmeans":
            pred = ctx.models.predict(InputGradient(ctx.models.model(kind)), ctx.models.x_pool)
            grads = check_finite(pred.features, f"badge: input gradients of the {kind} model")
            return kmeans_closest(grads, ctx.budget, int(ctx.rng.integers(2**31 - 1)))
        pred = ctx.models.pool(kind)
        probs = check_finite(pred.outputs, f"badge: probabilities of the {kind} model")
        feats = check_finite(pred.features, f"badge: features of the {kind} model")
        return kmeans_pp_seeding(GradientEmbeddings(feats, probs), ctx.budget, ctx.rng)


# ------------------------------------------------------------------ Core-Set


@register_selector("coreset")
class CoreSetSelector(Selector):
    """Core-Set (Sener & Savarese 2018): k-center greedy on penultimate features.

    The labelled set (through the same query model) gives the initial centres;
    with no labels yet the traversal starts from the origin (largest-norm point
    first) instead of LoGo's arbitrary index 0 (spec 7, LoGo ``core_set.py``).
    """

    @classmethod
    def contract_params(cls, ctx: PoolContext) -> dict[str, Any]:
        return {"query-model": "global"}

    def select(self, ctx: PoolContext) -> np.ndarray:
        kind = query_model_kind(ctx.params)
        pool = check_finite(ctx.models.pool(kind).features, f"coreset: pool features of the {kind} model")
        anchors = None
        if len(ctx.labeled_ids):
            labeled = check_finite(
                ctx.models.labeled(kind).features, f"coreset: labeled-set features of the {kind} model"
            )
            anchors = DenseFeatures(labeled)
        ctx.diagnostics["coreset-anchors"] = 0 if anchors is None else len(anchors)
        return k_center_greedy(DenseFeatures(pool), ctx.budget, anchors=anchors)


# ----------------------------------------------------------- Noise Stability


def add_weight_noise(model: nn.Module, relative_scale: float, generator: torch.Generator) -> dict[str, float]:
    """Add ``xi * relative_scale * ||W||_F / ||xi||_F`` (``xi ~ N(0, I)``) to every module's ``weight``.

    As the reference ``add_noise_to_weights`` (applied through ``model.apply``):
    every module that has a ``weight`` tensor (Conv, Linear, BatchNorm's gamma,
    ...), biases and buffers untouched, so each weight moves by exactly
    ``relative_scale`` of its own Frobenius norm. A weight shared by several
    modules is perturbed once. Noise is drawn on the CPU from ``generator``
    (so results do not depend on the device), then moved to the weight.

    Returns
    -------
    dict
        Module name -> relative norm of the noise actually added (for tests and
        diagnostics).
    """
    seen: set[int] = set()
    applied: dict[str, float] = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor) or id(weight) in seen:
                continue
            seen.add(id(weight))
            xi = torch.randn(weight.shape, generator=generator, dtype=torch.float32)
            xi_norm = xi.norm()
            w_norm = weight.detach().float().norm().cpu()
            if xi_norm > 0 and w_norm > 0:
                noise = xi * (relative_scale * w_norm / xi_norm)
                weight.add_(noise.to(device=weight.device, dtype=weight.dtype))
                applied[name] = float(relative_scale)
            else:
                applied[name] = 0.0
    return applied


def noise_deviations(
    model: nn.Module,
    x: np.ndarray,
    predict,
    *,
    num_copies: int,
    relative_scale: float,
    generator: torch.Generator,
    what: str = "noise-stability: outputs of the query model",
) -> np.ndarray:
    """The Noise Stability embedding ``z(x) = concat_k (f(x; theta_k) - f(x; theta)) / ||f(x; theta)||``.

    ``predict(model, x)`` returns a Prediction whose ``outputs`` are softmax
    probabilities. Copies are made and scored one at a time (memory: one extra
    model). Returns a float32 array of shape ``(len(x), num_copies * C)``.
    """
    out0 = check_finite(predict(model, x).outputs, what).astype(np.float32)
    out0 = out0.reshape(len(x), -1)
    norms = np.linalg.norm(out0, axis=1, keepdims=True)
    # softmax rows have norm >= 1/sqrt(C); the floor only guards a regression-like zero output
    norms = np.maximum(norms, np.finfo(np.float32).tiny)
    width = out0.shape[1]
    z = np.empty((len(x), num_copies * width), dtype=np.float32)
    for k in range(num_copies):
        noisy = copy.deepcopy(model)
        add_weight_noise(noisy, relative_scale, generator)
        out_k = check_finite(predict(noisy, x).outputs, f"{what} (noisy copy {k})").reshape(len(x), -1)
        z[:, k * width : (k + 1) * width] = (out_k - out0) / norms
        del noisy
    return z


@register_selector("noise-stability")
class NoiseStabilitySelector(Selector):
    """Noise Stability (Li et al., AAAI 2024), spec 6.1.

    Over a random subset of the pool (``noise-stability-subset-size``, at least
    the budget), K noisy copies of the query model give the deviation embedding
    :func:`noise_deviations`; k-center greedy from the **origin** (first pick =
    the most unstable point) selects the budget. Subset and noise are drawn from
    ``ctx.rng``, so the same seed gives the same picks.
    """

    @classmethod
    def contract_params(cls, ctx: PoolContext) -> dict[str, Any]:
        return {"query-model": "global", "noise-stability-num-copies": 3}

    def select(self, ctx: PoolContext) -> np.ndarray:
        if ctx.task != "classification":
            raise ValueError("noise-stability: implemented for classification (softmax outputs) only")
        settings = baseline_settings(ctx.params)
        kind = query_model_kind(ctx.params)
        subset = random_pool_subset(ctx, settings.noise_stability_subset_size)
        size = len(subset)
        generator = torch.Generator(device="cpu")
        generator.manual_seed(int(ctx.rng.integers(2**62)))
        ctx.diagnostics["noise-stability-subset"] = int(size)
        if settings.noise_stability_variant == "feature-topk":
            scores = feature_noise_scores(
                ctx.models.model(kind), ctx.models.x_pool[subset], ctx.models.predict,
                num_copies=settings.noise_stability_num_copies, relative_scale=settings.noise_stability_noise_scale,
                generator=generator,
            )
            return subset[top_k(check_finite(scores, f"noise-stability: feature deviations of the {kind} model"), ctx.budget)]
        z = noise_deviations(
            ctx.models.model(kind),
            ctx.models.x_pool[subset],
            ctx.models.predict,
            num_copies=settings.noise_stability_num_copies,
            relative_scale=settings.noise_stability_noise_scale,
            generator=generator,
            what=f"noise-stability: outputs of the {kind} model",
        )
        ctx.diagnostics["noise-stability-mean-deviation"] = float(np.linalg.norm(z, axis=1).mean()) if len(z) else 0.0
        picks = k_center_greedy(DenseFeatures(z), ctx.budget)
        return subset[picks]


# ---------------------------------------------------------------------- LoGo


def logo_cluster_pick(labels: np.ndarray, scores: np.ndarray, budget: int) -> np.ndarray:
    """LoGo's micro step and fill (spec 3.1 steps 3-4), given cluster labels.

    1. In every non-empty cluster (in label order) take the member with the
       highest score (global-model entropy; ties: lowest index).
    2. If that gives fewer than ``budget`` picks (KMeans found fewer distinct
       clusters than asked), fill round-robin: ``num = ceil(missing /
       n_nonempty)``; pass ``p`` takes, cluster by cluster, the members ranked
       ``1 + p*num .. (p+1)*num`` within their cluster; then truncate to
       ``budget`` in that order.

    Vectorised: one lexsort ranks every point within its cluster, and the pick
    order is a second lexsort on (pass, cluster, rank).

    Returns
    -------
    numpy.ndarray
        ``min(budget, n)`` distinct indices in pick order.
    """
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores).reshape(-1)
    n = len(labels)
    if len(scores) != n:
        raise ValueError(f"`scores` has {len(scores)} entries but `labels` has {n}")
    check_finite(scores, "logo: global-model entropy")
    budget = min(int(budget), n)
    if budget <= 0:
        return np.zeros(0, dtype=np.intp)
    idx = np.arange(n)
    order = np.lexsort((idx, -scores, labels))  # by cluster, then score descending, then index
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sizes = np.diff(np.r_[starts, n])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, sizes)
    heads = idx[rank == 0]
    heads = heads[np.argsort(labels[heads], kind="stable")]
    if len(heads) >= budget:
        return heads[:budget].astype(np.intp)
    num = math.ceil((budget - len(heads)) / len(heads))
    rest = idx[rank > 0]
    passes = (rank[rest] - 1) // num
    rest = rest[np.lexsort((rank[rest], labels[rest], passes))]
    return np.concatenate([heads, rest])[:budget].astype(np.intp)


@register_selector("logo")
class LoGoSelector(Selector):
    """LoGo (Kim et al., CVPR 2023), spec 3.1.

    Macro step: ``KMeans(n_clusters=budget, n_init, max_iter, random_state from
    ctx.rng)`` on ``z = (1 - p_max) * h`` of the **local-only** model (the
    predicted-class block of its BADGE embedding, computed for the whole batch
    at once, not LoGo's batch-size-1 loop). Micro step: the highest
    **global**-model entropy per cluster; round-robin fill when KMeans returns
    fewer distinct clusters than the budget (:func:`logo_cluster_pick`).
    """

    @classmethod
    def contract_params(cls, ctx: PoolContext) -> dict[str, Any]:
        return {"logo-kmeans-n-init": 2}

    def select(self, ctx: PoolContext) -> np.ndarray:
        settings = baseline_settings(ctx.params)
        if settings.logo_variant == "local-features":  # the AHFAL paper's version (query.baseline_variants)
            z = check_finite(ctx.models.pool("local").features, "logo: features of the local model")
        else:
            local = ctx.models.pool("local-only")
            p_local = check_finite(local.outputs, "logo: probabilities of the local-only model")
            h_local = check_finite(local.features, "logo: features of the local-only model")
            # float64 as the authors' KMeans sees it (they pass a torch tensor, which sklearn converts to
            # float64); float32 clustering ends in another local optimum for 2 of 20 seeds on the parity fixture
            z = ((1.0 - p_local.max(axis=1))[:, None] * h_local).astype(np.float64)
        p_global = check_finite(ctx.models.pool("global").outputs, "logo: probabilities of the global model")
        labels = logo_kmeans(z, ctx.budget, settings, ctx.rng)
        ctx.diagnostics["logo-clusters-found"] = int(len(np.unique(labels)))
        return logo_cluster_pick(labels, entropy(p_global), ctx.budget)


def logo_kmeans(z: np.ndarray, n_clusters: int, settings: BaselineSettings, rng: np.random.Generator) -> np.ndarray:
    """LoGo's macro step: cluster labels of ``KMeans(n_clusters)`` on ``z`` (one seed drawn from ``rng``)."""
    from sklearn.cluster import KMeans  # about 2 s of CPU to import: only in the processes that cluster
    from sklearn.exceptions import ConvergenceWarning

    kmeans = KMeans(
        n_clusters=n_clusters,
        n_init=settings.logo_kmeans_n_init,
        max_iter=settings.logo_kmeans_max_iter,
        random_state=int(rng.integers(2**31 - 1)),
    )
    # KMeans' OpenMP/BLAS threads follow the client's torch thread budget
    # (client-threads): on a shared CPU, sklearn's default of one thread per
    # core made this step about 10x slower (2.0 s vs 0.2 s for 540 x 256, 30 clusters).
    with warnings.catch_warnings(), threadpool_limits(limits=torch.get_num_threads()):
        # duplicate points leave clusters empty; logo_cluster_pick fills them (spec 3.1 step 4)
        warnings.simplefilter("ignore", ConvergenceWarning)
        return kmeans.fit_predict(z)
