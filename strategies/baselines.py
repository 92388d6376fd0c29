"""Classification baselines: BADGE, Core-Set, Noise Stability, LoGo: one selection round each.

BADGE and Core-Set also run on regression datasets, as BMDAL's k-means++ and MaxDist
(``query/bmdal.py``), FALE's Core-Set and BADGE baselines (Sec. 5.1).

The selectors are in ``query/baselines.py``. BADGE, Core-Set and Noise
Stability score the pool with the query model named by ``query-model``
(global | local | local-only, as LoGo's ``--query_model_mode``); the global
model is only sent when it is the query model. LoGo always uses both the
local-only model (clustering) and the global model (entropy).
"""

from __future__ import annotations

from typing import ClassVar

from strategies.base import QueryPhase, SelectRoundStrategy, register_strategy

__all__ = ["BadgeStrategy", "CoreSetStrategy", "NoiseStabilityStrategy", "LoGoStrategy"]


class _QueryModelStrategy(SelectRoundStrategy):
    """A selection round whose selector scores the pool with ``query-model``."""

    selector_settings = ("query-model",)

    def uses_model(self) -> bool:
        return self.cfg.query_model == "global"


class _RegressionToo(_QueryModelStrategy):
    """Core-Set and BADGE: on a regression dataset, BMDAL's version of the method (FALE Sec. 5.1).

    ``regression_selector`` (``query/bmdal.py``) runs there with the run-config keys in
    ``regression_settings`` (the query model, the kernel's sigma and the BMDAL configuration);
    classification is unchanged.
    """

    tasks = ("classification", "regression")
    regression_selector: ClassVar[str] = ""
    regression_settings: ClassVar[tuple[str, ...]] = ()

    def query(self, phase: QueryPhase) -> None:
        if self.cfg.task != "regression":
            return super().query(phase)
        phase.select(self.regression_selector, self.settings_of(self.regression_settings), include_model=self.uses_model())


@register_strategy("badge")
class BadgeStrategy(_RegressionToo):
    """k-means++ seeding on the query model's (factorised) gradient embeddings; BMDAL k-means++ on regression."""

    selector = "badge"
    regression_selector = "kmeanspp"
    regression_settings = ("query-model", "bmdal-sigma", "badge-bmdal")
    description = (
        "BADGE: k-means++ seeding on last-layer gradient embeddings of the query model; regression: "
        "k-means++ in the BMDAL kernel (badge-bmdal)"
    )
    source = "Ash et al. ICLR 2020; JordanAsh/badge badge_sampling.py; LoGo badge_sampling.py; spec 7; bmdal_reg kmeanspp"


@register_strategy("coreset")
class CoreSetStrategy(_RegressionToo):
    """k-center greedy on penultimate features, labelled set as initial centres; BMDAL MaxDist on regression."""

    selector = "coreset"
    regression_selector = "maxdist"
    regression_settings = ("query-model", "bmdal-sigma", "coreset-bmdal")
    description = (
        "Core-Set: k-center greedy on penultimate features, labeled set as initial centers; regression: "
        "MaxDist in the BMDAL kernel (coreset-bmdal)"
    )
    source = "Sener & Savarese ICLR 2018; LoGo core_set.py; spec 7; bmdal_reg maxdist"


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
                f"query-model: {self.name} always clusters with the local-only model and ranks with the global model; "
                f"query-model={self.cfg.query_model!r} has no meaning for it (leave it at 'global')"
            )
