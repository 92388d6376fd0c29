"""The rounds the FAL loop runs: a cycle's FedAvg rounds and a strategy's query phase.

:class:`CycleFedAvg` is Flower's FedAvg with the loop's deviations (partition
order, the failure policy, the per-round lr); :class:`QueryPhase` is the
:class:`strategies.QueryPhase` handed to a strategy, turning its ``broadcast``,
``send`` and ``select`` calls into ``query.*`` messages.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fal_shared.wire import config_of
from server_app.messaging import ClientFailure, lost_reason

if TYPE_CHECKING:
    from server_app.experiment import Experiment

__all__ = ["CycleFedAvg", "QueryPhase"]

log = logging.getLogger("fal")


class CycleFedAvg(FedAvg):
    """Flower's FedAvg for one cycle: all clients, in a fixed order, per-round lr.

    Deviations from the stock strategy, and why: replies are aggregated in
    partition order (float sums are order-dependent; this keeps runs with the
    same seed identical), a client whose code failed aborts the cycle with its
    error instead of being silently dropped, a *lost* client (its site could
    not answer) is left out of the round only as the failure policy allows
    (``train-min-fraction``), every round first re-admits restarted nodes, and
    the lr follows LoGo's per-round schedule (:meth:`RunConfig.lr_for_round`).
    """

    def __init__(self, exp: "Experiment", cycle: int, *, message_type: str = MessageType.TRAIN) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=1)
        self.message_type = message_type  # query.shadow_train: the campaign's shadow model (server_app/campaign.py)
        self.exp = exp
        self.cfg = exp.cfg
        self.messenger = exp.messenger
        self.cycle = cycle
        self.sent: dict[int, int] = {}  # node id -> partition id of this round's messages
        self.client_seconds: list[float] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        self.exp.refresh_nodes(wait=False)  # a node that came back trains from this round on
        self.sent = {self.messenger.nodes[p]: p for p in sorted(self.messenger.nodes)}
        conf = ConfigRecord({
            **config,
            "server-round": server_round,
            "cycle": self.cycle,
            "lr": self.cfg.lr_for_round(server_round),
        })
        return [
            Message(
                content=self.messenger.with_run_name(RecordDict({"arrays": arrays, "config": conf})),
                dst_node_id=node,
                message_type=self.message_type,
            )
            for node in self.sent
        ]

    def aggregate_train(self, server_round: int, replies):
        by_node = {r.metadata.src_node_id: r for r in replies}
        problems, lost, ordered = [], {}, []
        for node, pid in self.sent.items():  # partition order
            reply = by_node.get(node)
            reason = lost_reason(reply, self.cfg.reply_timeout_seconds)
            if reason is not None:
                lost[pid] = f"partition {pid} (node {node}): {reason}"
            elif reply.has_error():
                problems.append(f"partition {pid} (node {node}): {reply.error.reason}")
            else:
                ordered.append(reply)
        if problems:
            raise ClientFailure(f"train round {server_round} of cycle {self.cycle} failed: " + "; ".join(problems + list(lost.values())))
        if lost:
            need = self.exp.min_train_replies()
            if len(ordered) < need:
                raise ClientFailure(
                    f"train round {server_round} of cycle {self.cycle}: {len(ordered)} of {len(self.exp.clients)} clients "
                    f"replied, but train-min-fraction={self.cfg.train_min_fraction:g} needs {need}; lost: "
                    + "; ".join(lost.values())
                )
            for pid, reason in lost.items():
                log.warning("[FAL] cycle %d round %d: %s; the round goes on without it", self.cycle, server_round, reason)
                self.messenger.lost.append({"message-type": "train", "round": server_round, "partition": pid, "reason": reason})
        self.client_seconds += [float(r.content["metrics"]["compute-seconds"]) for r in ordered]
        return super().aggregate_train(server_round, ordered)


class QueryPhase:
    """The :class:`strategies.QueryPhase` the loop hands to a strategy."""

    def __init__(self, exp: "Experiment", cycle: int, arrays: ArrayRecord, budgets: dict[int, int]) -> None:
        self.exp = exp
        self.cfg = exp.cfg
        self.cycle = cycle
        self.clients = exp.clients
        self.budgets = budgets
        self.global_arrays = arrays
        self.state = exp.strategy_state
        self.recorded: dict[str, Any] = {}
        self.selected: dict[int, np.ndarray] = {}
        self.selection_seconds: list[float] = []
        self.new_arrays: ArrayRecord | None = None
        self.select_rounds = 0
        self.pending: dict[int, int] = {}  # labels a person has yet to give, by partition id

    def _content(self, config: Mapping[str, Any] | None, include_model: bool, records: Mapping[str, Any] | None) -> RecordDict:
        items: dict[str, Any] = {"config": ConfigRecord({"cycle": self.cycle, **(config or {})})}
        if include_model:
            items["global-model"] = self.global_arrays
        items.update(records or {})
        return RecordDict(items)

    def broadcast(self, action, config=None, *, include_model=False, records=None):
        content = self._content(config, include_model, records)
        return self.exp.messenger.send(f"query.{action}", {p: content for p in self.clients})

    def send(self, action, contents):
        return self.exp.messenger.send(f"query.{action}", contents)

    def select(self, selector, params=None, *, per_client=None, include_model=True, budgets=None):
        budgets = dict(budgets if budgets is not None else self.budgets)
        self.select_rounds += 1  # a second select round in one cycle must not replay the first purchase
        token = f"cycle-{self.cycle}-select" + (f"-{self.select_rounds}" if self.select_rounds > 1 else "")
        contents = {}
        for pid in self.clients:
            config = {
                "selector": selector,
                "strategy": self.cfg.strategy,
                "budget": int(budgets.get(pid, 0)),
                "token": token,
                **(params or {}),
                **((per_client or {}).get(pid, {})),
            }
            contents[pid] = self._content(config, include_model, None)
        replies = self.exp.messenger.send(
            "query.select", contents, skip_lost=self.cfg.query_missing_client == "skip",
        )
        this_round: dict[int, np.ndarray] = {}
        for pid, reply in replies.items():
            result = config_of(reply, "result")
            ids = np.asarray(result.get("selected-ids", []), dtype=np.int64)
            this_round[pid] = ids
            self.selected[pid] = np.concatenate([self.selected.get(pid, np.zeros(0, dtype=np.int64)), ids])
            info = self.clients[pid]
            info.labeled = int(result["labeled"])
            info.pool_size = int(result["pool-size"])
            self.pending[pid] = int(result.get("pending", 0))
            for note in result.get("notes", []):  # e.g. the labeling tool was unreachable: asked again later
                log.warning("partition %d: %s", pid, note)
            if "label-histogram" in result:
                info.label_histogram = [int(v) for v in result["label-histogram"]]
            metrics = reply.metric_records.get("metrics")
            if metrics is not None:
                self.selection_seconds.append(float(metrics.get("selection-seconds", 0.0)))
                phases = {k[len("selection-seconds-"):]: float(v) for k, v in metrics.items() if k.startswith("selection-seconds-")}
                if phases:
                    self.recorded.setdefault("client-selection-seconds", {})[str(pid)] = phases
            diag = {k[5:]: v for k, v in result.items() if k.startswith("diag-")}
            if diag:
                self.recorded.setdefault("client-diagnostics", {})[str(pid)] = diag
        return this_round

    def record(self, key, value):
        self.recorded[key] = value

    def replace_model(self, arrays):
        self.new_arrays = arrays
