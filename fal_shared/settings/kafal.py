"""Run-config settings of KAFAL: KSAS selection and the KCFU local objective (spec section 4).

Every constant of the authors' code (ycao5602/KAFAL ``main.py``, ``config.py``)
and every quirk of it that changes results is a named setting here; the quirks
kept without a setting are explained where they are implemented
(``fal_shared/objectives.py``, ``query/kafal.py``).
"""

from __future__ import annotations

from typing import Literal

from fal_shared.settings.common import SettingsBase, setting

_SRC = "KAFAL main.py"


class KafalSettings(SettingsBase):
    """Settings of KAFAL (spec section 4); keys are prefixed with the method name."""

    kafal_logit_adjustment: float = setting(
        1.0, "kafal-logit-adjustment",
        "KSAS: multiplier tau of the logit adjustment a = f(x) + tau log n_c by the client's labeled class counts "
        "before the symmetric KL between the local and the global model (classes the client never labeled are "
        "left out of the KL).",
        source=_SRC + " get_discrepancy (const = 1); spec 4.2", ge=0,
    )
    kafal_mixup_beta: float = setting(
        2.0, "kafal-mixup-beta",
        "KCFU: both parameters of the Beta(a, a) distribution of the mixing weights of unlabeled pairs.",
        source="KAFAL config.py BETA = [2, 2]; spec 4.3", gt=0,
    )
    kafal_mixup_partner: Literal["permutation", "single"] = setting(
        "permutation", "kafal-mixup-partner",
        "KCFU: the partner each unlabeled sample is mixed with. permutation: a random permutation of the batch "
        "(dgitj/FAL trainer.py, the code behind the AHFAL paper's KAFAL numbers); single: one random sample "
        "for the whole batch, as ycao5602/KAFAL main.py does (np.random.choice(B) returns one index).",
        source=_SRC + " train_epoch_client_distil; dgitj/FAL training/trainer.py; spec 4.3 quirk (i)",
    )
    kafal_compensation_start_round: int = setting(
        2, "kafal-compensation-start-round",
        "KCFU: first FedAvg round of each cycle (1-based) with the compensation (distillation) term; before it "
        "only the balanced-softmax term trains. The reference code skips round 0 (int(comm > 0)): with "
        "model-init=reinit the teacher of the first round is a random network.",
        unit="rounds", source=_SRC + " train_epoch_client_distil int(comm > 0); spec 4.3 quirk (iv)", ge=1,
    )
    kafal_teacher_batchnorm: Literal["batch", "running"] = setting(
        "batch", "kafal-teacher-batchnorm",
        "KCFU: BatchNorm of the teacher (the received global model). batch: train-mode normalisation with the "
        "statistics of each mixed unlabeled batch, as both reference codes do (the server model is never put "
        "in eval mode while it teaches); running: eval mode with the received running statistics (within a "
        "cycle these are FedAvg-averaged, which under label skew are far from any client's). No effect on "
        "models without BatchNorm.",
        source=_SRC + " (models['server'] stays in train mode); dgitj/FAL main.py",
    )
