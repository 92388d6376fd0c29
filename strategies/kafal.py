"""KAFAL (Cao et al., ICCV 2023; spec section 4): ``kafal`` and its selection-only variant ``kafal-ksas``.

Both are one selection round of the client-side KSAS selector
(``query/kafal.py``: symmetric KL between the logit-adjusted local and global
models over the client's labeled classes). They differ in local training:

* ``kafal``: KCFU (``fal_shared/objectives.py``, objective ``kcfu``): balanced
  softmax on the labels plus class-weighted mixup distillation from the
  received global model on unlabeled data;
* ``kafal-ksas``: plain cross-entropy, i.e. KSAS alone, which is the "KAFAL" row
  of the AHFAL paper's Tables 1-2 (App. D: KSAS only 55.57, KSAS + KCFU 70.01 on
  CIFAR-10, alpha 0.1).

Nothing beyond FedAvg crosses the network: the class counts, the teacher and
the local model stay on the client (spec 4.4).
"""

from __future__ import annotations

from strategies.base import SelectRoundStrategy, register_strategy

__all__ = ["KafalStrategy", "KafalKsasStrategy"]


@register_strategy("kafal")
class KafalStrategy(SelectRoundStrategy):
    """KSAS selection with KCFU local training."""

    selector = "kafal"
    objective = "kcfu"
    description = (
        "KAFAL: KSAS (symmetric KL of the local and global models, logit-adjusted by the client's label counts, "
        "over its labeled classes) + KCFU training (balanced softmax + class-weighted mixup distillation from the global model)"
    )
    source = "Cao et al. ICCV 2023; ycao5602/KAFAL main.py; spec 4"
    selector_settings = ("kafal-logit-adjustment",)


@register_strategy("kafal-ksas")
class KafalKsasStrategy(KafalStrategy):
    """KSAS selection with plain cross-entropy training (the AHFAL paper's KAFAL row)."""

    objective = "cross-entropy"
    description = "KAFAL's KSAS selection only, local training with plain cross-entropy (the AHFAL paper's Table 1 KAFAL row)"
    source = "Cao et al. ICCV 2023; AHFAL App. D (KSAS only); spec 4.2"
