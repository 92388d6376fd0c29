"""The server's side of a labeling campaign: audit estimates, active vs random, stopping rules, calibration.

Called by the FAL loop (``server_app/experiment.py``) at four points:

* :meth:`Campaign.setup` after the setup round: every site buys its audit sample
  (``query.audit`` with ``buy=audit-0``; people's labels are waited for with the
  initial labels) and sets its top-ups aside;
* :meth:`Campaign.measure` after a cycle's evaluation, *before* its query phase: the
  shadow model is trained (``random-share``), every site scores the global (and shadow)
  model on its audit labels, stop set and pool (``query.audit`` with ``measure``;
  counts and sums only), and the server pools them into the audit estimate with its
  interval, the calibration check and the stopping rules; a ``stop-when`` decision stops
  the run here, before anything more is bought. Otherwise the cycle's audit top-up is
  bought;
* :meth:`Campaign.query_budgets` at the start of the query phase: the random share of
  each site's budget is bought (``query.select`` with the ``random`` selector, token
  ``cycle-<c>-random``) and the strategy gets the rest;
* :meth:`Campaign.cycle_done` when the cycle's record is complete (seconds, bytes).

Everything is recorded in the cycle's ``campaign`` record of ``results.json``, printed in
the cycle log, and logged to the tracker (``server_app/tracking.py``). The formulas are
in ``server_app/audit_stats.py`` and ``server_app/stopping.py``; what each number is worth
and costs in ``docs/guides/campaign.md``.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fal_shared.wire import config_of
from server_app import audit_stats as st
from server_app.stopping import decide, evaluate_rules
from server_app.tracking import open_tracker

if TYPE_CHECKING:
    from server_app.experiment import Experiment

__all__ = ["Campaign", "SHADOW_TRAIN", "calibration"]

log = logging.getLogger("fal")

#: the message type of the shadow model's FedAvg rounds (client_app/audit.py)
SHADOW_TRAIN = "query.shadow_train"


def calibration(cfg, res: dict[str, dict[str, Any]], sizes: dict[str, int]) -> dict[str, Any]:
    """The calibration check from the sites' audit sums (``res``: site -> reply) weighted by data size (``sizes``)."""
    audited = [p for p, r in res.items() if int(r["audit-n"]) > 0]
    out: dict[str, Any] = {"bins": cfg.calibration_bins, "binning": "equal-width bins of the top-class probability",
                           "uncertainty": "predictive entropy / log(classes), 100 equal-width bins", "flags": []}
    if not audited:
        return out
    w = st.weights(sizes, audited)
    n_total = sum(int(res[p]["audit-n"]) for p in audited)
    f = {p: w[p] * n_total / int(res[p]["audit-n"]) for p in audited}  # site weight per audit sample

    def pooled(key: str) -> np.ndarray:
        return np.sum([f[p] * np.asarray(res[p][key], dtype=np.float64) for p in audited], axis=0)

    out["ece"] = st.ece(pooled("audit-bin-count"), pooled("audit-bin-confidence"), pooled("audit-bin-correct"))
    errors, correct = pooled("audit-uncertainty-errors"), pooled("audit-uncertainty-correct")
    auroc, bound = st.binned_auroc(errors, correct)
    out["auroc"] = None if math.isnan(auroc) else auroc
    out["auroc-binning-bound"] = None if math.isnan(bound) else bound
    out["audit-errors"] = float(errors.sum())
    if out["ece"] > cfg.calibration_max_ece:
        out["flags"].append("miscalibrated")
    if out["auroc"] is not None and out["auroc"] < cfg.calibration_min_auroc:
        out["flags"].append("uninformative-uncertainty")
    return out


class Campaign:
    """One experiment's campaign numbers (inactive, and sending nothing, unless the run config turns them on)."""

    def __init__(self, exp: "Experiment") -> None:
        self.exp = exp
        self.cfg = exp.cfg
        self.z = st.z_value(self.cfg.audit_confidence)
        self.tracker = open_tracker(self.cfg, exp.run_name, exp.recorder)
        self._topup_pending: dict[int, int] = {}

    # ------------------------------------------------------------------ setup
    def check_sizes(self) -> None:
        """An audit sample (with its top-ups) that does not fit a site's pool fails here, before any training."""
        problem = self.cfg.audit_size_error({p: c.data_size for p, c in self.exp.clients.items()})
        if problem:
            raise ValueError(problem)

    def setup(self) -> None:
        """Every site buys its audit sample (idempotent); labels a person gives are waited for with the initial ones."""
        if not self.cfg.audit_on:
            return
        self.check_sizes()
        replies = self._send({"cycle": 0, "buy": "audit-0"})
        for pid, result in replies.items():
            if int(result["pending"]):
                self.exp.pending_at_setup[pid] = int(result["pending"])

    def _send(self, config: dict[str, Any], models: dict[str, ArrayRecord] | None = None) -> dict[int, dict[str, Any]]:
        content = RecordDict({"config": ConfigRecord(config), **(models or {})})
        replies = self.exp.messenger.send("query.audit", {p: content for p in self.exp.clients})
        out = {}
        for pid, reply in replies.items():
            result = config_of(reply, "result")
            info = self.exp.clients[pid]
            info.labeled, info.pool_size = int(result["labeled"]), int(result["pool-size"])
            for note in result.get("notes", []):
                log.warning("partition %d: %s", pid, note)
            out[pid] = result
        return out

    # ---------------------------------------------------------------- measure
    def measure(self, cycle: int, arrays: ArrayRecord, record: dict[str, Any]) -> str | None:
        """Measure, record and log the cycle's campaign numbers; the stop reason if ``stop-when`` says stop."""
        cfg = self.cfg
        if not cfg.campaign_on:
            self.tracker.log_cycle(cycle, record, None)
            return None
        models = {"global-model": arrays}
        if cfg.random_share > 0:
            models["shadow-model"] = self._train_shadow(cycle)
        replies = self._send({"cycle": cycle, "measure": True}, models)
        camp = self._pool(replies, record)
        history = [c["campaign"] for c in self.exp.recorder.data["cycles"] if "campaign" in c]
        camp["measured"].update(self._label_counts(cycle, record, history, camp))
        camp["rules"] = evaluate_rules(cfg, history, camp["measured"])
        reason = decide(cfg, camp["rules"]) if cycle < cfg.num_cycles else None
        camp["stop"] = reason
        record["campaign"] = camp
        self._log(cycle, record)
        self.tracker.log_cycle(cycle, record, camp)
        if reason is None and cfg.audit_topup and cycle < cfg.num_cycles:
            bought = self._send({"cycle": cycle, "buy": f"audit-{cycle + 1}"})
            self._topup_pending = {p: int(r["pending"]) for p, r in bought.items()}
        return reason

    def _label_counts(self, cycle: int, record: dict[str, Any], history: list[dict[str, Any]],
                      camp: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        audit_held = camp["audit"]["held"] if cfg.audit_on else 0
        spent = record["labeled"] + (audit_held if cfg.audit_in_budget else 0)
        out: dict[str, Any] = {"labels-spent": spent}
        prev = [c for c in self.exp.recorder.data["cycles"] if "campaign" in c]
        if prev:
            last = prev[-1]
            out["labels-since-last"] = spent - last["campaign"]["measured"]["labels-spent"]
        out["next-budget"] = sum(self.reduced(self.exp.budgets()).values()) if cycle < cfg.num_cycles else None
        initial = sum(int(c.get("initial-labeled", 0)) for c in self.exp.recorder.data["clients"].values())
        out["random-arm-labels"] = initial + sum(int(h.get("random-share-bought", 0)) for h in history)
        return out

    def _pool(self, replies: dict[int, dict[str, Any]], record: dict[str, Any]) -> dict[str, Any]:
        """Pool the sites' counts and sums into the cycle's campaign record."""
        sizes = {str(p): c.data_size for p, c in self.exp.clients.items()}
        res = {str(p): r for p, r in replies.items()}
        measured: dict[str, Any] = {}
        camp: dict[str, Any] = {"measured": measured}
        if self.cfg.task == "classification":
            kappa = self._kappa(res)
            measured["kappa"] = kappa
            pools = [float(r["pool-max-uncertainty"]) for r in res.values() if int(r.get("pool-n", 0))]
            measured["pool-max-uncertainty"] = max(pools) if pools else None
            n_pool = sum(int(r.get("pool-n", 0)) for r in res.values())
            measured["pool-mean-uncertainty"] = (sum(float(r.get("pool-uncertainty-sum", 0)) for r in res.values()) / n_pool
                                                 if n_pool else None)
        if not self.cfg.audit_on:
            return camp
        camp["audit"] = self._estimate(res, sizes, "audit")
        camp["audit"]["held"] = sum(int(r["audit-held"]) for r in res.values())
        measured["paired-gain"] = self._paired_gain(res, sizes)
        if self.cfg.random_share > 0:
            camp["random"] = self._estimate(res, sizes, "shadow")
        if self.cfg.task == "classification":
            camp["calibration"] = calibration(self.cfg, res, sizes)
        return camp

    def _estimate(self, res: dict[str, dict[str, Any]], sizes: dict[str, int], prefix: str) -> dict[str, Any]:
        z = self.z
        if self.cfg.task == "classification":
            per = {p: st.site_accuracy(float(r[f"{prefix}-correct"]), int(r[f"{prefix}-n"]), z) for p, r in res.items()}
            pooled = st.pooled_accuracy({p: (sizes[p], int(r[f"{prefix}-n"]), float(r[f"{prefix}-correct"]))
                                         for p, r in res.items()}, z)
            return {"metric": "accuracy", "pooled": pooled, "per-site": per,
                    "interval": f"{self.cfg.audit_confidence:g} Wilson per site; pooled: stratified by site data size, "
                                "Wilson at the effective sample size"}
        per = {p: st.site_mse(int(r[f"{prefix}-n"]), float(r[f"{prefix}-sq-error"]), float(r[f"{prefix}-sq-error-sq"]), z)
               for p, r in res.items()}
        pooled = st.pooled_mse({p: (sizes[p], int(r[f"{prefix}-n"]), float(r[f"{prefix}-sq-error"]),
                                    float(r[f"{prefix}-sq-error-sq"])) for p, r in res.items()}, z)
        return {"metric": "mse", "pooled": pooled, "per-site": per,
                "interval": f"{self.cfg.audit_confidence:g} normal per site; pooled: stratified by site data size"}

    @staticmethod
    def _paired_gain(res: dict[str, dict[str, Any]], sizes: dict[str, int]) -> float | None:
        paired = [p for p, r in res.items() if int(r.get("paired-n", 0)) > 0]
        if not paired:
            return None
        w = st.weights(sizes, paired)
        return float(sum(w[p] * float(res[p]["paired-gain"]) / int(res[p]["paired-n"]) for p in paired))

    @staticmethod
    def _kappa(res: dict[str, dict[str, Any]]) -> float | None:
        mats = [np.asarray(r["stop-agreement"], dtype=np.float64) for r in res.values() if "stop-agreement" in r]
        if not mats:
            return None
        total = np.sum(mats, axis=0)
        c = int(round(math.sqrt(total.size)))
        value = st.cohen_kappa(total.reshape(c, c))
        return None if math.isnan(value) else value

    # ---------------------------------------------------------- random share
    def reduced(self, budgets: dict[int, int]) -> dict[int, int]:
        """The query budgets less the audit top-up, when audit labels count as budget (``audit-in-budget``)."""
        if not (self.cfg.audit_in_budget and self.cfg.audit_topup):
            return dict(budgets)
        return {p: max(0, b - self.cfg.audit_topup) for p, b in budgets.items()}

    def query_budgets(self, cycle: int, arrays: ArrayRecord, budgets: dict[int, int], record: dict[str, Any]) -> dict[int, int]:
        """Buy the cycle's random share of every budget; the budgets left for the strategy."""
        budgets = self.reduced(budgets)
        share = self.cfg.random_share
        if share <= 0:
            return budgets
        wanted = {p: min(b, math.ceil(share * b - 1e-9)) for p, b in budgets.items()}
        contents = {
            p: RecordDict({"global-model": arrays, "config": ConfigRecord({
                "cycle": cycle, "selector": "random", "strategy": "random-share", "budget": int(n),
                "token": f"cycle-{cycle}-random"})})
            for p, n in wanted.items()
        }
        replies = self.exp.messenger.send("query.select", contents, skip_lost=self.cfg.query_missing_client == "skip")
        bought = {}
        for pid, reply in replies.items():
            result = config_of(reply, "result")
            info = self.exp.clients[pid]
            info.labeled, info.pool_size = int(result["labeled"]), int(result["pool-size"])
            bought[pid] = [int(i) for i in result.get("selected-ids", [])]
            self._topup_pending[pid] = max(self._topup_pending.get(pid, 0), int(result.get("pending", 0)))
        camp = record.setdefault("campaign", {})
        camp["random-share-ids"] = {str(p): ids for p, ids in bought.items()}
        camp["random-share-bought"] = sum(len(v) for v in bought.values())
        return {p: max(0, b - len(bought.get(p, []))) for p, b in budgets.items()}

    def pending(self, pending: dict[int, int]) -> dict[int, int]:
        """The query phase's pending labels with the audit top-up's and the random share's."""
        merged = dict(pending)
        for pid, n in self._topup_pending.items():
            merged[pid] = max(merged.get(pid, 0), n)
        self._topup_pending = {}
        return merged

    def _train_shadow(self, cycle: int) -> ArrayRecord:
        """The shadow model: FedAvg on the initial and random-share labels only, as the main model is trained."""
        from server_app.rounds import CycleFedAvg

        exp = self.exp
        fedavg = CycleFedAvg(exp, cycle, message_type=SHADOW_TRAIN)
        result = fedavg.start(grid=exp.grid, initial_arrays=exp.fresh_model(cycle),
                              num_rounds=max(1, int(exp.strategy.train_rounds(cycle))),
                              timeout=self.cfg.reply_timeout_seconds, train_config=ConfigRecord({"cycle": cycle}))
        arrays = result.arrays
        if self.cfg.bn_statistics == "recompute" and exp.has_batchnorm:
            arrays = exp.recompute_batchnorm(arrays)
        return arrays

    # ----------------------------------------------------------------- output
    def cycle_done(self, record: dict[str, Any]) -> None:
        self.tracker.log_done(record)

    def close(self, status: str) -> None:
        self.tracker.close(status)

    def _log(self, cycle: int, record: dict[str, Any]) -> None:
        camp = record["campaign"]
        parts = []
        audit = camp.get("audit", {}).get("pooled")
        if audit:
            name = camp["audit"]["metric"]
            parts.append(f"audit {name}={audit['estimate']:.4f} [{audit['ci-low']:.4f}, {audit['ci-high']:.4f}] "
                         f"(n={audit['n']}, {self.cfg.audit_confidence:.0%})")
        rnd = camp.get("random", {}).get("pooled")
        if rnd:
            parts.append(f"random arm={rnd['estimate']:.4f} at {camp['measured']['random-arm-labels']} labels")
        cal = camp.get("calibration", {})
        if "ece" in cal:
            auroc = "n/a" if cal.get("auroc") is None else f"{cal['auroc']:.3f}"
            parts.append(f"ECE={cal['ece']:.3f} AUROC(uncertainty vs error)={auroc}")
        for name, rule in camp["rules"].items():
            value = "n/a" if rule["value"] is None else f"{rule['value']:.4g}"
            parts.append(f"{name}={value}{' FIRED' if rule['fired'] else ''}")
        msg = f"[FAL] cycle {cycle} campaign: " + "; ".join(parts)
        log.info(msg)
        print(msg, flush=True)
        for flag in cal.get("flags", []):
            warning = (f"[FAL] cycle {cycle} calibration check: {flag} (ECE {cal['ece']:.3f} vs calibration-max-ece "
                       f"{self.cfg.calibration_max_ece:g}; AUROC {cal.get('auroc')} vs calibration-min-auroc "
                       f"{self.cfg.calibration_min_auroc:g}): the model's uncertainty says little about its errors, "
                       "so uncertainty-based selection may do no better than random")
            log.warning(warning)
            print(warning, flush=True)
            self.exp.recorder.data.setdefault("campaign-warnings", []).append({"cycle": cycle, "flag": flag})
        if camp.get("stop"):
            print(f"[FAL] cycle {cycle}: stop-when fired: {camp['stop']}; no more labels are bought", flush=True)

