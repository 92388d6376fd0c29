"""The label ledger: which samples a client bought labels for, who gave them, and when.

Each label cost a person's time, so the ledger is the most valuable data in
the system. It is a JSON file in the client's state directory, rewritten
atomically (write a temporary file, fsync, ``os.replace``) after every change,
and reloaded by every ClientApp process (deployed SuperNodes start a fresh
process per message, and may restart). The ClientApp is its only writer
(``fal-label`` writes answers beside it, never into it).

Idempotency: every query carries the server's query token. A query whose
token is already in the ledger returns the recorded choice instead of
selecting or buying again, so a retried, re-sent or resumed query never buys
a label twice.

Labels that take a person hours or days: a query answered by a person is
first recorded as *pending* (:meth:`LabelLedger.request`: the chosen ids, the
token, what the labeling tool needs), then answered piece by piece
(:meth:`LabelLedger.answer`) as the person labels or skips samples. A pending
or skipped sample is neither in the labeled set nor in the pool. A label once
recorded is never changed.

Audit labels (``docs/guides/campaign.md``): a query whose token starts with
:data:`AUDIT_PREFIX` buys labels of a uniformly random audit sample. They are
bought, waited for and persisted like every other label, but kept apart: the
labeled set (:meth:`LabelLedger.labeled_ids`, :meth:`labels`, ``len``) holds
only training labels, :meth:`audit_ids` / :meth:`audit_labels` the audit ones.
The audit samples of later top-ups are *reserved* up front (:meth:`reserve`):
out of the pool, bought only by an audit query.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fal_shared.files import atomic_write_text

__all__ = ["LabelLedger", "LedgerEntry", "LedgerError", "Skip", "AnswerReport", "utc_now", "AUDIT_PREFIX", "is_audit"]

_VERSION = 2

# What each ledger file held when this process last read or wrote it, keyed by path and validated by the
# file's (inode, mtime, size): every message re-reads its ledger (a deployed SuperNode may run each message
# in a new process, and the file is the truth), but in a long-lived process (simulation, in-process, sweeps)
# an unchanged file need not be parsed again - at paper scale that is thousands of messages per run.
# An atomic rewrite by anyone else changes the inode, so a stale entry is never used.
_READ_CACHE: dict[str, tuple[tuple[int, int, int], tuple]] = {}


#: query tokens of audit purchases start with this: those labels are never trained on
AUDIT_PREFIX = "audit-"


def is_audit(query_token: str) -> bool:
    return str(query_token).startswith(AUDIT_PREFIX)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class LedgerError(RuntimeError):
    """The ledger file is unreadable or inconsistent, or a change would buy a label twice."""


@dataclass(frozen=True)
class LedgerEntry:
    sample_id: int
    label: float
    cycle: int
    strategy: str
    query_token: str
    labeled_by: str = ""
    labeled_at: str = ""


@dataclass(frozen=True)
class Skip:
    """A sample a person skipped or marked unclear: reported, not bought, not offered again."""

    sample_id: int
    query_token: str
    reason: str
    by: str = ""
    at: str = ""


@dataclass
class AnswerReport:
    """What one :meth:`LabelLedger.answer` call recorded."""

    labeled: list[int]
    skipped: list[int]
    ignored: list[str]  # answers for samples already resolved, with why
    complete: bool  # the query has nothing pending any more


class LabelLedger:
    """Labels bought by one client, persisted in ``path``."""

    def __init__(self, path: str | Path, *, task: str = "classification") -> None:
        self.path = Path(path)
        self.task = task
        self._entries: list[LedgerEntry] = []
        self._tokens: dict[str, list[int]] = {}  # query token -> ids chosen, in pick order
        self._pending: dict[str, dict[str, Any]] = {}  # token -> the request of a query not fully answered
        self._skipped: dict[int, Skip] = {}
        self._ids: set[int] = set()
        self._reserved: set[int] = set()  # audit samples set aside for later audit queries
        if self.path.exists():
            self._load()

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        """Number of training labels bought (audit labels, pending and skipped samples are not)."""
        return sum(1 for e in self._entries if not is_audit(e.query_token))

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Every label bought, training and audit."""
        return tuple(self._entries)

    def labeled_ids(self) -> np.ndarray:
        """Ids of the training labels (never the audit labels)."""
        return np.array([e.sample_id for e in self._entries if not is_audit(e.query_token)], dtype=np.int64)

    def labels(self) -> np.ndarray:
        """Training labels, in the order of :meth:`labeled_ids`."""
        return self._values([e for e in self._entries if not is_audit(e.query_token)])

    def audit_ids(self) -> np.ndarray:
        """Ids of the audit labels bought (in purchase order)."""
        return np.array([e.sample_id for e in self._entries if is_audit(e.query_token)], dtype=np.int64)

    def audit_labels(self) -> np.ndarray:
        """Audit labels, in the order of :meth:`audit_ids`."""
        return self._values([e for e in self._entries if is_audit(e.query_token)])

    def reserved_ids(self) -> np.ndarray:
        """Audit samples set aside for later audit queries (neither bought nor in the pool)."""
        return np.array(sorted(self._reserved), dtype=np.int64)

    def _values(self, entries: list[LedgerEntry]) -> np.ndarray:
        values = [e.label for e in entries]
        if self.task == "regression":
            return np.array(values, dtype=np.float64)
        return np.array(values, dtype=np.int64)

    def purchase(self, query_token: str) -> np.ndarray | None:
        """Ids chosen under ``query_token`` (pick order), or None if that query never ran.

        For a query a person answers, some of them may still be pending or
        skipped (:meth:`pending_ids`, :meth:`skipped`).
        """
        ids = self._tokens.get(query_token)
        return None if ids is None else np.array(ids, dtype=np.int64)

    def class_counts(self, num_classes: int) -> np.ndarray:
        if self.task == "regression":
            return np.array([len(self)], dtype=np.int64)
        return np.bincount(self.labels(), minlength=num_classes).astype(np.int64)

    def __contains__(self, sample_id: int) -> bool:
        return int(sample_id) in self._ids

    def pending_queries(self) -> dict[str, dict[str, Any]]:
        """Token -> request (``ids`` still pending, ``cycle``, ``strategy``, ``oracle``, ...) of open queries."""
        return {t: {**req, "ids": self.pending_ids(t).tolist()} for t, req in self._pending.items()}

    def pending_ids(self, query_token: str | None = None) -> np.ndarray:
        """Ids waiting for a person's answer (of one query, or of all)."""
        tokens = [query_token] if query_token is not None else list(self._pending)
        out = [
            i for t in tokens if t in self._pending
            for i in self._tokens[t] if i not in self._ids and i not in self._skipped
        ]
        return np.array(out, dtype=np.int64)

    def skipped(self) -> tuple[Skip, ...]:
        return tuple(self._skipped.values())

    def unavailable_ids(self) -> np.ndarray:
        """Ids that are not in the pool: labeled (audit labels too), pending, skipped or reserved for audit."""
        ids = set(self._ids) | set(self._skipped) | set(self.pending_ids().tolist()) | self._reserved
        return np.array(sorted(ids), dtype=np.int64)

    def label_of(self, sample_id: int) -> LedgerEntry | None:
        for e in self._entries:
            if e.sample_id == int(sample_id):
                return e
        return None

    # ----------------------------------------------------------------- writes
    def record(
        self,
        sample_ids: np.ndarray,
        labels: np.ndarray,
        *,
        cycle: int,
        strategy: str,
        query_token: str,
        labeled_by: str = "",
        labeled_at: str = "",
    ) -> None:
        """Add a purchase answered at once (the simulation oracle) and persist the ledger atomically.

        Raises
        ------
        LedgerError
            If the token was used before or a sample is already labeled,
            pending or skipped: the caller must never pay for the same label twice.
        """
        ids = self._new_query_ids(sample_ids, query_token)
        if len(ids) != len(labels):
            raise LedgerError(f"{len(ids)} ids but {len(labels)} labels")
        at = labeled_at or utc_now()
        new = [
            LedgerEntry(i, float(y), int(cycle), strategy, query_token, labeled_by, at)
            for i, y in zip(ids, np.asarray(labels).tolist())
        ]
        with self._transaction():
            self._entries.extend(new)
            self._tokens[query_token] = ids
            self._ids.update(ids)
            self._reserved.difference_update(ids)

    def request(
        self, sample_ids: np.ndarray, *, cycle: int, strategy: str, query_token: str, info: dict[str, Any],
    ) -> None:
        """Record a query whose labels a person will give later (all its ids pending).

        ``info`` is kept with the request (the oracle, the number of classes,
        hints such as predictions) so that the labeling tool can be filled or
        refilled from the ledger alone.
        """
        ids = self._new_query_ids(sample_ids, query_token)
        with self._transaction():
            self._tokens[query_token] = ids
            self._pending[query_token] = {"cycle": int(cycle), "strategy": strategy, "requested": utc_now(), **info}
            self._reserved.difference_update(ids)

    def reserve(self, sample_ids: np.ndarray) -> None:
        """Set ``sample_ids`` aside for later audit queries: out of the pool from now on (once per run)."""
        ids = {int(i) for i in np.asarray(sample_ids).reshape(-1)}
        taken = ids & (set(self._ids) | set(self._skipped) | set(self.pending_ids().tolist()))
        if taken:
            raise LedgerError(f"cannot reserve samples already labeled, pending or skipped: {sorted(taken)[:10]}")
        with self._transaction():
            self._reserved = ids

    def update_request(self, query_token: str, **info: Any) -> None:
        """Add ``info`` to a pending query's record (e.g. where the labeling tool shows it)."""
        with self._transaction():
            self._pending[query_token].update(info)

    def answer(
        self,
        query_token: str,
        labels: list[tuple[int, float, str, str]],
        skips: list[tuple[int, str, str, str]] = (),
    ) -> AnswerReport:
        """Record a person's answers to a pending query: ``(id, label, by, at)`` and ``(id, reason, by, at)``.

        Answers for samples already labeled or skipped are ignored (a label is
        never changed) and listed in the report; answers for ids this query did
        not choose raise :class:`LedgerError`. The query stops being pending once
        every id it chose is labeled or skipped.
        """
        if query_token not in self._tokens:
            raise LedgerError(f"query {query_token!r} is not in the ledger")
        chosen = set(self._tokens[query_token])
        foreign = sorted({int(a[0]) for a in [*labels, *skips]} - chosen)
        if foreign:
            raise LedgerError(f"query {query_token!r} did not choose sample(s) {foreign[:10]}")
        report = AnswerReport([], [], [], False)
        query = self._pending.get(query_token, {})
        new_entries, new_skips = [], []
        seen: set[int] = set()
        answers = [(sid, label, "", by, at) for sid, label, by, at in labels]
        answers += [(sid, None, reason, by, at) for sid, reason, by, at in skips]
        for sid, label, reason, by, at in answers:
            sid = int(sid)
            done = self._resolution(sid)
            what = "skip" if label is None else f"label {label:g}"
            if done or sid in seen:
                report.ignored.append(f"sample {sid}: {done or 'answered twice'}; {what} ignored")
                continue
            seen.add(sid)
            if label is None:
                new_skips.append(Skip(sid, query_token, reason, by, at or utc_now()))
            else:
                new_entries.append(LedgerEntry(sid, float(label), int(query.get("cycle", -1)),
                                               str(query.get("strategy", "")), query_token, by, at or utc_now()))
        if new_entries or new_skips:
            with self._transaction():
                self._entries.extend(new_entries)
                self._ids.update(e.sample_id for e in new_entries)
                self._skipped.update({s.sample_id: s for s in new_skips})
                if query_token in self._pending and not len(self.pending_ids(query_token)):
                    del self._pending[query_token]
        report.labeled = [e.sample_id for e in new_entries]
        report.skipped = [s.sample_id for s in new_skips]
        report.complete = query_token not in self._pending
        return report

    # -------------------------------------------------------------- internals
    def _resolution(self, sid: int) -> str:
        if sid in self._ids:
            return f"already labeled {self.label_of(sid).label:g}"
        if sid in self._skipped:
            return "already skipped"
        return ""

    def _new_query_ids(self, sample_ids: np.ndarray, query_token: str) -> list[int]:
        if query_token in self._tokens:
            raise LedgerError(f"query {query_token!r} is already in the ledger")
        ids = [int(i) for i in np.asarray(sample_ids).reshape(-1)]
        taken = set(self.unavailable_ids().tolist())
        if is_audit(query_token):  # the audit reserve is for audit queries
            taken -= self._reserved
        twice = [i for i in ids if i in taken]
        if twice or len(set(ids)) != len(ids):
            raise LedgerError(f"samples already labeled, pending or skipped, refusing to buy them again: {twice[:10]}")
        return ids

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Apply changes in memory, then persist; on any failure memory is restored (the change did not happen)."""
        saved = (list(self._entries), dict(self._tokens), {k: dict(v) for k, v in self._pending.items()},
                 dict(self._skipped), set(self._ids), set(self._reserved))
        try:
            yield
            self._save()
        except BaseException:
            self._entries, self._tokens, self._pending, self._skipped, self._ids, self._reserved = saved
            raise

    def _save(self) -> None:
        payload = {
            "version": _VERSION,
            "task": self.task,
            "queries": self._tokens,
            "entries": [
                [e.sample_id, e.label, e.cycle, e.strategy, e.query_token, e.labeled_by, e.labeled_at]
                for e in self._entries
            ],
            "pending": self._pending,
            "skipped": [[s.sample_id, s.query_token, s.reason, s.by, s.at] for s in self._skipped.values()],
        }
        if self._reserved:
            payload["audit-reserve"] = sorted(self._reserved)
        atomic_write_text(self.path, json.dumps(payload))
        self._remember()

    def _file_key(self) -> tuple[int, int, int]:
        st = self.path.stat()
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _remember(self) -> None:
        state = (tuple(self._entries), {k: tuple(v) for k, v in self._tokens.items()},
                 {k: dict(v) for k, v in self._pending.items()}, dict(self._skipped), frozenset(self._reserved))
        _READ_CACHE[str(self.path)] = (self._file_key(), state)

    def _load(self) -> None:
        cached = _READ_CACHE.get(str(self.path))
        if cached is not None and cached[0] == self._file_key():
            entries, tokens, pending, skipped, reserved = cached[1]
            self._reserved = set(reserved)
            self._entries = list(entries)
            self._tokens = {k: list(v) for k, v in tokens.items()}
            self._pending = {k: dict(v) for k, v in pending.items()}
            self._skipped = dict(skipped)
            self._ids = {e.sample_id for e in self._entries}
            return
        try:
            payload = json.loads(self.path.read_text())
            if payload.get("version") not in (1, _VERSION):
                raise LedgerError(f"unsupported ledger version {payload.get('version')!r}")
            self._entries = [
                LedgerEntry(int(e[0]), float(e[1]), int(e[2]), str(e[3]), str(e[4]), *(str(v) for v in e[5:7]))
                for e in payload["entries"]
            ]
            self._tokens = {str(k): [int(i) for i in v] for k, v in payload["queries"].items()}
            self._pending = {str(k): dict(v) for k, v in payload.get("pending", {}).items()}
            self._skipped = {int(s[0]): Skip(int(s[0]), str(s[1]), str(s[2]), str(s[3]), str(s[4]))
                             for s in payload.get("skipped", [])}
            self._reserved = {int(i) for i in payload.get("audit-reserve", [])}
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            raise LedgerError(f"label ledger {self.path} is unreadable: {err}") from err
        self._ids = {e.sample_id for e in self._entries}
        if len(self._ids) != len(self._entries):
            raise LedgerError(f"label ledger {self.path} lists a sample twice")
        unknown = [t for t in self._pending if t not in self._tokens]
        if unknown:
            raise LedgerError(f"label ledger {self.path} has pending queries {unknown} with no chosen ids")
        self._remember()
