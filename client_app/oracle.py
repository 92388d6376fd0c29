"""Oracles reveal labels. The simulation oracle reads the ground truth.

A human labeling oracle implements the same :class:`Oracle` protocol (for
example by writing the requested ids to a labeling queue and blocking, or
failing with a clear error, until the answers are in); the ClientApp only ever
calls :meth:`Oracle.label` and records the answers in the ledger.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["Oracle", "GroundTruthOracle"]


class Oracle(Protocol):
    def label(self, sample_ids: np.ndarray) -> np.ndarray:
        """Labels of ``sample_ids`` (global sample ids), in the same order."""


class GroundTruthOracle:
    """Reads labels from the dataset (simulation of a labeling expert)."""

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
