"""Run-config settings of FEAL: the evidential loss and the query (spec section 5).

Constants of the authors' code (JiayiChen815/FEAL ``main_cls_al.py`` argparse
defaults, ``utils/loss_func.py``, ``utils/cls/selection_methods.py``).
"""

from __future__ import annotations

from fal_shared.settings.common import SettingsBase, setting

_SRC = "FEAL main_cls_al.py"


class FealSettings(SettingsBase):
    """Settings of FEAL (spec section 5); keys are prefixed with the method name."""

    feal_kl_weight: float = setting(
        0.01, "feal-kl-weight",
        "EDL loss: weight lambda of the KL regulariser and the correction term, L = L_ce + lambda (L_kl + L_cor).",
        source=_SRC + " --kl_weight 1e-2; utils/loss_func.py EDL_Loss; spec 5.1", ge=0,
    )
    feal_annealing_step: int = setting(
        10, "feal-annealing-step",
        "EDL loss: the KL term is multiplied by min(1, t / annealing step), t = the FedAvg round index within the "
        "cycle starting at 0 (FEAL anneals over FL rounds, not epochs).",
        unit="rounds", source=_SRC + " --annealing_step 10; spec 5.1", ge=1,
    )
    feal_subset_size: int = setting(
        10000, "feal-subset-size",
        "Query: random subset of the client's pool scored per query (at least the budget); 0 = the whole pool.",
        unit="samples", source=_SRC + " SUBSET = 10000; spec 5.2", ge=0,
    )
    feal_neighbors: int = setting(
        5, "feal-neighbors",
        "Diversity relaxation: a candidate is skipped when it has this many neighbours above the cosine "
        "threshold (in the local model's features) and one of them was already selected in this query.",
        unit="samples", source=_SRC + " --n_neighbor 5; selection_methods.py relaxation; spec 5.3", ge=1,
    )
    feal_cosine_threshold: float = setting(
        0.85, "feal-cosine-threshold",
        "Diversity relaxation: cosine similarity above which two pool samples are neighbours.",
        unit="cosine", source=_SRC + " --cosine 0.85; spec 5.3", ge=-1, le=1,
    )
