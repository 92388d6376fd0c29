"""The contract every registered selector must meet, on a tiny synthetic pool.

Runs for **every** name in ``query.SELECTORS``, including selectors added later:

* exactly the budget of unique, previously unlabeled pool positions;
* the same seed gives the same picks;
* a budget of at least the pool size takes the whole pool, a budget of
  ``pool - 1`` (which does run the selector) still returns unique picks;
* an empty pool returns nothing;
* NaN model outputs never silently reach a selection: a selector that reads
  them must raise a ValueError mentioning NaN.

The pool is 32 unlabeled + 8 labeled samples of a 4-class problem with 6
input features; the models (global, local, local-only) are tiny seeded torch
networks (Linear + BatchNorm1d + ReLU body, Linear head) behind the real
:class:`query.models.ModelBank`, so probabilities and features are random but
fixed, and selectors that perturb or re-run the model (noise-stability) work.

Server-sent parameters
----------------------
``ctx.params`` holds every run-config key at its default (as on a real client)
plus the parameters the server strategy would send. A selector declares the
latter for this test in one of two ways:

* a classmethod on the selector: ``contract_params(cls, ctx: PoolContext) ->
  dict`` (``ctx`` is the synthetic context, so server statistics such as class
  budgets can be derived from ``ctx.labeled_y`` / ``ctx.num_classes`` /
  ``ctx.budget``); or
* an entry in :data:`CONTRACT_PARAMS` below (for selectors whose module
  predates the hook).

A selector with neither fails with a message asking for one. A selector
that only supports regression sets the class attribute
``contract_task = "regression"`` and gets a regression pool (1 output).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fal_shared.config import RunConfig
from fal_shared.training import predict
from query import SELECTORS, PoolContext, get_selector, run_selection
from query.models import ModelBank

#: Server-sent params of selectors without a ``contract_params`` hook. Extend it
#: (or better, add the hook to your selector) when you register a selector.
CONTRACT_PARAMS: dict[str, dict[str, Any]] = {
    "random": {},
    "entropy": {"query-model": "global"},
}

NUM_CLASSES = 4
IN_DIM = 6
N_LABELED = 8
N_POOL = 32
BUDGET = 5
SEED = 1234
KIND_SEEDS = {"global": 11, "local": 12, "local-only": 13}
_DEFAULTS = RunConfig().to_flower()


class TinyNet(nn.Module):
    """Returns (logits, features) like the project's models; BatchNorm for noise-stability."""

    def __init__(self, num_outputs: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(IN_DIM, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, num_outputs)
        self.feature_dim = 8
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.8)
            self.body[1].running_mean.normal_(0.0, 0.1, generator=g)
            self.body[1].running_var.uniform_(0.5, 1.5, generator=g)
            self.head.weight.mul_(3.0)  # spread the probabilities

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


class Pool:
    """The synthetic client: ids, inputs, labels, and model access bookkeeping."""

    def __init__(self, task: str = "classification", *, n_pool: int = N_POOL) -> None:
        rng = np.random.default_rng(7)
        n = N_LABELED + n_pool
        self.task = task
        self.num_classes = NUM_CLASSES if task == "classification" else 1
        self.ids = 1000 + 3 * np.arange(n)  # not positions: ids and positions must not be confused
        self.x = rng.normal(size=(n, IN_DIM)).astype(np.float32)
        labeled = np.sort(rng.choice(n, size=N_LABELED, replace=False))
        mask = np.ones(n, dtype=bool)
        mask[labeled] = False
        self.labeled_ids, self.pool_ids = self.ids[labeled], self.ids[mask]
        self.x_labeled, self.x_pool = self.x[labeled], self.x[mask]
        if task == "classification":
            self.labeled_y = rng.integers(0, NUM_CLASSES, size=N_LABELED)
        else:
            self.labeled_y = rng.normal(size=N_LABELED).astype(np.float32)
        self.models_loaded: list[str] = []

    def bank(self, *, nan: bool = False) -> ModelBank:
        def loader(kind: str) -> Callable[[], nn.Module]:
            def load() -> nn.Module:
                self.models_loaded.append(kind)
                model = TinyNet(self.num_classes, KIND_SEEDS[kind])
                if nan:  # a diverged model: every output (features, logits, probs) is NaN
                    with torch.no_grad():
                        model.body[0].weight.fill_(float("nan"))
                return model

            return load

        def predict_fn(model: nn.Module, x: np.ndarray):
            return predict(model, x, batch_size=16, device=torch.device("cpu"), task=self.task)

        return ModelBank({k: loader(k) for k in KIND_SEEDS}, predict_fn, self.x_pool, self.x_labeled)

    def context(self, name: str, budget: int, *, seed: int = SEED, nan: bool = False, empty: bool = False) -> PoolContext:
        pool_ids = self.pool_ids[:0] if empty else self.pool_ids
        ctx = PoolContext(
            pool_ids=pool_ids,
            labeled_ids=self.labeled_ids,
            labeled_y=self.labeled_y,
            budget=min(budget, len(pool_ids)),
            num_classes=self.num_classes,
            rng=np.random.default_rng(seed),
            models=self.bank(nan=nan),
            params={},
            task=self.task,
        )
        if empty:
            ctx.models.x_pool = self.x_pool[:0]
        ctx.params = {**_DEFAULTS, **contract_params(name, ctx)}
        return ctx


def contract_params(name: str, ctx: PoolContext) -> dict[str, Any]:
    """The server-sent params of selector ``name`` for this test (see the module docstring)."""
    cls = SELECTORS[name]
    hook = getattr(cls, "contract_params", None)
    if callable(hook):
        return dict(hook(ctx))
    if name in CONTRACT_PARAMS:
        return dict(CONTRACT_PARAMS[name])
    pytest.fail(
        f"selector {name!r} declares no default parameters for the selector contract test: add a classmethod "
        f"`contract_params(cls, ctx) -> dict` to {cls.__module__}.{cls.__name__} returning the params its server "
        f"strategy sends (an empty dict if none), or an entry to CONTRACT_PARAMS in {__name__}."
    )


def _pool_for(name: str, **kw: Any) -> Pool:
    return Pool(getattr(SELECTORS[name], "contract_task", "classification"), **kw)


SELECTOR_NAMES = sorted(SELECTORS)


def test_every_selector_is_covered():
    # guards against a collection-time import problem hiding selectors
    assert {"random", "entropy", "badge", "coreset", "noise-stability", "logo", "kafal", "feal"} <= set(SELECTOR_NAMES)
    assert {"bait", "lcmd", "acs-fw", "maxdist", "kmeanspp", "logo-bait"} <= set(SELECTOR_NAMES)  # regression


@pytest.mark.parametrize("name", SELECTOR_NAMES)
def test_budget_of_unique_unlabeled_picks(name):
    pool = _pool_for(name)
    out = run_selection(get_selector(name), pool.context(name, BUDGET))
    assert len(out.positions) == BUDGET
    assert len(np.unique(out.positions)) == BUDGET
    assert set(out.ids) <= set(pool.pool_ids)
    assert not set(out.ids) & set(pool.labeled_ids)
    np.testing.assert_array_equal(out.ids, pool.pool_ids[out.positions])


@pytest.mark.parametrize("name", SELECTOR_NAMES)
def test_same_seed_same_picks(name):
    pool = _pool_for(name)
    first = run_selection(get_selector(name), pool.context(name, BUDGET, seed=SEED))
    again = run_selection(get_selector(name), pool.context(name, BUDGET, seed=SEED))
    np.testing.assert_array_equal(first.positions, again.positions)


@pytest.mark.parametrize("name", SELECTOR_NAMES)
@pytest.mark.parametrize("extra", [0, 7])
def test_budget_at_least_pool_takes_whole_pool(name, extra):
    pool = _pool_for(name)
    ctx = pool.context(name, N_POOL + extra)
    out = run_selection(get_selector(name), ctx)
    np.testing.assert_array_equal(np.sort(out.ids), np.sort(pool.pool_ids))


@pytest.mark.parametrize("name", SELECTOR_NAMES)
def test_budget_of_pool_minus_one(name):
    # the largest budget that still runs the selector (exhaustion paths: LoGo's
    # KMeans with n-1 clusters, k-center's last picks, ...)
    pool = _pool_for(name)
    out = run_selection(get_selector(name), pool.context(name, N_POOL - 1))
    assert len(np.unique(out.positions)) == N_POOL - 1


@pytest.mark.parametrize("name", SELECTOR_NAMES)
def test_empty_pool_returns_nothing(name):
    pool = _pool_for(name)
    out = run_selection(get_selector(name), pool.context(name, BUDGET, empty=True))
    assert len(out.positions) == 0 and len(out.ids) == 0


@pytest.mark.parametrize("name", SELECTOR_NAMES)
def test_nan_outputs_never_reach_the_selection(name):
    pool = _pool_for(name)
    ctx = pool.context(name, BUDGET, nan=True)
    try:
        run_selection(get_selector(name), ctx)
    except ValueError as err:
        assert "nan" in str(err).lower(), f"selector {name!r} raised on NaN outputs without saying so: {err}"
        return
    # no error: only acceptable for a selector that never looked at a model
    assert not pool.models_loaded, (
        f"selector {name!r} read NaN model outputs ({', '.join(pool.models_loaded)}) and still selected; "
        "it must raise a ValueError naming the NaN"
    )


def test_selector_without_contract_params_fails_clearly(monkeypatch):
    from query.base import Selector

    class Undeclared(Selector):
        def select(self, ctx):  # pragma: no cover - never called
            return np.arange(ctx.budget)

    monkeypatch.setitem(SELECTORS, "undeclared-test-selector", Undeclared)
    with pytest.raises(pytest.fail.Exception, match="contract_params"):
        Pool().context("undeclared-test-selector", BUDGET)


def test_regression_pool_for_regression_only_selectors():
    # selectors with contract_task = "regression" get 1-output models and float labels
    pool = Pool("regression")
    ctx = PoolContext(
        pool_ids=pool.pool_ids, labeled_ids=pool.labeled_ids, labeled_y=pool.labeled_y, budget=BUDGET,
        num_classes=1, rng=np.random.default_rng(0), models=pool.bank(), task="regression",
    )
    pred = ctx.models.pool("global")
    assert pred.outputs.shape == (N_POOL,) and pred.features.shape == (N_POOL, 8)
    assert np.isfinite(pred.outputs).all() and pool.labeled_y.dtype == np.float32
    assert np.isnan(pool.bank(nan=True).pool("local").outputs).all()
