"""Waiting for labels that people give: poll the sites, up to a deadline, then a quorum decides.

After a query phase, a site whose oracle is a person (``oracle=label-studio``
or ``file`` in its node config) reports how many of its chosen samples are
still *pending*. The server then asks those sites (``query.labels``, one
message each; the site reads its labeling tool and records what arrived)
every ``label-poll-seconds`` until none is pending, or until
``label-wait-seconds`` have passed. At that deadline, if at least
``label-wait-quorum`` of the sites have all their labels, the run goes on
(the late sites train on the labels they have; theirs count when they
arrive, and the next wait asks them again); otherwise the run stops with
:class:`LabelsPending` and status ``waiting-for-labels``, and the same
``run-name`` resumes it from its checkpoint (``server_app.checkpoint``).

Sites answered at once (the simulation oracle) report nothing pending: no
message is sent and nothing waits.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from flwr.app import ConfigRecord, RecordDict

from fal_shared.config import RunConfig
from fal_shared.summaries import LIST_AT_MOST, compact_ids, describe, summarize
from fal_shared.wire import config_of
from server_app.messaging import Messenger
from strategies import ClientInfo

__all__ = ["LabelsPending", "wait_for_labels"]

log = logging.getLogger("fal")


class LabelsPending(RuntimeError):
    """The deadline passed with fewer sites done than the quorum; the run stops and can be resumed."""


def wait_for_labels(
    messenger: Messenger,
    clients: dict[int, ClientInfo],
    cfg: RunConfig,
    pending: dict[int, int],
    *,
    run_name: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll the sites with ``pending[p] > 0`` until they have no pending label, or the deadline.

    Updates ``clients`` (labels held, pool size, histogram) from the replies and
    returns what to record for the cycle: seconds waited, polls, labels that
    arrived, skipped samples and the sites that were late.

    Raises
    ------
    LabelsPending
        At the deadline, when fewer than ``label-wait-quorum`` of the sites have all their labels.
    """
    start = clock()
    deadline = start + cfg.label_wait_seconds
    pending = {p: int(n) for p, n in pending.items()}
    waiting = sorted(p for p, n in pending.items() if n > 0)
    polls, arrived, notes = 0, {}, {}
    skipped: dict[str, list[int]] = {}
    late: list[int] = []
    while waiting:
        content = RecordDict({"config": ConfigRecord({})})
        replies = messenger.send("query.labels", {p: content for p in waiting})
        polls += 1
        round_notes: dict[str, list[int]] = {}  # note -> partitions that reported it in this poll
        for pid, reply in replies.items():
            r = config_of(reply, "result")
            info = clients[pid]
            info.labeled = int(r["labeled"])
            info.pool_size = int(r["pool-size"])
            if "label-histogram" in r:
                info.label_histogram = [int(v) for v in r["label-histogram"]]
            pending[pid] = int(r["pending"])
            arrived[str(pid)] = arrived.get(str(pid), 0) + int(r.get("new-labels", 0))
            if r.get("skipped-ids"):
                skipped.setdefault(str(pid), []).extend(int(i) for i in r["skipped-ids"])
            for note in r.get("notes", []):
                notes.setdefault(str(pid), []).append(str(note))
                round_notes.setdefault(str(note), []).append(pid)
        for note, pids in round_notes.items():  # one line per distinct note, however many sites report it
            log.warning("partition(s) %s: %s", compact_ids(pids), note)
        waiting = [p for p in waiting if pending[p] > 0]
        if not waiting:
            break
        now = clock()
        if now >= deadline:
            done = len(clients) - len(waiting)
            need = math.ceil(cfg.label_wait_quorum * len(clients) - 1e-9)
            counts = (", ".join(f"partition {p}: {pending[p]}" for p in waiting) if len(waiting) <= LIST_AT_MOST else
                      f"{len(waiting)} partitions ({compact_ids(waiting)}), {describe(summarize([pending[p] for p in waiting]))}")
            if done >= need:
                late = list(waiting)
                log.warning("label-wait-seconds over: %d of %d sites done (quorum %d); going on without the "
                            "pending labels of %s", done, len(clients), need, counts)
                break
            raise LabelsPending(
                f"labels still pending after label-wait-seconds={cfg.label_wait_seconds:g} ({counts}); only "
                f"{done} of {len(clients)} sites are done, label-wait-quorum={cfg.label_wait_quorum:g} needs {need}. "
                f"Nothing is lost: start the run again with run-name={run_name!r} to go on waiting"
            )
        print(f"[FAL] waiting for labels: {sum(pending[p] for p in waiting)} pending at {len(waiting)} partition(s) "
              f"({compact_ids(waiting)}); next look in {min(cfg.label_poll_seconds, deadline - now):.0f} s",
              flush=True)
        sleep(min(cfg.label_poll_seconds, deadline - now))
    out: dict[str, Any] = {
        "waited-seconds": clock() - start,
        "polls": polls,
        "labels-arrived": arrived,
        "late-partitions": late,
        "pending-after": {str(p): pending[p] for p in late},
    }
    if skipped:
        out["skipped-ids"] = skipped
    if notes:
        out["notes"] = notes
    return out
