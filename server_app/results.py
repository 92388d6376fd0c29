"""Results files of a run: ``results.json`` (everything) and ``cycles.csv`` (one row per cycle).

Both are rewritten atomically after every cycle, so a crash leaves the cycles
completed so far and ``status: failed`` with the error.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from fal_shared.files import atomic_write_text

__all__ = ["ResultsRecorder"]


class ResultsRecorder:
    """``restore``: the data of a stopped run to go on with (its checkpoint's copy); the resume is noted in it."""

    def __init__(self, folder: Path, *, run_name: str, config: dict[str, Any], restore: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self._start = time.time()
        folder.mkdir(parents=True, exist_ok=True)
        if restore is not None:
            self.data = restore
            self.data.update(status="running", error=None, finished=None, config=config)
            self.data.setdefault("resumed", []).append(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            self.flush()
            return
        self.data: dict[str, Any] = {
            "run-name": run_name,
            "status": "running",
            "error": None,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "finished": None,
            "config": config,
            "clients": {},
            "cycles": [],
            "totals": {},
        }
        self.flush()

    @property
    def json_path(self) -> Path:
        return self.folder / "results.json"

    @property
    def csv_path(self) -> Path:
        return self.folder / "cycles.csv"

    def set_clients(self, clients: dict[str, Any]) -> None:
        self.data["clients"] = clients
        self.flush()

    def add_cycle(self, record: dict[str, Any]) -> None:
        self.data["cycles"].append(record)
        self.flush()

    def update_last_cycle(self, **values: Any) -> None:
        self.data["cycles"][-1].update(values)
        self.flush()

    def finish(self, status: str, *, error: str | None = None, totals: dict[str, Any] | None = None) -> None:
        self.data["status"] = status
        self.data["error"] = error
        self.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.data["totals"] = {**(totals or self.data.get("totals", {})), "wall-seconds": time.time() - self._start}
        self.flush()

    def flush(self) -> None:
        atomic_write_text(self.json_path, json.dumps(self.data, indent=1), durable=False)
        atomic_write_text(self.csv_path, self._csv(), durable=False)

    def _csv(self) -> str:
        rows = []
        for c in self.data["cycles"]:
            row = {
                "cycle": c["cycle"],
                "labeled": c["labeled"],
                "labeled-fraction": round(c["labeled-fraction"], 6),
            }
            for key in ("accuracy", "balanced-accuracy", "mse"):
                if key in c.get("evaluation", {}):
                    row[key] = c["evaluation"][key]
            for phase, seconds in c.get("seconds", {}).items():
                row[f"seconds-{phase}"] = round(seconds, 3)
            for kind, entry in c.get("traffic", {}).items():
                row[f"bytes-{kind}"] = entry["bytes-sent"] + entry["bytes-received"]
            row["selected"] = sum(len(v) for v in c.get("selected-ids", {}).values())
            row.update(_campaign_columns(c.get("campaign")))
            rows.append(row)
        fields: list[str] = []
        for row in rows:
            fields += [k for k in row if k not in fields]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()


def _campaign_columns(camp: dict[str, Any] | None) -> dict[str, Any]:
    """The campaign's headline numbers (server_app/campaign.py) as cycles.csv columns."""
    if not camp:
        return {}
    row: dict[str, Any] = {}
    for arm in ("audit", "random"):
        pooled = (camp.get(arm) or {}).get("pooled")
        if pooled:
            row.update({f"{arm}-estimate": pooled["estimate"], f"{arm}-ci-low": pooled["ci-low"],
                        f"{arm}-ci-high": pooled["ci-high"]})
    cal = camp.get("calibration") or {}
    row.update({k: cal[k] for k in ("ece", "auroc") if cal.get(k) is not None})
    if camp.get("stop"):
        row["stop"] = camp["stop"]
    return row
