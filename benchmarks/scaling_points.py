"""The measured points of ``benchmarks/scaling.py``; each runs in a process of its own.

A point is a dict (``axis`` plus its parameters); :func:`run_point` runs it and returns what it
measured. ``scaling.py`` starts a fresh Python process per point so that its peak resident memory
(``ru_maxrss``, which covers torch's and numpy's buffers, unlike ``tracemalloc``) and its CPU seconds
belong to that point alone.

Axes here:

* ``pool``: the query phase of one classification selector on a pool of ``n`` samples (MNIST images
  repeated to ``n``) with a fixed budget, as a client runs it: the real :class:`query.models.ModelBank`
  computing the models' outputs lazily, and :func:`query.run_selection`.
* ``fedsvd`` / ``fale``: :func:`fedsvd.federated_svd` and :func:`fedsvd.fale_fit` on ``n`` synthetic
  rows over ``k`` clients, every role in this process.
* ``clients-inprocess``, ``clients-simulation``, ``overhead``: runs at ``k`` clients and the
  per-message client overhead (``benchmarks/scaling_clients.py``).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script

__all__ = ["Clock", "POOL_SELECTORS", "run_point"]

#: The classification selectors of the issue (the query phase of every one of them).
POOL_SELECTORS = ("entropy", "coreset", "badge", "noise-stability", "logo", "ahfal", "kafal", "feal", "fairfal")
NUM_CLASSES = 10
SERVER_STATISTICS = ("ahfal", "fairfal")  # selectors that need a statistics round's result (their contract_params)
LABELED = 1000  # labels the client holds (coreset and FairFAL anchors, AHFAL/KAFAL class counts)


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident memory of this process, MiB, from /proc (VmRSS, VmHWM)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process (``/proc/self/clear_refs`` 5); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Clock:
    """Wall and CPU seconds of a block."""

    def __enter__(self) -> "Clock":
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w0, time.process_time() - self.c0


# ---------------------------------------------------------------------------------------------- pool


def _models(x: np.ndarray, y: np.ndarray, normalize, seed: int):
    """global / local / local-only MLPs, briefly trained so their outputs look like a real cycle's."""
    import torch

    from fal_shared.models import build_model
    from fal_shared.training import TrainSettings, train_model

    cpu = torch.device("cpu")
    settings = TrainSettings(epochs=1, batch_size=64, lr=0.05)
    rng = np.random.default_rng(seed)
    shared = rng.choice(len(y), size=3000, replace=False)
    skewed = np.flatnonzero(y < 5)[:1500]  # a client with half the classes
    models = {}
    for kind, rows, s in (("global", shared, 1), ("local", skewed, 2), ("local-only", shared[:LABELED], 3)):
        model = build_model("mlp", input_shape=tuple(x.shape[1:]), num_outputs=NUM_CLASSES, seed=seed + s)
        train_model(model, x[rows], y[rows], settings, seed=seed + s, device=cpu, normalize=normalize)
        models[kind] = model
    return models


def pool_point(selector: str, n: int, budget: int, data_root: str, seed: int = 0,
               params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Query phase of ``selector`` on ``n`` pool samples (MNIST repeated), budget ``budget``."""
    import torch

    from fal_shared.config import RunConfig
    from fal_shared.data.classification import load_classification
    from fal_shared.training import predict
    from query import PoolContext, get_selector, run_selection
    from query.models import ModelBank

    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    train = load_classification("mnist", "train", data_root)
    normalize = (train.scale, train.mean, train.std)
    rng = np.random.default_rng(seed)
    labeled = rng.choice(len(train.y), size=LABELED, replace=False)
    x_pool = np.resize(train.x, (n, *train.x.shape[1:]))  # MNIST repeated to n (np.resize tiles)
    x_labeled = np.ascontiguousarray(train.x[labeled])
    models = _models(train.x, train.y, normalize, seed)
    inference = {"wall": 0.0, "cpu": 0.0, "samples": 0}

    def predict_fn(model, x):
        with Clock() as c:
            out = predict(model, x, batch_size=1024, device=torch.device("cpu"), normalize=normalize)
        inference["wall"] += c.wall
        inference["cpu"] += c.cpu
        inference["samples"] += len(x)
        return out

    bank = ModelBank({k: (lambda m=m: m) for k, m in models.items()}, predict_fn, x_pool, x_labeled)
    ctx = PoolContext(
        pool_ids=np.arange(n, dtype=np.int64), labeled_ids=labeled.astype(np.int64), labeled_y=train.y[labeled],
        budget=budget, num_classes=NUM_CLASSES, rng=np.random.default_rng([seed, 1]), models=bank,
        params={**RunConfig().to_flower(), **(params or {})},
    )
    impl = get_selector(selector)
    if selector in SERVER_STATISTICS:  # what the server would send: AHFAL's C_low, FairFAL's g-bar
        ctx.params = {**type(impl).contract_params(ctx), **ctx.params}
    rss_before, _ = _rss_mib()
    peak_reset = _reset_peak()
    with Clock() as c:
        outcome = run_selection(impl, ctx)
    rss_after, peak = _rss_mib()
    return {
        "wall-seconds": c.wall, "cpu-seconds": c.cpu,
        "inference-wall-seconds": inference["wall"], "inference-cpu-seconds": inference["cpu"],
        "inference-samples": inference["samples"],
        "selection-cpu-seconds": c.cpu - inference["cpu"],
        "rss-before-mib": rss_before, "peak-rss-mib": peak if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak-over-before-mib": (peak - rss_before) if peak_reset else None,
        "pool-input-mib": x_pool.nbytes / 2**20, "picks": int(len(outcome.positions)),
        "timings": outcome.timings, "diagnostics": {k: v for k, v in outcome.diagnostics.items() if isinstance(v, (int, float, str, bool))},
    }


# -------------------------------------------------------------------------------------- FedSVD, FALE


def _synthetic_rows(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * np.linspace(3.0, 0.1, d)  # distinct singular values


def fedsvd_point(n: int, d: int, k: int, block_size: int, seed: int = 0) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    from fedsvd import federated_svd

    threadpool_limits(1)
    x = _synthetic_rows(n, d, seed)
    parts = np.array_split(x, k, axis=0)
    rss_before, _ = _rss_mib()
    reset = _reset_peak()
    with Clock() as c:
        u_parts, s, vt = federated_svd(parts, block_size=block_size, seed=seed)
    _, peak = _rss_mib()
    s_np = np.linalg.svd(x, compute_uv=False)
    return {"wall-seconds": c.wall, "cpu-seconds": c.cpu, "peak-rss-mib": peak if reset else None,
            "peak-over-before-mib": (peak - rss_before) if reset else None, "input-mib": x.nbytes / 2**20,
            "max-relative-singular-value-error": float(np.max(np.abs(s - s_np) / s_np))}


def fale_point(n: int, d: int, k: int, block_size: int, n_query: int, seed: int = 0) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    from fedsvd import fale_fit

    threadpool_limits(1)
    x = _synthetic_rows(n, d, seed)
    theta = np.random.default_rng(seed + 1).standard_normal(d)
    y = x @ theta + 0.1 * np.random.default_rng(seed + 2).standard_normal(n)
    parts, ys = np.array_split(x, k, axis=0), np.array_split(y, k)
    rss_before, _ = _rss_mib()
    reset = _reset_peak()
    with Clock() as c:
        result = fale_fit(parts, ys, n_query, seed=seed, block_size=block_size)
    _, peak = _rss_mib()
    return {"wall-seconds": c.wall, "cpu-seconds": c.cpu, "peak-rss-mib": peak if reset else None,
            "peak-over-before-mib": (peak - rss_before) if reset else None, "input-mib": x.nbytes / 2**20,
            "selected": len(result.selected), "draws": int(result.n_draws),
            "theta-relative-error": float(np.linalg.norm(result.theta - theta) / np.linalg.norm(theta))}


# --------------------------------------------------------------------------------------------- entry


def run_point(point: dict[str, Any]) -> dict[str, Any]:
    p = dict(point)
    axis = p.pop("axis")
    if axis in ("pool", "budget"):
        return pool_point(p["selector"], p["n"], p["budget"], p["data-root"], params=p.get("params"))
    if axis == "fedsvd":
        return fedsvd_point(p["n"], p["d"], p["k"], p["block-size"])
    if axis == "fale":
        return fale_point(p["n"], p["d"], p["k"], p["block-size"], p["n-query"])
    from benchmarks import scaling_clients as clients  # imports this module: only after it is loaded

    if axis == "clients-inprocess":
        return clients.inprocess_clients_point(p["k"], p["data-root"], p.get("rounds", 2), p.get("cycles", 1))
    if axis == "clients-simulation":
        return clients.simulation_clients_point(p["k"], p["data-root"], p.get("rounds", 2), p.get("cycles", 1))
    if axis == "overhead":
        return clients.client_overhead(p["k"], dataset="mnist", data_root=p["data-root"])
    if axis == "bn":
        return clients.bn_point(p["samples"], p["seed"], p["data-root"], rounds=p.get("rounds", 5))
    raise ValueError(f"unknown axis {axis!r}")


if __name__ == "__main__":  # python benchmarks/scaling_points.py '<point as JSON>'
    print(json.dumps(run_point(json.loads(sys.argv[1]))))
