"""Classification baselines: BADGE, Core-Set, Noise Stability, LoGo: one selection round each.

The selectors are in ``query/baselines.py``. BADGE, Core-Set and Noise
Stability score the pool with the query model named by ``query-model``
(global | local | local-only, as LoGo's ``--query_model_mode``); the global
model is only sent when it is the query model. LoGo always uses both the
local-only model (clustering) and the global model (entropy).
"""

from __future__ import annotations

from strategies.base import SelectRoundStrategy, register_strategy

__all__ = ["BadgeStrategy", "CoreSetStrategy", "NoiseStabilityStrategy", "LoGoStrategy"]


class _QueryModelStrategy(SelectRoundStrategy):
    """A selection round whose selector scores the pool with ``query-model``."""

    selector_settings = ("query-model",)

    def uses_model(self) -> bool:
        return self.cfg.query_model == "global"


@register_strategy("badge")
class BadgeStrategy(_QueryModelStrategy):
    """k-means++ seeding on the query model's (factorised) gradient embeddings."""

    selector = "badge"
    description = "BADGE: k-means++ seeding on last-layer gradient embeddings of the query model"
    source = "Ash et al. ICLR 2020; JordanAsh/badge badge_sampling.py; LoGo badge_sampling.py; spec 7"


@register_strategy("coreset")
class CoreSetStrategy(_QueryModelStrategy):
    """k-center greedy on penultimate features, labelled set as initial centres."""

    selector = "coreset"
    description = "Core-Set: k-center greedy on penultimate features, labeled set as initial centers"
    source = "Sener & Savarese ICLR 2018; LoGo core_set.py; spec 7"


@register_strategy("noise-stability")
class NoiseStabilityStrategy(_QueryModelStrategy):
    """Output deviation under relative weight noise, k-center greedy from the origin."""

    selector = "noise-stability"
    description = "Noise Stability: k-center greedy on output deviations of K noisy copies of the query model"
    source = "Li et al. AAAI 2024 (arXiv 2205.13340); lixingjian/AL-noise-stability noise_stability.py; spec 6"
    selector_settings = (
        "query-model", "noise-stability-num-copies", "noise-stability-noise-scale", "noise-stability-subset-size",
    )


@register_strategy("logo")
class LoGoStrategy(SelectRoundStrategy):
    """KMeans on the local-only model's embedding, highest global entropy per cluster."""

    selector = "logo"
    description = "LoGo: KMeans (budget clusters) on local-only (1 - p_max) * features, max global-model entropy per cluster"
    source = "Kim et al. CVPR 2023; raymin0223/LoGo query_strategies/fal/logo.py; spec 3"
    selector_settings = ("logo-kmeans-n-init", "logo-kmeans-max-iter")

    def validate(self) -> None:
        super().validate()
        if self.cfg.query_model != "global":
            raise ValueError(
                f"query-model: logo always clusters with the local-only model and ranks with the global model; "
                f"query-model={self.cfg.query_model!r} has no meaning for it (leave it at 'global')"
            )
