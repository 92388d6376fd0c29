"""AHFAL (shared/papers/ahfal.txt, Sec. 6, 7, E-H; spec section 2b) as the strategy ``ahfal``.

One query phase:

1. statistics round: clients release their labeled-class histograms, in the clear
   (``query.ahfal_histogram``) or through secure summation
   (``query.ahfal_keys`` -> the server relays every public key ->
   ``query.ahfal_masked_stats``), optionally Laplace-noised (local DP). The server
   computes the target distribution, sigma_c and C_low / C_high
   (:func:`query.ahfal.server_statistics`) **from sums over clients only**
   (``sum n_i``, ``sum p_i``, ``sum p_i^2``), so the plain and the secure path
   share one code path;
2. selection round: ``phase.select("ahfal", {"ahfal-c-low": ..., "ahfal-target-distribution": ...})``;
   every client scores its pool with its local model (after this cycle's local
   training) and the global model, allocates its budget over its pseudo-classes
   and buys the labels (:class:`query.ahfal.AhfalSelector`).

Threat model of the secure summation (``ahfal-secure-sum=true``)
----------------------------------------------------------------
Honest-but-curious server (relays public keys unchanged, sums what it gets,
tries to learn from it); clients do not collude with it. The server learns
``sum_i n_i``, ``sum_i p_i``, ``sum_i p_i^2`` and the number of clients with
labels, never one client's histogram: each masked vector is uniform modulo
2^64 (X25519 + HKDF pair seeds, ChaCha20 masks; ``fedsvd/secure_sum.py``). It
still learns what the protocol gives it anyway: every client's number of labels
(the budgets and the select replies carry it) and the selected sample ids.
An active server substituting public keys is out of scope (no PKI); a client
refuses to mask its values a second time for a different participant set under
the same keys (that would reveal a pair mask).
**Dropout**: there is no Shamir recovery of a dropped client's masks. If a
client does not answer the masked round (after ``query-retries`` re-sends, which
return the identical masked vector), the round fails with ``ClientFailure`` and
no partial sum is ever unmasked (a partial sum is uniform noise); the FAL loop
treats it like any failed round. Local DP combines with it: the masked values
are post-processing of the noisy histogram.

``record-label-histograms=true`` (a core setting) makes every client report its
exact histogram for the results file, which defeats both mechanisms; the
strategy logs a warning when privacy is on and that setting is true.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from fal_shared.wire import config_of
from query.ahfal import StatisticSums, server_statistics, sums_from_histograms
from strategies.base import FALStrategy, QueryPhase, register_strategy

__all__ = ["AhfalStrategy", "PRIVACY_WARNING"]

log = logging.getLogger("fal")

PRIVACY_WARNING = (
    "ahfal: privacy is on (ahfal-dp-epsilon > 0 or ahfal-secure-sum=true) but record-label-histograms=true: "
    "every client also reports its exact label histogram for the results file, which defeats the privacy "
    "mechanisms; set record-label-histograms=false for privacy experiments"
)


def _masked_vector(reply) -> np.ndarray:
    record = reply.array_records.get("masked")
    if record is None or len(record) != 1:
        raise ValueError("ahfal_masked_stats reply lacks its masked vector")
    return next(iter(record.values())).numpy()


@register_strategy("ahfal")
class AhfalStrategy(FALStrategy):
    """Class-adaptive local/global entropy with class-aware budgets, optional local DP and secure summation."""

    tasks = ("classification",)
    description = (
        "per-class variance of label shares decides local (C_high) or local+global (C_low) entropy; "
        "class budgets toward missing/rare classes (Eq. 4); optional local DP and secure summation"
    )
    source = "AHFAL (shared/papers/ahfal.txt Sec. 6-7, E-H); reference dgitj/FAL query_strategies/ahfal.py"

    def validate(self) -> None:
        super().validate()
        cfg = self.cfg
        if cfg.ahfal_secure_sum:
            try:
                import fedsvd.secure_sum  # noqa: F401
            except ImportError as err:
                raise ValueError(f"ahfal-secure-sum=true needs fedsvd.secure_sum and the cryptography package: {err}") from None
        if self.private and cfg.record_label_histograms:
            log.warning(PRIVACY_WARNING)

    @property
    def private(self) -> bool:
        return self.cfg.ahfal_dp_epsilon > 0 or self.cfg.ahfal_secure_sum

    # -------------------------------------------------------------- rounds
    def _plain_sums(self, phase: QueryPhase) -> tuple[StatisticSums, dict[int, dict[str, float]]]:
        replies = phase.broadcast("ahfal_histogram")
        results = {pid: config_of(r, "result") for pid, r in replies.items()}
        hists = [np.asarray(results[pid]["histogram"], dtype=np.int64) for pid in sorted(results)]
        return sums_from_histograms(hists), self._epsilons(results)

    def _secure_sums(self, phase: QueryPhase) -> tuple[StatisticSums, dict[int, dict[str, float]]]:
        from fedsvd.secure_sum import decode_fixed_point, unmask_sum

        keys = {pid: bytes(config_of(r, "result")["public-key"]) for pid, r in phase.broadcast("ahfal_keys").items()}
        pids = sorted(keys)
        replies = phase.broadcast("ahfal_masked_stats", {"peer-ids": pids, "peer-keys": [keys[p] for p in pids]})
        if sorted(replies) != pids:  # Messenger raises on a missing reply; guard anyway: never unmask a partial sum
            raise RuntimeError("ahfal secure summation: replies from a different client set than the key round")
        total = unmask_sum([_masked_vector(replies[p]) for p in pids])
        c = (total.size - 1) // 3
        bits = self.cfg.ahfal_secure_sum_frac_bits
        sums = StatisticSums(
            counts=total[:c].astype(np.int64),
            proportions=decode_fixed_point(total[c:2 * c], bits),
            squares=decode_fixed_point(total[2 * c:3 * c], bits),
            num_clients=int(total[3 * c]),
        )
        return sums, self._epsilons({p: config_of(r, "result") for p, r in replies.items()})

    @staticmethod
    def _epsilons(results: dict[int, dict[str, Any]]) -> dict[int, dict[str, float]]:
        return {
            pid: {"cycle": float(r.get("dp-epsilon", 0.0)), "total": float(r.get("dp-epsilon-spent", 0.0))}
            for pid, r in sorted(results.items())
        }

    def query(self, phase: QueryPhase) -> None:
        cfg = self.cfg
        sums, eps = self._secure_sums(phase) if cfg.ahfal_secure_sum else self._plain_sums(phase)
        stats = server_statistics(sums, cfg.ahfal_tau, target=cfg.ahfal_target)
        phase.record("ahfal", {
            "sigma-pp": [float(v) for v in stats.sigma],
            "c-low": stats.c_low,
            "c-high": stats.c_high,
            "target": [float(v) for v in stats.target],
            "contributing-clients": stats.num_clients,
            "secure-sum": bool(cfg.ahfal_secure_sum),
        })
        if cfg.ahfal_dp_epsilon > 0:
            phase.record("dp-epsilon-spent", {str(p): e["cycle"] for p, e in eps.items()})
            phase.record("dp-epsilon-spent-total", {str(p): e["total"] for p, e in eps.items()})
        params = {
            "ahfal-c-low": ",".join(str(c) for c in stats.c_low),
            "ahfal-target-distribution": ",".join(repr(float(v)) for v in stats.target),
        }
        phase.select("ahfal", params, include_model=cfg.ahfal_toggling)

