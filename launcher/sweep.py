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
so nothing is bought twice). Every run logs to ``<output>/logs/<run>.log``. At
the end the report (``fal-report``) is written to ``<output>/report``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fal_shared.config import ConfigError, RunConfig, toml_value
from launcher.sweep_spec import RunSpec, Sweep, read_sweep

__all__ = ["main", "execute_run", "run_status"]

REPO_ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ one run
@contextmanager
def _output_to(log_path: Path):
    """Send this process's stdout/stderr (file descriptors, so C and Flower output too) to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def execute_run(config: dict[str, Any], runtime: str, log_path: str, timeout: float) -> dict[str, Any]:
    """Run one experiment in this process (a Ray or pool worker); never raises.

    Returns ``{"name", "status", "error", "seconds"}``. Writes ``<log>.started``
    first so the driver can count running tasks.
    """
    log = Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.with_suffix(".started").write_text(str(time.time()))
    start = time.time()
    status, error = "failed", ""
    try:
        with _output_to(log):
            print(f"[sweep] run {config['run-name']} on {platform.node()} (pid {os.getpid()}), runtime {runtime}", flush=True)
            if runtime == "inprocess":
                import torch

                from server_app.inprocess import run_inprocess

                torch.set_num_threads(int(config.get("client-threads", 1)))
                result = run_inprocess(dict(config))
                status, error = result.get("status", "failed"), result.get("error", "") or ""
            else:
                status, error = _run_simulation(config, log.parent / f"{config['run-name']}.toml", timeout)
    except BaseException as err:  # noqa: BLE001 - a run's crash is reported, the sweep goes on
        status, error = "failed", f"{type(err).__name__}: {err}"
        if isinstance(err, KeyboardInterrupt):
            raise
    return {"name": config["run-name"], "status": status, "error": error, "seconds": time.time() - start}


def _run_simulation(config: dict[str, Any], config_file: Path, timeout: float) -> tuple[str, str]:
    """Flower's simulation runtime through ``fal-simulate`` (its own SuperLink and Ray instance)."""
    config_file.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in config.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # its own Ray, not the sweep's
    proc = subprocess.run(
        [sys.executable, "-m", "launcher.simulate", "--app", str(REPO_ROOT), "--config", str(config_file),
         "--timeout", str(timeout)],
        cwd=REPO_ROOT, env=env, stdout=sys.stdout, stderr=sys.stderr, check=False,
    )
    status, error = run_status(Path(config["output-dir"]) / config["run-name"] / "results.json")
    if proc.returncode != 0 and status == "completed":
        return "failed", f"fal-simulate exited with {proc.returncode}"
    return status, error or (f"fal-simulate exited with {proc.returncode}" if proc.returncode else "")


def run_status(results: Path) -> tuple[str, str]:
    """(status, error) of a results file; ``missing`` when there is none."""
    try:
        data = json.loads(results.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return "missing", ""
    return str(data.get("status", "missing")), str(data.get("error") or "")


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
    if path.exists():  # keep the history of invocations (wall times) across resumes
        old = json.loads(path.read_text())
        manifest["invocations"] = old.get("invocations", []) + manifest.get("invocations", [])
    path.write_text(json.dumps(manifest, indent=1, default=str))


class Progress:
    """One line per change: done, running, failed, ETA."""

    def __init__(self, total: int, skipped: int, logs: Path, parallel: int) -> None:
        self.total, self.skipped, self.logs, self.parallel = total, skipped, logs, max(1, parallel)
        self.done, self.failed, self.durations = 0, 0, []
        self.names: set[str] = set()
        self.last = ""

    def finished(self, result: dict[str, Any]) -> None:
        self.durations.append(result["seconds"])
        if result["status"] == "completed":
            self.done += 1
        else:
            self.failed += 1
            print(f"[sweep] FAILED {result['name']}: {result['error'] or result['status']} "
                  f"(log: {self.logs / (result['name'] + '.log')})", flush=True)

    def show(self, force: bool = False) -> None:
        started = sum(1 for n in self.names if (self.logs / f"{n}.started").exists())
        running = max(0, started - self.done - self.failed)
        left = self.total - self.skipped - self.done - self.failed
        eta = ""
        if self.durations and left:
            mean = sum(self.durations) / len(self.durations)
            eta = f", ETA {_fmt(mean * left / min(self.parallel, left))}"
        line = (f"[sweep] {self.skipped + self.done}/{self.total} done ({self.skipped} skipped), "
                f"{running} running, {self.failed} failed, {left} left{eta}")
        if force or line != self.last:
            print(line, flush=True)
            self.last = line


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _run_with_ray(todo: list[RunSpec], sweep: Sweep, logs: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    import ray

    init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if args.address:
        init["address"] = args.address
    else:
        init.update(num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    ray.init(**init)
    try:
        resources = ray.cluster_resources()
        s = sweep.settings
        parallel = int(resources.get("CPU", 1) // s.cpus_per_run)
        if s.gpus_per_run > 0:
            if resources.get("GPU", 0) < s.gpus_per_run:
                raise ConfigError(f"gpus-per-run={s.gpus_per_run} but the Ray cluster has {resources.get('GPU', 0)} GPU(s)")
            parallel = min(parallel, int(resources["GPU"] / s.gpus_per_run))
        print(f"[sweep] Ray: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; "
              f"{parallel} run(s) at a time", flush=True)
        task = ray.remote(execute_run).options(num_cpus=s.cpus_per_run, num_gpus=s.gpus_per_run, max_retries=0)
        refs = {task.remote(r.config, s.runtime, str(logs / f"{r.name}.log"), s.timeout_per_run): r for r in todo}
        progress = Progress(len(sweep.runs), len(sweep.runs) - len(todo), logs, parallel)
        progress.names = {r.name for r in todo}
        results, pending = [], list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=args.progress_seconds)
            for ref in ready:
                try:
                    result = ray.get(ref)
                except Exception as err:  # noqa: BLE001 - the worker died (out of memory, killed)
                    result = {"name": refs[ref].name, "status": "failed", "error": f"{type(err).__name__}: {err}", "seconds": 0.0}
                progress.finished(result)
                results.append(result)
            for ref in list(pending):  # runs past their time limit are stopped
                started = logs / f"{refs[ref].name}.started"
                if started.exists() and time.time() - float(started.read_text() or 0) > s.timeout_per_run:
                    ray.cancel(ref, force=True)
            progress.show()
        return results
    finally:
        ray.shutdown()


def _run_with_processes(todo: list[RunSpec], sweep: Sweep, logs: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Without Ray (e.g. a machine where it cannot be installed): a pool of --num-cpus/cpus-per-run processes."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    s = sweep.settings
    parallel = max(1, int((args.num_cpus or os.cpu_count() or 1) // s.cpus_per_run))
    print(f"[sweep] process pool: {parallel} run(s) at a time", flush=True)
    progress = Progress(len(sweep.runs), len(sweep.runs) - len(todo), logs, parallel)
    progress.names = {r.name for r in todo}
    results = []
    with ProcessPoolExecutor(max_workers=parallel, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(execute_run, r.config, s.runtime, str(logs / f"{r.name}.log"), s.timeout_per_run): r for r in todo}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=args.progress_seconds, return_when=FIRST_COMPLETED)
            for fut in done:
                try:
                    result = fut.result()
                except Exception as err:  # noqa: BLE001
                    result = {"name": futures[fut].name, "status": "failed", "error": f"{type(err).__name__}: {err}", "seconds": 0.0}
                progress.finished(result)
                results.append(result)
            progress.show()
    return results


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
    started = time.time()
    try:
        sweep = read_sweep(args.sweep)
        if args.runtime:
            sweep.settings.runtime = args.runtime
        output = Path(args.output or Path.home() / "fal-results" / "sweeps" / sweep.name).expanduser().resolve()
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
    _write_manifest(sweep, output, {"invocations": [{"started": started, "to-run": len(todo), "skipped": skipped}]})
    backend = _run_with_ray if args.scheduler == "ray" else _run_with_processes
    results = backend(todo, sweep, logs, args) if todo else []
    wall = time.time() - started
    manifest = json.loads((output / "sweep.json").read_text())
    manifest["invocations"][-1].update({"wall-seconds": wall, "failed": [r["name"] for r in results if r["status"] != "completed"]})
    (output / "sweep.json").write_text(json.dumps(manifest, indent=1, default=str))
    failed = [r for r in results if r["status"] != "completed"]
    print(f"[sweep] finished in {_fmt(wall)}: {len(results) - len(failed)} completed, {len(failed)} failed, {skipped} skipped", flush=True)
    if not args.no_report:
        from launcher.report import write_report

        paths = write_report(output)
        print(f"[sweep] report: {paths['markdown']}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
