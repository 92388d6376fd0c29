"""Live curves: every cycle's numbers logged to MLflow as they arrive (``tracker = "mlflow"``).

Why MLflow: its tracking URI is exactly "a local store by default, a server address as
an option" (``sqlite:///<output-dir>/mlflow.db``, or ``http://host:port`` of a team's
``mlflow server``), it groups runs (an experiment per sweep, a parent run with one
child run per sweep point), and its full package installs beside flwr 1.41's pins with
``pip check`` clean (about 120 MB; docs: Install). TensorBoard has no server address
(it reads event files from a folder) and no run hierarchy.

One MLflow run per FAL run, found again by its ``fal.run-name`` tag when a stopped run
resumes (the curve goes on in the same run); one parent run per sweep (tag
``fal.sweep-parent``, created by ``fal-sweep``) that every sweep point names as its
``mlflow.parentRunId``. Metrics are logged with step = cycle; the budget curves
``budget-curve/*`` with step = labels bought, so MLflow's chart of them *is* the
labels-vs-accuracy curve.

The tracker is a view: a failure to log (the server went away mid-run) is a warning,
recorded under ``tracking.errors`` in ``results.json``, and the run goes on. A tracker
that cannot be reached or imported at the start is an error before anything runs
(:func:`check_tracker`; the launchers call it before starting any process).
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from typing import Any

from fal_shared.config import RunConfig

__all__ = ["open_tracker", "check_tracker", "tracking_uri", "experiment_name", "ensure_sweep_parent", "Tracker"]

log = logging.getLogger("fal")

DEFAULT_EXPERIMENT = "fal"
RUN_TAG, PARENT_TAG = "fal.run-name", "fal.sweep-parent"


def _quiet_environment() -> None:
    # No usage reports from a labeling site's server, and a dead tracking server must not stall a round
    # for minutes (MLflow's default: 7 retries with exponential back-off). A user's own setting wins.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def tracking_uri(cfg: RunConfig) -> str:
    """``tracking-uri``, or the local store beside the results: ``sqlite:///<output-dir>/mlflow.db``."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    return f"sqlite:///{cfg.output_root().resolve() / 'mlflow.db'}"


def experiment_name(cfg: RunConfig) -> str:
    return cfg.tracking_experiment or DEFAULT_EXPERIMENT


def check_tracker(cfg: RunConfig) -> None:
    """Raise ValueError when ``tracker = "mlflow"`` cannot work: package missing, server not answering."""
    if cfg.tracker == "off":
        return
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ValueError('tracker="mlflow": the mlflow package is not installed; pip install -e ".[tracking]"') from None
    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as reply:
                reply.read()
        except (urllib.error.URLError, OSError) as err:
            raise ValueError(f"tracking-uri: the MLflow server at {uri} does not answer ({err})") from None


def _client(uri: str):
    _quiet_environment()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        # shown as "Model training" (not GenAI) in MLflow 3's UI
        return client.create_experiment(name, tags={"mlflow.experimentKind": "custom_model_development"})
    except Exception:  # noqa: BLE001 - another run of the sweep created it first
        return client.get_experiment_by_name(name).experiment_id


def _find(client, experiment_id: str, tag: str, value: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=1)
    return runs[0] if runs else None


def ensure_sweep_parent(cfg: RunConfig, params: dict[str, Any]) -> str:
    """The parent run of a sweep in its experiment ``tracking-experiment`` (created once; a resumed sweep finds it).

    Every run of that experiment names it as its ``mlflow.parentRunId``. Returns its run id.
    """
    client = _client(tracking_uri(cfg))
    name = experiment_name(cfg)
    exp = _experiment_id(client, name)
    run = _find(client, exp, PARENT_TAG, name)
    if run is None:
        run = client.create_run(exp, run_name=f"sweep {name}", tags={PARENT_TAG: name})
        for key, value in params.items():
            client.log_param(run.info.run_id, key, str(value)[:6000])
    return run.info.run_id


class Tracker:
    """The tracker of a run with ``tracker = "off"``: does nothing."""

    def log_cycle(self, cycle: int, record: dict[str, Any], campaign: dict[str, Any] | None) -> None: ...

    def log_done(self, record: dict[str, Any]) -> None: ...

    def close(self, status: str) -> None: ...


def open_tracker(cfg: RunConfig, run_name: str, recorder) -> Tracker:
    if cfg.tracker == "off":
        return Tracker()
    check_tracker(cfg)
    return MlflowTracker(cfg, run_name, recorder)


def cycle_metrics(record: dict[str, Any], campaign: dict[str, Any] | None) -> tuple[dict[str, float], dict[str, dict[int, float]]]:
    """(metrics at step = cycle, budget curves {name: {labels: value}}) of a cycle's record."""
    metrics: dict[str, float] = {"labels/training": record["labeled"], "labels/fraction": record["labeled-fraction"]}
    for key in ("accuracy", "balanced-accuracy", "mse"):
        if key in record["evaluation"]:
            metrics[f"evaluation/{key}"] = record["evaluation"][key]
    curves: dict[str, dict[int, float]] = {}
    if campaign:
        for arm in ("audit", "random"):
            pooled = campaign.get(arm, {}).get("pooled")
            if pooled:
                for key in ("estimate", "ci-low", "ci-high"):
                    metrics[f"{arm}/{key}"] = pooled[key]
                labels = record["labeled"] if arm == "audit" else campaign["measured"]["random-arm-labels"]
                curves[f"budget-curve/{arm}-estimate"] = {int(labels): pooled["estimate"]}
        if "audit" in campaign:
            metrics["labels/audit"] = campaign["audit"]["held"]
        cal = campaign.get("calibration", {})
        for key in ("ece", "auroc"):
            if cal.get(key) is not None:
                metrics[f"calibration/{key}"] = cal[key]
        for name, rule in campaign.get("rules", {}).items():
            if rule["value"] is not None:
                metrics[f"stop/{name}"] = rule["value"]
            metrics[f"stop/{name}-fired"] = float(rule["fired"])
    return {k: float(v) for k, v in metrics.items() if v is not None}, curves


class MlflowTracker(Tracker):
    """One MLflow run of a FAL run (see the module docstring)."""

    def __init__(self, cfg: RunConfig, run_name: str, recorder) -> None:
        self.recorder = recorder
        self.uri = tracking_uri(cfg)
        self.client = _client(self.uri)
        exp = _experiment_id(self.client, experiment_name(cfg))
        run = _find(self.client, exp, RUN_TAG, run_name)
        if run is None:
            tags = {RUN_TAG: run_name, "fal.strategy": cfg.strategy, "fal.dataset": cfg.dataset}
            if cfg.tracking_experiment:
                parent = _find(self.client, exp, PARENT_TAG, cfg.tracking_experiment)
                if parent is not None:
                    tags["mlflow.parentRunId"] = parent.info.run_id
            run = self.client.create_run(exp, run_name=run_name, tags=tags)
            from mlflow.entities import Param

            params = [Param(k, str(v)[:6000]) for k, v in sorted(cfg.to_flower().items())]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(run.info.run_id, params=params[start:start + 100])
        else:  # a resumed run: its curves go on in the same MLflow run
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.run_id = run.info.run_id
        self.client.set_tag(self.run_id, "fal.status", "running")
        recorder.data["tracking"] = {"tracker": "mlflow", "uri": self.uri, "experiment-id": exp, "run-id": self.run_id}
        print(f"[FAL] tracker: MLflow run {self.run_id} in experiment {experiment_name(cfg)!r} at {self.uri}", flush=True)

    def _call(self, what: str, fn, *args, **kw) -> None:
        for attempt in range(3):  # a local SQLite store shared by parallel sweep runs may be busy for a moment
            try:
                fn(*args, **kw)
                return
            except Exception as err:  # noqa: BLE001 - the tracker is a view; the run goes on
                if attempt < 2 and "locked" in str(err).lower():
                    time.sleep(0.5 * (attempt + 1))
                    continue
                message = f"tracker: {what} failed: {type(err).__name__}: {err}"
                log.warning("[FAL] %s", message)
                self.recorder.data.setdefault("tracking", {}).setdefault("errors", []).append(message[:500])
                return

    def _log(self, metrics: dict[str, float], step: int, curves: dict[str, dict[int, float]] | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in metrics.items()]
        batch += [Metric(name, v, now, labels) for name, points in (curves or {}).items() for labels, v in points.items()]
        if batch:
            self._call("logging metrics", self.client.log_batch, self.run_id, metrics=batch)

    def log_cycle(self, cycle: int, record: dict[str, Any], campaign: dict[str, Any] | None) -> None:
        metrics, curves = cycle_metrics(record, campaign)
        self._log(metrics, cycle, curves)

    def log_done(self, record: dict[str, Any]) -> None:
        metrics = {f"seconds/{k}": float(v) for k, v in record.get("seconds", {}).items()}
        metrics["bytes/total"] = float(sum(e["bytes-sent"] + e["bytes-received"] for e in record.get("traffic", {}).values()))
        if "labeling" in record:
            metrics["labels/waited-seconds"] = float(record["labeling"]["waited-seconds"])
        self._log(metrics, int(record["cycle"]))

    def close(self, status: str) -> None:
        self._call("setting the status", self.client.set_tag, self.run_id, "fal.status", status)
        if status == "waiting-for-labels":  # the run goes on when it is resumed: the MLflow run stays open
            return
        final = "FINISHED" if status == "completed" else "FAILED"
        self._call("ending the run", self.client.set_terminated, self.run_id, final)
