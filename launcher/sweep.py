"""``fal-sweep``: run every point of a sweep file's grid, scheduled by Ray, resumable, then report.

::

    fal-sweep experiments/sweeps/ahfal-mnist-alpha0.1-cpu.toml --set data-root=/data/mnist
    fal-sweep SWEEP.toml --output /srv/sweeps/ahfal       # where runs, logs and the report go
    fal-sweep SWEEP.toml --address auto                   # on an existing Ray cluster (ray start --head ...)

Each run is one Ray task with the sweep's ``cpus-per-run`` and ``gpus-per-run``
(fractions share a GPU), so the same command fills a laptop, a GPU box or a
cluster. A run whose ``results.json`` says ``completed`` with the same config
is skipped, so a killed sweep is resumed by running the same command again; a
run that failed is reported with its error, the others go on, and the next
invocation runs it again (its clients' ledgers replay the labels already bought,
so nothing is bought twice). Every run logs to ``<output>/logs/<run>.log``; ``sweep.json``
records, for every run, its last status and the node that ran it. At the end
the report (``fal-report``) is written to ``<output>/report``.

SIGTERM, SIGINT or SIGHUP stop the sweep and everything it started: its Ray
tasks are cancelled (a running one is interrupted, and sends the ``fal-simulate``
it started SIGTERM, so that run stops its own processes and is marked stopped;
a task still running 30 s later has its worker killed), the local Ray instance
is shut down, and every process left of the sweep is stopped
(``launcher.stopping``); the exit code is 128 + the signal number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

from fal_shared.config import ConfigError, RunConfig
from launcher.stopping import RunScope, Stopped
from launcher.sweep_run import execute_run, run_status
from launcher.sweep_schedulers import RUN_RECORD_KEYS, fmt_seconds, run_with_processes, run_with_ray
from launcher.sweep_spec import RunSpec, Sweep, read_sweep

__all__ = ["main", "execute_run", "run_status"]

# -------------------------------------------------------------- the sweep
def _results_path(spec: RunSpec) -> Path:
    return Path(spec.config["output-dir"]) / spec.name / "results.json"


def _finished(spec: RunSpec) -> bool:
    """True when the run completed with this exact config; a different config is an error."""
    path = _results_path(spec)
    status, _ = run_status(path)
    if status != "completed":
        return False
    recorded = json.loads(path.read_text()).get("config", {})
    defaults = RunConfig().to_flower()  # a key added to the project since the run: its default is what ran
    changed = sorted(
        k for k in set(recorded) | set(spec.config)
        if recorded.get(k, defaults.get(k)) != spec.config.get(k, defaults.get(k))
    )
    if changed:
        detail = ", ".join(f"{k}: {recorded.get(k)!r} -> {spec.config.get(k)!r}" for k in changed[:5])
        raise ConfigError(
            f"run {spec.name!r} in {path.parent} completed with another config ({detail}); "
            "use a new --output folder for a changed sweep"
        )
    return True


def _check_data(sweep: Sweep) -> None:
    """Load every distinct data set once: a missing or corrupt file fails before any run starts."""
    from fal_shared.config import parse_run_config
    from fal_shared.experiment_data import check_data

    seen = set()
    for spec in sweep.runs:
        cfg = parse_run_config(spec.config)
        key = (cfg.dataset, cfg.data_root, cfg.num_clients, cfg.seed if cfg.task == "regression" else 0, cfg.partition_file)
        if key not in seen:
            seen.add(key)
            check_data(cfg)


def _name_tracking_experiment(sweep: Sweep) -> list[RunSpec]:
    """With ``tracker = "mlflow"``: the sweep's runs go to one MLflow experiment named after the sweep (unless the
    file sets ``tracking-experiment``); the tracked runs."""
    tracked = [r for r in sweep.runs if r.config.get("tracker", "off") != "off"]
    for spec in tracked:
        if not spec.config.get("tracking-experiment"):
            spec.config["tracking-experiment"] = sweep.name
    return tracked


def _track_sweep(sweep: Sweep, tracked: list[RunSpec]) -> None:
    """The sweep's parent run in its experiment (created here, found again when the sweep is resumed): every
    tracked run becomes its child (server_app/tracking.py)."""
    if not tracked:
        return
    from fal_shared.config import parse_run_config
    from server_app.tracking import check_tracker, ensure_sweep_parent

    cfg = parse_run_config(tracked[0].config)
    check_tracker(cfg)
    ensure_sweep_parent(cfg, {"sweep-file": str(sweep.path.resolve()), "runs": len(sweep.runs),
                              "grid": json.dumps(sweep.grid)})


def _write_manifest(sweep: Sweep, output: Path, extra: dict[str, Any]) -> None:
    manifest = {
        "name": sweep.name,
        "sweep-file": str(sweep.path.resolve()),
        "settings": sweep.settings.model_dump(by_alias=True),
        "grid": sweep.grid,
        "variants": sweep.variants,
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": [{"name": r.name, "method": r.method, "axes": r.axes} for r in sweep.runs],
        **extra,
    }
    output.mkdir(parents=True, exist_ok=True)
    path = output / "sweep.json"
    if path.exists():  # keep the history of invocations (wall times) and where each run last ran, across resumes
        old = json.loads(path.read_text())
        manifest["invocations"] = old.get("invocations", []) + manifest.get("invocations", [])
        last = {r["name"]: r for r in old.get("runs", [])}
        for run in manifest["runs"]:
            run.update({k: v for k, v in last.get(run["name"], {}).items() if k in RUN_RECORD_KEYS})
    path.write_text(json.dumps(manifest, indent=1, default=str))



def _select(runs: list[RunSpec], where: list[str]) -> list[RunSpec]:
    """The runs whose grid values match every ``axis=value`` (the strategy axis matches the method name)."""
    for item in where:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--where: expected axis=value, got {item!r}")
        if key != "strategy" and all(key not in r.axes for r in runs):
            raise ConfigError(f"--where: {key!r} is not a grid axis of this sweep")
        runs = [r for r in runs if (r.method if key == "strategy" else str(r.axes.get(key))) == value]
    if not runs:
        raise ConfigError(f"--where {' '.join(where)}: no run of the sweep matches")
    return runs


def _parse_set(values: list[str]) -> dict[str, Any]:
    import tomllib

    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set: expected key=value, got {item!r}")
        try:
            out[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' command reference is generated from it)."""
    parser = argparse.ArgumentParser(prog="fal-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="sweep file (TOML)")
    parser.add_argument("--output", default=None, help="sweep folder (default: ~/fal-results/sweeps/<name>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="run-config key for every run, e.g. data-root=/data/mnist (repeatable; wins over the file)")
    parser.add_argument("--runtime", choices=["inprocess", "simulation"], default=None,
                        help="override the sweep file's runtime (use another --output: the runtime is not part of a run's config)")
    parser.add_argument("--scheduler", choices=["ray", "processes"], default="ray",
                        help="ray (default) or a local process pool where Ray is not installed")
    parser.add_argument("--address", default=None, help="an existing Ray cluster (e.g. auto after `ray start --head`)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance / pool (default: all)")
    parser.add_argument("--num-gpus", type=int, default=None, help="GPUs of the local Ray instance (default: all)")
    parser.add_argument("--progress-seconds", type=float, default=30.0, help="how often the progress line is refreshed")
    parser.add_argument("--where", action="append", default=[], metavar="AXIS=VALUE",
                        help="run only the grid points with this value (repeatable), e.g. --where alpha=0.1 --where strategy=ahfal")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and what would be skipped, run nothing")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    scope = RunScope("fal-sweep")
    try:
        with scope:
            return _sweep(args, scope.id)
    except Stopped as stop:
        output = getattr(args, "output_path", None)
        if output is not None and (output / "sweep.json").exists():
            manifest = json.loads((output / "sweep.json").read_text())
            if manifest.get("invocations"):
                manifest["invocations"][-1]["stopped"] = signal.Signals(stop.signum).name
                (output / "sweep.json").write_text(json.dumps(manifest, indent=1, default=str))
        try:
            print(f"[sweep] {stop}: every run, Ray task and process of the sweep is stopped; "
                  "the same command resumes it (completed runs are skipped)", file=sys.stderr, flush=True)
        except OSError:  # SIGHUP: the terminal may be gone
            pass
        return stop.exit_code


def _sweep(args: argparse.Namespace, scope_id: str = "") -> int:
    started = time.time()
    args.output_path = None
    try:
        sweep = read_sweep(args.sweep)
        if args.runtime:
            sweep.settings.runtime = args.runtime
        output = Path(args.output or Path.home() / "fal-results" / "sweeps" / sweep.name).expanduser().resolve()
        args.output_path = output
        sweep.expand(output, _parse_set(args.set))
        sweep.runs = _select(sweep.runs, args.where)
        _check_data(sweep)
        tracked = _name_tracking_experiment(sweep)
        todo = [r for r in sweep.runs if not _finished(r)]
    except (ConfigError, ValueError, OSError) as err:
        print(f"[sweep] FAILED before any run started: {err}", file=sys.stderr)
        return 2
    skipped = len(sweep.runs) - len(todo)
    print(f"[sweep] {sweep.name}: {len(sweep.runs)} runs in {output}; {skipped} completed already (skipped), "
          f"{len(todo)} to run", flush=True)
    if args.dry_run:
        for r in sweep.runs:
            print(f"  {'skip' if r not in todo else 'run '} {r.name}")
        return 0
    try:
        _track_sweep(sweep, tracked)
    except (ConfigError, ValueError, OSError) as err:
        print(f"[sweep] FAILED before any run started: {err}", file=sys.stderr)
        return 2
    logs = output / "logs"
    for r in todo:
        (logs / f"{r.name}.started").unlink(missing_ok=True)
    _write_manifest(sweep, output, {"invocations": [{"started": started, "to-run": len(todo), "skipped": skipped,
                                                     "scope": scope_id}]})
    backend = run_with_ray if args.scheduler == "ray" else run_with_processes
    results = backend(todo, sweep, logs, args) if todo else []
    wall = time.time() - started
    manifest = json.loads((output / "sweep.json").read_text())
    manifest["invocations"][-1].update({"wall-seconds": wall, "failed": [r["name"] for r in results if r["status"] != "completed"]})
    (output / "sweep.json").write_text(json.dumps(manifest, indent=1, default=str))
    failed = [r for r in results if r["status"] != "completed"]
    print(f"[sweep] finished in {fmt_seconds(wall)}: {len(results) - len(failed)} completed, {len(failed)} failed, {skipped} skipped", flush=True)
    if not args.no_report:
        from launcher.report import write_report

        paths = write_report(output)
        print(f"[sweep] report: {paths['markdown']}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
