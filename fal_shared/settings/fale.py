"""Run-config settings of FedSVD / FALE (shared/papers/fale.txt; spec section 8)."""

from __future__ import annotations

from fal_shared.settings.common import SettingsBase, setting


class FaleSettings(SettingsBase):
    """Settings of FedSVD / FALE (shared/papers/fale.txt; spec section 8); keys are prefixed with the method name."""

    fale_budget_count: int = setting(
        0, "fale-budget-count",
        "FALE/FALE-local: total labels n_q over all clients, selected in one pass by leverage-score sampling "
        "until n_q distinct samples are drawn; 0 = use fale-budget-fraction.",
        unit="samples", source="FALE Alg. 1 (n_q); Sec. 5.1 budgets up to 15,000", ge=0,
    )
    fale_budget_fraction: float = setting(
        0.05, "fale-budget-fraction",
        "FALE/FALE-local when fale-budget-count=0: n_q = ceil(fraction x all clients' training samples).",
        unit="fraction of all clients' data", source="FALE Alg. 1 (n_q)", gt=0, le=1,
    )
    fale_block_size: int = setting(
        1000, "fale-block-size",
        "Block size of the block-diagonal random orthogonal masks P_i (per client) and Q (shared): larger "
        "blocks hide more (the server learns the Gram invariants of every block of rows) and cost O(n b^2).",
        unit="rows", source="FedSVD configs/FedSVD/2_model_config.yml block_size; spec 8.1", ge=1,
    )
    fale_fit_intercept: bool = setting(
        False, "fale-fit-intercept",
        "Append a constant-1 feature before FedSVD, so the leverage scores and FALE's masked least squares "
        "include the linear model's bias. Off = FALE Eq. (2), no intercept (the data are standardised).",
        source="FALE Eq. (2) has no intercept",
    )
    fale_max_draws: int = setting(
        100_000_000, "fale-max-draws",
        "Safety cap on the number of i.i.d. draws n_s of the sampling-until-n_q-distinct loop (tiny "
        "leverage scores make the coupon-collector tail long); the query fails beyond it.",
        unit="draws", source="fedsvd.sample_until_distinct", ge=1,
    )
