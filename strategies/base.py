"""Server-side FAL strategies: the query phase of each active-learning cycle.

A strategy decides what happens between two training cycles. It talks to the
clients only through a :class:`QueryPhase`, which sends real Flower
``query.<action>`` messages (the same in simulation and deployment) and
records bytes and time. The shapes the papers need all fit one method,
:meth:`FALStrategy.query`:

* Random/Entropy/BADGE/...: one ``select`` round (:meth:`QueryPhase.select`).
* AHFAL: ``broadcast('label-histogram')`` -> server statistics -> ``select``
  with those statistics as parameters.
* FairFAL: a scalar per client -> the server mean (kept in ``phase.state``
  across cycles) -> ``select``.
* FALE: several custom rounds (masked matrices, recovery, leverage scores,
  sampling) then a labeling round, then ``phase.replace_model(...)``.

Strategies are registered by name with :func:`register_strategy`; an unknown
name fails before any training with the list of valid names.

A strategy may need run-config values other than the generic defaults (FALE:
``evaluation="federated"``). It declares them in :meth:`FALStrategy.run_defaults`;
:func:`resolve_run_config` fills them in for the keys the user did not set, and
:meth:`FALStrategy.validate` still refuses a contradicting value the user did set.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from fal_shared.config import RunConfig, parse_run_config
from fal_shared.registry import Registry

__all__ = [
    "ClientInfo",
    "FALStrategy",
    "QueryPhase",
    "STRATEGIES",
    "register_strategy",
    "create_strategy",
    "SelectRoundStrategy",
    "resolve_run_config",
]


@dataclass
class ClientInfo:
    """What the server knows of a client (from its ``setup`` reply)."""

    partition_id: int
    node_id: int
    data_size: int
    pool_size: int
    labeled: int
    num_classes: int
    label_histogram: list[int] | None = None
    input_shape: tuple[int, ...] = ()


class QueryPhase(Protocol):
    """The server's handle on one query phase (implemented in ``server_app``)."""

    cfg: RunConfig
    cycle: int
    clients: dict[int, ClientInfo]  # by partition id
    budgets: dict[int, int]  # labels to buy per partition id this cycle
    global_arrays: ArrayRecord
    state: dict[str, Any]  # the strategy's server-side state, kept across cycles
    #: this cycle's strategy results so far: record()'s values, and the selectors'
    #: per-client diagnostics that select() adds under "client-diagnostics"
    recorded: dict[str, Any]
    #: sample ids bought this phase, by partition id (recorded as the cycle's
    #: "selected-ids"): select() fills it; a strategy that buys labels through
    #: its own query action (FALE) adds its purchases here
    selected: dict[int, np.ndarray]

    def broadcast(
        self, action: str, config: Mapping[str, Any] | None = None, *,
        include_model: bool = False, records: Mapping[str, Any] | None = None,
    ) -> dict[int, RecordDict]:
        """Send the same ``query.<action>`` to every client; replies by partition id."""

    def send(self, action: str, contents: Mapping[int, RecordDict]) -> dict[int, RecordDict]:
        """Send per-client contents as ``query.<action>``; replies by partition id."""

    def select(
        self, selector: str, params: Mapping[str, Any] | None = None, *,
        per_client: Mapping[int, Mapping[str, Any]] | None = None,
        include_model: bool = True, budgets: Mapping[int, int] | None = None,
    ) -> dict[int, np.ndarray]:
        """The labeling round: every client runs ``selector`` and buys its budget."""

    def record(self, key: str, value: Any) -> None:
        """Add a strategy-specific value (e.g. epsilon spent) to this cycle's results."""

    def replace_model(self, arrays: ArrayRecord) -> None:
        """Use ``arrays`` as the global model from now on (e.g. FALE's closed-form fit)."""


class FALStrategy(ABC):
    """A server-side FAL strategy. Subclasses set ``name`` and implement :meth:`query`.

    ``tasks`` lists the tasks the method supports; :meth:`validate` runs before
    any training and must raise ``ValueError`` for a config the method cannot run.
    """

    name: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    description: ClassVar[str] = ""
    source: ClassVar[str] = ""
    #: whether clients buy ``initial-labeled-fraction`` random labels before cycle 0
    #: (FALE selects its whole budget in one pass and needs none)
    initial_labels: ClassVar[bool] = True
    #: the local training objective the clients use with ``local-objective=auto``, by name in
    #: :data:`fal_shared.objectives.OBJECTIVES` (KAFAL: ``kcfu``, FEAL: ``edl``)
    objective: ClassVar[str] = "cross-entropy"

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    @classmethod
    def run_defaults(cls, cfg: RunConfig) -> dict[str, Any]:
        """Run-config values (by key) the strategy uses where the user set none.

        For settings whose generic default the method cannot run with, or whose own default differs
        (FALE: ``evaluation="federated"``). :func:`resolve_run_config` applies them to the keys the
        user did not set; a value the user did set is kept, and :meth:`validate` judges it. ``cfg``
        is the config before these defaults (so they may depend on, e.g., the dataset).
        """
        return {}

    def train_rounds(self, cycle: int) -> int:
        """FedAvg rounds to run at the start of ``cycle`` (before its evaluation).

        The loop skips training (and the per-cycle re-initialisation, so a model
        installed with :meth:`QueryPhase.replace_model` stays) when this is 0 or
        when no client holds a label. FALE fits in closed form and returns 0.
        """
        return self.cfg.rounds_per_cycle

    def evaluation_model_key(self, cycle: int, state: Mapping[str, Any]) -> str | None:
        """Name of a model every client keeps in its ``context.state`` to evaluate instead of the global arrays.

        ``None`` (the default): clients evaluate the global model the server sends.
        A strategy whose model the server never holds in the clear (FALE: the
        clients unmask it) returns the state key; this needs ``evaluation=federated``.
        ``state`` is the strategy's server-side state (``QueryPhase.state``).
        """
        return None

    def validate(self) -> None:
        if self.cfg.task not in self.tasks:
            raise ValueError(
                f"strategy {self.name!r} supports {', '.join(self.tasks)} tasks, but dataset "
                f"{self.cfg.dataset!r} is a {self.cfg.task} dataset"
            )

    @abstractmethod
    def query(self, phase: QueryPhase) -> None:
        """Run one query phase: message rounds, then a labeling round."""


STRATEGIES: Registry[type[FALStrategy]] = Registry("strategy", "strategies")


def register_strategy(name: str) -> Callable[[type[FALStrategy]], type[FALStrategy]]:
    """Class decorator adding a strategy to :data:`STRATEGIES` under ``name``."""
    return STRATEGIES.register(name)


def resolve_run_config(
    run_config: Mapping[str, Any], explicit: Collection[str] | None = None
) -> tuple[RunConfig, dict[str, Any]]:
    """Parse a run config and fill in the strategy's :meth:`~FALStrategy.run_defaults`.

    Parameters
    ----------
    run_config
        Run-config keys and values: Flower's fused config (pyproject defaults + overrides) or just
        the overrides.
    explicit
        The keys the user set: ``flwr run``'s override config (``grid.run.override_config``, which
        the ServerApp sees in simulation and deployment), a launcher's overrides. ``None`` when
        unknown: then a value equal to the generic default (the pyproject table) counts as not set,
        since nothing else distinguishes it.

    Returns
    -------
    (config, applied)
        The config with the strategy's defaults in place, and the values the strategy supplied
        (empty if none). Unknown strategy names and bad values raise here (``ConfigError`` /
        ``ValueError`` naming the key).
    """
    cfg = parse_run_config(dict(run_config))
    current = cfg.to_flower()
    generic = RunConfig().to_flower()
    applied: dict[str, Any] = {}
    for key, value in STRATEGIES.lookup(cfg.strategy).run_defaults(cfg).items():
        if key not in current:
            raise KeyError(f"strategy {cfg.strategy!r} declares a default for {key!r}, which is no run-config key")
        user_set = key in explicit if explicit is not None else current[key] != generic[key]
        if not user_set and current[key] != value:
            applied[key] = value
    if applied:
        cfg = parse_run_config({**current, **applied})
    return cfg, applied


def create_strategy(cfg: RunConfig) -> FALStrategy:
    """The strategy named by ``cfg.strategy``, validated against the config."""
    strategy = STRATEGIES.lookup(cfg.strategy)(cfg)
    strategy.validate()
    return strategy


class SelectRoundStrategy(FALStrategy):
    """A strategy that is one selection round of a client-side selector.

    Subclasses set ``selector``, name the run-config keys the selector reads in
    ``selector_settings``, and may override :meth:`params`.
    """

    selector: ClassVar[str] = ""
    #: run-config keys sent to the selector as its parameters, under the same names
    selector_settings: ClassVar[tuple[str, ...]] = ()

    def params(self, phase: QueryPhase) -> dict[str, Any]:
        return self.settings_of(self.selector_settings)

    def settings_of(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """These run-config keys and their values, as a selector's parameters."""
        values = self.cfg.to_flower()
        return {key: values[key] for key in keys}

    def uses_model(self) -> bool:
        return True

    def query(self, phase: QueryPhase) -> None:
        phase.select(self.selector, self.params(phase), include_model=self.uses_model())
