"""Run-config settings of FairFAL (spec section 2).

Every constant of the authors' selection code (FAIR ``query_strategies/fairfal_sampling.py``,
hard-coded there) is a named setting here. The local-only model's recipe (50 epochs,
LR milestone, 99% train-accuracy stop) is shared with LoGo and lives in the core settings
``local-only-epochs``, ``local-only-lr-milestone`` and ``local-only-stop-accuracy``.
"""

from __future__ import annotations

from typing import Literal

from fal_shared.settings.common import SettingsBase, setting

_SRC = "FAIR fairfal_sampling.py (hard-coded); spec 2.1-2.2"


class FairfalSettings(SettingsBase):
    """Settings of FairFAL (spec section 2); keys are prefixed with the method name."""

    fairfal_t: float = setting(
        0.5, "fairfal-t",
        "t in the query-model ratio 1 - (1-t)(d_i + g-bar) + (1-2t) d_i g-bar (t=0.5 gives 1 - (d_i + g-bar)/2).",
        source=_SRC + " step 6", ge=0, le=1,
    )
    fairfal_ratio_threshold: float = setting(
        0.75, "fairfal-ratio-threshold",
        "The global model scores uncertainty when the ratio is strictly above this; otherwise the local-only model.",
        source=_SRC + " step 6", ge=0, le=1,
    )
    fairfal_g_bar_threshold: float = setting(
        0.5, "fairfal-g-bar-threshold",
        "The global model gives the gradient-embedding probabilities when g-bar is strictly below this; "
        "otherwise the local-only model.",
        source=_SRC + " step 6", ge=0, le=1,
    )
    fairfal_candidate_multiplier: float = setting(
        4.0, "fairfal-candidate-multiplier",
        "Stage 1 keeps the top min(|B_c|, max(1, floor(multiplier x q_c))) most uncertain samples of each "
        "pseudo-class before k-center greedy.",
        unit="x class quota", source=_SRC + " over_sample_k, step 11", ge=1,
    )
    fairfal_prototype_temperature: float = setting(
        1.5, "fairfal-prototype-temperature",
        "Softmax temperature of the prototype similarities. The pseudo-label is their argmax, so it does not change "
        "any selection; it only scales the reported prototype confidence.",
        source=_SRC + " proto_probs_from_embeddings, step 8", gt=0,
    )
    fairfal_g_bar_mode: Literal["freeze", "refresh"] = setting(
        "freeze", "fairfal-g-bar-mode",
        "freeze: the server computes g-bar = mean g_i at the first query and reuses it (the authors' code; later "
        "queries skip the statistics round); refresh: a statistics round every query.",
        source="FAIR main.py (mean_global_ratio computed once); spec 2.2 step 5",
    )
    fairfal_balanced_mean: Literal["class-mean", "oversample"] = setting(
        "class-mean", "fairfal-balanced-mean",
        "Class-balanced mean predictions on the labeled set (for d_i and g_i). class-mean: the mean over the "
        "classes present of each class's mean prediction (deterministic). oversample: the authors' estimate, "
        "every class resampled with replacement to the largest class's size (numpy default_rng(42)); it "
        "reproduces their d_i and g_i exactly, which differ from class-mean by sampling noise (0.007 in d_i, "
        "0.013 in g_i on the parity fixture) and can move a client across the 0.75 / 0.5 thresholds.",
        source="FAIR query_strategies/strategy.py predict_balanced_prob_mean, make_balanced_indices(seed=42); "
               "spec 2.2 step 2",
    )
