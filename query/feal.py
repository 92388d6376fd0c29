"""FEAL's query: calibrated evidential sampling and diversity relaxation (Chen et al., CVPR 2024; spec 5.2-5.3), no Flower.

Both models are read as evidential (``alpha = ReLU(logits) + 1``, FEAL's
``fl_duc``): the global model as received (the fresh aggregate) and the
client's local model after its last local update of the cycle (spec 5.4). Over
a random subset of the pool (``feal-subset-size``):

``U(x) = U~_epi(x) * (U_ale(x, global) + U_ale(x, local))``, with
``U_ale = sum_k (alpha_k / S)(digamma(S + 1) - digamma(alpha_k + 1))`` (expected
entropy of Cat(p), p ~ Dir(alpha)) and ``U_epi`` = the differential entropy of
the global model's Dir(alpha), min-max normalised over the subset.

The ranking by U is then relaxed for diversity (:func:`diversity_relaxation`).
Deviations from the authors' code, each for its reason:

* relaxation features: the local model's penultimate features (FEAL pools an
  EfficientNet-B0 block, ``blocks[4]``, to 3x3; the models here expose only
  their penultimate features);
* a constant ``U_epi`` over the subset (FEAL divides 0 by 0, NaN) counts as 1,
  so the aleatoric terms alone rank;
* when the relaxation skips so many candidates that the budget is not reached,
  the rest is filled with the most uncertain unselected samples (FEAL fills it
  with the tail of ``set(range(n)) - chosen``, an order of no meaning);
* ties in U are broken at random (FEAL's pool is shuffled before scoring).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.distributions import Dirichlet

from fal_shared.heads import evidential_alpha
from query.base import PoolContext, Selector, random_pool_subset, register_selector
from query.baselines import check_finite
from query.distances import DEFAULT_MAX_BLOCK_ELEMS
from query.kernels import top_k

__all__ = ["FealSelector", "aleatoric_uncertainty", "epistemic_uncertainty", "feal_uncertainty", "diversity_relaxation"]


def aleatoric_uncertainty(alpha: torch.Tensor) -> torch.Tensor:
    """``U_ale = sum_k (alpha_k / S)(digamma(S + 1) - digamma(alpha_k + 1))`` per row (FEAL fl_duc)."""
    s = alpha.sum(dim=1, keepdim=True)
    return ((alpha / s) * (torch.digamma(s + 1) - torch.digamma(alpha + 1))).sum(dim=1)


def epistemic_uncertainty(alpha: torch.Tensor) -> torch.Tensor:
    """Differential entropy of Dir(alpha) per row (FEAL fl_duc: ``Dirichlet(alpha).entropy()``)."""
    return Dirichlet(alpha).entropy()


def feal_uncertainty(logits_global: np.ndarray, logits_local: np.ndarray) -> np.ndarray:
    """FEAL's calibrated uncertainty ``U(x)`` of each row (spec 5.2), in float64."""
    alpha_g = evidential_alpha(torch.as_tensor(logits_global, dtype=torch.float64))
    alpha_l = evidential_alpha(torch.as_tensor(logits_local, dtype=torch.float64))
    u_epi = epistemic_uncertainty(alpha_g)
    spread = u_epi.max() - u_epi.min() if len(u_epi) else torch.zeros(())
    calibration = (u_epi - u_epi.min()) / spread if spread > 0 else torch.ones_like(u_epi)
    return (calibration * (aleatoric_uncertainty(alpha_g) + aleatoric_uncertainty(alpha_l))).numpy()


def diversity_relaxation(
    ranking: np.ndarray, features: np.ndarray, budget: int, *, neighbors: int, threshold: float, block: int = 256,
) -> tuple[np.ndarray, int]:
    """FEAL's relaxation (spec 5.3): walk ``ranking``, skip a candidate crowded by an earlier pick.

    A candidate's neighbours are its ``neighbors`` most cosine-similar other
    samples (of ``features``) with similarity above ``threshold``. It is
    selected when it has fewer than ``neighbors`` such neighbours or none of them
    was selected before in this walk; otherwise it is skipped. Stops at
    ``budget`` picks. Neighbour sets do not depend on earlier picks, so they are
    found for ``block`` candidates at a time with one matrix product (never an
    ``n x n`` matrix; at most ``DEFAULT_MAX_BLOCK_ELEMS`` similarities at once,
    fewer candidates per block for a large pool). Returns (picks in order, number skipped).
    """
    n = len(features)
    block = max(1, min(block, DEFAULT_MAX_BLOCK_ELEMS // max(n, 1)))
    f = np.asarray(features, dtype=np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), np.finfo(np.float32).tiny)  # zero rows: no neighbours
    k = min(neighbors, n - 1)
    chosen = np.zeros(n, dtype=bool)
    picks: list[int] = []
    skipped = 0
    for b in range(0, len(ranking), block):
        candidates = np.asarray(ranking[b : b + block])
        if k > 0:
            sims = f[candidates] @ f.T
            sims[np.arange(len(candidates)), candidates] = -np.inf  # not its own neighbour
            near = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            near_sims = np.take_along_axis(sims, near, axis=1)
        for r, i in enumerate(candidates):
            crowded = False  # fewer than `neighbors` other samples: never crowded
            if k > 0:
                nbrs = near[r][near_sims[r] > threshold]
                crowded = len(nbrs) >= neighbors and bool(chosen[nbrs].any())
            if not crowded:
                chosen[i] = True
                picks.append(int(i))
                if len(picks) == budget:
                    return np.asarray(picks, dtype=np.int64), skipped
            else:
                skipped += 1
    return np.asarray(picks, dtype=np.int64), skipped


@register_selector("feal")
class FealSelector(Selector):
    """FEAL: calibrated evidential uncertainty of the global and local models, relaxed for diversity."""

    @classmethod
    def contract_params(cls, ctx: PoolContext) -> dict[str, Any]:
        return {}  # feal-* settings come with the run config

    def select(self, ctx: PoolContext) -> np.ndarray:
        subset = random_pool_subset(ctx, int(ctx.params.get("feal-subset-size", 10000)))
        whole = len(subset) == ctx.pool_size
        outputs = {}
        for kind in ("global", "local"):
            if whole:
                pred = ctx.models.pool(kind)
            else:
                pred = ctx.models.predict(ctx.models.model(kind), ctx.models.x_pool[subset])
            check_finite(pred.logits, f"feal: logits of the {kind} model")
            outputs[kind] = pred
        scores = feal_uncertainty(outputs["global"].logits, outputs["local"].logits)
        shuffle = ctx.rng.permutation(len(subset))  # random tie-breaking (FEAL shuffles the pool)
        ranking = shuffle[top_k(scores[shuffle], len(subset))]
        features = check_finite(outputs["local"].features, "feal: features of the local model")
        picks, skipped = diversity_relaxation(
            ranking, features, ctx.budget,
            neighbors=int(ctx.params.get("feal-neighbors", 5)),
            threshold=float(ctx.params.get("feal-cosine-threshold", 0.85)),
        )
        filled = ctx.budget - len(picks)
        if filled > 0:  # the relaxation skipped too many: the most uncertain of the rest
            rest = ranking[~np.isin(ranking, picks)]
            picks = np.concatenate([picks, rest[:filled]])
        ctx.diagnostics.update({
            "feal-subset": int(len(subset)), "feal-skipped": int(skipped), "feal-filled": int(max(filled, 0)),
            "feal-mean-uncertainty": float(scores.mean()) if len(scores) else 0.0,
        })
        return subset[picks]
