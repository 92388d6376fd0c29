"""The label ledger: which samples a client bought labels for, and when.

Each label cost a person's time, so the ledger is the most valuable data in
the system. It is a JSON file in the client's state directory, rewritten
atomically (write a temporary file, fsync, ``os.replace``) after every query,
and reloaded by every ClientApp process (deployed SuperNodes start a fresh
process per message, and may restart).

Idempotency: every purchase carries the server's query token. A query whose
token is already in the ledger returns the recorded purchase instead of
buying again, so a retried or re-sent query never buys a label twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fal_shared.files import atomic_write_text

__all__ = ["LabelLedger", "LedgerEntry", "LedgerError"]

_VERSION = 1


class LedgerError(RuntimeError):
    """The ledger file is unreadable or inconsistent."""


@dataclass(frozen=True)
class LedgerEntry:
    sample_id: int
    label: float
    cycle: int
    strategy: str
    query_token: str


class LabelLedger:
    """Labels bought by one client, persisted in ``path``."""

    def __init__(self, path: str | Path, *, task: str = "classification") -> None:
        self.path = Path(path)
        self.task = task
        self._entries: list[LedgerEntry] = []
        self._tokens: dict[str, list[int]] = {}
        self._ids: set[int] = set()
        if self.path.exists():
            self._load()

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return tuple(self._entries)

    def labeled_ids(self) -> np.ndarray:
        return np.array([e.sample_id for e in self._entries], dtype=np.int64)

    def labels(self) -> np.ndarray:
        values = [e.label for e in self._entries]
        if self.task == "regression":
            return np.array(values, dtype=np.float64)
        return np.array(values, dtype=np.int64)

    def purchase(self, query_token: str) -> np.ndarray | None:
        """Ids bought under ``query_token``, or None if that query never ran."""
        ids = self._tokens.get(query_token)
        return None if ids is None else np.array(ids, dtype=np.int64)

    def class_counts(self, num_classes: int) -> np.ndarray:
        if self.task == "regression":
            return np.array([len(self)], dtype=np.int64)
        return np.bincount(self.labels(), minlength=num_classes).astype(np.int64)

    def __contains__(self, sample_id: int) -> bool:
        return int(sample_id) in self._ids

    # ----------------------------------------------------------------- writes
    def record(
        self,
        sample_ids: np.ndarray,
        labels: np.ndarray,
        *,
        cycle: int,
        strategy: str,
        query_token: str,
    ) -> None:
        """Add a purchase and persist the ledger atomically.

        Raises
        ------
        LedgerError
            If the token was used before or a sample is already labeled: the
            caller must never pay for the same label twice.
        """
        if query_token in self._tokens:
            raise LedgerError(f"query {query_token!r} is already in the ledger")
        ids = [int(i) for i in sample_ids]
        if len(ids) != len(labels):
            raise LedgerError(f"{len(ids)} ids but {len(labels)} labels")
        twice = [i for i in ids if i in self._ids]
        if twice or len(set(ids)) != len(ids):
            raise LedgerError(f"samples already labeled, refusing to buy them again: {twice[:10]}")
        new = [
            LedgerEntry(i, float(y), int(cycle), strategy, query_token)
            for i, y in zip(ids, np.asarray(labels).tolist())
        ]
        self._entries.extend(new)
        self._tokens[query_token] = ids
        self._ids.update(ids)
        try:
            self._save()
        except BaseException:
            # keep memory and disk consistent: the purchase did not happen
            if new:
                del self._entries[-len(new) :]
            self._tokens.pop(query_token, None)
            self._ids.difference_update(ids)
            raise

    # -------------------------------------------------------------- internals
    def _save(self) -> None:
        payload = {
            "version": _VERSION,
            "task": self.task,
            "queries": self._tokens,
            "entries": [
                [e.sample_id, e.label, e.cycle, e.strategy, e.query_token] for e in self._entries
            ],
        }
        atomic_write_text(self.path, json.dumps(payload))

    def _load(self) -> None:
        try:
            payload = json.loads(self.path.read_text())
            if payload.get("version") != _VERSION:
                raise LedgerError(f"unsupported ledger version {payload.get('version')!r}")
            self._entries = [LedgerEntry(int(a), float(b), int(c), str(d), str(e)) for a, b, c, d, e in payload["entries"]]
            self._tokens = {str(k): [int(i) for i in v] for k, v in payload["queries"].items()}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise LedgerError(f"label ledger {self.path} is unreadable: {err}") from err
        self._ids = {e.sample_id for e in self._entries}
        if len(self._ids) != len(self._entries):
            raise LedgerError(f"label ledger {self.path} lists a sample twice")
