"""Oracles reveal labels: at once (the simulation oracle), or later, from people.

* :class:`Oracle` answers at once: ``label(ids)``. :class:`GroundTruthOracle`
  reads the dataset's labels (simulation of a labeling expert); the ClientApp
  records its answers in the ledger in the same message.
* :class:`PersonOracle` is asked, and answers later: :meth:`PersonOracle.submit`
  puts the queried samples in front of people (a Label Studio project, a folder
  with a CSV), and :meth:`PersonOracle.collect` reads back what they answered so
  far. The ClientApp records the query as *pending* in its ledger first, and
  turns answers into ledger labels at every ``query.labels`` poll of the server
  (``client_app.labeling``). Both methods must be idempotent: they are called
  again after any restart.

Which oracle a site uses is node config (``oracle=...``; see
``fal_shared.settings.labeling``); ``client_app.oracles.make_oracle`` builds it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

__all__ = ["Oracle", "GroundTruthOracle", "PersonOracle", "LabelRequest", "Answer", "OracleUnavailable"]


class Oracle(Protocol):
    def label(self, sample_ids: np.ndarray) -> np.ndarray:
        """Labels of ``sample_ids`` (global sample ids), in the same order."""


class GroundTruthOracle:
    """Reads labels from the dataset (simulation of a labeling expert)."""

    name = "ground-truth"

    def __init__(self, sample_ids: np.ndarray, labels: np.ndarray) -> None:
        self._index = {int(i): k for k, i in enumerate(sample_ids)}
        self._labels = labels
        self.calls = 0
        self.labels_revealed = 0

    def label(self, sample_ids: np.ndarray) -> np.ndarray:
        try:
            rows = [self._index[int(i)] for i in sample_ids]
        except KeyError as err:
            raise KeyError(f"sample id {err.args[0]} is not in this client's partition") from None
        self.calls += 1
        self.labels_revealed += len(rows)
        return self._labels[np.asarray(rows, dtype=np.int64)]


class OracleUnavailable(RuntimeError):
    """The labeling tool cannot be reached now (network, server down); the labels stay pending and are asked again."""


@dataclass(frozen=True)
class Answer:
    """One person's answer to one queried sample, as the tool reports it (validated by the caller)."""

    sample_id: int
    value: Any = None  # the label as the tool gives it (a class index, a number, text)
    skipped: bool = False
    reason: str = ""  # why it was skipped ("skipped", "unclear", ...)
    by: str = ""
    at: str = ""


@dataclass
class LabelRequest:
    """One query's samples that people must label, and what helps them (from the ledger's pending record)."""

    run_name: str
    partition_id: int
    token: str
    cycle: int
    ids: list[int]  # still pending, in the selector's pick order
    task: str  # classification | regression
    num_classes: int
    #: per sample id: ``priority`` (higher = label first), and, when the global model came with the
    #: query, ``prediction`` (class index, or value in the data's units) and ``confidence``
    hints: dict[int, dict[str, float]] = field(default_factory=dict)
    #: ``image(id) -> PNG bytes`` for image data sets, else None
    image: Callable[[int], bytes] | None = None
    #: ``features(id) -> {name: value}`` for tabular data sets, else None
    features: Callable[[int], dict[str, float]] | None = None

    @property
    def key(self) -> str:
        """Names this query of this site in a shared tool: ``<run>/<partition>/<token>``."""
        return f"{self.run_name}/{self.partition_id}/{self.token}"


class PersonOracle(ABC):
    """An oracle whose labels people give, maybe days later."""

    name: ClassVar[str] = ""

    def describe(self, request: LabelRequest) -> dict[str, Any]:
        """Where people find this request (kept in the ledger's pending record; no network)."""
        return {}

    @abstractmethod
    def submit(self, request: LabelRequest) -> None:
        """Put the request's samples in front of people; nothing twice."""

    @abstractmethod
    def collect(self, request: LabelRequest) -> list[Answer]:
        """The answers given so far to the request's (pending) samples; refills the tool when needed."""
