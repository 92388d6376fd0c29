"""A site's side of a labeling campaign: audit labels and the counts and sums the server's campaign needs.

``query.audit`` (``server_app/campaign.py`` sends it) does either or both of:

* **buy** (config ``buy`` = an audit token ``audit-<cycle>``): the audit sample is a
  seeded uniform permutation of the site's data without its initial labels; the first
  ``audit-count`` ids are bought under ``audit-0`` and the rest (the top-ups of later
  cycles) are *reserved* in the ledger (out of the pool, see
  :mod:`client_app.ledger`). Audit labels are bought through the site's oracle with
  ``can_wait`` (people label them like any query, without the model's guess as a
  hint, which would anchor them) and are never trained on. Idempotent per token.
* **measure** (config ``measure``): the received global model (and the shadow
  model, ``shadow-model``, when the run has a random share) is scored on the audit
  labels answered so far, on the stop set and on the pool. Only counts and sums leave
  the site: correct count / squared-error sums and n, the paired gain against the
  previous cycle's model on the same audit samples, calibration bins (count, sum of
  confidence, sum of correct), histograms of the predictive entropy of errors and of
  correct predictions (for a binned AUROC), the agreement matrix of consecutive
  models' predictions on the stop set (for Cohen's kappa), and the pool's highest
  normalised entropy (one number).

The per-sample values of this cycle (stop-set predictions, audit correctness) are kept
in the node state under the cycle's number, so the next cycle compares with them, a
restarted node still can, and a repeated measurement of the same cycle gives the same
counts.

``query.shadow_train`` is a FedAvg round of the campaign's shadow model: local training
exactly as ``train`` does it, on the labels a random selection would have bought (the
initial labels and the random share of every budget, tokens ``initial`` and
``cycle-<c>-random``), keeping nothing of the main training's state.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client_app.actions import query_action, train_on
from client_app.ledger import AUDIT_PREFIX
from client_app.session import INITIAL_TOKEN, ClientSession
from fal_shared.wire import config_of

__all__ = ["audit_plan", "classification_sums", "regression_sums", "normalised_entropy", "UNCERTAINTY_BINS"]

#: equal-width bins of the normalised entropy in [0, 1] for the binned AUROC of uncertainty vs error
UNCERTAINTY_BINS = 100
_PLAN_SALT, _STOP_SALT = 3571, 7727


def audit_plan(session: ClientSession) -> np.ndarray:
    """The site's audit samples over the whole run, in purchase order (seeded by run seed and partition).

    A uniform permutation of the partition without the initial labels: since the
    initial labels are themselves a uniform sample, every prefix is a uniform
    sample of the site's data.
    """
    cfg, data = session.cfg, session.data
    initial = session.ledger.purchase(INITIAL_TOKEN)
    rest = np.setdiff1d(data.ids, initial if initial is not None else np.zeros(0, np.int64))
    order = np.random.default_rng([cfg.seed, session.partition_id, _PLAN_SALT]).permutation(len(rest))
    return rest[order[: min(len(rest), cfg.audit_reserve(len(data.ids), cfg.num_cycles))]]


def _audit_slice(session: ClientSession, cycle: int) -> np.ndarray:
    """Ids of the audit query ``audit-<cycle>``: the first sample (cycle 0) or that cycle's top-up."""
    cfg = session.cfg
    first = cfg.audit_count(len(session.data.ids))
    plan = audit_plan(session)
    lo = 0 if cycle == 0 else first + cfg.audit_topup * (cycle - 1)
    hi = first + cfg.audit_topup * cycle
    return plan[lo:hi]


def _buy(session: ClientSession, token: str) -> int:
    if not token.startswith(AUDIT_PREFIX):
        raise ValueError(f"query.audit: {token!r} is not an audit token ({AUDIT_PREFIX}<cycle>)")
    if session.ledger.purchase(token) is not None:
        return 0  # bought before: a retry, a resumed run
    cycle = int(token[len(AUDIT_PREFIX):])
    ids = _audit_slice(session, cycle)
    if cycle == 0:  # set the top-ups aside now, so that the strategy never chooses them
        session.ledger.reserve(np.setdiff1d(audit_plan(session), ids))
    session.buy(ids, cycle=cycle, strategy="audit", token=token, can_wait=True)
    return len(ids)


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Predictive entropy divided by log(classes): 0 = certain, 1 = uniform."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1) / np.log(max(p.shape[1], 2))


def classification_sums(probs: np.ndarray, y: np.ndarray, bins: int) -> tuple[dict[str, object], np.ndarray]:
    """Counts and sums of one model on labeled samples, and its per-sample correctness."""
    probs = np.asarray(probs, dtype=np.float64)
    correct = (probs.argmax(axis=1) == np.asarray(y)).astype(np.float64) if len(y) else np.zeros(0)
    conf = probs.max(axis=1) if len(y) else np.zeros(0)
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)  # equal-width bins, 1.0 in the last
    unc = normalised_entropy(probs) if len(y) else np.zeros(0)
    ubin = np.minimum((unc * UNCERTAINTY_BINS).astype(np.int64), UNCERTAINTY_BINS - 1)
    sums = {
        "n": int(len(y)),
        "correct": float(correct.sum()),
        "bin-count": np.bincount(which, minlength=bins).astype(float).tolist(),
        "bin-confidence": np.bincount(which, weights=conf, minlength=bins).tolist(),
        "bin-correct": np.bincount(which, weights=correct, minlength=bins).tolist(),
        "uncertainty-errors": np.bincount(ubin, weights=1 - correct, minlength=UNCERTAINTY_BINS).tolist(),
        "uncertainty-correct": np.bincount(ubin, weights=correct, minlength=UNCERTAINTY_BINS).tolist(),
    }
    return sums, correct


def regression_sums(pred: np.ndarray, y: np.ndarray) -> tuple[dict[str, object], np.ndarray]:
    """n, sum and sum of squares of the squared errors, and the per-sample squared errors."""
    err = (np.asarray(pred, dtype=np.float64).reshape(-1) - np.asarray(y, dtype=np.float64)) ** 2
    return {"n": int(len(err)), "sq-error": float(err.sum()), "sq-error-sq": float((err ** 2).sum())}, err


def _remember(session: ClientSession, key: str, ids: np.ndarray, values: np.ndarray) -> None:
    session.node_state.put(key, ArrayRecord({"ids": Array(np.asarray(ids, np.int64)),
                                             "values": Array(np.asarray(values, np.float64))}))


def _recall(session: ClientSession, key: str) -> dict[int, float]:
    record = session.node_state.get_arrays(key)
    if record is None:
        return {}
    return dict(zip(record["ids"].numpy().tolist(), record["values"].numpy().tolist()))


def _score(session: ClientSession, model, ids: np.ndarray, y: np.ndarray, bins: int):
    if session.data.task == "regression":
        pred = session.predict(model, session.inputs(session.data.rows(ids))).outputs if len(ids) else np.zeros(0)
        return regression_sums(pred, y)
    probs = (session.predict(model, session.inputs(session.data.rows(ids))).outputs if len(ids)
             else np.zeros((0, session.data.num_classes)))
    return classification_sums(probs, y, bins)


def _measure(session: ClientSession, content: RecordDict, cycle: int) -> dict[str, object]:
    cfg, data = session.cfg, session.data
    out: dict[str, object] = {}
    model = session.model_from(content["global-model"])
    ids, y = session.ledger.audit_ids(), session.ledger.audit_labels()
    order = np.argsort(ids, kind="stable")
    ids, y = ids[order], y[order]
    sums, values = _score(session, model, ids, y, cfg.calibration_bins)
    out.update({f"audit-{k}": v for k, v in sums.items()})
    # paired gain: the same audit samples under the previous cycle's model (regression: fall of the squared error)
    before = _recall(session, f"campaign-audit-{cycle - 1}")
    both = [k for k, i in enumerate(ids.tolist()) if i in before]
    if both:
        prev = np.array([before[int(ids[k])] for k in both])
        gain = values[both] - prev if data.task == "classification" else prev - values[both]
        out.update({"paired-n": len(both), "paired-gain": float(gain.sum())})
    _remember(session, f"campaign-audit-{cycle}", ids, values)
    if "shadow-model" in content.array_records:
        shadow, _ = _score(session, session.model_from(content["shadow-model"]), ids, y, cfg.calibration_bins)
        out.update({f"shadow-{k}": v for k, v in shadow.items() if k in ("n", "correct", "sq-error", "sq-error-sq")})
    if data.task == "classification":
        n = len(data.ids)
        rows = np.sort(np.random.default_rng([cfg.seed, session.partition_id, _STOP_SALT]).choice(
            n, size=min(cfg.stop_set_size, n), replace=False))
        pred = session.predict(model, session.inputs(rows)).outputs.argmax(axis=1) if len(rows) else np.zeros(0, np.int64)
        previous = _recall(session, f"campaign-stopset-{cycle - 1}")
        if previous:
            c = data.num_classes
            old = np.array([previous[int(i)] for i in data.ids[rows]], dtype=np.int64)
            out["stop-agreement"] = np.bincount(old * c + pred, minlength=c * c).astype(float).tolist()
        _remember(session, f"campaign-stopset-{cycle}", data.ids[rows], pred)
        _, x_pool = session.pool()
        if len(x_pool):
            unc = normalised_entropy(session.predict(model, x_pool).outputs)
            out.update({"pool-n": int(len(unc)), "pool-max-uncertainty": float(unc.max()),
                        "pool-uncertainty-sum": float(unc.sum())})
        else:
            out["pool-n"] = 0
    return out


@query_action("audit")
def audit(session: ClientSession, content: RecordDict) -> RecordDict:
    """Buy an audit query (config ``buy``) and/or measure the received models (``measure``); see the module."""
    start = time.perf_counter()
    conf = config_of(content)
    cycle = int(conf["cycle"])
    result: dict[str, object] = {}
    token = str(conf.get("buy", ""))
    if token:
        result["audit-bought"] = _buy(session, token)
    if bool(conf.get("measure", False)):
        result.update(_measure(session, content, cycle))
    result.update({
        "audit-held": int(len(session.ledger.audit_ids())),
        "labeled": len(session.ledger),
        "pool-size": len(session.data.ids) - len(session.ledger.unavailable_ids()),
        "pending": int(len(session.ledger.pending_ids())),
    })
    if session.oracle_notes:
        result["notes"] = session.oracle_notes
    return RecordDict({"result": ConfigRecord(result),
                       "metrics": MetricRecord({"compute-seconds": time.perf_counter() - start})})


def random_arm(session: ClientSession) -> tuple[np.ndarray, object, np.ndarray]:
    """(ids, x on the device, y) of the labels random selection bought: the initial labels and the random shares."""
    entries = [e for e in session.ledger.entries
               if e.query_token == INITIAL_TOKEN or (e.query_token.startswith("cycle-") and e.query_token.endswith("-random"))]
    ids = np.array([e.sample_id for e in entries], dtype=np.int64)
    dtype = np.float64 if session.data.task == "regression" else np.int64
    y = np.array([e.label for e in entries], dtype=dtype)
    rows = session.data.rows(ids) if len(ids) else np.zeros(0, dtype=np.int64)
    return ids, session.inputs(rows), y


@query_action("shadow_train")
def shadow_train(session: ClientSession, content: RecordDict) -> RecordDict:
    """One FedAvg round of the shadow model on :func:`random_arm`'s labels (see the module)."""
    return train_on(session, content, random_arm(session), main=False)
