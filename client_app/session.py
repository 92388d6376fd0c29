"""One client's view of an experiment: config, partition, ledger, oracle, models.

Built afresh for every message (deployed SuperNodes run each message in a new
process); the dataset is cached per process and the ledger is re-read from
disk, so nothing bought is ever only in memory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from torch import nn

from client_app.ledger import LabelLedger
from client_app.node_state import NodeState
from client_app.oracle import LabelRequest, Oracle, OracleUnavailable, PersonOracle
from client_app.oracles import make_oracle
from fal_shared.batchnorm import recompute_statistics
from fal_shared.config import RunConfig, parse_run_config
from fal_shared.experiment_data import ClientData, client_data
from fal_shared.heads import DEFAULT_HEAD, set_head
from fal_shared.models import build_model
from fal_shared.training import DEVICE_CACHE, Prediction, TrainSettings, pick_device, predict, train_model

__all__ = ["ClientSession", "INITIAL_TOKEN"]

INITIAL_TOKEN = "initial"
LOCAL_MODEL_KEY = "local-model"
LOCAL_ONLY_KEY = "local-only-model"
OPTIMIZER_KEY = "optimizer-state"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "run"


class ClientSession:
    """Everything one message handler needs, derived from the Flower context."""

    def __init__(self, context: Context, run_name: str, *, run_config_defaults: Mapping[str, Any] | None = None) -> None:
        self.context = context
        # the strategy's own defaults, as the server applied them (strategies.resolve_run_config)
        self.cfg: RunConfig = parse_run_config({**context.run_config, **(run_config_defaults or {})})
        try:
            self.partition_id = int(context.node_config["partition-id"])
            self.num_partitions = int(context.node_config["num-partitions"])
        except KeyError as err:
            raise ValueError(
                f"node config lacks {err.args[0]!r}: start the SuperNode with "
                '--node-config "partition-id=<i> num-partitions=<N>"'
            ) from None
        torch.set_num_threads(self.cfg.client_threads)
        # numpy/scipy/sklearn BLAS pools too: unlimited, they oversubscribe the
        # cores that simulated clients share (LoGo's KMeans ran 7x slower).
        threadpool_limits(self.cfg.client_threads)
        self.run_name = run_name
        self.data: ClientData = client_data(self.cfg, self.partition_id, self.num_partitions)
        node_state_dir = str(context.node_config.get("state-dir", ""))
        state_root = Path(node_state_dir).expanduser() if node_state_dir else self.cfg.state_root()
        self.ledger_path = state_root / _safe(run_name) / f"partition-{self.partition_id}.json"
        self.ledger = LabelLedger(self.ledger_path, task=self.data.task)
        # records a restarted node needs to go on (protocol secrets, its local model): memory and disk
        self.node_state = NodeState(context.state, self.ledger_path.with_suffix(".node"))
        self.oracle: Oracle | PersonOracle = make_oracle(dict(context.node_config), self.data, state_root)
        self.oracle_notes: list[str] = []  # problems with the labeling tool, for the server's log
        self.device = pick_device(self.cfg.device)
        self.model_name = self.cfg.resolved_model()

    # ------------------------------------------------------------ label sets
    def inputs(self, rows: np.ndarray) -> torch.Tensor:
        """Stored inputs of partition rows ``rows``, gathered on the device.

        The whole partition stays on the device for the life of the process
        (:data:`DEVICE_CACHE`), so FedAvg rounds and queries do not copy it again.
        """
        return DEVICE_CACHE.rows(self.data.x, rows, self.device)

    def labeled(self) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
        """(ids, x on the device, y) of the labels bought so far."""
        ids = self.ledger.labeled_ids()
        rows = self.data.rows(ids) if len(ids) else np.zeros(0, dtype=np.int64)
        return ids, self.inputs(rows), self.ledger.labels()

    def pool(self) -> tuple[np.ndarray, torch.Tensor]:
        """(ids, x on the device) of the unlabeled pool (neither labeled nor pending nor skipped)."""
        mask = np.ones(len(self.data.ids), dtype=bool)
        taken = self.ledger.unavailable_ids()
        if len(taken):
            mask[self.data.rows(taken)] = False
        return self.data.ids[mask], self.inputs(np.flatnonzero(mask))

    def ensure_initial_labels(self) -> None:
        """Buy the initial labels once: the partition file's, else random (seeded by run seed and partition)."""
        if self.ledger.purchase(INITIAL_TOKEN) is not None:
            return
        if self.data.initial_ids is not None:  # named by the partition file
            chosen = self.data.initial_ids
        else:
            n = len(self.data.ids)
            count = self.cfg.initial_count(n)
            rng = np.random.default_rng([self.cfg.seed, self.partition_id, 0])
            chosen = np.sort(self.data.ids[rng.choice(n, size=count, replace=False)]) if count else np.zeros(0, np.int64)
        self.buy(chosen, cycle=0, strategy="initial-random", token=INITIAL_TOKEN, can_wait=True)

    @property
    def person_oracle(self) -> bool:
        """Whether people label here (answers come later) rather than the simulation oracle."""
        return isinstance(self.oracle, PersonOracle)

    def buy(
        self, sample_ids: np.ndarray, *, cycle: int, strategy: str, token: str,
        hints: dict[int, dict[str, float]] | None = None, can_wait: bool = False,
    ) -> np.ndarray:
        """Ask the oracle for labels and record them atomically; idempotent per token.

        With a person oracle the query is recorded as pending (durably, before
        the labeling tool hears of it) and the labels arrive later
        (:meth:`collect_labels`); only callers that can wait (``can_wait``: the
        selection round) may use one.
        """
        previous = self.ledger.purchase(token)
        if previous is not None:
            return previous
        if not self.person_oracle:
            labels = self.oracle.label(sample_ids)
            self.ledger.record(sample_ids, labels, cycle=cycle, strategy=strategy, query_token=token,
                               labeled_by=getattr(self.oracle, "name", ""))
            return np.asarray(sample_ids, dtype=np.int64)
        if not can_wait:
            raise ValueError(
                f"query {token!r} ({strategy}) uses its labels in the same round, but this node's oracle "
                f"({self.oracle.name}) answers later; run this strategy with oracle=\"ground-truth\""
            )
        info = {"oracle": self.oracle.name, "task": self.data.task, "num-classes": self.data.num_classes,
                "hints": {str(k): v for k, v in (hints or {}).items()}}
        self.ledger.request(sample_ids, cycle=cycle, strategy=strategy, query_token=token, info=info)
        request = self.label_request(token)
        self.ledger.update_request(token, tool=self.oracle.describe(request))
        try:
            self.oracle.submit(request)
        except OracleUnavailable as err:  # recorded: the next poll of the server creates the tasks
            self.oracle_notes.append(f"query {token}: {err}; will try again")
        return np.asarray(sample_ids, dtype=np.int64)

    def label_request(self, token: str) -> LabelRequest:
        """What a person oracle needs for the pending query ``token`` (from the ledger alone)."""
        query = self.ledger.pending_queries()[token]
        data = self.data
        image = feature = None
        if data.task == "classification" and len(data.input_shape) == 3:
            from client_app.labeling import image_png

            scale = data.normalize[0] if data.normalize else 1 / 255
            image = lambda sid: image_png(data.x[data.rows(np.array([sid]))[0]], scale)  # noqa: E731
        else:
            from client_app.labeling import feature_table

            units = data.units[0] if data.units is not None else None
            feature = lambda sid: feature_table(data.x[data.rows(np.array([sid]))[0]], units)  # noqa: E731
        return LabelRequest(
            run_name=self.run_name, partition_id=self.partition_id, token=token, cycle=int(query["cycle"]),
            ids=[int(i) for i in query["ids"]], task=data.task, num_classes=data.num_classes,
            hints={int(k): v for k, v in query.get("hints", {}).items()}, image=image, features=feature,
        )

    def collect_labels(self):
        """Record what people answered to the pending queries (see :func:`client_app.labeling.collect`)."""
        from client_app.labeling import collect

        report = collect(self)
        report.notes[:0] = self.oracle_notes
        self.oracle_notes = []
        return report

    def label_histogram(self) -> list[int]:
        return [int(v) for v in self.ledger.class_counts(self.data.num_classes)]

    # ---------------------------------------------------------------- models
    def new_model(self, seed: int | None = None, *, head: str | None = None) -> nn.Module:
        """A model of the run; its logits are read with ``head`` (default: the run objective's head)."""
        model = build_model(
            self.model_name,
            input_shape=self.data.input_shape,
            num_outputs=self.data.num_classes,
            seed=seed,
        )
        return set_head(model, head or self.cfg.resolved_head())

    def model_from(self, arrays: ArrayRecord, *, head: str | None = None) -> nn.Module:
        model = self.new_model(head=head)
        model.load_state_dict(arrays.to_torch_state_dict())
        return model

    def store_local_model(self, model: nn.Module) -> None:
        """Keep the model after local training, also on disk (a restarted node queries with it)."""
        self.node_state.put(LOCAL_MODEL_KEY, ArrayRecord(model.state_dict()), durable=False)  # every round

    def local_model(self) -> nn.Module:
        """The client's model after its last local training (BN statistics of its own data, see bn-statistics)."""
        arrays = self.node_state.get_arrays(LOCAL_MODEL_KEY)
        if arrays is None:
            raise RuntimeError(
                "query-model=local needs the client's model from this cycle's local training, "
                "but this node has not trained in this run"
            )
        return self.with_own_statistics(self.model_from(arrays))

    def with_own_statistics(self, model: nn.Module) -> nn.Module:
        """With ``bn-statistics=recompute``: BatchNorm statistics of this client's whole partition."""
        if self.cfg.bn_statistics == "recompute":
            recompute_statistics(
                model, DEVICE_CACHE.get(self.data.x, self.device), batch_size=self.cfg.batch_size,
                device=self.device, normalize=self.data.normalize,
            )
        return model

    def train_settings(self, *, epochs: int, lr: float, **overrides) -> TrainSettings:
        """Local training settings from the run config (augmentation and precision included)."""
        cfg = self.cfg
        kw = dict(
            epochs=epochs, batch_size=cfg.batch_size, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            optimizer=cfg.optimizer, task=self.data.task, precision=cfg.precision,
            crop_padding=cfg.augment_crop_padding if self.data.task == "classification" else 0,
            flip=cfg.augment_flip and self.data.task == "classification",
        )
        kw.update(overrides)
        return TrainSettings(**kw)

    def optimizer_state(self, cycle: int, server_round: int) -> dict | None:
        """The optimiser state to continue from (``optimizer-state=keep``), ``{}`` to start one, None = reset."""
        if self.cfg.optimizer_state != "keep":
            return None
        record = self.context.state.array_records.get(OPTIMIZER_KEY)
        meta = self.context.state.config_records.get(OPTIMIZER_KEY + "-cycle")
        if server_round == 1 or record is None or meta is None or int(meta["cycle"]) != cycle:
            return {}  # a new optimiser per cycle, as the reference code creates them
        state: dict[int, dict] = {}
        for key, array in record.items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = torch.as_tensor(array.numpy())
        return state

    def store_optimizer_state(self, cycle: int, state: dict | None) -> None:
        if state is None:
            return
        flat = {f"{i}.{k}": Array(np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v))
                for i, entry in state.items() for k, v in entry.items()}
        self.context.state[OPTIMIZER_KEY] = ArrayRecord(flat)
        self.context.state[OPTIMIZER_KEY + "-cycle"] = ConfigRecord({"cycle": cycle})

    def local_only_model(self, cycle: int) -> nn.Module:
        """The cycle's local-only model, trained once and kept in the node state.

        Methods with a statistics round and a selection round (FairFAL) use it
        in both; it never leaves the client.
        """
        key = f"{LOCAL_ONLY_KEY}-cycle-{cycle}"
        if key not in self.context.state:
            for old in [k for k in self.context.state if k.startswith(LOCAL_ONLY_KEY)]:
                del self.context.state[old]
            seed = int(np.random.default_rng(self.query_seed(cycle, 17)).integers(2**31))
            self.context.state[key] = ArrayRecord(self.train_local_only(seed).state_dict())
        return self.model_from(self.context.state[key], head=DEFAULT_HEAD)

    def train_local_only(self, seed: int) -> nn.Module:
        """A model trained from scratch on the client's labels only (LoGo/FairFAL recipe).

        Always with cross-entropy (a softmax model), whatever the run's local
        objective: the recipe is LoGo's, and no teacher or round exists for it.
        """
        _, x, y = self.labeled()
        model = self.new_model(seed=seed, head=DEFAULT_HEAD)
        cfg = self.cfg
        settings = self.train_settings(
            epochs=cfg.local_only_epochs, lr=cfg.lr, lr_milestones=(cfg.local_only_lr_milestone,),
            early_stop_accuracy=cfg.local_only_stop_accuracy if self.data.task == "classification" else None,
        )
        train_model(model, x, y, settings, seed=seed, device=self.device, normalize=self.data.normalize)
        return self.with_own_statistics(model)

    def predict(self, model: nn.Module, x: np.ndarray) -> Prediction:
        return predict(
            model, x, batch_size=self.cfg.score_batch_size, device=self.device,
            task=self.data.task, normalize=self.data.normalize, precision=self.cfg.precision,
        )

    def query_seed(self, cycle: int, salt: int = 0) -> list[int]:
        """Seed material for randomness of one query: (run seed, partition, cycle, salt)."""
        return [self.cfg.seed, self.partition_id, cycle, salt]
