"""Library path of FALE's iterative regression baselines, and the comparison's robust metric and plot.

Used by ``benchmarks/fale_benchmark.py``. :func:`baseline_rows` runs a baseline strategy's query
rounds in process exactly as the app runs them (``tests/test_fale_benchmark_path.py`` checks the
selected ids and the trained model against ``run_inprocess``):

* initial labels as ``ClientSession.ensure_initial_labels``;
* per query and client the strategy's own selection round (captured from ``strategy.query`` with a
  recording phase, so the selector and its parameters are the strategy's), a ``PoolContext`` built
  as ``client_app.actions.select`` builds it (pool in data order, labelled set in ledger order,
  ``rng = default_rng([seed, pid, cycle, 1])``, ``budget_for``), and ``query.run_selection``.

Not simulated: the FedAvg training between queries. The baselines' kernels on FALE's single-layer
linear model are the gradient features ``[x, 1]``, which do not depend on the weights (LoGo-BAIT's
local-only features are ``x``), so the selections are the same with any linear model; the test
checks that too. The model is trained only at the checkpoints (``fedavg_linear`` in
``fale_benchmark.py``, seeded as the app's cycle), which is what makes 100 queries per repeat
affordable on a CPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fal_shared.config import RunConfig
from fal_shared.experiment_data import ClientData
from fal_shared.models import build_model
from fal_shared.training import predict
from query import PoolContext, get_selector, run_selection
from query.models import ModelBank
from strategies import create_strategy

__all__ = ["baseline_rows", "curves_png", "initial_rows", "median_squared_error", "selection_round"]


def initial_rows(cfg: RunConfig, part: ClientData, pid: int) -> np.ndarray:
    """Rows of ``part`` labelled before the first query, as ``ClientSession.ensure_initial_labels`` buys them."""
    n = len(part.ids)
    count = cfg.initial_count(n)
    rng = np.random.default_rng([cfg.seed, pid, 0])
    return np.sort(rng.choice(n, size=count, replace=False)) if count else np.zeros(0, np.int64)


class _RecordingPhase:
    """A query phase that only records the selection round a strategy asks for."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def select(self, selector: str, params: Mapping[str, Any] | None = None, **_: Any) -> dict:
        self.calls.append((selector, dict(params or {})))
        return {}


def selection_round(cfg: RunConfig) -> tuple[str, dict[str, Any]]:
    """The selector and the parameters ``strategy.query`` sends in its (single) selection round."""
    phase = _RecordingPhase(cfg)
    create_strategy(cfg).query(phase)  # type: ignore[arg-type]
    if len(phase.calls) != 1:
        raise ValueError(f"strategy {cfg.strategy!r} is not a single selection round; no library path for it")
    return phase.calls[0]


def baseline_rows(cfg: RunConfig, parts: Sequence[ClientData], queries: int) -> list[list[np.ndarray]]:
    """Each client's labelled rows (ledger order) after 0, 1, ..., ``queries`` queries of ``cfg.strategy``."""
    name, params = selection_round(cfg)
    selector = get_selector(name)
    d = parts[0].x.shape[1]
    model = build_model("linear", input_shape=(d,), num_outputs=1, seed=cfg.seed * 1000)
    device = torch.device("cpu")

    def predict_fn(m, x):
        return predict(m, x, batch_size=cfg.score_batch_size, device=device, task="regression")

    rows = [initial_rows(cfg, part, pid) for pid, part in enumerate(parts)]
    history = [[r.copy() for r in rows]]
    for cycle in range(queries):
        for pid, part in enumerate(parts):
            labelled = rows[pid]
            free = np.ones(len(part.ids), dtype=bool)
            free[labelled] = False
            pool = np.flatnonzero(free)
            budget = cfg.budget_for(len(part.ids), len(pool))
            bank = ModelBank({kind: (lambda: model) for kind in ("global", "local", "local-only")}, predict_fn,
                             part.x[pool], part.x[labelled])
            ctx = PoolContext(
                pool_ids=part.ids[pool], labeled_ids=part.ids[labelled],
                labeled_y=part.y[labelled].astype(np.float64), budget=min(budget, len(pool)), num_classes=1,
                rng=np.random.default_rng([cfg.seed, pid, cycle, 1]), models=bank,
                params={**cfg.to_flower(), "cycle": cycle, "budget": budget, **params}, task="regression",
            )
            rows[pid] = np.concatenate([labelled, pool[run_selection(selector, ctx).positions]])
        history.append([r.copy() for r in rows])
    return history


def median_squared_error(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Median over the test rows of the squared error (robust to the few rows far outside the training range)."""
    pred = predict(model, x, batch_size=4096, device=torch.device("cpu"), task="regression", with_features=False)
    return float(np.median((pred.outputs.astype(np.float64) - y) ** 2))


def curves_png(path: str, budgets: Sequence[int], results: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]) -> None:
    """MSE and median squared error vs labels, mean +- std over repeats: one row per dataset, one column per metric.

    ``results[dataset][metric][method]`` is a ``(checkpoints, repeats)`` array.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(results)
    metrics = list(next(iter(results.values())))
    fig, axes = plt.subplots(len(datasets), len(metrics), figsize=(5.2 * len(metrics), 3.4 * len(datasets)), squeeze=False)
    for i, dataset in enumerate(datasets):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            for method, values in results[dataset][metric].items():
                mean, std = values.mean(axis=1), values.std(axis=1)
                ax.errorbar(budgets, mean, yerr=std, label=method, capsize=2, linewidth=1.2,
                            linestyle="-" if method.startswith("fale") else "--")
            ax.set_title(f"{dataset}: test {metric}", fontsize=10)
            ax.set_xlabel("labels queried")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=72)
    plt.close(fig)
