"""The file oracle: pending samples in a folder, labels from a filled CSV imported with ``fal-label``.

For sites without a labeling tool. Per query, ``<label-folder>/<run>/partition-<id>/<token>/`` gets
the samples (``<sample id>.png`` for image data; the features are CSV columns
for tabular data) and ``labels.csv`` with one row per sample and an empty
``label`` column. A person fills in ``label`` (a class index, a number for
regression, or ``skip``/``unclear``) and runs ``fal-label import labels.csv``,
which validates the whole file and writes ``answers.json`` beside it; the
ClientApp reads the answers at the server's next poll and records them in its
ledger (so the ledger keeps a single writer).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from client_app.oracle import Answer, LabelRequest, OracleUnavailable, PersonOracle
from fal_shared.files import atomic_write_bytes, atomic_write_text

__all__ = ["FileOracle", "ANSWERS_FILE", "CSV_FILE", "ID_COLUMNS", "query_folder", "read_answers"]

CSV_FILE = "labels.csv"
ANSWERS_FILE = "answers.json"
#: columns that say which query a row belongs to; fal-label refuses a CSV whose rows are for another query
ID_COLUMNS = ("run", "partition", "query", "sample_id")


def query_folder(root: Path, request: LabelRequest) -> Path:
    return root / request.run_name / f"partition-{request.partition_id}" / request.token


def read_answers(folder: Path) -> dict[str, Any]:
    """``answers.json`` of a query folder: ``{"answers": {sample id: {value, skipped, reason, by, at}}}``."""
    path = folder / ANSWERS_FILE
    if not path.exists():
        return {"answers": {}}
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise OracleUnavailable(f"{path} is unreadable ({err})") from None


class FileOracle(PersonOracle):
    name = "file"

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, request: LabelRequest) -> Path:
        return query_folder(self.root, request)

    def describe(self, request: LabelRequest) -> dict[str, Any]:
        return {"folder": str(self.folder(request))}

    def submit(self, request: LabelRequest) -> None:
        """Write the samples and ``labels.csv``; an existing CSV (maybe half filled) is never overwritten."""
        folder = self.folder(request)
        csv_path = folder / CSV_FILE
        if not csv_path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            rows = []
            for sid in request.ids:
                hint = request.hints.get(sid, {})
                row: dict[str, Any] = {"run": request.run_name, "partition": request.partition_id,
                                       "query": request.token, "sample_id": sid}
                if request.image is not None:
                    name = f"{sid}.png"
                    atomic_write_bytes(folder / name, request.image(sid), durable=False)
                    row["image"] = name
                if request.features is not None:
                    row.update(request.features(sid))
                row["priority"] = hint.get("priority", "")
                row["prediction"] = _fmt(hint.get("prediction"))
                row["confidence"] = _fmt(hint.get("confidence"))
                row.update(label="", labeler="", note="")
                rows.append(row)
            rows.sort(key=lambda r: -float(r["priority"] or 0))  # the most useful first
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else [*ID_COLUMNS, "label", "labeler", "note"])
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(csv_path, out.getvalue())

    def collect(self, request: LabelRequest) -> list[Answer]:
        folder = self.folder(request)
        if not (folder / CSV_FILE).exists():
            self.submit(request)  # the folder was lost or never written: write it again
        answers = read_answers(folder)["answers"]
        wanted = set(request.ids)
        return [
            Answer(int(sid), a.get("value"), bool(a.get("skipped")), str(a.get("reason", "")), str(a.get("by", "")),
                   str(a.get("at", "")))
            for sid, a in answers.items() if int(sid) in wanted
        ]


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.6g}"
