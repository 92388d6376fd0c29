"""Random and Entropy: one selection round each."""

from __future__ import annotations

from strategies.base import SelectRoundStrategy, register_strategy


@register_strategy("random")
class RandomStrategy(SelectRoundStrategy):
    """Uniform random labels from each client's pool (seeded per client and cycle)."""

    selector = "random"
    tasks = ("classification", "regression")
    description = "uniform sampling without replacement"
    source = "all papers' baseline"

    def uses_model(self) -> bool:
        return False


@register_strategy("entropy")
class EntropyStrategy(SelectRoundStrategy):
    """Top-B predictive entropy; the query model (global/local/local-only) is ``query-model``."""

    selector = "entropy"
    description = "max predictive entropy of the query model"
    source = "Shannon entropy sampling; LoGo entropy_sampling.py (query_model_mode)"
    selector_settings = ("query-model",)

    def uses_model(self) -> bool:
        return self.cfg.query_model == "global"
