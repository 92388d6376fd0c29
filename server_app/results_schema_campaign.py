"""The campaign's part of the ``results.json`` schema (``server_app/campaign.py``, ``server_app/tracking.py``).

A cycle's ``campaign`` record, and the run-level ``stop``, ``campaign-warnings``
and ``tracking``, as pydantic models; :mod:`server_app.results_schema` uses them,
and the docs' results.json page is generated from both. What each number is worth
and costs: ``docs/guides/campaign.md``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Campaign", "RunStop", "CampaignWarning", "Tracking", "MODELS"]


def _f(description: str, default: Any = ..., **kw: Any) -> Any:
    return Field(default, description=description, **kw)


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SiteEstimate(_Closed):
    """One site's estimate on its audit labels (Wilson interval for accuracy, normal for MSE)."""

    n: int = _f("audit labels scored")
    correct: float | None = _f("accuracy: audit labels predicted right", None)
    estimate: float = _f("accuracy or MSE on them (NaN when n = 0)")
    ci_low: float = _f("lower end of the interval at audit-confidence", alias="ci-low")
    ci_high: float = _f("upper end", alias="ci-high")
    variance: float | None = _f("MSE: variance of the estimate", None)


class PooledEstimate(_Closed):
    """The sites' estimates pooled, stratified by site data size."""

    estimate: float = _f("pooled accuracy or MSE")
    ci_low: float = _f("lower end of the interval at audit-confidence", alias="ci-low")
    ci_high: float = _f("upper end", alias="ci-high")
    n: int = _f("audit labels scored, all sites")
    n_effective: float | None = _f("accuracy: the effective sample size of the Wilson interval", None, alias="n-effective")
    variance: float = _f("variance of the pooled estimate")
    sites: int = _f("sites with audit labels")


class Estimate(_Closed):
    """An arm's estimate on the audit labels: the global model (audit) or the shadow model (random)."""

    metric: Literal["accuracy", "mse"] = _f("what is estimated")
    pooled: PooledEstimate | None = _f("pooled over the sites (None when no site has audit labels)")
    per_site: dict[str, SiteEstimate] = _f("per partition", alias="per-site")
    interval: str = _f("how the intervals are computed, in words")
    held: int | None = _f("audit: audit labels held, all sites", None)


class Calibration(_Closed):
    """The calibration check on the audit labels (classification), before the query phase."""

    bins: int = _f("calibration-bins")
    binning: str = _f("how the ECE bins are made")
    uncertainty: str = _f("the uncertainty the AUROC ranks by")
    flags: list[Literal["miscalibrated", "uninformative-uncertainty"]] = _f("what the check warns of")
    ece: float | None = _f("expected calibration error of the top-class probability", None)
    auroc: float | None = _f("AUROC of the predictive entropy as a detector of audit errors (None: one class only)", None)
    auroc_binning_bound: float | None = _f("how far the AUROC's binning may move it", None, alias="auroc-binning-bound")
    audit_errors: float | None = _f("audit errors, weighted as pooled", None, alias="audit-errors")


class Rule(_Closed):
    """A stopping rule's value this cycle (server_app/stopping.py)."""

    value: float | None = _f("its value (None: not enough cycles or labels yet)")
    threshold: float = _f("its run-config threshold")
    unit: str = _f("unit of value and threshold")
    fired: bool = _f("it would stop the run (stops it if stop-when names it)")
    why: str = _f("the rule, in words")


class Measured(_Closed):
    """What the rules are computed from."""

    kappa: float | None = _f("classification: Cohen's kappa of this and the last global model on the stop set", None)
    pool_max_uncertainty: float | None = _f("classification: highest normalised entropy over the pools", None,
                                            alias="pool-max-uncertainty")
    pool_mean_uncertainty: float | None = _f("classification: mean normalised entropy over the pools", None,
                                             alias="pool-mean-uncertainty")
    paired_gain: float | None = _f("audit: gain of the pooled estimate on audit samples scored in both cycles", None,
                                   alias="paired-gain")
    labels_spent: int = _f("labels bought (audit labels too with audit-in-budget)", alias="labels-spent")
    labels_since_last: int | None = _f("labels bought since the last measured cycle", None, alias="labels-since-last")
    next_budget: int | None = _f("labels the next query phase would buy (None: the last cycle)", None, alias="next-budget")
    random_arm_labels: int = _f("labels the shadow model trains on (initial + random share)", alias="random-arm-labels")


class Campaign(_Closed):
    """A cycle's campaign numbers (with audit-size > 0, stop-when or random-share; docs/guides/campaign.md)."""

    measured: Measured | None = _f("the measurements", None)
    rules: dict[str, Rule] | None = _f("every stopping rule's value (stabilizing-predictions, max-uncertainty, "
                                       "gain-per-label, budget-exhausted)", None)
    stop: str | None = _f("the stop-when rules that fired and stopped the run here (None: go on)", None)
    audit: Estimate | None = _f("the global model on the audit labels", None)
    random: Estimate | None = _f("random-share: the shadow model on the audit labels", None)
    calibration: Calibration | None = _f("the calibration check", None)
    random_share_ids: dict[str, list[int]] | None = _f("random-share: sample ids bought at random, per partition",
                                                       None, alias="random-share-ids")
    random_share_bought: int | None = _f("random-share: how many", None, alias="random-share-bought")


class RunStop(_Closed):
    """Why the run stopped before num-cycles (stop-when)."""

    cycle: int = _f("the cycle after whose evaluation it stopped")
    reason: str = _f("the rules that fired, their values and thresholds")


class CampaignWarning(_Closed):
    """A calibration check's warning."""

    cycle: int = _f("the cycle")
    flag: Literal["miscalibrated", "uninformative-uncertainty"] = _f("what it warned of")


class Tracking(_Closed):
    """Where the run's curves were logged (tracker = mlflow)."""

    tracker: Literal["mlflow"] | None = _f("the tracker", None)
    uri: str | None = _f("its tracking URI", None)
    experiment_id: str | None = _f("the MLflow experiment id", None, alias="experiment-id")
    run_id: str | None = _f("the MLflow run id", None, alias="run-id")
    errors: list[str] | None = _f("tracker calls that failed (the run went on)", None)


MODELS: list[type[BaseModel]] = [Campaign, Measured, Rule, Estimate, PooledEstimate, SiteEstimate, Calibration,
                                 RunStop, CampaignWarning, Tracking]
