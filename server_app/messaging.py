"""Message transport of the ServerApp: metering, partition addressing, failures.

* :class:`MeteredGrid` wraps Flower's Grid and counts messages and bytes per
  message type (``train``, ``evaluate``, ``query.select``, ...) in both
  directions, for everything sent through it (FedAvg rounds included).
* :class:`Messenger` addresses clients by partition id (a SuperNode that
  restarts gets a new node id but keeps its partition), injects the run name,
  retries failed query messages (queries are idempotent), and turns a client
  error into :class:`ClientFailure` naming the client, the action and the reason.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fal_shared.wire import RUN_CONFIG_DEFAULTS, content_bytes

__all__ = ["ClientFailure", "MeteredGrid", "Messenger", "TrafficMeter"]


class ClientFailure(RuntimeError):
    """A client failed to answer a round; the message names it and the reason."""


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
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        for r in replies:
            self.meter.received(r)
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

    def send(self, message_type: str, contents: Mapping[int, RecordDict]) -> dict[int, RecordDict]:
        """One round to partitions, with retries; raises :class:`ClientFailure`."""
        pending = dict(contents)
        results: dict[int, RecordDict] = {}
        attempt = 0
        while pending:
            unknown = [p for p in pending if p not in self.nodes]
            if unknown:
                raise ClientFailure(f"no connected node serves partition(s) {unknown}")
            by_node = self.send_to_nodes(message_type, {self.nodes[p]: c for p, c in pending.items()})
            failures = {}
            for pid in list(pending):
                reply = by_node.get(self.nodes[pid])
                if reply is None:
                    failures[pid] = f"no reply within {self.timeout:.0f} s"
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
                detail = "; ".join(f"partition {p} (node {self.nodes[p]}): {r}" for p, r in sorted(failures.items()))
                raise ClientFailure(f"{message_type} failed after {attempt} attempt(s): {detail}")
            time.sleep(min(5.0, 0.5 * attempt))
            if self.before_retry is not None:
                self.before_retry()  # a restarted node may serve the partition under a new id
        return dict(sorted(results.items()))
