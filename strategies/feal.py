"""FEAL (Chen et al., CVPR 2024; spec section 5) as the strategy ``feal``.

Local training uses FEAL's evidential loss (objective ``edl``,
``fal_shared/objectives.py``), so the global and local models have evidential
outputs (alpha = ReLU(logits) + 1; every evaluation and selector reads them as
p = alpha / S, ``fal_shared/heads.py``). One selection round: each client
scores a random subset of its pool with the global model (the fresh aggregate)
and its local model (after its last local update), ranks by the calibrated
evidential uncertainty and relaxes the ranking for diversity
(``query/feal.py``). Only FedAvg weights cross the network (spec 5.5).

``local-objective=cross-entropy`` gives FEAL's selection on a model trained with
plain cross-entropy, whose logits the selector still reads as evidence: what
the AHFAL paper's FEAL row ran (dgitj/FAL has no evidential loss).
"""

from __future__ import annotations

from strategies.base import SelectRoundStrategy, register_strategy

__all__ = ["FealStrategy"]


@register_strategy("feal")
class FealStrategy(SelectRoundStrategy):
    """Evidential training, calibrated evidential uncertainty and diversity relaxation."""

    selector = "feal"
    objective = "edl"
    description = (
        "FEAL: evidential (Dirichlet) local training; global epistemic x (global + local) aleatoric uncertainty "
        "over a random pool subset, relaxed for diversity in the local model's features"
    )
    source = "Chen et al. CVPR 2024; JiayiChen815/FEAL utils/cls/selection_methods.py, utils/loss_func.py; spec 5"
    selector_settings = ("feal-subset-size", "feal-neighbors", "feal-cosine-threshold")
