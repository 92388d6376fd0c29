"""How a sweep's runs are scheduled: Ray tasks (a local instance or a cluster) or a local process pool.

Both record each run's status, seconds and node in ``sweep.json`` as results
come in, and stop their runs when the sweep is stopped (:class:`Stopped`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from fal_shared.config import ConfigError
from launcher.stopping import SCOPE_VARIABLE, Stopped, reclaim_signals
from launcher.sweep_run import execute_run
from launcher.sweep_spec import RunSpec, Sweep

__all__ = ["RUN_RECORD_KEYS", "Progress", "run_with_ray", "run_with_processes", "fmt_seconds"]


#: what sweep.json records of a run's last execution
RUN_RECORD_KEYS = ("status", "error", "seconds", "node")


def _record_results(output: Path, results: list[dict[str, Any]], nodes: dict[str, dict[str, Any]]) -> None:
    """Write each run's last status, seconds and node (with the Ray node's address and resources) into sweep.json."""
    path = output / "sweep.json"
    manifest = json.loads(path.read_text())
    by_name = {r["name"]: r for r in results}
    for run in manifest["runs"]:
        result = by_name.get(run["name"])
        if result is not None:
            node = dict(result.get("node") or {})
            node.update(nodes.get(node.get("ray-node-id", ""), {}))
            run.update(status=result["status"], error=result["error"], seconds=round(result["seconds"], 2), node=node)
    path.write_text(json.dumps(manifest, indent=1, default=str))


def _ray_nodes(ray) -> dict[str, dict[str, Any]]:
    """Ray node id -> its address and custom resources (the ones ``ray start --resources`` gave it)."""
    standard = ("CPU", "GPU", "memory", "object_store_memory", "accelerator_type")
    out = {}
    for n in ray.nodes():
        custom = {k: v for k, v in n.get("Resources", {}).items()
                  if not k.startswith(standard) and not k.startswith("node:")}
        out[n["NodeID"]] = {"ray-node-ip": n.get("NodeManagerAddress"), "ray-node-resources": custom}
    return out


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
            eta = f", ETA {fmt_seconds(mean * left / min(self.parallel, left))}"
        line = (f"[sweep] {self.skipped + self.done}/{self.total} done ({self.skipped} skipped), "
                f"{running} running, {self.failed} failed, {left} left{eta}")
        if force or line != self.last:
            print(line, flush=True)
            self.last = line


def fmt_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


#: seconds a cancelled run gets to stop its own processes before its Ray worker is killed
STOP_GRACE = 30.0


def _cancel(ray, refs: list, grace: float = STOP_GRACE) -> None:
    """Cancel Ray tasks: a KeyboardInterrupt in each running one first, then, after ``grace`` s, kill its worker.

    Not ``force`` at once: Ray kills a force-cancelled worker's child processes with SIGKILL, so a
    ``fal-simulate`` it started could not stop its own run (its SuperLink, Ray instance and
    ClientApps would be orphaned, its results left "running"). Interrupted, the task sends that
    ``fal-simulate`` SIGTERM and waits for it (``sweep_run``).
    """
    for ref in refs:
        ray.cancel(ref)
    _, left = ray.wait(refs, num_returns=len(refs), timeout=grace) if refs else ([], [])
    for ref in left:
        ray.cancel(ref, force=True)
    if left:
        ray.wait(left, num_returns=len(left), timeout=10)


def run_with_ray(todo: list[RunSpec], sweep: Sweep, logs: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    import ray

    init: dict[str, Any] = {
        "include_dashboard": False, "log_to_driver": False, "configure_logging": False,
        # the sweep's marker in every worker of this job, on every node: the processes of the sweep can be
        # found (grep FAL_RUN_SCOPES /proc/*/environ) on a cluster's machines too (launcher.stopping)
        "runtime_env": {"env_vars": {SCOPE_VARIABLE: os.environ.get(SCOPE_VARIABLE, "")}},
    }
    if args.address:
        init["address"] = args.address
    else:
        init.update(num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    ray.init(**init)
    reclaim_signals()  # ray.init made SIGTERM a sys.exit: the sweep's scope must see it to stop its runs
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
        refs = {task.remote(r.config, s.runtime, str(logs / f"{r.name}.log"), s.timeout_per_run, s.cpus_per_run): r for r in todo}
        progress = Progress(len(sweep.runs), len(sweep.runs) - len(todo), logs, parallel)
        progress.names = {r.name for r in todo}
        results, pending = [], list(refs)
        nodes = _ray_nodes(ray)
        over_time: dict[Any, float] = {}  # runs past timeout-per-run, cancelled: when
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=args.progress_seconds)
                for ref in ready:
                    try:
                        result = ray.get(ref)
                    except Exception as err:  # noqa: BLE001 - the worker died (out of memory, killed)
                        result = {"name": refs[ref].name, "status": "failed", "error": f"{type(err).__name__}: {err}",
                                  "seconds": 0.0}
                    progress.finished(result)
                    results.append(result)
                if ready:
                    if any(r.get("node", {}).get("ray-node-id") not in nodes for r in results):
                        nodes = _ray_nodes(ray)  # a node that joined since
                    _record_results(args.output_path, results, nodes)
                for ref in list(pending):  # runs past their time limit are stopped
                    started = logs / f"{refs[ref].name}.started"
                    if ref not in over_time and started.exists() and time.time() - float(started.read_text() or 0) > s.timeout_per_run:
                        over_time[ref] = time.time()
                        ray.cancel(ref)
                    elif ref in over_time and time.time() - over_time[ref] > STOP_GRACE:
                        ray.cancel(ref, force=True)
                progress.show()
        except (Stopped, SystemError) as err:
            # a stop signal inside ray.wait/ray.get comes back as a SystemError caused by Stopped (Ray's
            # signal check in Cython lets through only KeyboardInterrupt and SystemExit as such)
            stop = err if isinstance(err, Stopped) else err.__cause__
            if not isinstance(stop, Stopped):
                raise
            print(f"[sweep] stopping: cancelling {len(pending)} queued or running run(s)", flush=True)
            _cancel(ray, pending)
            raise stop from None
        return results
    finally:
        ray.shutdown()


def run_with_processes(todo: list[RunSpec], sweep: Sweep, logs: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Without Ray (e.g. a machine where it cannot be installed): a pool of --num-cpus/cpus-per-run processes."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    s = sweep.settings
    parallel = max(1, int((args.num_cpus or os.cpu_count() or 1) // s.cpus_per_run))
    print(f"[sweep] process pool: {parallel} run(s) at a time", flush=True)
    progress = Progress(len(sweep.runs), len(sweep.runs) - len(todo), logs, parallel)
    progress.names = {r.name for r in todo}
    results = []
    pool = ProcessPoolExecutor(max_workers=parallel, mp_context=mp.get_context("spawn"))
    try:
        futures = {pool.submit(execute_run, r.config, s.runtime, str(logs / f"{r.name}.log"), s.timeout_per_run, s.cpus_per_run): r for r in todo}
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
            if done:
                _record_results(args.output_path, results, {})
            progress.show()
    except Stopped:  # the pool's processes are stopped with the rest of the sweep (RunScope)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results
