"""KAFAL's Knowledge-Specialized Active Sampling (KSAS; Cao et al., ICCV 2023; spec 4.2), no Flower.

For every pool sample, the client's local model (after its last local update of
this cycle) and the global model are logit-adjusted by the client's labeled
class counts, ``a = log p(x) + tau log n``, and scored by their symmetric KL
divergence ``D(x) = (KL(q_g || q_l) + KL(q_l || q_g)) / 2`` with
``q = softmax(a)``; the budget goes to the largest ``D``.

Classes the client never labeled (``n_c = 0``) get ``log n_c = -inf`` in the
reference code, and current PyTorch's ``kl_div`` turns ``0 * (-inf)`` into NaN,
so every score of such a client is NaN and ``np.argsort`` picks the tail of a
shuffled list: a random selection (spec 4.2 pitfall; dgitj/FAL's KSAS has the
same code). Here the KL sums run over the labeled classes only, where the
adjusted distributions live (their probability on the other classes is exactly
0 in both models), which is the value the authors' torch 1.0 computed.

``log p`` comes from the model's output head, so an evidential model (FEAL's
loss, ``local-objective=edl``) is read as ``p = alpha / S``; for a softmax model
``softmax(log p + tau log n) = softmax(f(x) + tau log n)``, the reference
formula. Ties (a client with a single labeled class scores every sample 0) are
broken at random, as the reference code's shuffled pool did.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fal_shared.heads import HEADS
from query.base import PoolContext, Selector, register_selector
from query.baselines import check_finite
from query.kernels import top_k

__all__ = ["KsasSelector", "ksas_scores"]


def ksas_scores(log_p_local: np.ndarray, log_p_global: np.ndarray, counts: np.ndarray, tau: float = 1.0) -> np.ndarray:
    """KSAS discrepancy ``D(x)`` of each row (spec 4.2), over the classes with ``counts > 0``.

    ``log_p_*``: log class probabilities of the local and global models, shape
    ``(n, C)``; ``counts``: the client's labeled samples per class; ``tau``: the
    logit-adjustment multiplier (``kafal-logit-adjustment``). Uses
    ``KL(p||q) + KL(q||p) = sum_c (p_c - q_c)(log p_c - log q_c)``.
    """
    counts = np.asarray(counts)
    seen = counts > 0
    if not seen.any():
        raise ValueError("kafal: KSAS needs labeled classes to adjust the logits, but this client has no labels")
    log_n = torch.log(torch.as_tensor(counts[seen], dtype=torch.float64))
    adjusted = [
        torch.log_softmax(torch.as_tensor(lp, dtype=torch.float64)[:, seen] + tau * log_n, dim=1)
        for lp in (log_p_local, log_p_global)
    ]
    lq_l, lq_g = adjusted
    d = 0.5 * ((lq_g.exp() - lq_l.exp()) * (lq_g - lq_l)).sum(dim=1)
    return d.clamp_min(0.0).numpy()  # >= 0 in exact arithmetic; clamp round-off


@register_selector("kafal")
class KsasSelector(Selector):
    """KSAS: the budget's largest symmetric KL between the logit-adjusted local and global models."""

    @classmethod
    def contract_params(cls, ctx: PoolContext) -> dict[str, Any]:
        return {}  # kafal-logit-adjustment comes with the run config

    def select(self, ctx: PoolContext) -> np.ndarray:
        tau = float(ctx.params.get("kafal-logit-adjustment", 1.0))
        counts = np.bincount(np.asarray(ctx.labeled_y, dtype=np.int64), minlength=ctx.num_classes)[: ctx.num_classes]
        log_p = {}
        for kind in ("local", "global"):
            pred = ctx.models.pool(kind)
            logits = check_finite(pred.logits, f"kafal: logits of the {kind} model")
            log_p[kind] = HEADS.lookup(pred.head).log_probabilities(torch.as_tensor(logits)).numpy()
        scores = ksas_scores(log_p["local"], log_p["global"], counts, tau)
        ctx.diagnostics["kafal-labeled-classes"] = int((counts > 0).sum())
        ctx.diagnostics["kafal-mean-discrepancy"] = float(scores.mean())
        shuffle = ctx.rng.permutation(ctx.pool_size)  # random tie-breaking (the reference shuffles the pool)
        return shuffle[top_k(scores[shuffle], ctx.budget)]
