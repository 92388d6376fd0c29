"""Partitions read from a file: a consortium's agreed split, or another code base's.

``partition = "file"`` with ``partition-file = "/abs/path.json"`` gives every client exactly the
training samples the file names, and optionally exactly its initial labeled set, instead of a split
computed from the run seed. Uses: sites that agreed on who holds what outside this software; and
running the same split as another implementation (the authors' code of a paper: their partition
function, RNG and all, dumped once), so a comparison of learning curves is not a comparison of
partitions (``benchmarks/run_parity.py``).

The file is JSON (format ``fal-partition/1``)::

    {
      "format": "fal-partition/1",
      "dataset": "mnist",            # optional; checked against the run's dataset
      "num-train": 60000,            # size of the training split the ids index; checked
      "source": "free text: what made this split",
      "clients": [                   # client i = partition-id i
        {"ids": [12, 40, ...],                # indices into the dataset's training split
         "initial-labeled": [40, ...],        # optional (all clients or none): a subset of ids
         "class-counts": [103, 0, 57, ...]}   # optional: checked against the data's labels
      ]
    }

Ids are positions in the training split as this project loads it (the IDX / pickle file order,
the same order torchvision uses). Everything is checked when the file is read, with an error that
names the file, the client and the problem: ids out of range, repeated, or held by two clients;
initial labels outside the client's ids; class counts that differ from the data (the file was made
for another version or order of the data set); a client count that differs from the federation's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["FORMAT", "PartitionFile", "read_partition_file", "write_partition_file"]

FORMAT = "fal-partition/1"


@dataclass(frozen=True)
class PartitionFile:
    """A checked partition file: sorted ids per client, initial labels per client (or None)."""

    path: str
    dataset: str | None
    num_train: int
    source: str
    ids: tuple[np.ndarray, ...]
    initial: tuple[np.ndarray, ...] | None

    @property
    def num_clients(self) -> int:
        return len(self.ids)


def _int_array(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{what} must be a list of integers")
    return np.asarray(value, dtype=np.int64)


def _fail(path: str, message: str) -> ValueError:
    return ValueError(f"partition-file {path}: {message}")


@lru_cache(maxsize=8)
def _parse(path: str, mtime_ns: int, size: int) -> dict[str, Any]:  # keyed on mtime/size: a rewritten file is re-read
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise _fail(path, f"not valid JSON ({err})") from None


def read_partition_file(
    path: str, *, labels: np.ndarray | None = None, num_train: int | None = None, dataset: str | None = None,
    num_clients: int | None = None,
) -> PartitionFile:
    """Read and check ``path``.

    ``labels`` (the training split's labels) or ``num_train`` give the size the ids must index;
    with ``labels`` the optional class counts are checked too. ``dataset`` and ``num_clients`` (when
    given, > 0) must match the file's.
    """
    p = Path(path)
    if not p.is_absolute():
        raise _fail(path, "must be an absolute path (clients may run in other folders)")
    try:
        stat = p.stat()
    except OSError:
        raise _fail(path, "no such file") from None
    raw = _parse(str(p), stat.st_mtime_ns, stat.st_size)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise _fail(path, f"format must be {FORMAT!r}, found {found!r}")
    file_dataset = raw.get("dataset")
    if dataset is not None and file_dataset is not None and file_dataset != dataset:
        raise _fail(path, f"made for dataset {file_dataset!r}, but the run's dataset is {dataset!r}")
    n = raw.get("num-train")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise _fail(path, f"num-train must be a positive integer, found {n!r}")
    expected = len(labels) if labels is not None else num_train
    if expected is not None and n != expected:
        raise _fail(path, f"indexes a training split of {n} samples, but the data set has {expected}")
    clients = raw.get("clients")
    if not isinstance(clients, list) or not clients:
        raise _fail(path, "clients must be a non-empty list")
    if num_clients and len(clients) != num_clients:
        raise _fail(path, f"has {len(clients)} clients, but the run has {num_clients} (num-clients / num-partitions)")
    with_initial = [isinstance(c, dict) and "initial-labeled" in c for c in clients]
    if any(with_initial) and not all(with_initial):
        raise _fail(path, "initial-labeled must be given for every client or for none")
    owner = np.full(n, -1, dtype=np.int64)
    ids_out, initial_out = [], []
    for i, client in enumerate(clients):
        if not isinstance(client, dict):
            raise _fail(path, f"client {i} must be an object with 'ids'")
        try:
            ids = _int_array(client.get("ids"), f"client {i}: ids")
        except ValueError as err:
            raise _fail(path, str(err)) from None
        if ids.size == 0:
            raise _fail(path, f"client {i} has no samples")
        if ids.min() < 0 or ids.max() >= n:
            raise _fail(path, f"client {i} has ids outside 0..{n - 1}")
        ids = np.sort(ids)
        if np.any(np.diff(ids) == 0):
            raise _fail(path, f"client {i} lists sample {int(ids[np.flatnonzero(np.diff(ids) == 0)[0]])} twice")
        clash = owner[ids] >= 0
        if clash.any():
            j = int(np.flatnonzero(clash)[0])
            raise _fail(path, f"sample {int(ids[j])} is held by client {int(owner[ids[j]])} and client {i}")
        owner[ids] = i
        if labels is not None and "class-counts" in client:
            counts = np.asarray(client["class-counts"], dtype=np.int64)
            actual = np.bincount(np.asarray(labels)[ids], minlength=len(counts))
            if len(actual) != len(counts) or not np.array_equal(actual, counts):
                raise _fail(
                    path, f"client {i}'s class counts {counts.tolist()} differ from the data's {actual.tolist()} "
                    "(the file was made for another version or order of the data set)",
                )
        if with_initial[i]:
            try:
                init = np.sort(_int_array(client["initial-labeled"], f"client {i}: initial-labeled"))
            except ValueError as err:
                raise _fail(path, str(err)) from None
            if np.any(np.diff(init) == 0) or not np.all(np.isin(init, ids)):
                raise _fail(path, f"client {i}'s initial-labeled must be distinct ids of its own samples")
            initial_out.append(init)
        ids_out.append(ids)
    return PartitionFile(
        path=str(p), dataset=file_dataset, num_train=n, source=str(raw.get("source", "")),
        ids=tuple(ids_out), initial=tuple(initial_out) if all(with_initial) else None,
    )


def write_partition_file(
    path: str | Path, clients: Sequence[Sequence[int]], *, num_train: int, labels: np.ndarray | None = None,
    initial: Sequence[Sequence[int]] | None = None, dataset: str | None = None, source: str = "",
) -> Path:
    """Write a ``fal-partition/1`` file (class counts included when ``labels`` are given); checks it by reading it back."""
    out: list[dict[str, Any]] = []
    num_classes = int(np.max(labels)) + 1 if labels is not None and len(labels) else 0
    for i, ids in enumerate(clients):
        entry: dict[str, Any] = {"ids": sorted(int(v) for v in ids)}
        if initial is not None:
            entry["initial-labeled"] = sorted(int(v) for v in initial[i])
        if labels is not None:
            entry["class-counts"] = np.bincount(np.asarray(labels)[entry["ids"]], minlength=num_classes).tolist()
        out.append(entry)
    doc = {"format": FORMAT, **({"dataset": dataset} if dataset else {}), "num-train": int(num_train),
           "source": source, "clients": out}
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    read_partition_file(str(path), labels=labels, num_train=num_train)
    return path
