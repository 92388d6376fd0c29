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

The rounds are in ``server_app/rounds.py`` (:class:`CycleFedAvg`,
:class:`QueryPhase`), node discovery and re-admission in
``server_app/membership.py``.

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
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MessageType, RecordDict
from flwr.serverapp import Grid

from fal_shared.batchnorm import has_batchnorm, install_statistics, pooled_statistics
from fal_shared.config import RunConfig
from fal_shared.experiment_data import test_data
from fal_shared.heads import set_head
from fal_shared.models import build_model, check_model_fits
from fal_shared.training import DEVICE_CACHE, evaluate, pick_device
from server_app.campaign import Campaign
from server_app.checkpoint import Checkpoint
from server_app.labels import wait_for_labels
from server_app.membership import NodeMembership
from server_app.messaging import ClientFailure, MeteredGrid, Messenger, TrafficMeter
from server_app.results import ResultsRecorder
from server_app.rounds import CycleFedAvg, QueryPhase
from strategies import ClientInfo, create_strategy

__all__ = ["Experiment", "ClientFailure"]

log = logging.getLogger("fal")


class Experiment(NodeMembership):
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
        self.campaign = Campaign(self)  # audit estimates, stopping rules, calibration check, tracker

    def _load_test_data(self, num_partitions: int | None) -> None:
        self.test = test_data(self.cfg, num_partitions)
        # a model that cannot take the data fails here, before any message is sent
        check_model_fits(self.model_name, input_shape=self.test.input_shape, num_outputs=self.test.num_classes,
                         dataset=self.cfg.dataset)

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
        try:
            data = self._run()
        except BaseException as err:
            from server_app.labels import LabelsPending

            self.campaign.close("waiting-for-labels" if isinstance(err, LabelsPending) else "failed")
            raise
        self.campaign.close("completed")
        return data

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.discover()
        if self.resume is None:
            self.check_budgets()  # (on resume the pools hold the labels bought since)
        if self.resume is None:
            self.campaign.setup()  # audit samples: bought with (and waited for with) the initial labels
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
        stop = None
        for cycle in range(start, cfg.num_cycles + 1):
            lost_before = len(self.messenger.lost)
            if stage:  # resumed within this cycle: its training, evaluation and campaign numbers are done
                record, seconds, before = self.resume["record"], self.resume["seconds"], self.resume["traffic-before"]
            else:
                record, seconds, before, arrays = self._train_and_evaluate(cycle, arrays, total_data)
                stop = self.campaign.measure(cycle, arrays, record)  # before selecting; may stop the run here
            if cycle < cfg.num_cycles and stop is None:
                if stage != "labels":
                    self._save_checkpoint(cycle, "query", arrays, record, seconds, before)
                    arrays, pending = self._query(cycle, arrays, record, seconds)
                    pending = self.campaign.pending(pending)  # audit top-up and random share labels too
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
            self.campaign.cycle_done(record)
            if stop is not None:
                self.recorder.data["stop"] = {"cycle": cycle, "reason": stop}
                break
        final = self.recorder.data["cycles"][-1]["evaluation"]
        totals = {"traffic": self.meter.snapshot(), "final-evaluation": final}
        self.recorder.finish("completed", totals=totals)
        if self.checkpoint is not None:
            self.checkpoint.delete()
        self._release_clients()
        return self.recorder.data

    def _release_clients(self) -> None:
        """Tell every client the run completed (they delete their node-state files); one try, never fails the run."""
        content = RecordDict({"config": ConfigRecord({})})
        try:
            replies = self.messenger.send_to_nodes("query.finish", {c.node_id: content for c in self.clients.values()})
        except Exception as err:  # noqa: BLE001 - the run has completed; a site that missed this keeps a few files
            log.warning("[FAL] query.finish: %s", err)
            return
        missed = sorted(p for p, c in self.clients.items() if c.node_id not in replies or replies[c.node_id].has_error())
        if missed:
            log.warning("[FAL] partition(s) %s did not confirm the end of the run; their node-state files stay", missed)

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
        phase = QueryPhase(self, cycle, arrays, self.campaign.query_budgets(cycle, arrays, self.budgets(), record))
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
