"""Where a run stands, on the server's disk, so that a stopped run resumes where it stopped.

A FAL run can wait days for people to label (``server_app.labels``), and the
ServerApp may be stopped or restarted meanwhile. Twice per cycle the loop
writes a checkpoint beside ``results.json``:

* stage ``query``: after the cycle's training and evaluation, before its query
  phase (the global model, the cycle's record so far, the strategy's
  server-side state, the traffic counters);
* stage ``labels``: after the query phase (the clients hold the choice,
  pending or bought, in their ledgers under the query token), before waiting
  for the labels.

Started again with the same ``run-name`` (and output folder), the ServerApp
finds the checkpoint and goes on from it: from ``labels`` it only waits for
the labels; from ``query`` it runs the query phase again, whose selection
rounds the clients answer from their ledgers (same token: nothing is selected
or bought twice). Training is deterministic given the labels, so a resumed
run gives the same numbers as one that never stopped. The checkpoint is
deleted when the run completes; a completed run cannot be resumed.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from fal_shared.files import atomic_write_bytes, atomic_write_text

__all__ = ["Checkpoint", "ResumeError", "MAY_CHANGE_ON_RESUME"]

_VERSION = 1
#: run-config keys a resumed run may set differently (how long to wait, where things run); any other
#: difference would make the resumed run a different experiment
MAY_CHANGE_ON_RESUME = frozenset({
    "label-poll-seconds", "label-wait-seconds", "label-wait-quorum", "node-wait-seconds",
    "reply-timeout-seconds", "query-retries", "device", "client-threads",
    "tracker", "tracking-uri", "tracking-experiment",  # where the live curves go (server_app/tracking.py)
})


class ResumeError(ValueError):
    """The run cannot be resumed as asked (completed, or started with another config)."""


def _jsonable(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"checkpoint: {where} holds a {type(value).__name__}, which cannot be saved (use JSON values)")


class Checkpoint:
    """The checkpoint files of one run folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "checkpoint.json"

    def save(
        self, *, config: dict[str, Any], cycle: int, stage: str, arrays: ArrayRecord, record: dict[str, Any],
        seconds: dict[str, float], traffic_before: dict[str, Any], traffic: dict[str, Any],
        strategy_state: dict[str, Any], results: dict[str, Any],
    ) -> None:
        """Write the model first (its own file per stage), then the JSON that names it, then drop older models."""
        model_name = f"checkpoint-model-cycle{cycle}-{stage}.pt"
        buffer = io.BytesIO()
        torch.save(arrays.to_torch_state_dict(), buffer)
        atomic_write_bytes(self.folder / model_name, buffer.getvalue())
        payload = {
            "version": _VERSION, "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": config, "cycle": cycle, "stage": stage, "model": model_name,
            "record": _jsonable(record, "record"), "seconds": seconds, "traffic-before": traffic_before,
            "traffic": traffic, "strategy-state": _jsonable(strategy_state, "strategy state"),
            "results": _jsonable(results, "results"),
        }
        atomic_write_text(self.path, json.dumps(payload))
        for old in self.folder.glob("checkpoint-model-*.pt"):
            if old.name != model_name:
                old.unlink(missing_ok=True)

    def load(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """The saved state (with ``arrays``) if this run can resume, None if there is nothing to resume.

        Raises
        ------
        ResumeError
            The run already completed, or ``config`` differs from the stopped run's
            in a key outside :data:`MAY_CHANGE_ON_RESUME`.
        """
        results = self.folder / "results.json"
        if results.exists():
            try:
                status = json.loads(results.read_text()).get("status")
            except ValueError:
                status = None
            if status == "completed":
                raise ResumeError(
                    f"run-name {config.get('run-name')!r} already completed in {self.folder}; "
                    "choose another run-name (or delete that folder and the clients' ledgers to start it again)"
                )
        if not self.path.exists():
            return None
        try:
            saved = json.loads(self.path.read_text())
            state = torch.load(self.folder / saved["model"], weights_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise ResumeError(f"checkpoint {self.path} is unreadable ({err}); cannot resume this run") from err
        if saved.get("version") != _VERSION:
            raise ResumeError(f"checkpoint {self.path} has unsupported version {saved.get('version')!r}")
        changed = sorted(
            k for k in set(saved["config"]) | set(config)
            if k not in MAY_CHANGE_ON_RESUME and saved["config"].get(k) != config.get(k)
        )
        if changed:
            detail = ", ".join(f"{k}: {saved['config'].get(k)!r} -> {config.get(k)!r}" for k in changed)
            raise ResumeError(
                f"run {config.get('run-name')!r} stopped at cycle {saved['cycle']} and would resume, but its config "
                f"differs ({detail}); resume with the same settings (only {', '.join(sorted(MAY_CHANGE_ON_RESUME))} "
                "may change) or choose another run-name"
            )
        saved["arrays"] = ArrayRecord(state)
        return saved

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)
        for old in self.folder.glob("checkpoint-model-*.pt"):
            old.unlink(missing_ok=True)
