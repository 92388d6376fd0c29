"""AHFAL: class-adaptive local/global scoring with class-aware budgets (no Flower imports).

Paper: shared/papers/ahfal.txt, Sec. 6.1 (Eqs. 2-4), App. E-G; where the authors'
reference code (dgitj/FAL ``query_strategies/ahfal.py``) differs, spec section 2b.

Pure functions, unit-tested on hand-built histograms and fixed model outputs:

* :func:`client_statistics` / :func:`sums_from_histograms`: what a client
  contributes, and the sums the server needs (``sum n_i``, ``sum p_i``,
  ``sum p_i^2``, number of contributing clients). Every server statistic is a
  function of these sums only, so the same code serves plain and secure
  summation (where the server never sees one client's vector).
* :func:`server_statistics`: target distribution, sigma_c (population std over
  clients of p_{i,c}, in percentage points), C_low / C_high (Eq. 2).
* :func:`paper_class_budgets`: Eq. (4) with largest remainder and shortfall
  redistribution; :func:`reference_class_budgets`: the reference code's
  representation-ratio allocation.
* :func:`hybrid_scores` (Eq. 3) and :func:`select_per_class` (top-b_c per
  pseudo-class), composed by :func:`ahfal_select`.

The selector ``ahfal`` reads the server's statistics from ``ctx.params``
(``ahfal-c-low``, ``ahfal-target-distribution``) and the settings
(``ahfal-*``) and scores with the local model (the client's model after this
cycle's local training) and the global model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from query.base import PoolContext, Selector, register_selector
from query.kernels import entropy, largest_remainder, top_k

__all__ = [
    "AhfalSelector",
    "ClientStatistics",
    "ServerStatistics",
    "StatisticSums",
    "ahfal_select",
    "client_statistics",
    "hybrid_scores",
    "paper_class_budgets",
    "paper_class_weights",
    "parse_class_list",
    "parse_float_list",
    "reference_class_budgets",
    "select_per_class",
    "server_statistics",
    "sums_from_histograms",
]

# Constants of the reference code's allocation (dgitj/FAL query_strategies/ahfal.py:
# compute_target_counts). They belong to the `reference` variant only, which exists
# to reproduce that code; the paper's Eq. (4) has no constants.
REF_MISSING_INITIAL_CAP = 5  # each missing class first gets min(5, B // #missing)
REF_INVERSE_OFFSET = 0.01  # inverse ratio 1 / (r + 0.01) ...
REF_INVERSE_OF_ZERO = 100.0  # ... and 100 for r = 0
REF_TIERS = ((0.5, 0.5), (0.8, 0.3))  # r < 0.5: 50 % of the remaining budget, r < 0.8: 30 %
REF_TIER_REST = 0.2  # else 20 %
REF_ONE_BY_ONE_BELOW = 3  # when <= 3 units remain they go one each in ratio order

PERCENT = 100.0  # sigma_c is compared with tau in percentage points (reference code x100)


# ----------------------------------------------------------------- statistics
@dataclass(frozen=True)
class ClientStatistics:
    """One client's contribution to the sums (computed on the client)."""

    counts: NDArray[np.int64]  # n_i (possibly DP-noised), shape (C,)
    proportions: NDArray[np.float64]  # p_i = n_i / |n_i|, zeros if |n_i| = 0
    squares: NDArray[np.float64]  # p_i ** 2
    contributes: int  # 1 if |n_i| > 0 (p_i defined), else 0


@dataclass(frozen=True)
class StatisticSums:
    """The only inputs of the server statistics: sums over clients."""

    counts: NDArray[np.int64]  # sum_i n_i
    proportions: NDArray[np.float64]  # sum_i p_i
    squares: NDArray[np.float64]  # sum_i p_i^2
    num_clients: int  # clients with p_i defined (|n_i| > 0)


@dataclass(frozen=True)
class ServerStatistics:
    target: NDArray[np.float64]  # global target distribution (sums to 1, or zeros)
    mean_proportions: NDArray[np.float64]  # p_bar = mean_i p_i
    sigma: NDArray[np.float64]  # sigma_c in percentage points
    low: NDArray[np.bool_]  # C_low mask: sigma_c < tau
    num_clients: int

    @property
    def c_low(self) -> list[int]:
        return [int(c) for c in np.flatnonzero(self.low)]

    @property
    def c_high(self) -> list[int]:
        return [int(c) for c in np.flatnonzero(~self.low)]


def _histogram(values: ArrayLike, name: str = "histogram") -> NDArray[np.int64]:
    h = np.asarray(values)
    if h.ndim != 1 or h.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of class counts, got shape {h.shape}")
    if not np.issubdtype(h.dtype, np.integer):
        if not (np.all(np.isfinite(h)) and np.all(np.mod(h, 1) == 0)):
            raise ValueError(f"{name} must contain integer counts")
    h = h.astype(np.int64)
    if (h < 0).any():
        raise ValueError(f"{name} must be non-negative (post-process noisy counts first)")
    return h


def client_statistics(histogram: ArrayLike) -> ClientStatistics:
    """p_i = n_i / |L_i| and p_i^2 of one client (Sec. 6.1).

    A client without labels has no class distribution: it contributes zeros and
    ``contributes = 0`` (it is left out of N), instead of a made-up p_i.
    """
    n = _histogram(histogram)
    total = int(n.sum())
    p = n / total if total > 0 else np.zeros(n.size)
    return ClientStatistics(counts=n, proportions=p, squares=p * p, contributes=int(total > 0))


def sums_from_histograms(histograms: Sequence[ArrayLike]) -> StatisticSums:
    """The sums of :class:`StatisticSums` computed in the clear (no secure summation)."""
    if len(histograms) == 0:
        raise ValueError("need at least one client histogram")
    stats = [client_statistics(h) for h in histograms]
    sizes = {s.counts.size for s in stats}
    if len(sizes) != 1:
        raise ValueError(f"client histograms have different lengths {sorted(sizes)}")
    return StatisticSums(
        counts=np.sum([s.counts for s in stats], axis=0),
        proportions=np.sum([s.proportions for s in stats], axis=0),
        squares=np.sum([s.squares for s in stats], axis=0),
        num_clients=sum(s.contributes for s in stats),
    )


def server_statistics(sums: StatisticSums, tau: float, *, target: str = "mean") -> ServerStatistics:
    """Target distribution, sigma_c (percentage points) and C_low (Eq. 2) from sums only.

    ``sigma_c = 100 * sqrt(E[p_c^2] - E[p_c]^2)`` over the N contributing clients
    (population std, as the paper's 1/N formula), which equals the paper's
    ``sqrt(1/N sum (p_ic - p_bar_c)^2)``. Negative variances from round-off
    (fixed-point sums) are clipped to 0. ``C_low = {c : sigma_c < tau}``.

    Parameters
    ----------
    target
        ``"mean"``: p_bar = mean_i p_i (paper); ``"pooled"``: sum_i n_i / sum_i |L_i| (reference code).
    """
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 0):
        raise ValueError(f"ahfal-tau must be a finite number >= 0, got {tau!r}")
    if target not in ("mean", "pooled"):
        raise ValueError(f"ahfal-target must be 'mean' or 'pooled', got {target!r}")
    n = int(sums.num_clients)
    if n < 1:
        raise ValueError("no client has labels: the class statistics are undefined")
    mean = np.asarray(sums.proportions, dtype=np.float64) / n
    second = np.asarray(sums.squares, dtype=np.float64) / n
    sigma = PERCENT * np.sqrt(np.clip(second - mean * mean, 0.0, None))
    counts = np.asarray(sums.counts, dtype=np.float64)
    if target == "mean":
        tgt = mean.copy()
    else:
        tgt = counts / counts.sum() if counts.sum() > 0 else np.zeros_like(counts)
    return ServerStatistics(target=tgt, mean_proportions=mean, sigma=sigma, low=sigma < tau, num_clients=n)


# ------------------------------------------------------------------- budgets
def paper_class_weights(labeled_counts: ArrayLike) -> NDArray[np.float64]:
    """Eq. (4): weight 1 for a class without labels on this client, else 1 / n_ic."""
    n = _histogram(labeled_counts, "labeled_counts")
    return np.where(n == 0, 1.0, 1.0 / np.maximum(n, 1))


def _capacities(capacities: ArrayLike | None, num_classes: int, budget: int) -> NDArray[np.int64]:
    if capacities is None:
        return np.full(num_classes, budget, dtype=np.int64)
    cap = _histogram(capacities, "capacities")
    if cap.size != num_classes:
        raise ValueError(f"capacities has {cap.size} entries, expected one per class ({num_classes})")
    return cap


def _check_budget(budget: object) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise ValueError(f"budget must be a non-negative integer, got {budget!r}")
    return int(budget)


def paper_class_budgets(
    labeled_counts: ArrayLike, budget: int, capacities: ArrayLike | None = None
) -> NDArray[np.int64]:
    """Class budgets b of Eq. (4), integer and feasible.

    1. ``b = largest_remainder(w, B)`` with ``w_c = 1`` (no label of c) or ``1/n_ic``;
    2. a class whose pseudo-class bucket holds fewer than ``b_c`` samples
       (``capacities``) is cut to its bucket, and the deficit is apportioned
       (largest remainder) over the classes with spare room, in proportion to
       their weights; repeated until every budget fits.

    The total is ``min(B, sum(capacities))``: never fewer picks than the budget
    while the pool has them.
    """
    b_total = _check_budget(budget)
    w = paper_class_weights(labeled_counts)
    cap = _capacities(capacities, w.size, b_total)
    want = min(b_total, int(cap.sum()))
    alloc = largest_remainder(w, want)
    while True:
        over = alloc > cap
        if not over.any():
            return alloc
        deficit = int((alloc[over] - cap[over]).sum())
        alloc[over] = cap[over]
        room = alloc < cap
        # room is non-empty: sum(alloc) = want - deficit < want <= sum(cap)
        alloc[room] += largest_remainder(w[room], deficit)


def reference_class_budgets(
    labeled_counts: ArrayLike,
    target: ArrayLike,
    budget: int,
    capacities: ArrayLike,
) -> NDArray[np.int64]:
    """The reference code's representation-ratio allocation (spec 2b, ``ahfal-allocation=reference``).

    Re-implemented from the behaviour of ``compute_target_counts`` and steps 7-8
    of ``select_samples`` in dgitj/FAL (classes in ascending index order where
    the code iterates a Python set). ``available`` classes are those with a
    non-empty pseudo-class bucket; ``r_c = (n_c / |L|) / target_c`` (inf if
    target_c = 0; 0 for all if |L| = 0):

    1. missing classes (n_c = 0) exist and are at most B: each gets
       ``min(5, B // #missing)``, the rest goes ``floor`` -proportionally to
       ``1 / (r + 0.01)`` (100 for r = 0) over all available classes; otherwise
       ``t_c = max(0, ceil(target_c (|L| + B) - n_c))``;
    2. if ``sum t > B``: restart, giving each class in increasing r order
       ``max(1, ceil(rest * share))`` of the rest (share 0.5 / 0.3 / 0.2 for
       r < 0.5 / < 0.8 / else), the last <= 3 units one each in the same order;
    3. what is left goes one at a time, round robin in increasing projected ratio
       ``(n_c + t_c) / ((|L| + B) target_c)``, re-sorted after each pass;
    4. cut to the bucket sizes; the cut units go to classes with room, in
       increasing r order, as many as fit.
    """
    n = _histogram(labeled_counts, "labeled_counts")
    g = np.asarray(target, dtype=np.float64)
    if g.shape != n.shape or not np.all(np.isfinite(g)) or (g < 0).any():
        raise ValueError(f"target must be {n.size} finite non-negative shares, got {g!r}")
    b_total = _check_budget(budget)
    cap = _capacities(capacities, n.size, b_total)
    want = min(b_total, int(cap.sum()))
    avail = [int(c) for c in np.flatnonzero(cap > 0)]
    t = np.zeros(n.size, dtype=np.int64)
    if want == 0 or not avail:
        return t
    big_l = int(n.sum())

    def ratio(c: int) -> float:
        if big_l == 0:
            return 0.0
        return (n[c] / big_l) / g[c] if g[c] > 0 else math.inf

    r = {c: ratio(c) for c in avail}
    by_ratio = sorted(avail, key=lambda c: r[c])  # stable: ties by class index
    missing = [c for c in avail if n[c] == 0]
    if missing and len(missing) <= b_total:
        t[missing] = min(REF_MISSING_INITIAL_CAP, b_total // len(missing))
        rest = b_total - int(t.sum())
        if rest > 0:
            inv = np.array([1.0 / (r[c] + REF_INVERSE_OFFSET) if r[c] > 0 else REF_INVERSE_OF_ZERO for c in avail])
            t[avail] += np.floor(rest * inv / inv.sum()).astype(np.int64)
    else:
        future = big_l + b_total
        for c in avail:
            t[c] = max(0, math.ceil(g[c] * future - n[c]))
    if t.sum() > b_total:
        t[:] = 0
        rest = b_total
        for c in by_ratio:
            if rest <= 0:
                break
            share = next((s for bound, s in REF_TIERS if r[c] < bound), REF_TIER_REST)
            t[c] = min(rest, max(1, math.ceil(rest * share)))
            rest -= int(t[c])
            if 0 < rest <= REF_ONE_BY_ONE_BELOW:
                for c2 in by_ratio:
                    if rest <= 0:
                        break
                    t[c2] += 1
                    rest -= 1
    rest = b_total - int(t.sum())
    if rest > 0:
        future = big_l + b_total

        def projected(c: int) -> float:
            denom = future * g[c]
            return (n[c] + t[c]) / denom if denom > 0 else math.inf

        order = sorted(avail, key=projected)
        i = 0
        while rest > 0:
            t[order[i]] += 1
            rest -= 1
            i = (i + 1) % len(order)
            if i == 0:
                order = sorted(avail, key=projected)
    # capacities (reference select_samples steps 7-8)
    np.minimum(t, cap, out=t)
    rest = want - int(t.sum())
    if rest > 0:
        order = by_ratio if big_l > 0 else avail
        for c in order:
            take = min(rest, int(cap[c] - t[c]))
            if take > 0:
                t[c] += take
                rest -= take
            if rest <= 0:
                break
    return t


# --------------------------------------------------------- scoring/selection
def hybrid_scores(
    local_probs: ArrayLike,
    global_probs: ArrayLike | None,
    low: ArrayLike,
    *,
    toggling: bool = True,
    rule: str = "paper",
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.bool_]]:
    """Eq. (3): H = H_L, or (H_L + H_G) / 2 for samples whose pseudo-class is in C_low.

    Returns ``(scores, pseudo_labels, hybrid_mask)``; pseudo-labels are the local
    model's argmax. ``rule="reference"`` also averages when the global model's
    argmax is in C_low. ``toggling=False`` (ablation) gives H_L everywhere and
    needs no global model.
    """
    pl = np.asarray(local_probs, dtype=np.float64)
    if pl.ndim != 2:
        raise ValueError(f"local_probs must be (n, C), got shape {pl.shape}")
    low_mask = np.asarray(low, dtype=bool)
    if low_mask.shape != (pl.shape[1],):
        raise ValueError(f"low must be a ({pl.shape[1]},) class mask, got shape {low_mask.shape}")
    if rule not in ("paper", "reference"):
        raise ValueError(f"ahfal-hybrid-rule must be 'paper' or 'reference', got {rule!r}")
    if not np.isfinite(pl).all():
        raise ValueError("local model outputs contain NaN or inf: refusing to score the pool")
    h_local = entropy(pl)
    pseudo = np.argmax(pl, axis=1).astype(np.int64) if pl.shape[0] else np.zeros(0, np.int64)
    hybrid = low_mask[pseudo] if toggling else np.zeros(pl.shape[0], dtype=bool)
    if not hybrid.any() and not (toggling and rule == "reference" and low_mask.any()):
        return h_local, pseudo, hybrid
    if global_probs is None:
        raise ValueError("the hybrid score of C_low classes needs the global model's probabilities")
    pg = np.asarray(global_probs, dtype=np.float64)
    if pg.shape != pl.shape:
        raise ValueError(f"global_probs shape {pg.shape} differs from local_probs shape {pl.shape}")
    if not np.isfinite(pg).all():
        raise ValueError("global model outputs contain NaN or inf: refusing to score the pool")
    if rule == "reference":
        hybrid = hybrid | low_mask[np.argmax(pg, axis=1)]
    scores = np.where(hybrid, 0.5 * (h_local + entropy(pg)), h_local)
    return scores, pseudo, hybrid


def select_per_class(
    scores: ArrayLike, pseudo_labels: ArrayLike, class_budgets: ArrayLike, *, fill_to: int | None = None
) -> NDArray[np.int64]:
    """Top-``b_c`` by score within each pseudo-class bucket (classes in index order).

    ``fill_to``: if the buckets yield fewer picks, add the best remaining
    samples by score until there are ``fill_to`` (the reference code's last
    resort; never needed with feasible budgets).
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(pseudo_labels, dtype=np.int64)
    b = np.asarray(class_budgets, dtype=np.int64)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError("scores and pseudo_labels must be 1-D arrays of the same length")
    picks = []
    for c in np.flatnonzero(b > 0):
        bucket = np.flatnonzero(y == c)
        picks.append(bucket[top_k(s[bucket], int(b[c]))])
    out = np.concatenate(picks).astype(np.int64) if picks else np.zeros(0, dtype=np.int64)
    if fill_to is not None and out.size < min(fill_to, s.size):
        rest = np.setdiff1d(np.arange(s.size), out)
        out = np.concatenate([out, rest[top_k(s[rest], min(fill_to, s.size) - out.size)]])
    return out


def ahfal_select(
    local_probs: ArrayLike,
    global_probs: ArrayLike | None,
    labeled_counts: ArrayLike,
    budget: int,
    low: ArrayLike,
    *,
    target: ArrayLike | None = None,
    allocation: str = "paper",
    toggling: bool = True,
    class_balancing: bool = True,
    hybrid_rule: str = "paper",
) -> tuple[NDArray[np.int64], dict[str, Any]]:
    """One client's AHFAL selection: positions into the pool, and what it did.

    Scores by Eq. (3), allocates by Eq. (4) (or the reference allocation) over
    the local pseudo-classes, and takes the top-b_c per pseudo-class; with
    ``class_balancing=False`` the top-B of the scores.
    """
    b_total = _check_budget(budget)
    scores, pseudo, hybrid = hybrid_scores(local_probs, global_probs, low, toggling=toggling, rule=hybrid_rule)
    want = min(b_total, scores.size)
    info: dict[str, Any] = {"hybrid-scored": int(hybrid.sum())}
    if not class_balancing:
        return top_k(scores, want).astype(np.int64), info
    num_classes = np.asarray(low).size
    buckets = np.bincount(pseudo, minlength=num_classes)
    if allocation == "paper":
        class_budgets = paper_class_budgets(labeled_counts, want, buckets)
    elif allocation == "reference":
        if target is None:
            raise ValueError("ahfal-allocation=reference needs the server's target distribution")
        class_budgets = reference_class_budgets(labeled_counts, target, want, buckets)
    else:
        raise ValueError(f"ahfal-allocation must be 'paper' or 'reference', got {allocation!r}")
    info["class-budgets"] = class_budgets
    return select_per_class(scores, pseudo, class_budgets, fill_to=want), info


# ------------------------------------------------------------------ selector
def parse_class_list(value: object, num_classes: int, name: str = "ahfal-c-low") -> NDArray[np.bool_]:
    """A class mask from a comma-separated string or a list of class indices."""
    if isinstance(value, str):
        items = [v for v in (s.strip() for s in value.split(",")) if v]
    elif isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
    else:
        raise ValueError(f"{name} must be a comma-separated string or a list of class indices, got {value!r}")
    mask = np.zeros(num_classes, dtype=bool)
    for v in items:
        try:
            c = int(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: {v!r} is not a class index") from None
        if not 0 <= c < num_classes:
            raise ValueError(f"{name}: class {c} is outside 0..{num_classes - 1}")
        mask[c] = True
    return mask


def parse_float_list(value: object, length: int, name: str) -> NDArray[np.float64]:
    """Floats from a comma-separated string or a list, checked to have ``length`` entries."""
    if isinstance(value, str):
        items = [v for v in (s.strip() for s in value.split(",")) if v]
    elif isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
    else:
        raise ValueError(f"{name} must be a comma-separated string or a list of numbers, got {value!r}")
    try:
        out = np.array([float(v) for v in items], dtype=np.float64)
    except ValueError:
        raise ValueError(f"{name}: not a list of numbers: {value!r}") from None
    if out.size != length:
        raise ValueError(f"{name} has {out.size} entries, expected {length}")
    return out


def _flag(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


@register_selector("ahfal")
class AhfalSelector(Selector):
    """AHFAL's client-side selection (Sec. 6.1, steps 2-3).

    Params: ``ahfal-c-low`` (server: C_low), ``ahfal-target-distribution``
    (server, for the reference allocation) and the ``ahfal-*`` settings.
    Uses ``ctx.models.pool("local")`` (the client's model after this cycle's
    local training) and, for C_low classes, ``ctx.models.pool("global")``.
    The paper allocation counts the labeled set by its true labels (Eq. 4's
    n_ic); the reference allocation, as the authors' code, by the global
    model's predictions on it (``ctx.models.labeled("global")``).
    """

    @classmethod
    def contract_params(cls, ctx: PoolContext) -> dict[str, Any]:
        """What the server would send (for the selector contract test): C_low = even classes, uniform target."""
        c = ctx.num_classes
        return {"ahfal-c-low": ",".join(str(k) for k in range(0, c, 2)),
                "ahfal-target-distribution": ",".join(repr(1.0 / c) for _ in range(c))}

    def select(self, ctx: PoolContext) -> np.ndarray:
        p = ctx.params
        num_classes = ctx.num_classes
        if "ahfal-c-low" not in p:
            raise ValueError("the ahfal selector needs the server's statistics (ahfal-c-low); run it via strategy=ahfal")
        low = parse_class_list(p["ahfal-c-low"], num_classes)
        allocation = str(p.get("ahfal-allocation", "paper"))
        target = None
        if allocation == "reference":
            target = parse_float_list(p.get("ahfal-target-distribution", ""), num_classes, "ahfal-target-distribution")
        toggling = _flag(p.get("ahfal-toggling", True))
        rule = str(p.get("ahfal-hybrid-rule", "paper"))
        local = ctx.models.pool("local").outputs
        pseudo = np.argmax(local, axis=1)
        needs_global = toggling and bool(low.any()) and (rule == "reference" or bool(low[pseudo].any()))
        global_probs = ctx.models.pool("global").outputs if needs_global else None
        counts = np.bincount(np.asarray(ctx.labeled_y, dtype=np.int64), minlength=num_classes)
        if allocation == "reference" and len(ctx.labeled_ids):
            # The reference code's representation ratios count the labeled set by the *global* model's
            # predictions, not by the true labels (dgitj/FAL ahfal.py select_samples, "Step 2": labeled_pseudo_counts;
            # tests/test_parity_selection.py checks this against the authors' function).
            counts = np.bincount(np.argmax(ctx.models.labeled("global").outputs, axis=1), minlength=num_classes)
        positions, info = ahfal_select(
            local, global_probs, counts, ctx.budget, low,
            target=target, allocation=allocation, toggling=toggling,
            class_balancing=_flag(p.get("ahfal-class-balancing", True)), hybrid_rule=rule,
        )
        ctx.diagnostics["hybrid-scored"] = info["hybrid-scored"]
        ctx.diagnostics["c-low-size"] = int(low.sum())
        private = float(p.get("ahfal-dp-epsilon", 0.0) or 0.0) > 0 or _flag(p.get("ahfal-secure-sum", False))
        if "class-budgets" in info and not private:
            # b_c is a function of the client's label counts: reported only without privacy
            ctx.diagnostics["class-budgets"] = ",".join(str(int(v)) for v in info["class-budgets"])
        return positions
