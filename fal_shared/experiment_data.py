"""From run config to the data each role holds.

Every client derives its own partition from (run config, partition-id,
num-partitions), so simulation and deployment give the same split, and the
server holds only the test set. Loaded datasets are cached per process
(Ray actors and the ServerApp reuse them across messages).
"""

from __future__ import annotations

import os

from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fal_shared.config import RunConfig
from fal_shared.data.classification import load_classification, long_tail_indices
from fal_shared.data.partition import partition_indices
from fal_shared.data.partition_file import PartitionFile, read_partition_file
from fal_shared.data.regression import Standardizer, constant_columns, load_regression, regression_split

__all__ = ["ClientData", "TestData", "check_data", "client_data", "test_data"]


@dataclass(frozen=True)
class ClientData:
    """One client's partition. ``y`` is ground truth: only the oracle reads it."""

    ids: np.ndarray  # global sample ids (indices into the training split)
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray  # the client's share of the test set (federated evaluation)
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    normalize: tuple[float, tuple[float, ...], tuple[float, ...]] | None
    task: str
    #: regression: the (features, target) standardisers, so a person sees and gives values in the data's own units
    units: tuple[Standardizer, Standardizer] | None = None
    #: global ids of the initial labeled set when the partition file names it (else a seeded draw)
    initial_ids: np.ndarray | None = None

    def rows(self, sample_ids: np.ndarray) -> np.ndarray:
        """Positions of global ``sample_ids`` in this partition."""
        pos = np.searchsorted(self.ids, sample_ids)
        if len(sample_ids) and (pos.max() >= len(self.ids) or np.any(self.ids[pos] != sample_ids)):
            raise KeyError("sample ids outside this client's partition")
        return pos


@dataclass(frozen=True)
class TestData:
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    normalize: tuple[float, tuple[float, ...], tuple[float, ...]] | None
    task: str


@lru_cache(maxsize=4)
def _classification(dataset: str, data_root: str, long_tail_factor: float, seed: int, subset: int = 0):
    """The training split and the ids of it that are used (train subset, then long-tail profile)."""
    train = load_classification(dataset, "train", data_root or None)
    keep = np.arange(len(train.y))
    if 0 < subset < len(keep):
        keep = np.sort(np.random.default_rng([seed, 104729]).choice(len(keep), size=subset, replace=False))
    if long_tail_factor > 1:
        keep = keep[np.sort(long_tail_indices(train.y[keep], train.num_classes, long_tail_factor, seed))]
    return train, keep


@lru_cache(maxsize=4)
def _classification_test(dataset: str, data_root: str, seed: int, test_subset: int = 0):
    """The test split, or its seeded subset of ``test_subset`` samples."""
    test = load_classification(dataset, "test", data_root or None)
    if 0 < test_subset < len(test.y):
        test = test.subset(np.sort(np.random.default_rng([seed, 130363]).choice(len(test.y), size=test_subset, replace=False)))
    return test


@lru_cache(maxsize=4)
def _regression(dataset: str, data_root: str, num_partitions: int, test_fraction: float, alpha: float, seed: int):
    x, y, _ = load_regression(dataset, data_root or None)
    test_idx, parts = regression_split(
        x, y, num_partitions, test_fraction=test_fraction, alpha=alpha, seed=seed
    )
    train_idx = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    # Data-provider preprocessing (documented in docs/reference/data.md):
    # drop columns constant on the training split (they make X^T X singular,
    # e.g. kegg-undirected's all-zero column 9), then standardise X and y with
    # statistics of the pooled training split.
    x = np.delete(x, constant_columns(x[train_idx]), axis=1)
    x_units, y_units = Standardizer.fit(x[train_idx]), Standardizer.fit(y[train_idx])
    xs = x_units.transform(x).astype(np.float32)
    ys = y_units.transform(y).astype(np.float64)
    return xs, ys, test_idx, parts, (x_units, y_units)


@lru_cache(maxsize=16)
def _partitions(dataset: str, data_root: str, long_tail_factor: float, seed: int, subset: int,
                num_partitions: int, scheme: str, alpha: float) -> list[np.ndarray]:
    train, keep = _classification(dataset, data_root, long_tail_factor, seed, subset)
    parts = partition_indices(train.y[keep], num_partitions, scheme=scheme, alpha=alpha, seed=seed)
    return [np.sort(keep[p]) for p in parts]


def _test_share(n_test: int, partition_id: int, num_partitions: int, seed: int) -> np.ndarray:
    order = np.random.default_rng([seed, 7919]).permutation(n_test)
    return np.sort(np.array_split(order, num_partitions)[partition_id])


def check_partition(partition_id: int, num_partitions: int) -> None:
    if num_partitions < 1:
        raise ValueError(f"node config num-partitions must be >= 1, got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"node config partition-id={partition_id} is outside 0..{num_partitions - 1} "
            f"(num-partitions={num_partitions})"
        )


def partition_file(cfg: RunConfig, num_partitions: int | None = None) -> PartitionFile:
    """The run's checked partition file (``partition = "file"``) against the training split's labels."""
    train, _ = _classification(cfg.dataset, cfg.data_root, cfg.long_tail_factor, cfg.seed, 0)
    return read_partition_file(cfg.partition_file, labels=train.y, dataset=cfg.dataset,
                               num_clients=num_partitions or cfg.num_clients or None)


def check_data(cfg: RunConfig) -> TestData:
    """Load what a run needs on this machine: a missing or corrupt data or partition file fails here."""
    test = test_data(cfg)
    if cfg.partition == "file":
        partition_file(cfg)
    return test


def _data_key(cfg: RunConfig, num_partitions: int) -> tuple:
    """Every setting a client's partition depends on (besides its partition id)."""
    return (cfg.task, cfg.dataset, cfg.data_root, cfg.seed, num_partitions, cfg.long_tail_factor, cfg.train_subset_size,
            cfg.test_subset_size, cfg.partition, cfg.partition_file, _file_stamp(cfg), cfg.alpha, cfg.test_fraction,
            cfg.regression_alpha)


def _file_stamp(cfg: RunConfig) -> tuple:
    """A partition file rewritten in place is read again: its size and modification time are part of the key."""
    if cfg.partition != "file":
        return ()
    try:
        st = os.stat(cfg.partition_file)
    except OSError:
        return ()
    return (st.st_size, st.st_mtime_ns)


#: The partitions built in this process, for the last two federations (data keys): a Ray actor that serves
#: 1,000 clients builds each one once, not once per message (about 2 ms each at 1,000 clients; and on a GPU a
#: new host array would defeat DEVICE_CACHE). Shared by the messages of a process: no handler may write to them
#: (they stay writable because ``on_device`` copies a read-only array instead of wrapping it).
_CLIENT_DATA: OrderedDict[tuple, dict[int, ClientData]] = OrderedDict()
_FEDERATIONS_KEPT = 2


def client_data(cfg: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    """The partition of client ``partition_id`` out of ``num_partitions`` (built once per process)."""
    check_partition(partition_id, num_partitions)
    key = _data_key(cfg, num_partitions)
    parts = _CLIENT_DATA.setdefault(key, {})
    _CLIENT_DATA.move_to_end(key)
    while len(_CLIENT_DATA) > _FEDERATIONS_KEPT:
        _CLIENT_DATA.popitem(last=False)
    if partition_id not in parts:
        parts[partition_id] = _build_client_data(cfg, partition_id, num_partitions)
    return parts[partition_id]


def _build_client_data(cfg: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    if cfg.task == "regression":
        x, y, test_idx, parts, units = _regression(
            cfg.dataset, cfg.data_root, num_partitions, cfg.test_fraction, cfg.regression_alpha, cfg.seed
        )
        ids = np.sort(parts[partition_id])
        share = test_idx[_test_share(len(test_idx), partition_id, num_partitions, cfg.seed)]
        return ClientData(ids, x[ids], y[ids], x[share], y[share], 1, (x.shape[1],), None, "regression", units)
    train, _ = _classification(cfg.dataset, cfg.data_root, cfg.long_tail_factor, cfg.seed, cfg.train_subset_size)
    test = _classification_test(cfg.dataset, cfg.data_root, cfg.seed, cfg.test_subset_size)
    initial = None
    if cfg.partition == "file":
        split = partition_file(cfg, num_partitions)
        ids = split.ids[partition_id]
        initial = split.initial[partition_id] if split.initial is not None else None
    else:
        ids = _partitions(cfg.dataset, cfg.data_root, cfg.long_tail_factor, cfg.seed, cfg.train_subset_size,
                          num_partitions, cfg.partition, cfg.alpha)[partition_id]
    share = _test_share(len(test.y), partition_id, num_partitions, cfg.seed)
    return ClientData(
        ids=ids,
        x=train.x[ids],
        y=train.y[ids],
        x_test=test.x[share],
        y_test=test.y[share],
        num_classes=train.num_classes,
        input_shape=tuple(train.x.shape[1:]),
        normalize=(train.scale, train.mean, train.std),
        task="classification",
        initial_ids=initial,
    )


def test_data(cfg: RunConfig, num_partitions: int | None = None) -> TestData:
    """The held-out test set the server evaluates on (central evaluation)."""
    if cfg.task == "regression":
        x, y, test_idx, _, _ = _regression(
            cfg.dataset, cfg.data_root, num_partitions or cfg.num_clients, cfg.test_fraction,
            cfg.regression_alpha, cfg.seed,
        )
        return TestData(x[test_idx], y[test_idx], 1, (x.shape[1],), None, "regression")
    train, _ = _classification(cfg.dataset, cfg.data_root, cfg.long_tail_factor, cfg.seed, cfg.train_subset_size)
    test = _classification_test(cfg.dataset, cfg.data_root, cfg.seed, cfg.test_subset_size)
    return TestData(test.x, test.y, test.num_classes, tuple(test.x.shape[1:]), (train.scale, train.mean, train.std), "classification")
