"""FairFAL's statistics round on the client: ``query.fairfal_stats`` (spec 2.2 steps 1-4).

The client trains (or reuses, cached per cycle in the node state) its local-only model,
computes the class-balanced mean predictions of the global and local-only models on its
labeled set, and replies with the global-imbalance indicator ``g`` only. The divergence
``d_i``, the local-only model and every prediction stay on the client; the selection round
(``query/fairfal.py``) recomputes ``d_i`` from the same cached model.
"""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from client_app.actions import query_action
from client_app.session import ClientSession
from fal_shared.wire import config_of
from query.fairfal import client_statistics

__all__ = ["fairfal_stats"]


@query_action("fairfal_stats")
def fairfal_stats(session: ClientSession, content: RecordDict) -> RecordDict:
    """Reply ``result = {"g": g_i, "labeled": n}`` (no ``g`` when the client has no labels).

    Config keys: ``cycle``. Records: ``global-model`` (the global model at the end of the
    cycle; the server sends it with ``include_model=True``).
    """
    start = time.perf_counter()
    conf = config_of(content)
    if "global-model" not in content.array_records:
        raise ValueError("query.fairfal_stats needs the global model: broadcast it with include_model=True")
    cycle = int(conf["cycle"])
    _, x, y = session.labeled()
    result: dict = {"labeled": len(y)}
    metrics: dict = {}
    if len(y):
        global_model = session.model_from(content["global-model"])
        t0 = time.perf_counter()
        local_only = session.local_only_model(cycle)  # trained once per cycle, reused by the selection round
        metrics["local-only-seconds"] = time.perf_counter() - t0
        stats = client_statistics(
            session.predict(global_model, x).outputs,
            session.predict(local_only, x).outputs,
            y,
            session.data.num_classes,
            mode=session.cfg.fairfal_balanced_mean,
        )
        result["g"] = stats.g
    metrics["compute-seconds"] = time.perf_counter() - start
    return RecordDict({"result": ConfigRecord(result), "metrics": MetricRecord(metrics)})
