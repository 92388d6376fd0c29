"""What a node must keep across a restart of its SuperNode: records in memory and on its disk.

Flower gives a ClientApp ``context.state``, a RecordDict that lives in the
SuperNode's memory and is gone when the SuperNode restarts. The failure policy
(docs/explanation/failures.md, *Losing a site*) re-admits a restarted node in the middle
of a run; for that node to finish a multi-message protocol it started (FALE's
FedSVD masks, AHFAL's secure-sum keys) or to query with the model it trained
before (``query-model=local``, FEAL), those records must survive. A
:class:`NodeState` keeps each record in ``context.state`` and, written
atomically, in a file of its own beside the node's label ledger
(``<state-dir>/<run-name>/partition-<id>.node/<key>.rd``, Flower's own protobuf
serialisation of a one-record RecordDict, file mode 0600, folder 0700: some
records are secrets of the site, e.g. FALE's mask seeds). Reading takes the
memory copy, else the file (then cached in memory).

The files are the run's: when the run completes, the server's ``query.finish``
round has every node delete its folder (:meth:`NodeState.clear`); a stopped run
keeps them for its resumption. Records only this node reads and that change
every round (the optimiser state of ``optimizer-state=keep``) stay in memory: a
restarted node starts them afresh, as documented for that setting. The server never sees these files; they
sit with the site's data and ledger, under the same protection.
"""

from __future__ import annotations

import re
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict  # pylint: disable=no-name-in-module

from fal_shared.files import atomic_write_bytes

__all__ = ["NodeState"]

Record = ArrayRecord | ConfigRecord


class NodeState:
    """Records kept in ``context.state`` and in files under ``folder`` (see the module docstring)."""

    def __init__(self, memory: RecordDict, folder: Path) -> None:
        self.memory = memory
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", key):
            raise ValueError(f"node state key {key!r}: letters, digits, '.', '_' and '-' only")
        return self.folder / f"{key}.rd"

    def put(self, key: str, record: Record, *, durable: bool = True) -> None:
        """Keep ``record`` under ``key`` in memory and on disk (atomically: the old record or the new one).

        ``durable=False`` skips the fsync (a record written every round, that a power cut may lose).
        """
        self.memory[key] = record
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # the umask only removes bits
        data = recorddict_to_proto(RecordDict({key: record})).SerializeToString()
        atomic_write_bytes(self._path(key), data, durable=durable)  # mkstemp's file: mode 0600

    def get(self, key: str) -> Record | None:
        """The record under ``key``: from memory, else from disk (a restarted node), else None."""
        if key in self.memory:
            return self.memory[key]
        path = self._path(key)
        if not path.exists():
            return None
        stored = recorddict_from_proto(ProtoRecordDict.FromString(path.read_bytes()))
        if key not in stored:
            raise ValueError(f"{path}: holds no record {key!r} (not written by NodeState?)")
        self.memory[key] = stored[key]
        return stored[key]

    def clear(self) -> int:
        """Delete this node's files of the run (memory stays: Flower drops it with the run); how many."""
        if not self.folder.is_dir():
            return 0
        files = list(self.folder.glob("*.rd")) + list(self.folder.glob(".*.rd-*"))  # records, unfinished writes
        for path in files:
            path.unlink(missing_ok=True)
        if not any(self.folder.iterdir()):
            self.folder.rmdir()
        return len(files)

    def get_arrays(self, key: str) -> ArrayRecord | None:
        return self._get_as(key, ArrayRecord)

    def get_config(self, key: str) -> ConfigRecord | None:
        return self._get_as(key, ConfigRecord)

    def _get_as(self, key: str, kind: type[Record]) -> Record | None:
        record = self.get(key)
        if record is not None and not isinstance(record, kind):
            article = "an" if kind.__name__[0] in "AEIOU" else "a"
            raise TypeError(f"node state {key!r} is a {type(record).__name__}, not {article} {kind.__name__}")
        return record
