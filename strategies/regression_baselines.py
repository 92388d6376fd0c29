"""FALE's regression baselines (Sec. 5.1): BAIT, LCMD, ACS-FW and LoGo-BAIT, one selection round each.

As in FALE's experiments, every baseline selects locally on each client with the BMDAL
implementation (``bmdal-reg``; the selectors are in ``query/bmdal.py``), scoring with the current
global linear model (``query-model``), and the loop trains the linear model with FedAvg. Core-Set
and BADGE on a regression dataset are the ``coreset`` and ``badge`` strategies
(``strategies/baselines.py``), which switch to BMDAL's MaxDist and k-means++ there.

The paper's schedule (1% initial labels per client, 5 labels per client per round, Adam lr 0.01,
25 local epochs) is in ``experiments/regression-random-*.toml``; pass ``strategy=<name>`` to run a
baseline with it.
"""

from __future__ import annotations

from typing import ClassVar

from strategies.base import SelectRoundStrategy, register_strategy
from strategies.baselines import LoGoStrategy

__all__ = ["AcsFwStrategy", "BaitStrategy", "BmdalStrategy", "LcmdStrategy", "LoGoBaitStrategy"]

_BMDAL_SOURCE = "bmdal_reg (Holzmueller et al. JMLR 2023) bmdal/selection.py"


class BmdalStrategy(SelectRoundStrategy):
    """One selection round of a BMDAL selector, scored with ``query-model`` (default the global model).

    ``selector_settings`` names the run-config keys the selector reads (sent with the round, so the
    server's values are the ones used).
    """

    tasks = ("regression",)
    selector_settings: ClassVar[tuple[str, ...]] = ("query-model", "bmdal-sigma")

    def uses_model(self) -> bool:
        return self.cfg.query_model == "global"


@register_strategy("bait")
class BaitStrategy(BmdalStrategy):
    selector = "bait"
    selector_settings = BmdalStrategy.selector_settings + ("bait-bmdal", "bait-overselection")
    description = "BAIT: greedy Fisher-information (posterior-variance) batch selection in the BMDAL kernel, forward-backward"
    source = f"Ash et al. NeurIPS 2021; {_BMDAL_SOURCE} BaitFeatureSpaceSelectionMethod; FALE Sec. 5.1"


@register_strategy("lcmd")
class LcmdStrategy(BmdalStrategy):
    selector = "lcmd"
    selector_settings = BmdalStrategy.selector_settings + ("lcmd-bmdal",)
    description = "LCMD: largest-cluster max-distance selection in the BMDAL kernel, labeled set as centers"
    source = f"Holzmueller et al. JMLR 2023; {_BMDAL_SOURCE} LargestClusterMaxDistSelectionMethod; FALE Sec. 5.1"


@register_strategy("acs-fw")
class AcsFwStrategy(BmdalStrategy):
    selector = "acs-fw"
    selector_settings = BmdalStrategy.selector_settings + ("acs-fw-bmdal",)
    description = "ACS-FW: Frank-Wolfe sparse approximation of the pool's kernel embedding (BMDAL fw)"
    source = f"Pinsler et al. NeurIPS 2019; {_BMDAL_SOURCE} FrankWolfeSelectionMethod; FALE Sec. 5.1"


@register_strategy("logo-bait")
class LoGoBaitStrategy(LoGoStrategy):
    """LoGo with BAIT instead of entropy: KMeans on the local-only model, the global model's BAIT score per cluster."""

    selector = "logo-bait"
    tasks = ("regression",)
    description = "LoGo with BAIT for the entropy: KMeans (budget clusters) on local-only features, max global BAIT score per cluster"
    source = "Kim et al. CVPR 2023 (raymin0223/LoGo logo.py); entropy replaced by BAIT as in FALE Sec. 5.1; spec 3"
    selector_settings = LoGoStrategy.selector_settings + ("bait-bmdal", "bmdal-sigma")

