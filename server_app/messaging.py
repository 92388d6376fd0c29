"""Message transport of the ServerApp: metering, partition addressing, failures.

* :class:`MeteredGrid` wraps Flower's Grid and counts messages and bytes per
  message type (``train``, ``evaluate``, ``query.select``, ...) in both
  directions, for everything sent through it (FedAvg rounds included).
  It also notices a SuperNode that restarted while it held a message (with
  SuperNode authentication a restarted node keeps its node id, and the message
  it had taken is gone): that message is answered as lost instead of waiting
  ``reply-timeout-seconds`` for a reply that cannot come.
* :class:`Messenger` addresses clients by partition id (a SuperNode that
  restarts without authentication gets a new node id but keeps its partition),
  injects the run name, retries failed query messages (queries are idempotent),
  and turns a client error into :class:`ClientFailure` naming the client, the
  action and the reason. A client that was *lost* (see :func:`lost_reason`) can
  be left out of a round instead, when the failure policy allows it.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fal_shared.wire import RUN_CONFIG_DEFAULTS, content_bytes

__all__ = ["ClientFailure", "MeteredGrid", "Messenger", "TrafficMeter", "lost_reason"]

POLL_SECONDS = 1.0

# Error replies that mean "the site could not answer", not "the client's code failed".
_LOST_CODES = frozenset({
    ErrorCode.MESSAGE_UNAVAILABLE,
    ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
    ErrorCode.NODE_UNAVAILABLE,
    ErrorCode.CLIENT_APP_CRASHED,
})
NODE_RESTARTED_REASON = "the SuperNode restarted while it held this message; the message was lost"


class ClientFailure(RuntimeError):
    """A client failed to answer a round; the message names it and the reason."""


def lost_reason(reply: Message | None, timeout: float) -> str | None:
    """Why the client of ``reply`` counts as lost (the site could not answer), or None.

    None for a normal reply and for an error the client's own code raised (that
    is not a lost site: it fails the run). ``reply=None`` means no reply came.
    """
    if reply is None:
        return f"no reply within {timeout:.0f} s"
    if reply.has_error() and reply.error.code in _LOST_CODES:
        return str(reply.error.reason)
    return None


class TrafficMeter:
    """Messages and bytes per message type, sent (server->client) and received."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = defaultdict(
            lambda: {"messages-sent": 0, "bytes-sent": 0, "messages-received": 0, "bytes-received": 0}
        )

    def sent(self, message: Message) -> None:
        entry = self.counts[message.metadata.message_type]
        entry["messages-sent"] += 1
        entry["bytes-sent"] += content_bytes(message.content) if message.has_content() else 0

    def received(self, message: Message) -> None:
        entry = self.counts[message.metadata.message_type]
        entry["messages-received"] += 1
        if message.has_content():
            entry["bytes-received"] += content_bytes(message.content)

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self.counts.items()}

    @staticmethod
    def diff(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        out = {}
        for kind, entry in after.items():
            prev = before.get(kind, {})
            delta = {k: v - prev.get(k, 0) for k, v in entry.items()}
            if any(delta.values()):
                out[kind] = delta
        return out


class MeteredGrid(Grid):
    """A Grid that forwards to another Grid and meters every message."""

    def __init__(self, inner: Grid, meter: TrafficMeter | None = None) -> None:
        self.inner = inner
        self.meter = meter or TrafficMeter()

    # delegation of Grid's abstract interface
    def set_run(self, run_id: int) -> None:  # pragma: no cover - Flower internal
        self.inner.set_run(run_id)

    @property
    def run(self):  # type: ignore[override]
        return self.inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # pragma: no cover
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self):  # pragma: no cover - not used by the app
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for m in messages:
            self.meter.sent(m)
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.inner.pull_messages(message_ids))
        for r in replies:
            self.meter.received(r)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        for m in messages:
            self.meter.sent(m)
        if getattr(self.inner, "in_process", False):  # server_app.inprocess: answers synchronously
            replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        else:
            replies = self._push_and_pull(messages, timeout)
        for r in replies:
            self.meter.received(r)
        return replies

    def _activations(self) -> dict[int, str]:
        """When each connected node last (re)connected, as the SuperLink reports it."""
        return {int(n.node_id): str(n.last_activated_at) for n in self.inner.get_nodes()}

    def _push_and_pull(self, messages: list[Message], timeout: float | None) -> list[Message]:
        """Flower's push-then-poll, and a lost-message reply for nodes that restart meanwhile."""
        before = self._activations()
        ids = list(self.inner.push_messages(messages))
        pending = {mid: msg for mid, msg in zip(ids, messages) if mid}
        replies: list[Message] = []
        deadline = time.monotonic() + timeout if timeout is not None else float("inf")  # None: wait, as Flower does
        while pending:
            for reply in self.inner.pull_messages(list(pending)):
                sent = pending.pop(reply.metadata.reply_to_message_id, None)
                if sent is None:
                    continue
                if reply.metadata.src_node_id != sent.metadata.dst_node_id and reply.has_error():
                    # The SuperLink answers for an unavailable node in its own name: re-address it to the node.
                    reply = Message(Error(code=reply.error.code, reason=reply.error.reason), reply_to=sent)
                replies.append(reply)
            if not pending or time.monotonic() >= deadline:
                break
            now = self._activations()
            for mid, msg in list(pending.items()):
                node = msg.metadata.dst_node_id
                if node in now and node in before and now[node] != before[node]:
                    replies.append(Message(Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason=NODE_RESTARTED_REASON), reply_to=msg))
                    del pending[mid]
            if pending:
                time.sleep(POLL_SECONDS)
        return replies


class Messenger:
    """Sends per-partition contents and returns per-partition replies."""

    def __init__(
        self, grid: Grid, *, run_name: str, timeout: float, retries: int,
        before_retry: Callable[[], None] | None = None,
        run_config_defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.grid = grid
        self.run_name = run_name
        #: run-config values the strategy supplied (strategies.resolve_run_config); the clients'
        #: run config is Flower's, without them, so they travel with every message
        self.run_config_defaults = dict(run_config_defaults or {})
        self.timeout = timeout
        self.retries = retries
        self.before_retry = before_retry
        self.nodes: dict[int, int] = {}  # partition id -> node id
        self.compute_seconds: dict[str, list[float]] = defaultdict(list)
        self.lost: list[dict[str, Any]] = []  # clients left out of a round: message type, partition, reason

    def with_run_name(self, content: RecordDict) -> RecordDict:
        """A copy of ``content`` whose ``config`` carries the run name (and the strategy's run-config defaults)."""
        items = dict(content.items())
        config = dict(items.get("config", ConfigRecord()))
        config.setdefault("run-name", self.run_name)
        if self.run_config_defaults:
            config.setdefault(RUN_CONFIG_DEFAULTS, json.dumps(self.run_config_defaults))
        items["config"] = ConfigRecord(config)
        return RecordDict(items)

    def send_to_nodes(self, message_type: str, contents: Mapping[int, RecordDict]) -> dict[int, Message]:
        """One round to node ids; replies (possibly errors) by node id."""
        messages = [
            Message(content=self.with_run_name(c), dst_node_id=n, message_type=message_type)
            for n, c in contents.items()
        ]
        replies = self.grid.send_and_receive(messages, timeout=self.timeout)
        return {r.metadata.src_node_id: r for r in replies}

    def send(
        self, message_type: str, contents: Mapping[int, RecordDict], *, skip_lost: bool = False,
    ) -> dict[int, RecordDict]:
        """One round to partitions, with retries; raises :class:`ClientFailure`.

        With ``skip_lost``, clients still lost after the retries (:func:`lost_reason`)
        are left out of the result and recorded in :attr:`lost`; an error a
        client's code raised still fails the round.
        """
        pending = dict(contents)
        results: dict[int, RecordDict] = {}
        attempt = 0
        while pending:
            unknown = [p for p in pending if p not in self.nodes]
            if unknown:
                raise ClientFailure(f"no connected node serves partition(s) {unknown}")
            by_node = self.send_to_nodes(message_type, {self.nodes[p]: c for p, c in pending.items()})
            failures: dict[int, str] = {}
            lost: set[int] = set()
            for pid in list(pending):
                reply = by_node.get(self.nodes[pid])
                reason = lost_reason(reply, self.timeout)
                if reason is not None:
                    failures[pid] = reason
                    lost.add(pid)
                elif reply.has_error():
                    failures[pid] = reply.error.reason
                else:
                    results[pid] = reply.content
                    metrics = reply.content.metric_records.get("metrics")
                    if metrics is not None and "compute-seconds" in metrics:
                        self.compute_seconds[message_type].append(float(metrics["compute-seconds"]))
                    del pending[pid]
            if not failures:
                break
            attempt += 1
            if attempt > self.retries:
                if skip_lost and set(failures) == lost:
                    for pid in sorted(failures):
                        self.lost.append({"message-type": message_type, "partition": pid, "reason": failures[pid]})
                        del pending[pid]
                    break
                detail = "; ".join(f"partition {p} (node {self.nodes[p]}): {r}" for p, r in sorted(failures.items()))
                raise ClientFailure(f"{message_type} failed after {attempt} attempt(s): {detail}")
            time.sleep(min(5.0, 0.5 * attempt))
            if self.before_retry is not None:
                self.before_retry()  # a restarted node may serve the partition under a new id
        return dict(sorted(results.items()))
