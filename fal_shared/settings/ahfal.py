"""Run-config settings of AHFAL (shared/papers/ahfal.txt; spec section 2b).

Units matter for ``ahfal-tau``: sigma_c is the population standard deviation over
clients of the class-c *proportion* p_{i,c} = n_{i,c} / |L_i|, expressed in
percentage points (x 100), because the reference code multiplies by 100 before it
compares with tau = 12 (dgitj/FAL query_strategies/ahfal.py). With proportions in
[0, 1] a threshold of 12 would put every class in C_low.
"""

from __future__ import annotations

from typing import Literal

from fal_shared.settings.common import SettingsBase, setting


class AhfalSettings(SettingsBase):
    """Settings of AHFAL (shared/papers/ahfal.txt; spec section 2b); keys are prefixed with the method name."""

    ahfal_tau: float = setting(
        12.0, "ahfal-tau",
        "AHFAL: variance threshold tau. C_low = {c : sigma_c < tau} (hybrid local+global entropy), C_high = the rest "
        "(local entropy). sigma_c = population std over clients of the class-c proportion n_ic / size(L_i), x 100.",
        unit="percentage points of class share", source="AHFAL Sec. 6.1 Eq. (2), 7.1, H (tau = 12); reference code x100",
        ge=0,
    )
    ahfal_allocation: Literal["paper", "reference"] = setting(
        "paper", "ahfal-allocation",
        "AHFAL: class budgets. paper = Eq. (4): b_c proportional to 1 for classes the client has no label of, else "
        "1/n_ic; integer by largest remainder; a pseudo-class bucket's shortfall goes to the other classes in proportion "
        "to their weights. reference = the authors' code: representation ratio m_ic / size(L_i) / target_c, where m_ic "
        "counts the labeled samples the GLOBAL model predicts as c (not their true labels), with missing classes "
        "(m_ic = 0) first and 50/30/20 % tiers.",
        source="AHFAL Sec. 6.1 Eq. (4); dgitj/FAL query_strategies/ahfal.py:compute_target_counts, select_samples step 2",
    )
    ahfal_target: Literal["mean", "pooled"] = setting(
        "mean", "ahfal-target",
        "AHFAL: global target class distribution (used by ahfal-allocation=reference and recorded): mean = mean over "
        "clients of p_i (paper); pooled = sum_i n_i / sum_i size(L_i) (reference code).",
        source="AHFAL Sec. 6.1 (p_bar); dgitj/FAL aggregate_class_distributions",
    )
    ahfal_hybrid_rule: Literal["paper", "reference"] = setting(
        "paper", "ahfal-hybrid-rule",
        "AHFAL: when a pool sample gets the hybrid score (H_L + H_G)/2. paper: its local pseudo-label is in C_low "
        "(Eq. 3). reference: the local OR the global model's argmax is in C_low.",
        source="AHFAL Sec. 6.1 Eq. (3); dgitj/FAL ahfal.py:pseudo_label_data",
    )
    ahfal_toggling: bool = setting(
        True, "ahfal-toggling",
        "AHFAL: local/global toggling by class variance. false = ablation 'w/o toggling': local entropy H_L for "
        "every class.",
        source="AHFAL Table 4 row 2",
    )
    ahfal_class_balancing: bool = setting(
        True, "ahfal-class-balancing",
        "AHFAL: class-aware budget allocation. false = ablation 'w/o class balance': plain top-B of the score "
        "(with ahfal-toggling=false this is local-model entropy sampling).",
        source="AHFAL Table 4 row 3",
    )
    ahfal_dp_epsilon: float = setting(
        0.0, "ahfal-dp-epsilon",
        "AHFAL local DP: total privacy budget epsilon of each client's label histograms over the whole run, split "
        "equally over the num-cycles query phases (Laplace noise of scale sensitivity / (epsilon / num-cycles), "
        "rounded and clipped at 0). 0 = no noise. Set record-label-histograms=false too, or the results file "
        "holds the exact histograms.",
        unit="epsilon (total per client)", source="AHFAL Sec. 6.3, Table 3 (5 and 10 over 5 cycles)", ge=0,
    )
    ahfal_dp_sensitivity: float = setting(
        1.0, "ahfal-dp-sensitivity",
        "AHFAL local DP: L1 sensitivity of a label histogram. 1 = add/remove-one-sample neighbours; use 2 for "
        "replace-one neighbours.",
        unit="counts", source="spec 2b (sensitivity 1 per added/removed sample)", gt=0,
    )
    ahfal_dp_noise_seed: Literal["system", "run-seed"] = setting(
        "system", "ahfal-dp-noise-seed",
        "AHFAL local DP: source of the Laplace noise. system = OS entropy (the server cannot reproduce it; required "
        "for a real privacy guarantee). run-seed = seeded from (seed, partition, cycle): reproducible simulations, "
        "but anyone who knows the run seed can subtract the noise.",
    )
    ahfal_secure_sum: bool = setting(
        False, "ahfal-secure-sum",
        "AHFAL: secure summation of the statistics (pairwise X25519/HKDF masks modulo 2^64, fedsvd.secure_sum): the "
        "server learns only sum_i n_i, sum_i p_i and sum_i p_i^2 (fixed point), never one client's histogram. "
        "Combines with ahfal-dp-epsilon. A client dropping out mid-round fails the round (no dropout recovery).",
        source="AHFAL Sec. 6.3; Bonawitz et al. 2017 (without Shamir recovery)",
    )
    ahfal_secure_sum_frac_bits: int = setting(
        32, "ahfal-secure-sum-frac-bits",
        "AHFAL secure summation: fixed-point fractional bits of p_i and p_i^2 (resolution 2^-bits per client).",
        unit="bits", ge=8, le=48,
    )
