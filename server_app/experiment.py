"""The FAL loop: cycles of FedAvg training, global evaluation and a query phase.

::

    setup round (query.setup): clients load their partitions, buy initial labels
    for cycle in 0..num-cycles:
        R = strategy.train_rounds(cycle); if R > 0 and some client holds labels:
            model = fresh init (model-init=reinit) or the last global model
            R FedAvg rounds of E local epochs on the labeled sets (Flower's FedAvg)
        (otherwise no training: the model stays, e.g. one installed by replace_model)
        evaluate the global model (central test set, or federated), or the model
        the clients keep in their node state (strategy.evaluation_model_key)
        if cycle < num-cycles: query phase (the strategy's query.* rounds), then, if
            people label at some site, wait for their labels (server_app.labels)

A checkpoint before and after each query phase (server_app.checkpoint) lets a
stopped run resume with the same run name, without selecting or buying again.

Everything crosses the network as Flower messages through a
:class:`MeteredGrid`, so bytes per message kind are measured, in simulation
and deployment alike.

Lost sites (the failure policy, ``fal_shared/settings/failures.py``): a client
whose SuperNode cannot answer is left out of a FedAvg round as long as
``train-min-fraction`` of the clients replied, and out of a labeling round
(``query-missing-client=skip``); before every round the server looks for
restarted or late nodes, asks them ``query.setup`` (they reload their ledgers
from disk, nothing is bought again) and re-admits them. Which clients were
lost, and when, is recorded per cycle under ``lost-clients``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fal_shared.config import RunConfig
from fal_shared.experiment_data import test_data
from fal_shared.heads import set_head
from fal_shared.batchnorm import has_batchnorm, install_statistics, pooled_statistics
from fal_shared.models import build_model, check_model_fits
from fal_shared.training import DEVICE_CACHE, evaluate, pick_device
from fal_shared.wire import config_of
from server_app.checkpoint import Checkpoint
from server_app.labels import wait_for_labels
from server_app.messaging import ClientFailure, MeteredGrid, Messenger, TrafficMeter, lost_reason
from server_app.results import ResultsRecorder
from strategies import ClientInfo, create_strategy

__all__ = ["Experiment", "ClientFailure"]

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

    def __init__(self, exp: "Experiment", cycle: int) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=1)
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
                message_type=MessageType.TRAIN,
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


class _Phase:
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


class Experiment:
    """One FAL experiment on a Grid (real, simulated, or in-process for tests)."""

    def __init__(
        self, grid: Grid, cfg: RunConfig, *, run_name: str, recorder: ResultsRecorder,
        checkpoint: Checkpoint | None = None, resume: dict[str, Any] | None = None,
        strategy_defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.checkpoint = checkpoint
        self.resume = resume  # a loaded checkpoint: go on from it
        self.meter = TrafficMeter()
        self.grid = MeteredGrid(grid, self.meter)
        self.run_name = run_name
        self.recorder = recorder
        self.strategy = create_strategy(cfg)  # unknown names fail here, before anything runs
        self.strategy_state: dict[str, Any] = {}
        self.messenger = Messenger(
            self.grid, run_name=run_name, timeout=cfg.reply_timeout_seconds, retries=cfg.query_retries,
            before_retry=self.refresh_nodes,
            run_config_defaults=strategy_defaults,  # every client applies the strategy's defaults as the server did
        )
        self.clients: dict[int, ClientInfo] = {}
        self.num_partitions = 0
        self._retired: set[int] = set()  # node ids that served a partition now served by another node, or none
        self.pending_at_setup: dict[int, int] = {}  # initial labels a person has yet to give, by partition id
        self.device = pick_device(cfg.device)
        self.model_name = cfg.resolved_model()
        self.test = None
        # Regression test splits depend on the number of partitions: with num-clients=0 that is known after setup.
        if cfg.evaluation == "central" and (cfg.task == "classification" or cfg.num_clients > 0):
            self._load_test_data(cfg.num_clients or None)
        self._input_shape: tuple[int, ...] | None = self.test.input_shape if self.test else None
        self._has_batchnorm: bool | None = None

    def _load_test_data(self, num_partitions: int | None) -> None:
        self.test = test_data(self.cfg, num_partitions)
        # a model that cannot take the data fails here, before any message is sent
        check_model_fits(self.model_name, input_shape=self.test.input_shape, num_outputs=self.test.num_classes,
                         dataset=self.cfg.dataset)

    def min_train_replies(self, of: int | None = None) -> int:
        """Replies a FedAvg round needs: ``train-min-fraction`` of ``of`` clients (default: the admitted ones), at least one."""
        n = len(self.clients) if of is None else of
        return max(1, math.ceil(self.cfg.train_min_fraction * n - 1e-9))

    # ---------------------------------------------------------------- setup
    def _wait_for_nodes(self) -> list[int]:
        """num-clients=N: exactly N connected nodes; num-clients=0: at least one."""
        wanted = max(self.cfg.num_clients, 1)
        deadline = time.monotonic() + self.cfg.node_wait_seconds
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= wanted:
                break
            if time.monotonic() > deadline:
                what = f"num-clients={self.cfg.num_clients} but only" if self.cfg.num_clients else "num-clients=0 (use the connected nodes) but"
                raise ClientFailure(
                    f"{what} {len(nodes)} node(s) connected within node-wait-seconds={self.cfg.node_wait_seconds:g}"
                )
            time.sleep(1.0)
        if self.cfg.num_clients and len(nodes) > self.cfg.num_clients:
            raise ValueError(
                f"num-clients={self.cfg.num_clients} but {len(nodes)} nodes are connected; "
                "set num-clients to the number of SuperNodes (or 0 to use the connected nodes)"
            )
        return nodes

    def _setup(
        self, nodes: list[int], *, skip_lost: bool = False, into: dict[int, tuple[ClientInfo, int]] | None = None,
    ) -> dict[int, tuple[ClientInfo, int]]:
        """Send ``query.setup`` to ``nodes``; (info, num-partitions) by partition id, added to ``into``.

        With ``skip_lost`` a node that could not answer is left out (it is asked
        again when it shows up next); an error its code raised fails.
        """
        setup = RecordDict({"config": ConfigRecord({"initial-labels": self.strategy.initial_labels})})
        replies = self.messenger.send_to_nodes("query.setup", {n: setup for n in nodes})
        problems = []
        for n in nodes:
            reason = lost_reason(replies.get(n), self.cfg.reply_timeout_seconds)
            if reason is not None:
                if not skip_lost:
                    problems.append(f"node {n}: {reason}")
            elif replies[n].has_error():
                problems.append(f"node {n}: {replies[n].error.reason}")
        if problems:
            raise ClientFailure("setup failed: " + "; ".join(problems))
        found = {} if into is None else into
        for node, reply in sorted(replies.items()):
            if node not in nodes or reply.has_error():
                continue
            r = config_of(reply.content, "result")
            pid = int(r["partition-id"])
            if pid in found:
                raise ValueError(
                    f"partition-id {pid} is served by two nodes ({found[pid][0].node_id} and {node}); "
                    "give every SuperNode its own partition-id"
                )
            info = ClientInfo(
                partition_id=pid, node_id=node, data_size=int(r["data-size"]), pool_size=int(r["pool-size"]),
                labeled=int(r["labeled"]), num_classes=int(r["num-classes"]),
                label_histogram=[int(v) for v in r["label-histogram"]] if "label-histogram" in r else None,
                input_shape=tuple(int(v) for v in r["input-shape"]),
            )
            if into is not None and int(r["num-partitions"]) != self.num_partitions:
                raise ValueError(f"nodes disagree on num-partitions: {sorted({self.num_partitions, int(r['num-partitions'])})}")
            found[pid] = (info, int(r["num-partitions"]))
            self.pending_at_setup[pid] = int(r.get("pending", 0))
        return found

    def discover(self) -> None:
        """Setup round: map partitions to nodes, check them, learn pool sizes."""
        nodes = self._wait_for_nodes()
        declared = self.cfg.num_clients == 0
        found = self._setup(nodes, skip_lost=declared)
        if not found:
            raise ClientFailure(f"setup: none of the {len(nodes)} connected node(s) answered")
        partitions_seen = {nparts for _, nparts in found.values()}
        if len(partitions_seen) != 1:
            raise ValueError(f"nodes disagree on num-partitions: {sorted(partitions_seen)}")
        nparts = partitions_seen.pop()
        if nparts < len(nodes):
            raise ValueError(
                f"num-partitions={nparts} is fewer than the {len(nodes)} connected nodes; every node needs its own partition"
            )
        self.num_partitions = nparts
        if declared:
            found = self._await_partitions(found, set(nodes))
        self.clients = {pid: info for pid, (info, _) in sorted(found.items())}
        self.messenger.nodes = {p: c.node_id for p, c in self.clients.items()}

    def _await_partitions(self, found: dict[int, tuple[ClientInfo, int]], asked: set[int]) -> dict[int, tuple[ClientInfo, int]]:
        """num-clients=0: wait for a node of every declared partition; start without late ones if the policy allows."""
        deadline = time.monotonic() + self.cfg.node_wait_seconds
        while len(found) < self.num_partitions and time.monotonic() < deadline:
            time.sleep(1.0)
            new = sorted(set(self.grid.get_node_ids()) - asked)
            asked.update(new)
            if new:
                self._setup(new, skip_lost=True, into=found)
        missing = sorted(set(range(self.num_partitions)) - set(found))
        if missing:
            need = self.min_train_replies(of=self.num_partitions)
            if len(found) < need:
                raise ClientFailure(
                    f"num-clients=0: {len(found)} of num-partitions={self.num_partitions} partitions connected within "
                    f"node-wait-seconds={self.cfg.node_wait_seconds:g} (missing {missing}); train-min-fraction="
                    f"{self.cfg.train_min_fraction:g} needs {need}"
                )
            log.warning("[FAL] starting without partition(s) %s: they join when their nodes connect", missing)
        return found

    def refresh_nodes(self, wait: bool = True) -> None:
        """Re-admit SuperNodes that restarted, or that were late (num-clients=0).

        A node restarted without SuperNode authentication has a new node id; it
        answers ``query.setup`` from its ledger on disk (its labels are reloaded,
        not bought again) and takes over its partition. With ``wait``, first
        wait up to node-wait-seconds while some partition has no connected node
        and no new node has appeared (a restarting node needs a moment).
        """
        known = set(self.messenger.nodes.values())

        def look() -> tuple[set[int], list[int]]:
            current = set(self.grid.get_node_ids())
            return current, sorted(current - known - self._retired)

        current, new = look()
        if wait:
            deadline = time.monotonic() + self.cfg.node_wait_seconds
            while len(known - current) > len(new) and time.monotonic() < deadline:
                time.sleep(1.0)
                current, new = look()
        if not new:
            return
        found = self._setup(new, skip_lost=True)
        self._retired.update(set(new) - {info.node_id for info, _ in found.values()})  # not a client: do not ask again
        admitted = False
        for pid, (info, nparts) in sorted(found.items()):
            if pid in self.clients:
                log.info("[FAL] partition %d re-admitted: node %d -> node %d", pid, self.clients[pid].node_id, info.node_id)
                self._retired.add(self.clients[pid].node_id)
            elif self.cfg.num_clients == 0 and nparts == self.num_partitions:
                log.info("[FAL] partition %d joined late on node %d", pid, info.node_id)
                admitted = True
            else:
                log.warning("[FAL] node %d serves partition-id %d, which is not in this experiment; ignored", info.node_id, pid)
                self._retired.add(info.node_id)
                continue
            self.clients[pid] = info
            self.messenger.nodes[pid] = info.node_id
        if admitted:
            self.clients = dict(sorted(self.clients.items()))
            self.messenger.nodes = dict(sorted(self.messenger.nodes.items()))
            self.recorder.set_clients(self._client_records())

    def check_budgets(self) -> None:
        """Impossible budgets fail here, before any training."""
        if self.cfg.budget_mode == "count" and self.cfg.num_cycles > 0:
            need = self.cfg.budget_count * self.cfg.num_cycles
            largest = max(c.pool_size for c in self.clients.values())
            if need > largest:
                raise ValueError(
                    f"budget-count: {self.cfg.budget_count} labels x {self.cfg.num_cycles} cycles = {need} "
                    f"exceeds the largest client pool ({largest} unlabeled samples)"
                )

    def budgets(self) -> dict[int, int]:
        return {p: self.cfg.budget_for(c.data_size, c.pool_size) for p, c in self.clients.items()}

    # -------------------------------------------------------------- models
    def fresh_model(self, cycle: int) -> ArrayRecord:
        return ArrayRecord(self._build(seed=self.cfg.seed * 1000 + cycle).state_dict())

    @property
    def has_batchnorm(self) -> bool:
        if self._has_batchnorm is None:
            self._has_batchnorm = has_batchnorm(self._build(seed=0))
        return self._has_batchnorm

    def _build(self, seed: int | None = None):
        shape = self._input_shape
        if shape is None:
            raise RuntimeError("input shape unknown")  # set in run() for federated evaluation
        num_outputs = next(iter(self.clients.values())).num_classes
        return build_model(self.model_name, input_shape=shape, num_outputs=num_outputs, seed=seed)

    def recompute_batchnorm(self, arrays: ArrayRecord) -> ArrayRecord:
        """Install the clients' pooled BatchNorm statistics of ``arrays`` (see fal_shared.batchnorm)."""
        content = RecordDict({"global-model": arrays, "config": ConfigRecord({})})
        # A site lost since its last training reply is left out, as in a FedAvg round (train-min-fraction).
        replies = self.messenger.send("query.bn_stats", {p: content for p in self.clients}, skip_lost=True)
        if len(replies) < self.min_train_replies():
            raise ClientFailure(
                f"query.bn_stats: {len(replies)} of {len(self.clients)} clients replied, but "
                f"train-min-fraction={self.cfg.train_min_fraction:g} needs {self.min_train_replies()}"
            )
        parts = [{k: v.numpy() for k, v in reply["moments"].items()} for reply in replies.values()]
        state = install_statistics(arrays.to_torch_state_dict(), pooled_statistics(parts))
        return ArrayRecord(state)

    def evaluate(self, arrays: ArrayRecord, client_model_key: str | None = None) -> dict[str, Any]:
        """Evaluate ``arrays``, or (``client_model_key``) the model each client keeps under that state key."""
        if client_model_key and self.test is not None:
            raise ValueError(
                f"evaluation: strategy {self.cfg.strategy!r} keeps its model on the clients (the server never "
                "holds it in the clear), so it must be evaluated federatedly: set evaluation=\"federated\""
            )
        if self.test is not None:
            num_outputs = self.test.num_classes
            model = build_model(self.model_name, input_shape=self.test.input_shape, num_outputs=num_outputs)
            model.load_state_dict(arrays.to_torch_state_dict())
            set_head(model, self.cfg.resolved_head())  # e.g. FEAL's evidential outputs
            result = evaluate(
                model, DEVICE_CACHE.get(self.test.x, self.device), self.test.y, num_classes=self.test.num_classes,
                batch_size=self.cfg.score_batch_size, device=self.device, task=self.test.task,
                normalize=self.test.normalize, precision=self.cfg.precision,
            )
            result["where"] = "central"
        else:
            if client_model_key:  # clients evaluate their own copy; nothing to send
                content = RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord({"model-state-key": client_model_key})})
            else:
                content = RecordDict({"arrays": arrays, "config": ConfigRecord({})})
            replies = self.messenger.send(MessageType.EVALUATE, {p: content for p in self.clients})
            metrics = [r["metrics"] for r in replies.values()]
            n = sum(int(m["num-examples"]) for m in metrics)
            if self.cfg.task == "regression":
                result = {"mse": sum(float(m["mse"]) * int(m["num-examples"]) for m in metrics) / max(n, 1)}
            else:
                correct = np.sum([m["correct-per-class"] for m in metrics], axis=0)
                count = np.sum([m["count-per-class"] for m in metrics], axis=0)
                per_class = [float(c / k) if k else float("nan") for c, k in zip(correct, count)]
                result = {"accuracy": float(correct.sum() / max(count.sum(), 1)), "per-class-accuracy": per_class}
            result["num-examples"] = n
            result["where"] = "federated"
            if client_model_key:
                result["client-model-key"] = client_model_key
        if "per-class-accuracy" in result:
            vals = [v for v in result["per-class-accuracy"] if v == v]
            result["balanced-accuracy"] = float(np.mean(vals)) if vals else float("nan")
        return result

    # ----------------------------------------------------------------- loop
    def _client_records(self) -> dict[str, Any]:
        return {
            str(p): {"node-id": c.node_id, "data-size": c.data_size, "initial-labeled": c.labeled} for p, c in self.clients.items()
        }

    def _save_checkpoint(self, cycle: int, stage: str, arrays: ArrayRecord, record: dict[str, Any],
                         seconds: dict[str, float], before: dict[str, Any]) -> None:
        if self.checkpoint is not None:
            self.checkpoint.save(
                config=self.cfg.to_flower(), cycle=cycle, stage=stage, arrays=arrays, record=record, seconds=seconds,
                traffic_before=before, traffic=self.meter.snapshot(), strategy_state=self.strategy_state,
                results=self.recorder.data,
            )

    def _restore(self, saved: dict[str, Any]) -> tuple[int, str, ArrayRecord]:
        """Take the strategy state and traffic counters of a checkpoint; (cycle, stage, model) to go on from."""
        self.strategy_state.update(saved["strategy-state"])
        for kind, entry in saved["traffic"].items():
            self.meter.counts[kind].update(entry)
        for pid, info in self.clients.items():  # nodes may have new ids after a restart
            self.recorder.data["clients"].setdefault(str(pid), {})["node-id"] = info.node_id
        cycle, stage = int(saved["cycle"]), str(saved["stage"])
        print(f"[FAL] run {self.run_name}: resuming at cycle {cycle} ({'waiting for labels' if stage == 'labels' else 'query phase'})",
              flush=True)
        return cycle, stage, saved["arrays"]

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.discover()
        if self.resume is None:
            self.check_budgets()  # (on resume the pools hold the labels bought since)
        if cfg.evaluation == "central" and self.test is None:  # num-clients=0: the partitions are known now
            self._load_test_data(self.num_partitions)
            self._input_shape = self.test.input_shape
        if self._input_shape is None:  # federated evaluation: the server holds no data, the clients say
            self._input_shape = next(iter(self.clients.values())).input_shape
        total_data = sum(c.data_size for c in self.clients.values())
        start, stage = 0, ""
        if self.resume is None:
            if any(self.pending_at_setup.values()):  # people give the initial labels too
                waited = wait_for_labels(self.messenger, self.clients, cfg, self.pending_at_setup, run_name=self.run_name)
                self.recorder.data["initial-labeling"] = waited
            self.recorder.set_clients(self._client_records())
            arrays = self.fresh_model(0)
        else:
            start, stage, arrays = self._restore(self.resume)
        for cycle in range(start, cfg.num_cycles + 1):
            lost_before = len(self.messenger.lost)
            if stage:  # resumed within this cycle: its training and evaluation are done
                record, seconds, before = self.resume["record"], self.resume["seconds"], self.resume["traffic-before"]
            else:
                record, seconds, before, arrays = self._train_and_evaluate(cycle, arrays, total_data)
            if cycle < cfg.num_cycles:
                if stage != "labels":
                    self._save_checkpoint(cycle, "query", arrays, record, seconds, before)
                    arrays, pending = self._query(cycle, arrays, record, seconds)
                    self._save_checkpoint(cycle, "labels", arrays, record, seconds, before)
                else:  # stopped while waiting: every site says again what it still waits for
                    pending = {p: 1 for p in self.clients}
                if any(pending.values()):
                    t0 = time.perf_counter()
                    record["labeling"] = wait_for_labels(self.messenger, self.clients, cfg, pending, run_name=self.run_name)
                    seconds["label-wait"] = time.perf_counter() - t0
            stage = ""
            record["seconds"] = seconds
            record["traffic"] = TrafficMeter.diff(self.meter.snapshot(), before)
            if len(self.messenger.lost) > lost_before:
                record["lost-clients"] = self.messenger.lost[lost_before:]
            self.recorder.add_cycle(record)
        final = self.recorder.data["cycles"][-1]["evaluation"]
        totals = {"traffic": self.meter.snapshot(), "final-evaluation": final}
        self.recorder.finish("completed", totals=totals)
        if self.checkpoint is not None:
            self.checkpoint.delete()
        return self.recorder.data

    def _train_and_evaluate(
        self, cycle: int, arrays: ArrayRecord, total_data: int,
    ) -> tuple[dict[str, Any], dict[str, float], dict[str, Any], ArrayRecord]:
        """The cycle's FedAvg rounds and evaluation: its record, seconds, traffic before it, and the model."""
        cfg = self.cfg
        before = self.meter.snapshot()
        seconds: dict[str, float] = {}
        self.refresh_nodes(wait=False)
        rounds = int(self.strategy.train_rounds(cycle))
        if rounds > 0 and any(c.labeled > 0 for c in self.clients.values()):
            if cycle > 0 and cfg.model_init == "reinit":
                arrays = self.fresh_model(cycle)
            t0 = time.perf_counter()
            fedavg = CycleFedAvg(self, cycle)
            result = fedavg.start(
                grid=self.grid, initial_arrays=arrays, num_rounds=rounds,
                timeout=cfg.reply_timeout_seconds, train_config=ConfigRecord({"cycle": cycle}),
            )
            arrays = result.arrays
            seconds["train"] = time.perf_counter() - t0
            seconds["train-client-compute-sum"] = float(np.sum(fedavg.client_seconds))
            if cfg.bn_statistics == "recompute" and self.has_batchnorm:
                t0 = time.perf_counter()
                arrays = self.recompute_batchnorm(arrays)
                seconds["bn-statistics"] = time.perf_counter() - t0
        else:  # nothing to train on (FedAvg would divide by zero examples) or a closed-form strategy
            rounds = 0
            seconds["train"] = 0.0
            seconds["train-client-compute-sum"] = 0.0
        t0 = time.perf_counter()
        evaluation = self.evaluate(arrays, self.strategy.evaluation_model_key(cycle, self.strategy_state))
        seconds["evaluate"] = time.perf_counter() - t0
        labeled = sum(c.labeled for c in self.clients.values())
        record: dict[str, Any] = {
            "cycle": cycle,
            "labeled": labeled,
            "labeled-fraction": labeled / max(total_data, 1),
            "labeled-per-client": {str(p): c.labeled for p, c in self.clients.items()},
            "train-rounds": rounds,
            "evaluation": evaluation,
        }
        if cfg.record_label_histograms:
            record["labels-per-class-per-client"] = {str(p): c.label_histogram for p, c in self.clients.items()}
        self._log_cycle(record)
        return record, seconds, before, arrays

    def _query(self, cycle: int, arrays: ArrayRecord, record: dict[str, Any], seconds: dict[str, float]) -> tuple[ArrayRecord, dict[int, int]]:
        """The strategy's query phase; the model to go on with, and the labels still pending per partition."""
        t0 = time.perf_counter()
        phase = _Phase(self, cycle, arrays, self.budgets())
        self.messenger.compute_seconds.clear()
        self.strategy.query(phase)
        seconds["query"] = time.perf_counter() - t0
        seconds["selection-client-max"] = max(phase.selection_seconds, default=0.0)
        seconds["query-client-compute-sum"] = float(sum(sum(v) for v in self.messenger.compute_seconds.values()))
        record["budgets"] = {str(p): b for p, b in phase.budgets.items()}
        record["selected-ids"] = {str(p): [int(i) for i in ids] for p, ids in phase.selected.items()}
        record["strategy"] = phase.recorded
        return (phase.new_arrays if phase.new_arrays is not None else arrays), phase.pending

    def _log_cycle(self, record: dict[str, Any]) -> None:
        ev = record["evaluation"]
        metric = f"mse={ev['mse']:.4f}" if "mse" in ev else f"accuracy={ev['accuracy']:.4f}"
        per_client = " ".join(f"{p}:{n}" for p, n in record["labeled-per-client"].items())
        msg = f"[FAL] cycle {record['cycle']}: {metric} labeled={record['labeled']} ({record['labeled-fraction']:.1%}) per client {per_client}"
        log.info(msg)
        print(msg, flush=True)
