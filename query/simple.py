"""Random and entropy selection."""

from __future__ import annotations

import numpy as np

from query.base import PoolContext, Selector, register_selector
from query.kernels import entropy, top_k

__all__ = ["RandomSelector", "EntropySelector"]


@register_selector("random")
class RandomSelector(Selector):
    """Uniform sampling without replacement from the pool."""

    def select(self, ctx: PoolContext) -> np.ndarray:
        return ctx.rng.choice(ctx.pool_size, size=ctx.budget, replace=False)


@register_selector("entropy")
class EntropySelector(Selector):
    """Top-B predictive entropy of the query model (``params['query-model']``)."""

    def select(self, ctx: PoolContext) -> np.ndarray:
        kind = str(ctx.params.get("query-model", "global"))
        probs = ctx.models.pool(kind).outputs
        return top_k(entropy(probs), ctx.budget)  # top_k refuses NaN scores
