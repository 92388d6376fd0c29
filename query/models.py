"""Lazy, cached model outputs for selectors (torch, no Flower).

A :class:`ModelBank` holds the query models of one client in one query
(``global``: the aggregated model; ``local``: the client's model after its
local training this cycle; ``local-only``: a model trained from scratch on the
client's labels, built on first use) and computes their outputs on the pool or
the labeled set once, batched under ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import nn

from fal_shared.training import Prediction

__all__ = ["ModelBank", "MODEL_KINDS"]

MODEL_KINDS = ("global", "local", "local-only")


class ModelBank:
    """Model outputs on the pool and the labeled set, computed on first use.

    Parameters
    ----------
    loaders : mapping kind -> callable returning an ``nn.Module``
        How to get each model kind; called at most once per kind.
    predict_fn : callable (model, x) -> Prediction
        Batched inference (the client binds batch size, device, normalisation).
    x_pool, x_labeled : arrays
        Inputs of the pool and of the labeled set.
    """

    def __init__(
        self,
        loaders: dict[str, Callable[[], nn.Module]],
        predict_fn: Callable[[nn.Module, np.ndarray], Prediction],
        x_pool: np.ndarray,
        x_labeled: np.ndarray,
    ) -> None:
        self._loaders = loaders
        self._predict = predict_fn
        self.x_pool = x_pool
        self.x_labeled = x_labeled
        self._models: dict[str, nn.Module] = {}
        self._cache: dict[tuple[str, str], Prediction] = {}

    def available(self) -> tuple[str, ...]:
        return tuple(self._loaders)

    def model(self, kind: str) -> nn.Module:
        if kind not in self._loaders:
            raise ValueError(
                f"query model {kind!r} is not available here; available: {', '.join(self._loaders)}"
            )
        if kind not in self._models:
            self._models[kind] = self._loaders[kind]()
        return self._models[kind]

    def predict(self, model: nn.Module, x: np.ndarray) -> Prediction:
        """Batched inference of any model (e.g. a perturbed copy) on ``x``."""
        return self._predict(model, x)

    def pool(self, kind: str) -> Prediction:
        return self._outputs(kind, "pool")

    def labeled(self, kind: str) -> Prediction:
        return self._outputs(kind, "labeled")

    def _outputs(self, kind: str, where: str) -> Prediction:
        key = (kind, where)
        if key not in self._cache:
            x = self.x_pool if where == "pool" else self.x_labeled
            self._cache[key] = self._predict(self.model(kind), x)
        return self._cache[key]
