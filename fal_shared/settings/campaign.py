"""Run-config settings of a labeling campaign: audit labels, stopping rules, the calibration check, the tracker.

A campaign asks three questions every cycle (docs/guides/campaign.md): is the
model getting better on the sites' own data (an *audit sample*: a small,
uniformly random set of labels per site, bought through the site's oracle,
never trained on), is active selection beating random selection (a *random
share* of each query budget trained into a shadow model), and when to stop
buying labels (named *stopping rules*, ``stop-when``). The numbers go to
``results.json``, the cycle log and, optionally, an MLflow tracker.

Nothing here changes a run unless it is turned on: with ``audit-size = 0``,
``stop-when = ""``, ``random-share = 0`` and ``tracker = "off"`` (the
defaults) no message is added and the results are those of earlier versions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from fal_shared.settings.common import SettingsBase, setting

__all__ = ["CampaignSettings", "STOP_RULES", "UNSUPPORTED_STRATEGIES"]

#: the stopping rules ``stop-when`` may name, with what each needs
STOP_RULES = {
    "stabilizing-predictions": "classification",  # Cohen's kappa of consecutive models on a stop set
    "gain-per-label": "audit",  # paired change of the audit estimate per label bought
    "max-uncertainty": "classification",  # the pool's most uncertain sample
    "budget-exhausted": "",  # label-budget reached
}
#: strategies whose selection does not draw from the pool (query.select): they may pick audit samples
UNSUPPORTED_STRATEGIES = {
    "fale": "FALE selects by leverage over every row of a site, audit samples included",
    "fale-local": "FALE-local selects by leverage over every row of a site, audit samples included",
}


class CampaignSettings(SettingsBase):
    """Audit labels, the active-vs-random estimate, stopping rules, calibration check, tracker."""

    audit_mode: Literal["fraction", "count"] = setting(
        "fraction", "audit-mode", "Size of each site's audit sample: audit-size is a fraction of the site's data, or a count.",
    )
    audit_size: float = setting(
        0.0, "audit-size",
        "Audit labels per site, bought once before the first cycle: a uniformly random sample of the site's data "
        "(drawn from what the initial labels left), labeled by the site's oracle (people included), kept apart in "
        "the ledger and never trained on; 0 = no audit. audit-mode=fraction: a fraction of the site's data "
        "(rounded up); count: samples.", unit="fraction of the client's data, or samples", ge=0,
    )
    audit_topup: int = setting(
        0, "audit-topup",
        "Audit labels added per site after every cycle's evaluation (bought with that cycle's query labels, "
        "waited for with them); 0 = the audit sample is bought once. Top-ups are reserved at the start (the "
        "audit sample stays uniform over the site's data), so the reserve is withheld from the pool.",
        unit="samples per site per cycle", ge=0,
    )
    audit_in_budget: bool = setting(
        False, "audit-in-budget",
        "Count audit labels as spent budget: each cycle's query budget of a site is reduced by its audit top-up, "
        "and budget-exhausted counts audit labels. Default: audit labels are reported apart and cost no query budget.",
    )
    audit_confidence: float = setting(
        0.95, "audit-confidence",
        "Confidence level of the audit intervals: Wilson per site; pooled, a Wilson interval at the stratified "
        "estimate's effective sample size (accuracy) or a normal interval (MSE).", unit="probability", gt=0, lt=1,
    )
    random_share: float = setting(
        0.0, "random-share",
        "Fraction of each cycle's query budget per site chosen uniformly at random instead of by the strategy (the "
        "main model trains on them too); a shadow model is trained by FedAvg on the initial plus these random labels "
        "each cycle and scored on the audit sample: the random-selection curve, without a second campaign. 0 = off.",
        unit="fraction of the budget", ge=0, lt=1,
    )
    stop_when: str = setting(
        "", "stop-when",
        "Stopping rules that stop the run cleanly before a query phase (status completed, stop-reason recorded, no "
        "label bought after the decision): a comma list of " + ", ".join(STOP_RULES)
        + "; empty = never stop early. Rules are evaluated and recorded every cycle whenever audit labels are on "
        "or stop-when names one.",
    )
    stop_when_combine: Literal["any", "all"] = setting(
        "any", "stop-when-combine", "Stop when any of the stop-when rules fires, or only when all fire in the same cycle.",
    )
    stop_set_size: int = setting(
        200, "stop-set-size",
        "stabilizing-predictions: samples per site (a seeded uniform subset of its data, labels not needed) on which "
        "consecutive global models' predictions are compared.", unit="samples per site",
        source="Bloodgood & Vijay-Shanker 2009 (stop set)", ge=1,
    )
    stop_kappa: float = setting(
        0.99, "stop-kappa",
        "stabilizing-predictions fires when the mean Cohen's kappa of consecutive models' predictions on the pooled "
        "stop set, over the last stop-window pairs, is at least this.", unit="kappa",
        source="Bloodgood & Vijay-Shanker 2009: 0.99", gt=-1, le=1,
    )
    stop_window: int = setting(
        3, "stop-window",
        "Window of stabilizing-predictions (kappa pairs averaged) and of gain-per-label (cycles over which the gain "
        "and the labels are summed).", unit="cycles", source="Bloodgood & Vijay-Shanker 2009: 3", ge=1,
    )
    stop_gain_per_label: float = setting(
        1e-5, "stop-gain-per-label",
        "gain-per-label fires when the paired gain of the pooled audit estimate (accuracy rise, or MSE fall, on the "
        "audit samples scored in both cycles) over the last stop-window cycles, divided by the query labels bought "
        "in them, is below this.", unit="accuracy (or MSE) per label", source="project default: 1 point per 1,000 labels",
    )
    stop_max_uncertainty: float = setting(
        0.1, "stop-max-uncertainty",
        "max-uncertainty fires when the highest predictive entropy of the global model over every site's unlabeled "
        "pool, divided by log(classes), is below this (each site sends its maximum: one number).",
        unit="normalised entropy (0-1)", source="Zhu, Wang & Hovy 2008 (maximum uncertainty); threshold: project default",
        ge=0, le=1,
    )
    label_budget: int = setting(
        0, "label-budget",
        "budget-exhausted fires when the labels bought (initial and query labels of every site, audit labels too with "
        "audit-in-budget) plus the next query phase's budgets would exceed this; 0 = no campaign budget (the rule "
        "fires only when every pool is empty).", unit="labels (all sites)", ge=0,
    )
    calibration_bins: int = setting(
        15, "calibration-bins",
        "Equal-width bins of the top-class probability for the expected calibration error on the audit labels.",
        unit="bins", source="Guo et al. 2017 (15 bins)", ge=2, le=100,
    )
    calibration_max_ece: float = setting(
        0.15, "calibration-max-ece",
        "The calibration check warns (and flags the cycle miscalibrated) when the audit ECE exceeds this.",
        unit="probability", source="project default", gt=0, le=1,
    )
    calibration_min_auroc: float = setting(
        0.6, "calibration-min-auroc",
        "The calibration check warns (and flags the cycle's uncertainty uninformative) when the AUROC of the global "
        "model's predictive entropy as a detector of its audit errors is below this (0.5 = chance).",
        unit="AUROC", source="project default", ge=0, le=1,
    )
    tracker: Literal["off", "mlflow"] = setting(
        "off", "tracker",
        "Log every cycle's numbers, as they arrive, to an experiment tracker: mlflow (pip install -e \".[tracking]\"); "
        "off = results.json and the log only.",
    )
    tracking_uri: str = setting(
        "", "tracking-uri",
        "tracker=mlflow: where runs are stored: empty = a local store, sqlite:///<output-dir>/mlflow.db (view it with "
        "mlflow ui --backend-store-uri <that URI>); or a tracking server's address, http(s)://host:port; or any "
        "MLflow tracking URI (sqlite:///abs/path.db, postgresql://...).", unit="URI",
    )
    tracking_experiment: str = setting(
        "", "tracking-experiment",
        "tracker=mlflow: the MLflow experiment the run is logged under; empty = \"fal\" (fal-sweep sets the sweep's "
        "name, so a sweep's runs are grouped under one parent run).",
    )

    # ----------------------------------------------------------------- helpers
    @property
    def audit_on(self) -> bool:
        return self.audit_size > 0

    @property
    def stop_rules(self) -> list[str]:
        return [r.strip() for r in self.stop_when.split(",") if r.strip()]

    @property
    def campaign_on(self) -> bool:
        """Whether the campaign measurement round (query.audit) runs every cycle."""
        return self.audit_on or bool(self.stop_rules) or self.random_share > 0

    def audit_count(self, client_size: int) -> int:
        """Audit labels a site of ``client_size`` samples buys before the first cycle."""
        import math

        if not self.audit_on or client_size == 0:
            return 0
        if self.audit_mode == "count":
            return int(self.audit_size)
        return max(1, math.ceil(self.audit_size * client_size - 1e-9))

    def audit_reserve(self, client_size: int, num_cycles: int) -> int:
        """Audit samples set aside for a site over the whole run (the first sample and every top-up)."""
        return self.audit_count(client_size) + (self.audit_topup * num_cycles if self.audit_on else 0)

    def audit_size_error(self, sizes: dict[int, int]) -> str:
        """Why the audit sample cannot be set aside at some site (``sizes``: partition -> data size), or ''."""
        for pid, size in sorted(sizes.items()):
            need = self.audit_reserve(size, getattr(self, "num_cycles", 0))
            pool = size - self.initial_count(size)
            if need > pool:
                return (f"audit-size: partition {pid} would set aside {need} audit samples (audit-size={self.audit_size:g} "
                        f"{self.audit_mode}, audit-topup={self.audit_topup} x {getattr(self, 'num_cycles', 0)} cycles) "
                        f"but has only {pool} samples besides its initial labels")
        return ""

    @model_validator(mode="after")
    def _check_campaign(self) -> "CampaignSettings":
        rules = self.stop_rules
        unknown = [r for r in rules if r not in STOP_RULES]
        if unknown:
            raise ValueError(f"stop-when: unknown rule(s) {', '.join(map(repr, unknown))}; valid: {', '.join(STOP_RULES)}")
        if len(set(rules)) != len(rules):
            raise ValueError(f"stop-when: a rule is named twice in {self.stop_when!r}")
        if self.audit_mode == "count" and self.audit_size != int(self.audit_size):
            raise ValueError(f"audit-size: with audit-mode=count it is a number of samples, got {self.audit_size}")
        if self.audit_mode == "fraction" and self.audit_size >= 1:
            raise ValueError(f"audit-size: with audit-mode=fraction it must be below 1 (a share of each site's data), got {self.audit_size}")
        if self.audit_mode == "fraction" and self.audit_on and getattr(self, "budget_mode", "") == "fraction":
            initial, budget = getattr(self, "initial_labeled_fraction", 0.0), getattr(self, "budget_fraction", 0.0)
            cycles = getattr(self, "num_cycles", 0)
            total = initial + self.audit_size + cycles * budget
            if total > 1 + 1e-9:
                raise ValueError(
                    f"audit-size: initial-labeled-fraction + audit-size + num-cycles x budget-fraction = {initial} + "
                    f"{self.audit_size} + {cycles} x {budget} = {total:.3f} is more than every site's whole data (1.0)"
                )
        if self.audit_topup and not self.audit_on:
            raise ValueError("audit-topup: tops up an audit sample, but audit-size is 0 (no audit)")
        task = getattr(self, "task", "classification")
        for rule in rules:
            need = STOP_RULES[rule]
            if need == "audit" and not self.audit_on:
                raise ValueError(f"stop-when: {rule!r} measures the audit estimate; set audit-size > 0")
            if need == "classification" and task != "classification":
                raise ValueError(f"stop-when: {rule!r} compares class predictions and applies to classification only")
        if self.random_share > 0 and not self.audit_on:
            raise ValueError("random-share: the shadow model is scored on the audit sample; set audit-size > 0")
        strategy = getattr(self, "strategy", "")
        if (self.audit_on or self.random_share > 0) and strategy in UNSUPPORTED_STRATEGIES:
            raise ValueError(f"audit-size / random-share: not with strategy {strategy!r}: {UNSUPPORTED_STRATEGIES[strategy]}")
        if self.tracking_uri and self.tracker == "off":
            raise ValueError("tracking-uri: set tracker=\"mlflow\" too (tracker is off)")
        if self.tracking_uri and "://" not in self.tracking_uri and not self.tracking_uri.startswith(("file:", "databricks")):
            raise ValueError(
                f"tracking-uri: {self.tracking_uri!r} is not a URI; use http://host:port, https://..., "
                "sqlite:////absolute/path.db, or empty for the local store"
            )
        return self
