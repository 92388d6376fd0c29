"""One run of a sweep, in a Ray worker or a pool process: ``execute_run`` (the in-process runtime, or ``fal-simulate``)."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fal_shared.config import toml_value
from launcher.stopping import PARENT_VARIABLE

__all__ = ["execute_run", "run_status"]

REPO_ROOT = Path(__file__).resolve().parents[1]


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


def execute_run(config: dict[str, Any], runtime: str, log_path: str, timeout: float, cpus: float = 1.0) -> dict[str, Any]:
    """Run one experiment in this process (a Ray or pool worker); never raises.

    ``cpus``: the run's share of the machine (``cpus-per-run``): a ``fal-simulate`` run gives Ray
    that many CPUs for its ClientApps. Returns ``{"name", "status", "error", "seconds", "node"}`` (``node``: where it
    ran, see :func:`_this_node`). Writes ``<log>.started`` first so the driver can
    count running tasks.
    """
    log = Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.with_suffix(".started").write_text(str(time.time()))
    start = time.time()
    status, error = "failed", ""
    try:
        with _output_to(log):
            node = _this_node()
            print(f"[sweep] run {config['run-name']} on {platform.node()} (pid {os.getpid()}"
                  + (f", Ray node {node['ray-node-id']}" if "ray-node-id" in node else "") + f"), runtime {runtime}", flush=True)
            if runtime == "inprocess":
                import torch

                from server_app.inprocess import run_inprocess

                torch.set_num_threads(int(config.get("client-threads", 1)))
                result = run_inprocess(dict(config))
                status, error = result.get("status", "failed"), result.get("error", "") or ""
            else:
                status, error = _run_simulation(config, log.parent / f"{config['run-name']}.toml", timeout, cpus)
    except BaseException as err:  # noqa: BLE001 - a run's crash is reported, the sweep goes on
        status, error = "failed", f"{type(err).__name__}: {err}"
        if isinstance(err, KeyboardInterrupt):
            raise
    return {"name": config["run-name"], "status": status, "error": error, "seconds": time.time() - start,
            "node": _this_node()}


def _this_node() -> dict[str, Any]:
    """Where this process runs: the host name, and the Ray node's id in a Ray worker."""
    node: dict[str, Any] = {"host": platform.node()}
    ray = sys.modules.get("ray")  # only a Ray worker has it imported; never import it here
    if ray is not None and ray.is_initialized():
        node["ray-node-id"] = ray.get_runtime_context().get_node_id()
    return node


def _run_simulation(config: dict[str, Any], config_file: Path, timeout: float, cpus: float) -> tuple[str, str]:
    """Flower's simulation runtime through ``fal-simulate`` (its own SuperLink and Ray instance).

    ``fal-simulate`` is stopped with SIGTERM, not SIGKILL, when this task is interrupted (``ray.cancel``
    raises KeyboardInterrupt here), so it stops every process of its run and marks it stopped; it is
    also told to stop its run if this process dies without warning (``FAL_STOP_WITH_PARENT``).
    """
    config_file.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in config.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # its own Ray, not the sweep's
    env[PARENT_VARIABLE] = str(os.getpid())
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher.simulate", "--app", str(REPO_ROOT), "--config", str(config_file),
         "--timeout", str(timeout), "--num-cpus", str(max(1, math.floor(cpus)))],
        cwd=REPO_ROOT, env=env, stdout=sys.stdout, stderr=sys.stderr,
    )
    try:
        while proc.poll() is None:  # not a blocking wait: Ray's cancel (a KeyboardInterrupt) must get through
            time.sleep(0.2)
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
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
