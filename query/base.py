"""The client-side selection interface (no Flower imports).

A :class:`Selector` sees one client's unlabeled pool through a
:class:`PoolContext` and returns positions into that pool. Everything a
selector may need is on the context: the pool and labeled ids, the labels the
client already bought, the budget, a seeded RNG, settings and server-sent
statistics (``params``), and lazily computed model outputs (``models``).

Selectors are looked up by name in :data:`SELECTORS`; :func:`run_selection`
enforces the contract every selector must meet (exactly ``min(budget, pool)``
unique positions in range, no NaN scores) so no strategy can buy a label twice
or overspend a budget.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fal_shared.registry import Registry

__all__ = [
    "PoolContext",
    "Selector",
    "SelectionOutcome",
    "SELECTORS",
    "register_selector",
    "get_selector",
    "random_pool_subset",
    "run_selection",
]


@dataclass
class PoolContext:
    """What a selector sees of one client in one query.

    Attributes
    ----------
    pool_ids : (n,) int array
        Global sample ids of the unlabeled pool (positions index this array).
    labeled_ids, labeled_y : arrays
        Ids and labels the client has bought so far.
    budget : int
        Labels to select (already capped at the pool size by the caller).
    num_classes : int
        Classes of the task (1 for regression).
    rng : numpy Generator
        Seeded from (run seed, client, cycle): the same seed gives the same picks.
    models : object
        Lazy model outputs (see :class:`query.models.ModelBank`); may be None for
        selectors that need no model (random).
    params : mapping
        Strategy settings and statistics sent by the server.
    """

    pool_ids: np.ndarray
    labeled_ids: np.ndarray
    labeled_y: np.ndarray
    budget: int
    num_classes: int
    rng: np.random.Generator
    models: Any = None
    params: Mapping[str, Any] = field(default_factory=dict)
    task: str = "classification"
    timings: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def pool_size(self) -> int:
        return len(self.pool_ids)


class Selector(ABC):
    """A query strategy's client-side selection step."""

    name: str = ""

    @abstractmethod
    def select(self, ctx: PoolContext) -> np.ndarray:
        """Return ``ctx.budget`` unique positions into ``ctx.pool_ids``."""


SELECTORS: Registry[type[Selector]] = Registry("selector")


def register_selector(name: str) -> Callable[[type[Selector]], type[Selector]]:
    """Class decorator adding a selector to :data:`SELECTORS` under ``name``."""
    return SELECTORS.register(name)


def get_selector(name: str) -> Selector:
    return SELECTORS.lookup(name)()


@dataclass
class SelectionOutcome:
    positions: np.ndarray
    ids: np.ndarray
    seconds: float
    timings: dict[str, float]
    diagnostics: dict[str, Any]


def random_pool_subset(ctx: PoolContext, size: int) -> np.ndarray:
    """Sorted positions of a random subset of ``size`` pool samples, at least the budget; 0 = the whole pool.

    For selectors that score a subset of a large pool (Noise Stability, FEAL);
    drawn from ``ctx.rng``, so the same seed gives the same subset.
    """
    n = ctx.pool_size
    size = n if size == 0 else min(n, max(size, ctx.budget))
    return np.arange(n) if size == n else np.sort(ctx.rng.choice(n, size=size, replace=False))


def run_selection(selector: Selector, ctx: PoolContext) -> SelectionOutcome:
    """Run ``selector`` and check its contract.

    Raises
    ------
    RuntimeError
        If the selector returns duplicates, positions outside the pool, or a
        number of picks other than ``min(budget, pool size)``.
    """
    if ctx.budget < 0:
        raise ValueError(f"budget must be >= 0, got {ctx.budget}")
    want = min(ctx.budget, ctx.pool_size)
    start = time.perf_counter()
    if want == 0:
        positions = np.zeros(0, dtype=np.int64)
    elif want == ctx.pool_size:
        positions = np.arange(ctx.pool_size, dtype=np.int64)  # the whole pool: nothing to choose
    else:
        positions = np.asarray(selector.select(ctx), dtype=np.int64).reshape(-1)
    seconds = time.perf_counter() - start
    if len(np.unique(positions)) != len(positions):
        raise RuntimeError(f"selector {selector.name!r} returned duplicate picks")
    if len(positions) and (positions.min() < 0 or positions.max() >= ctx.pool_size):
        raise RuntimeError(f"selector {selector.name!r} returned positions outside the pool")
    if len(positions) != want:
        raise RuntimeError(
            f"selector {selector.name!r} returned {len(positions)} picks, expected {want}"
        )
    return SelectionOutcome(
        positions=positions,
        ids=ctx.pool_ids[positions],
        seconds=seconds,
        timings=dict(ctx.timings),
        diagnostics=dict(ctx.diagnostics),
    )

