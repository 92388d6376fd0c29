"""The clients axis of ``benchmarks/scaling.py``: whole runs at K clients, and the per-message overhead.

Three kinds of point, each run in a process of its own by ``scaling.py``:

* ``clients-inprocess``: a whole run of ``K`` clients in the in-process runtime
  (``server_app.inprocess.run_inprocess``: the real ServerApp loop and ClientApp, no Ray);
* ``clients-simulation``: the same run under ``fal-simulate`` (``flwr run`` in Flower's simulation
  runtime: a SuperLink, ``flwr-simulation``, Ray actors). Peak memory is the largest sum, over the
  run's processes, of their proportional set size (PSS: a page shared by ``m`` processes counts
  ``1/m`` in each, so torch's libraries are not counted once per Ray worker), sampled every 0.5 s
  (psutil); CPU seconds are summed over them;
* ``overhead``: the ClientApp's CPU overhead per message at ``K`` clients
  (:func:`client_overhead`), without Flower's transport;
* ``bn``: the BatchNorm statistics round's share of training and the accuracy after it, for a
  ``bn-statistics-samples`` value and a seed (:func:`bn_point`).

The run (:func:`clients_config`): full MNIST split iid over ``K`` clients, 10 % labels, entropy,
``rounds`` FedAvg rounds x 1 local epoch, ``cycles`` cycles (a cycle = its rounds, the BatchNorm
statistics round, the evaluation and the query).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.scaling_points import Clock

__all__ = ["bn_point", "client_overhead", "clients_config", "inprocess_clients_point", "simulation_clients_point"]


def clients_config(k: int, data_root: str, out: str, *, rounds: int = 2, cycles: int = 1) -> dict[str, Any]:
    """The run of the clients axis: full MNIST split iid over ``k`` clients, 10 % labels, entropy."""
    return {
        "dataset": "mnist", "data-root": data_root, "strategy": "entropy", "partition": "iid",
        "num-clients": k, "rounds-per-cycle": rounds, "local-epochs": 1, "num-cycles": cycles,
        "output-dir": out + "/out", "state-dir": out + "/state", "run-name": f"scaling-k{k}",
        "reply-timeout-seconds": 7200.0,
    }


def _per_message(cycle: dict[str, Any], kind: str, seconds_key: str) -> dict[str, float] | None:
    """Wall seconds of a round kind per message, the clients' compute per message, and the difference (ms)."""
    messages = cycle.get("traffic", {}).get(kind, {}).get("messages-sent", 0)
    compute = cycle.get("summaries", {}).get("client-compute-seconds", {}).get(kind, {}).get("sum")
    wall = cycle.get("seconds", {}).get(seconds_key)
    if not messages or compute is None or wall is None:
        return None
    return {"messages": messages, "wall-ms": 1000 * wall / messages, "compute-ms": 1000 * compute / messages,
            "wall-minus-compute-ms": 1000 * (wall - compute) / messages}


def run_summary(results: dict[str, Any]) -> dict[str, Any]:
    """What a clients point reports of a run's results.json: per cycle its seconds, traffic and summaries."""
    cycles = []
    for cy in results.get("cycles", []):
        cycles.append({
            "seconds": cy.get("seconds", {}), "traffic": cy.get("traffic", {}),
            "summaries": cy.get("summaries", {}), "accuracy": cy.get("evaluation", {}).get("accuracy"),
            "per-message": {kind: _per_message(cy, kind, key) for kind, key in
                            (("train", "train"), ("query.bn_stats", "bn-statistics"), ("query.select", "query"))},
        })
    return {"status": results.get("status"), "run-wall-seconds": results.get("totals", {}).get("wall-seconds"),
            "cycles": cycles, "traffic": results.get("totals", {}).get("traffic", {})}


def inprocess_clients_point(k: int, data_root: str, rounds: int = 2, cycles: int = 1) -> dict[str, Any]:
    from server_app.inprocess import run_inprocess

    out = tempfile.mkdtemp(prefix=f"fal-scaling-k{k}-")
    cfg = clients_config(k, data_root, out, rounds=rounds, cycles=cycles)
    with Clock() as c:
        results = run_inprocess(cfg)
    return {"wall-seconds": c.wall, "cpu-seconds": c.cpu,
            "peak-rss-mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "results-bytes": _size(Path(cfg["output-dir"]) / cfg["run-name"] / "results.json"), **run_summary(results)}


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def bn_point(samples: int, seed: int, data_root: str, *, rounds: int = 5, model: str = "resnet8") -> dict[str, Any]:
    """The issue's BN setting, in-process: 10 clients, full MNIST, ResNet-8, 10 % labels, ``rounds`` x 1 epoch.

    One cycle (``num-cycles = 0``: the initial labels' FedAvg rounds, the BatchNorm statistics round, the
    evaluation), strategy ``random``, ``bn-statistics-samples = samples`` (0: each client's whole
    partition, the behaviour before the setting existed). Besides wall seconds, the CPU seconds of this
    process (everything runs in it; torch on one thread) inside the FedAvg rounds and inside the
    statistics round, which other jobs on a shared machine do not inflate.
    """
    from server_app.experiment import Experiment
    from server_app.inprocess import run_inprocess
    from server_app.rounds import CycleFedAvg

    cpu = {"train": 0.0, "bn-statistics": 0.0}

    def timed(cls: type, name: str, key: str) -> None:
        real = getattr(cls, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            c0 = time.process_time()
            try:
                return real(*args, **kwargs)
            finally:
                cpu[key] += time.process_time() - c0

        setattr(cls, name, wrapper)

    timed(CycleFedAvg, "start", "train")
    timed(Experiment, "recompute_batchnorm", "bn-statistics")
    out = tempfile.mkdtemp(prefix=f"fal-scaling-bn{samples}-s{seed}-")
    cfg = {
        "dataset": "mnist", "data-root": data_root, "model": model, "strategy": "random", "partition": "iid",
        "num-clients": 10, "rounds-per-cycle": rounds, "local-epochs": 1, "num-cycles": 0, "seed": seed,
        "bn-statistics": "recompute", "bn-statistics-samples": samples,
        "output-dir": out + "/out", "state-dir": out + "/state", "run-name": f"bn{samples}-s{seed}",
    }
    with Clock() as c:
        results = run_inprocess(cfg)
    cycle = results["cycles"][0]
    seconds = cycle["seconds"]
    return {
        "wall-seconds": c.wall, "cpu-seconds": c.cpu, "status": results["status"],
        "accuracy": cycle["evaluation"]["accuracy"], "seconds": seconds, "phase-cpu-seconds": cpu,
        "bn-share-of-training": cpu["bn-statistics"] / cpu["train"],
        "bn-share-of-training-wall": seconds["bn-statistics"] / seconds["train"],
        "client-compute-seconds": cycle.get("summaries", {}).get("client-compute-seconds", {}),
    }


def _toml_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value).lower() if isinstance(value, bool) else repr(value)


def simulation_clients_point(k: int, data_root: str, rounds: int = 2, cycles: int = 1,
                             cpus_per_client: float = 1.0, interval: float = 0.5) -> dict[str, Any]:
    """The run under ``fal-simulate``, its process tree sampled for memory (PSS) and CPU seconds."""
    import psutil  # Ray's dependency; only this point needs it

    out = tempfile.mkdtemp(prefix=f"fal-scaling-sim-k{k}-")
    cfg = clients_config(k, data_root, out, rounds=rounds, cycles=cycles)
    toml = Path(out) / "run.toml"
    toml.write_text("".join(f"{key} = {_toml_value(v)}\n" for key, v in cfg.items()))
    launcher = Path(sys.executable).parent / "fal-simulate"
    log = Path(out) / "fal-simulate.log"
    peak_pss = peak_rss = 0.0
    cpu: dict[int, float] = {}
    processes: dict[int, psutil.Process] = {}
    w0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(launcher), "--config", str(toml), "--cpus-per-client", str(cpus_per_client)],
                                stdout=fh, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            pss = rss = 0.0
            for p in tree:
                p = processes.setdefault(p.pid, p)  # one Process object per pid keeps cpu_times cheap
                try:
                    mem = p.memory_full_info()
                    times = p.cpu_times()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                pss += getattr(mem, "pss", mem.rss)
                rss += mem.rss
                cpu[p.pid] = times.user + times.system
            peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
            time.sleep(interval)
    wall = time.perf_counter() - w0
    folder = Path(cfg["output-dir"]) / cfg["run-name"]
    try:
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        results = {"status": f"no results (fal-simulate exit {proc.returncode}); log {log}"}
    lines = log.read_text(errors="replace").splitlines()
    fal_lines = [line for line in lines if line.startswith("[FAL]")]
    return {"wall-seconds": wall, "cpu-seconds": sum(cpu.values()), "exit-code": proc.returncode,
            "peak-pss-mib": peak_pss / 2**20, "peak-rss-sum-mib": peak_rss / 2**20, "processes-seen": len(cpu),
            "log": str(log), "log-lines": len(lines), "fal-log-lines": len(fal_lines),
            "longest-fal-log-line": max(map(len, fal_lines), default=0), "fal-log-sample": fal_lines[:12],
            "results-bytes": _size(folder / "results.json"), **run_summary(results)}


# ------------------------------------------------------------------------------ per-message overhead


def _message(message_type: str, node: int, config: dict[str, Any], arrays=None):
    from flwr.app import ConfigRecord, Message, RecordDict

    content = {"config": ConfigRecord(config)}
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=RecordDict(content), dst_node_id=node, message_type=message_type)


def _summary(values: list[float]) -> dict[str, float]:
    ms = sorted(1000.0 * v for v in values)
    return {"count": len(ms), "median-ms": statistics.median(ms), "mean-ms": statistics.fmean(ms),
            "p90-ms": ms[int(0.9 * (len(ms) - 1))], "max-ms": ms[-1]}


def client_overhead(num_clients: int, *, dataset: str, data_root: str, model: str = "auto",
                    train_subset: int = 0, seed: int = 0) -> dict[str, Any]:
    """CPU overhead per message (ms) of ``query.labels`` and ``train`` at ``num_clients`` clients.

    Builds the in-process runtime's contexts for the clients (the real ClientApp, real Flower
    messages, one Context per node), buys the initial labels with a ``query.setup`` round, then
    sends, round robin over the clients so that every per-process cache sees ``K`` partitions as a
    Ray actor serving ``K`` clients does:

    * ``query.labels`` to every client: a message with no work (the ground-truth oracle has nothing
      pending), so its whole CPU time is overhead;
    * ``train`` (one local epoch on the client's labels) to every client; its overhead is the CPU
      time of the call minus that spent inside :func:`fal_shared.training.train_model` (timed by
      wrapping the function the handler calls).

    CPU seconds (``time.process_time``; torch runs one thread), so other jobs on the machine do not
    inflate the figures. Flower's transport (Ray, gRPC) is not included: see ``clients-simulation``.
    """
    import client_app.actions as actions
    from client_app.app import app as client_app
    from fal_shared.config import RunConfig
    from fal_shared.experiment_data import client_data
    from fal_shared.models import build_model
    from flwr.app import ArrayRecord
    from server_app.inprocess import InProcessGrid

    tmp = tempfile.mkdtemp(prefix="fal-overhead-")
    overrides = {
        "dataset": dataset, "data-root": data_root, "model": model, "num-clients": num_clients,
        "train-subset-size": train_subset, "partition": "iid", "local-epochs": 1, "seed": seed,
        "state-dir": tmp + "/state", "output-dir": tmp + "/out", "run-name": "overhead",
    }
    run_config = {**RunConfig().to_flower(), **overrides}
    nodes = [{"partition-id": i, "num-partitions": num_clients} for i in range(num_clients)]
    grid = InProcessGrid(client_app, run_config, nodes)
    cfg = RunConfig.model_validate(run_config)

    def call(message_type: str, node: int, config: dict[str, Any], arrays=None) -> tuple[float, Any]:
        msg = _message(message_type, node, {"run-name": "overhead", **config}, arrays)
        c0 = time.process_time()
        reply = client_app(msg, grid.contexts[node])
        cpu = time.process_time() - c0
        if reply.has_error():
            raise RuntimeError(f"{message_type} to node {node}: {reply.error.reason}")
        return cpu, reply

    node_ids = list(grid.contexts)
    t0 = time.perf_counter()
    call("query.setup", node_ids[0], {})  # imports, dataset load: paid once per process
    first_setup = time.perf_counter() - t0
    for node in node_ids[1:]:
        call("query.setup", node, {})
    data = client_data(cfg, 0, num_clients)
    arrays = ArrayRecord(build_model(cfg.resolved_model(), input_shape=data.input_shape,
                                     num_outputs=data.num_classes, seed=seed).state_dict())

    idle = [call("query.labels", n, {})[0] for n in node_ids]

    inside: list[float] = []
    real_train = actions.train_model

    def timed_train(*args, **kwargs):
        c0 = time.process_time()
        try:
            return real_train(*args, **kwargs)
        finally:
            inside.append(time.process_time() - c0)

    actions.train_model = timed_train
    try:
        train_total = [call("train", n, {"cycle": 0, "server-round": 1, "lr": cfg.lr}, arrays)[0] for n in node_ids]
    finally:
        actions.train_model = real_train
    return {
        "clients": num_clients,
        "model": cfg.resolved_model(),
        "first-message-seconds": first_setup,
        "labels-per-client": cfg.initial_count(len(data.ids)),
        "partition-size": len(data.ids),
        "no-work-message": _summary(idle),
        "train-message-total": _summary(train_total),
        "train-message-training": _summary(inside),
        "train-message-overhead": _summary([t - w for t, w in zip(train_total, inside)]),
    }
