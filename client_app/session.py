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
from flwr.app import ArrayRecord, Context
from torch import nn

from client_app.ledger import LabelLedger
from client_app.oracle import GroundTruthOracle, Oracle
from fal_shared.config import RunConfig, parse_run_config
from fal_shared.experiment_data import ClientData, client_data
from fal_shared.models import build_model
from fal_shared.training import Prediction, TrainSettings, pick_device, predict, train_model

__all__ = ["ClientSession", "INITIAL_TOKEN"]

INITIAL_TOKEN = "initial"
LOCAL_MODEL_KEY = "local-model"
LOCAL_ONLY_KEY = "local-only-model"


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
        self.oracle: Oracle = GroundTruthOracle(self.data.ids, self.data.y)
        self.device = pick_device(self.cfg.device)
        self.model_name = self.cfg.resolved_model()

    # ------------------------------------------------------------ label sets
    def labeled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, x, y) of the labels bought so far."""
        ids = self.ledger.labeled_ids()
        rows = self.data.rows(ids) if len(ids) else np.zeros(0, dtype=np.int64)
        return ids, self.data.x[rows], self.ledger.labels()

    def pool(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, x) of the unlabeled pool."""
        mask = np.ones(len(self.data.ids), dtype=bool)
        labeled = self.ledger.labeled_ids()
        if len(labeled):
            mask[self.data.rows(labeled)] = False
        return self.data.ids[mask], self.data.x[mask]

    def ensure_initial_labels(self) -> None:
        """Buy the initial random labels once (seeded by run seed and partition)."""
        if self.ledger.purchase(INITIAL_TOKEN) is not None:
            return
        n = len(self.data.ids)
        count = self.cfg.initial_count(n)
        rng = np.random.default_rng([self.cfg.seed, self.partition_id, 0])
        chosen = np.sort(self.data.ids[rng.choice(n, size=count, replace=False)]) if count else np.zeros(0, np.int64)
        self.buy(chosen, cycle=0, strategy="initial-random", token=INITIAL_TOKEN)

    def buy(self, sample_ids: np.ndarray, *, cycle: int, strategy: str, token: str) -> np.ndarray:
        """Ask the oracle for labels and record them atomically; idempotent per token."""
        previous = self.ledger.purchase(token)
        if previous is not None:
            return previous
        labels = self.oracle.label(sample_ids)
        self.ledger.record(sample_ids, labels, cycle=cycle, strategy=strategy, query_token=token)
        return np.asarray(sample_ids, dtype=np.int64)

    def label_histogram(self) -> list[int]:
        return [int(v) for v in self.ledger.class_counts(self.data.num_classes)]

    # ---------------------------------------------------------------- models
    def new_model(self, seed: int | None = None) -> nn.Module:
        return build_model(
            self.model_name,
            input_shape=self.data.input_shape,
            num_outputs=self.data.num_classes,
            seed=seed,
        )

    def model_from(self, arrays: ArrayRecord) -> nn.Module:
        model = self.new_model()
        model.load_state_dict(arrays.to_torch_state_dict())
        return model

    def store_local_model(self, model: nn.Module) -> None:
        self.context.state[LOCAL_MODEL_KEY] = ArrayRecord(model.state_dict())

    def local_model(self) -> nn.Module:
        if LOCAL_MODEL_KEY not in self.context.state:
            raise RuntimeError(
                "query-model=local needs the client's model from this cycle's local training, "
                "but this node has not trained in this run (was it restarted?)"
            )
        return self.model_from(self.context.state[LOCAL_MODEL_KEY])

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
        return self.model_from(self.context.state[key])

    def train_local_only(self, seed: int) -> nn.Module:
        """A model trained from scratch on the client's labels only (LoGo/FairFAL recipe)."""
        _, x, y = self.labeled()
        model = self.new_model(seed=seed)
        cfg = self.cfg
        settings = TrainSettings(
            epochs=cfg.local_only_epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            optimizer=cfg.optimizer,
            lr_milestones=(cfg.local_only_lr_milestone,),
            early_stop_accuracy=cfg.local_only_stop_accuracy if self.data.task == "classification" else None,
            task=self.data.task,
        )
        train_model(model, x, y, settings, seed=seed, device=self.device, normalize=self.data.normalize)
        return model

    def predict(self, model: nn.Module, x: np.ndarray) -> Prediction:
        return predict(
            model, x, batch_size=self.cfg.score_batch_size, device=self.device,
            task=self.data.task, normalize=self.data.normalize,
        )

    def query_seed(self, cycle: int, salt: int = 0) -> list[int]:
        """Seed material for randomness of one query: (run seed, partition, cycle, salt)."""
        return [self.cfg.seed, self.partition_id, cycle, salt]
