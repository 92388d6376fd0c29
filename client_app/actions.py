"""Client-side handlers: train, evaluate and every ``query.<action>``.

Query actions are registered by name in :data:`QUERY_ACTIONS` with
:func:`query_action`; ``client_app.app`` turns each into a Flower
``@app.query(<name>)`` handler. A method that needs its own message round
(AHFAL's histogram, FairFAL's imbalance statistic, FALE's masked matrices)
adds a function here or in a module of its own imported by ``client_app.app``;
the selection itself lives in ``query/`` (no Flower there).

Every handler receives the message content and a :class:`ClientSession` and
returns the reply content. Every reply carries ``compute-seconds`` so the
server can split wall time into client compute and framework overhead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client_app.session import ClientSession
from fal_shared.registry import Registry
from fal_shared.batchnorm import moment_sums
from fal_shared.objectives import build_objective
from fal_shared.training import DEVICE_CACHE, evaluate, train_model
from fal_shared.wire import config_of, int_list
from query import PoolContext, get_selector, run_selection
from query.models import ModelBank

__all__ = ["QUERY_ACTIONS", "query_action", "handle_train", "handle_evaluate"]

Handler = Callable[[ClientSession, RecordDict], RecordDict]
QUERY_ACTIONS: Registry[Handler] = Registry("query action")


def query_action(name: str) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the handler of ``query.<name>`` messages."""
    if not name.isidentifier():
        raise ValueError(f"query action {name!r} must be a Python identifier (Flower routes query.<action>)")
    return QUERY_ACTIONS.register(name, set_name=False)


def _reply(config: dict, metrics: dict | None = None, **records) -> RecordDict:
    content = RecordDict({"result": ConfigRecord(config), **records})
    if metrics is not None:
        content["metrics"] = MetricRecord(metrics)
    return content


# ---------------------------------------------------------------- train/eval
def handle_train(session: ClientSession, content: RecordDict) -> RecordDict:
    """E local epochs on the labeled set, starting from the received model.

    The loss is the run's local objective (``local-objective``, by default the
    strategy's own; :mod:`fal_shared.objectives`), given what it declares it
    needs: the labeled class counts, the received model as a frozen teacher,
    the round within the cycle, and the unlabeled pool.
    """
    return train_on(session, content, session.labeled())


def train_on(session: ClientSession, content: RecordDict, labeled: tuple, *, main: bool = True) -> RecordDict:
    """:func:`handle_train` on the labeled set ``labeled`` = (ids, x, y).

    ``main=False`` (the campaign's shadow model, a subset of the labels) keeps
    neither the optimiser state nor the local model of the main training.
    """
    start = time.perf_counter()
    cfg = session.cfg
    conf = config_of(content)
    model = session.model_from(content["arrays"])
    _, x, y = labeled
    settings = session.train_settings(epochs=cfg.local_epochs, lr=float(conf.get("lr", cfg.lr)))
    cycle, server_round = int(conf["cycle"]), int(conf["server-round"])
    seed = int(np.random.default_rng(session.query_seed(cycle, server_round)).integers(2**31))
    optimizer_state = session.optimizer_state(cycle, server_round) if main else None
    objective = build_objective(
        cfg.resolved_objective(), cfg, num_classes=session.data.num_classes, task=session.data.task,
        y=y, model=model, server_round=server_round,
    )
    report = train_model(
        model, x, y, settings, seed=seed, device=session.device, normalize=session.data.normalize,
        optimizer_state=optimizer_state, objective=objective,
        unlabeled=session.pool()[1] if objective.uses_unlabeled else None,
    )
    if main:
        session.store_optimizer_state(cycle, report.optimizer_state)
        session.store_local_model(model)
    metrics = {
        "num-examples": len(y),
        "train-loss": float(report.final_loss) if len(y) else 0.0,
        "compute-seconds": time.perf_counter() - start,
    }
    return RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})


def handle_evaluate(session: ClientSession, content: RecordDict) -> RecordDict:
    """Evaluate the received model on the client's share of the test set.

    With ``model-state-key`` in the config, evaluate instead the model this node
    keeps in its node state under that key (a model the server never holds in
    the clear, e.g. FALE's unmasked linear model; :mod:`client_app.node_state`).
    """
    start = time.perf_counter()
    key = str(config_of(content).get("model-state-key", ""))
    if key:
        kept = session.node_state.get_arrays(key)
        if kept is None:
            raise RuntimeError(f"evaluation asks for the model kept in the node state under {key!r}, but this node holds none")
        model = session.model_from(kept)
    else:
        model = session.model_from(content["arrays"])
    data = session.data
    result = evaluate(
        model, DEVICE_CACHE.get(data.x_test, session.device), data.y_test, num_classes=data.num_classes,
        batch_size=session.cfg.score_batch_size, device=session.device,
        task=data.task, normalize=data.normalize, precision=session.cfg.precision,
    )
    metrics: dict = {"num-examples": int(result["num-examples"]), "compute-seconds": time.perf_counter() - start}
    if data.task == "regression":
        metrics["mse"] = float(result["mse"])
    else:
        metrics["accuracy"] = float(result["accuracy"])
        metrics["loss"] = float(result["loss"])
        metrics["correct-per-class"] = result["correct-per-class"]
        metrics["count-per-class"] = result["count-per-class"]
    return RecordDict({"metrics": MetricRecord(metrics)})


# ------------------------------------------------------------------- queries
@query_action("setup")
def setup(session: ClientSession, content: RecordDict) -> RecordDict:
    """Load the partition, buy the initial labels once, describe the client."""
    start = time.perf_counter()
    if bool(config_of(content).get("initial-labels", True)):
        session.ensure_initial_labels()
    pool_ids, _ = session.pool()
    config = {
        "partition-id": session.partition_id,
        "num-partitions": session.num_partitions,
        "data-size": len(session.data.ids),
        "pool-size": len(pool_ids),
        "labeled": len(session.ledger),
        "num-classes": session.data.num_classes,
        "input-shape": list(session.data.input_shape),
        "ledger": str(session.ledger_path),
    }
    if len(session.ledger.pending_ids()):  # people give the initial labels: the server waits for them
        config["pending"] = len(session.ledger.pending_ids())
    if session.cfg.record_label_histograms:
        config["label-histogram"] = session.label_histogram()
    return _reply(config, {"compute-seconds": time.perf_counter() - start})


@query_action("finish")
def finish(session: ClientSession, content: RecordDict) -> RecordDict:
    """The run completed: delete this node's node-state files (its ledger stays)."""
    start = time.perf_counter()
    removed = session.node_state.clear()
    return _reply({"node-state-files-removed": removed}, {"compute-seconds": time.perf_counter() - start})


@query_action("bn_stats")
def bn_stats(session: ClientSession, content: RecordDict) -> RecordDict:
    """Moment sums of the BatchNorm inputs of the received model over this client's whole partition.

    Labeled and unlabeled samples alike (statistics need no labels). The reply
    is per-channel count / sum / sum of squares per layer
    (:func:`fal_shared.batchnorm.moment_sums`); the server pools them into the
    global model's running statistics (``bn-statistics=recompute``).
    """
    start = time.perf_counter()
    model = session.model_from(content["global-model"])
    sums = moment_sums(
        model, DEVICE_CACHE.get(session.data.x, session.device), batch_size=session.cfg.batch_size,
        device=session.device, normalize=session.data.normalize,
    )
    return RecordDict({
        "moments": ArrayRecord({k: Array(v) for k, v in sums.items()}),
        "metrics": MetricRecord({"compute-seconds": time.perf_counter() - start}),
    })


def model_bank(session: ClientSession, content: RecordDict, x_pool: np.ndarray, x_labeled: np.ndarray, cycle: int) -> ModelBank:
    """The query models a selector may ask for, built lazily."""
    loaders = {}
    if "global-model" in content.array_records:
        loaders["global"] = lambda: session.model_from(content["global-model"])
    loaders["local"] = session.local_model
    loaders["local-only"] = lambda: session.local_only_model(cycle)
    return ModelBank(loaders, session.predict, x_pool, x_labeled)


@query_action("select")
def select(session: ClientSession, content: RecordDict) -> RecordDict:
    """Score the pool with the named selector, buy the labels, report the picks.

    Config keys: ``selector``, ``budget``, ``cycle``, ``token``, ``strategy``,
    plus any selector parameters (sent by the server strategy).
    """
    start = time.perf_counter()
    conf = config_of(content)
    cycle, token = int(conf["cycle"]), str(conf["token"])
    bought = session.ledger.purchase(token)
    if bought is None:  # not done before: select now (retries skip this)
        pool_ids, x_pool = session.pool()
        labeled_ids, x_labeled, y_labeled = session.labeled()
        ctx = PoolContext(
            pool_ids=pool_ids,
            labeled_ids=labeled_ids,
            labeled_y=y_labeled,
            budget=min(int(conf["budget"]), len(pool_ids)),
            num_classes=session.data.num_classes,
            rng=np.random.default_rng(session.query_seed(cycle, 1)),
            models=model_bank(session, content, x_pool, x_labeled, cycle),
            params={**session.cfg.to_flower(), **conf, **{k: v for k, v in content.config_records.get("params", {}).items()}},
            task=session.data.task,
        )
        outcome = run_selection(get_selector(str(conf["selector"])), ctx)
        hints = None
        if session.person_oracle:  # what helps the person: pick order, the global model's guess
            from client_app.labeling import label_hints

            global_model = session.model_from(content["global-model"]) if "global-model" in content.array_records else None
            hints = label_hints(session, outcome.ids, global_model)
        bought = session.buy(outcome.ids, cycle=cycle, strategy=str(conf["strategy"]), token=token,
                             hints=hints, can_wait=True)
        select_seconds, diagnostics, timings = outcome.seconds, outcome.diagnostics, outcome.timings
    else:
        select_seconds, diagnostics, timings = 0.0, {"replayed": True}, {}
    config = {
        "selected-ids": int_list(bought),
        "labeled": len(session.ledger),
        "pool-size": len(session.data.ids) - len(session.ledger.unavailable_ids()),
    }
    pending = len(session.ledger.pending_ids())
    if pending:  # people label here: the server waits for them (query.labels)
        config["pending"] = pending
    if session.oracle_notes:
        config["notes"] = session.oracle_notes
    for key, value in diagnostics.items():
        if isinstance(value, (int, float, str, bool)):
            config[f"diag-{key}"] = value
    if session.cfg.record_label_histograms:
        config["label-histogram"] = session.label_histogram()
    metrics = {"compute-seconds": time.perf_counter() - start, "selection-seconds": select_seconds}
    metrics.update({f"selection-seconds-{name}": float(v) for name, v in timings.items()})  # a selector's own phases
    return _reply(config, metrics)


@query_action("labels")
def labels(session: ClientSession, content: RecordDict) -> RecordDict:
    """Read the labels people gave since the last look, record them, say how many are still pending.

    Sent by the server while it waits for labels (``server_app.labels``); a site
    whose oracle answers at once has nothing pending and answers at once.
    """
    start = time.perf_counter()
    report = session.collect_labels()
    config = {
        "pending": len(session.ledger.pending_ids()),
        "new-labels": len(report.labeled),
        "skipped-ids": int_list(report.skipped),
        "labeled": len(session.ledger),
        "pool-size": len(session.data.ids) - len(session.ledger.unavailable_ids()),
        "notes": [str(n) for n in report.notes],
    }
    if session.cfg.record_label_histograms:
        config["label-histogram"] = session.label_histogram()
    return _reply(config, {"compute-seconds": time.perf_counter() - start})
