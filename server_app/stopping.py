"""Stopping rules of a campaign, evaluated on the server each cycle from pooled counts (``stop-when``).

Every rule returns ``{"value", "threshold", "unit", "fired", "why"}``; ``value`` is
None while the rule cannot be evaluated yet (too few cycles, no audit label).

* ``stabilizing-predictions`` (Bloodgood & Vijay-Shanker 2009, "A method for stopping
  active learning based on stabilizing predictions and the need for user-adjustable
  stopping"): Cohen's kappa between the predictions of consecutive models on a stop
  set (unlabeled; here the union of every site's seeded stop set, so the kappa comes
  from the summed agreement matrix); fires when the mean kappa of the last
  ``stop-window`` pairs is at least ``stop-kappa`` (their 0.99 over 3).
* ``gain-per-label``: the paired gain of the pooled audit estimate (the same audit
  samples scored by consecutive models: accuracy rise, or MSE fall) summed over the
  last ``stop-window`` cycles, per query label bought in them; fires below
  ``stop-gain-per-label``.
* ``max-uncertainty`` (the maximum-uncertainty criterion of Zhu, Wang & Hovy 2008): the
  highest normalised predictive entropy over every site's unlabeled pool; fires below
  ``stop-max-uncertainty``.
* ``budget-exhausted``: labels bought plus the next query phase's budgets would pass
  ``label-budget``, or no site has anything left to buy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fal_shared.config import RunConfig

__all__ = ["evaluate_rules", "decide"]


def _rule(value: float | None, threshold: float, unit: str, fired: bool, why: str) -> dict[str, Any]:
    return {"value": value, "threshold": threshold, "unit": unit, "fired": bool(fired and value is not None), "why": why}


def evaluate_rules(cfg: RunConfig, history: Sequence[dict[str, Any]], current: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The value of every rule at this cycle.

    ``history``: the ``campaign`` records of the earlier cycles; ``current``: this cycle's
    measurements (``kappa``, ``paired-gain``, ``labels-since-last``, ``pool-max-uncertainty``,
    ``labels-spent``, ``next-budget``).
    """
    rules: dict[str, dict[str, Any]] = {}
    w = cfg.stop_window
    series = [h.get("measured", {}) for h in history] + [current]
    if cfg.task == "classification":
        kappas = [m.get("kappa") for m in series[-w:]]
        value = sum(kappas) / w if len(kappas) == w and all(k is not None for k in kappas) else None
        rules["stabilizing-predictions"] = _rule(
            value, cfg.stop_kappa, "kappa", value is not None and value >= cfg.stop_kappa,
            f"mean kappa of the last {w} pairs of consecutive models on the stop set >= {cfg.stop_kappa:g}",
        )
        unc = current.get("pool-max-uncertainty")
        rules["max-uncertainty"] = _rule(
            unc, cfg.stop_max_uncertainty, "normalised entropy", unc is not None and unc < cfg.stop_max_uncertainty,
            f"highest normalised entropy over the pools < {cfg.stop_max_uncertainty:g}",
        )
    if cfg.audit_on:
        window = series[-w:]
        gains = [m.get("paired-gain") for m in window]
        labels = sum(int(m.get("labels-since-last", 0)) for m in window)
        value = None
        if len(window) == w and all(g is not None for g in gains) and labels > 0:
            value = sum(gains) / labels
        rules["gain-per-label"] = _rule(
            value, cfg.stop_gain_per_label, "per label", value is not None and value < cfg.stop_gain_per_label,
            f"paired audit gain over the last {w} cycles per query label < {cfg.stop_gain_per_label:g}",
        )
    spent, nxt = int(current.get("labels-spent", 0)), current.get("next-budget")
    if nxt is None:  # the last cycle: no query phase follows
        fired, why = False, "the last cycle: nothing more is bought"
    else:
        fired = (cfg.label_budget > 0 and spent + int(nxt) > cfg.label_budget) or int(nxt) == 0
        why = (f"{spent} labels bought + {nxt} next > label-budget {cfg.label_budget}" if cfg.label_budget
               else "no site has labels left to buy")
    rules["budget-exhausted"] = _rule(float(spent), float(cfg.label_budget), "labels", fired, why)
    return rules


def decide(cfg: RunConfig, rules: dict[str, dict[str, Any]]) -> str | None:
    """The stop reason when the ``stop-when`` rules say stop (any / all), else None."""
    named = cfg.stop_rules
    if not named:
        return None
    fired = [r for r in named if rules.get(r, {}).get("fired")]
    if (cfg.stop_when_combine == "any" and fired) or (cfg.stop_when_combine == "all" and len(fired) == len(named)):
        return ", ".join(f"{r} ({_fmt(rules[r]['value'])} vs {rules[r]['threshold']:g} {rules[r]['unit']})" for r in fired)
    return None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
