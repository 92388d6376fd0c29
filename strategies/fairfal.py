"""FairFAL (Zong & Huang, CVPR 2026): adaptive global/local query model, prototype
pseudo-labels and two-stage class-balanced sampling (spec section 2).

Query phase of one cycle:

1. **Statistics round** ``query.fairfal_stats`` (with the global model): every client
   trains its local-only model and replies with its imbalance indicator ``g_i``; the
   server keeps ``g-bar = mean_i g_i`` in ``phase.state``. With
   ``fairfal-g-bar-mode=freeze`` (default, the authors' code) this happens at the first
   query only and later queries reuse the frozen value; the round is then skipped, which
   changes nothing else because the clients train their local-only model (cached per
   cycle) and recompute ``d_i`` in the selection round anyway. ``refresh`` runs it every
   query.
2. **Selection round** ``phase.select("fairfal", {"fairfal-g-bar": g-bar})``: each client
   runs :class:`query.fairfal.FairFALSelector`.

Recorded per cycle (``results["cycles"][i]["strategy"]``): ``g-bar``, ``g-bar-cycle``
(the query whose statistics gave it), ``statistics-round``, ``g-per-client`` (when the
round ran), and from the selection diagnostics ``clients-global-uncertainty`` /
``clients-global-embedding`` (partition ids whose uncertainty / embedding model was the
global model) and their fractions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fal_shared.wire import config_of
from query.fairfal import G_BAR_PARAM
from strategies.base import FALStrategy, QueryPhase, register_strategy

__all__ = ["FairFALStrategy", "STATS_ACTION"]

STATS_ACTION = "fairfal_stats"
_STATE_G_BAR, _STATE_G_BAR_CYCLE = "fairfal-g-bar", "fairfal-g-bar-cycle"


@register_strategy("fairfal")
class FairFALStrategy(FALStrategy):
    """FairFAL: a g_i statistics round (frozen after the first query by default), then selection."""

    tasks = ("classification",)
    description = (
        "global or local-only query model chosen from prediction discrepancy, prototype pseudo-labels, "
        "per-class quotas, top-4q entropy then k-center on gradient embeddings"
    )
    source = "Zong & Huang, CVPR 2026 (arXiv 2603.10341); chenchenzong/FairFAL fairfal_sampling.py"

    def query(self, phase: QueryPhase) -> None:
        ran_stats = self.cfg.fairfal_g_bar_mode == "refresh" or _STATE_G_BAR not in phase.state
        if ran_stats:
            replies = phase.broadcast(STATS_ACTION, include_model=True)
            g = {pid: float(res["g"]) for pid, r in replies.items() if "g" in (res := config_of(r, "result"))}
            if not g:
                raise RuntimeError("fairfal: no client has labeled data, so no g_i (and no g-bar) exists")
            phase.state[_STATE_G_BAR] = float(np.mean(list(g.values())))
            phase.state[_STATE_G_BAR_CYCLE] = phase.cycle
            phase.record("g-per-client", {str(p): v for p, v in sorted(g.items())})
        g_bar = float(phase.state[_STATE_G_BAR])
        phase.record("g-bar", g_bar)
        phase.record("g-bar-cycle", int(phase.state[_STATE_G_BAR_CYCLE]))
        phase.record("statistics-round", ran_stats)

        phase.select("fairfal", {G_BAR_PARAM: g_bar})

        diagnostics: dict[str, dict[str, Any]] = phase.recorded.get("client-diagnostics", {})
        for what in ("uncertainty", "embedding"):
            flags = {p: bool(d[f"used-global-{what}"]) for p, d in diagnostics.items() if f"used-global-{what}" in d}
            phase.record(f"clients-global-{what}", sorted(int(p) for p, used in flags.items() if used))
            if flags:
                phase.record(f"fraction-global-{what}", float(np.mean(list(flags.values()))))
