"""The numbers of a campaign, from the per-site counts and sums of ``query.audit`` (no sample leaves a site).

* **Per-site accuracy**: the audit sample's proportion correct with a Wilson score
  interval (Wilson 1927; the formula of ``scipy.stats.binomtest(...).proportion_ci(method="wilson")``,
  written out here because the pooled interval below needs it at a non-integer n).
* **Pooled accuracy**: the stratified estimate ``sum_s w_s p_s`` with ``w_s`` = site data
  size / all sites' data (the audit sample of a site is uniform over its data, so this
  estimates the accuracy over the federation's data, the population the test set is drawn
  from in a simulation). Its variance ``sum_s w_s^2 p~_s (1 - p~_s) / n_s`` uses the
  Agresti-Coull-adjusted ``p~_s = (c_s + 2) / (n_s + 4)`` so a site with all-correct audit
  labels does not claim zero variance; the interval is Wilson's at the effective sample
  size ``n_eff = p (1 - p) / var`` (Kish's design effect; Korn & Graubard 1998 use the same
  idea for stratified proportions).
* **MSE** (regression): per site the mean squared error with a normal interval from the
  squared errors' sample variance; pooled, the stratified mean with ``sum w_s^2 s_s^2 / n_s``.
* **ECE**: ``sum_b (n_b / n) |acc_b - conf_b|`` over equal-width bins of the top-class
  probability (Naeini et al. 2015; Guo et al. 2017 use 15 bins); each site's bins are
  weighted by ``w_s / (n_s / n)`` so that the pooled bins stand for the same population.
* **AUROC of uncertainty vs error**: the probability that an audit error has a higher
  predictive entropy than a correct prediction, computed from the pooled histograms of the
  entropy of errors and of correct predictions (100 bins). It is *exact for the binned
  scores*; the exact AUROC of the unbinned scores differs from it by at most half the
  share of (error, correct) pairs that fall in the same bin, which is reported as
  ``auroc-binning-bound``.
* **Cohen's kappa** of consecutive models on the stop set, from the summed agreement matrix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import norm

__all__ = ["z_value", "wilson", "site_accuracy", "pooled_accuracy", "site_mse", "pooled_mse",
           "weights", "ece", "binned_auroc", "cohen_kappa"]


def z_value(confidence: float) -> float:
    """The two-sided standard normal quantile of ``confidence`` (0.95 -> 1.96)."""
    return float(norm.ppf(0.5 + confidence / 2))


def wilson(successes: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (``n`` may be an effective, non-integer size)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def weights(sizes: Mapping[str, int], audited: Sequence[str]) -> dict[str, float]:
    """Stratum weights: each audited site's data size over the audited sites' total."""
    total = sum(sizes[s] for s in audited)
    return {s: sizes[s] / total for s in audited} if total else {}


def site_accuracy(correct: float, n: int, z: float) -> dict[str, float]:
    lo, hi = wilson(correct, n, z)
    return {"n": int(n), "correct": float(correct), "estimate": correct / n if n else float("nan"), "ci-low": lo, "ci-high": hi}


def pooled_accuracy(sites: Mapping[str, tuple[int, int, float]], z: float) -> dict[str, float] | None:
    """``sites``: site -> (data size, audit n, correct). None when no site has an audit label."""
    audited = [s for s, (_, n, _) in sites.items() if n > 0]
    if not audited:
        return None
    w = weights({s: v[0] for s, v in sites.items()}, audited)
    p = sum(w[s] * sites[s][2] / sites[s][1] for s in audited)
    var = sum(w[s] ** 2 * _adjusted(sites[s][2], sites[s][1]) / sites[s][1] for s in audited)
    n = sum(sites[s][1] for s in audited)
    n_eff = p * (1 - p) / var if 0 < p < 1 and var > 0 else float(n)
    lo, hi = wilson(p * n_eff, n_eff, z)
    return {"estimate": p, "ci-low": lo, "ci-high": hi, "n": n, "n-effective": n_eff, "variance": var,
            "sites": len(audited)}


def _adjusted(correct: float, n: int) -> float:
    q = (correct + 2) / (n + 4)
    return q * (1 - q)


def site_mse(n: int, sq_error: float, sq_error_sq: float, z: float) -> dict[str, float]:
    if n == 0:
        return {"n": 0, "estimate": float("nan"), "ci-low": float("nan"), "ci-high": float("nan")}
    mean = sq_error / n
    var = max(0.0, (sq_error_sq - n * mean * mean) / (n - 1)) if n > 1 else float("inf")
    half = z * math.sqrt(var / n)
    return {"n": int(n), "estimate": mean, "ci-low": max(0.0, mean - half), "ci-high": mean + half, "variance": var / n}


def pooled_mse(sites: Mapping[str, tuple[int, int, float, float]], z: float) -> dict[str, float] | None:
    """``sites``: site -> (data size, audit n, sum of squared errors, sum of their squares)."""
    audited = [s for s, v in sites.items() if v[1] > 0]
    if not audited:
        return None
    w = weights({s: v[0] for s, v in sites.items()}, audited)
    per = {s: site_mse(sites[s][1], sites[s][2], sites[s][3], z) for s in audited}
    mean = sum(w[s] * per[s]["estimate"] for s in audited)
    var = sum(w[s] ** 2 * per[s]["variance"] for s in audited)
    half = z * math.sqrt(var)
    return {"estimate": mean, "ci-low": max(0.0, mean - half), "ci-high": mean + half,
            "n": sum(sites[s][1] for s in audited), "variance": var, "sites": len(audited)}


def ece(count: np.ndarray, confidence: np.ndarray, correct: np.ndarray) -> float:
    """Expected calibration error from per-bin (count, sum of confidence, sum of correct)."""
    count, confidence, correct = (np.asarray(a, dtype=np.float64) for a in (count, confidence, correct))
    total = count.sum()
    if total <= 0:
        return float("nan")
    used = count > 0
    return float(np.sum(np.abs(correct[used] - confidence[used])) / total)


def binned_auroc(positives: np.ndarray, negatives: np.ndarray) -> tuple[float, float]:
    """(AUROC, binning bound) of a score whose positives and negatives are histogrammed in the same ordered bins.

    AUROC = P(score of a positive > score of a negative) + P(tie) / 2, ties being the
    pairs in the same bin; the unbinned AUROC lies within the returned bound of it.
    NaN when there are no positives or no negatives.
    """
    pos, neg = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    p_total, n_total = pos.sum(), neg.sum()
    if p_total <= 0 or n_total <= 0:
        return float("nan"), float("nan")
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])  # negatives in lower bins
    pairs = p_total * n_total
    tied = float(np.sum(pos * neg))
    return float((np.sum(pos * below) + 0.5 * tied) / pairs), 0.5 * tied / pairs


def cohen_kappa(matrix: np.ndarray) -> float:
    """Cohen's kappa of an agreement matrix (rows: one model's class, columns: the other's)."""
    m = np.asarray(matrix, dtype=np.float64)
    total = m.sum()
    if total <= 0:
        return float("nan")
    observed = np.trace(m) / total
    expected = float(np.sum(m.sum(axis=0) * m.sum(axis=1))) / total ** 2
    if expected >= 1:
        return 1.0 if observed >= 1 else 0.0
    return float((observed - expected) / (1 - expected))
