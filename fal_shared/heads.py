"""How a classifier's raw outputs are read: output heads, registered by name (torch, no Flower).

Every model returns ``(logits, features)``. What the logits *mean* depends on
the objective the model was trained with:

* ``softmax`` (cross-entropy, KCFU, ...): ``p = softmax(logits)``.
* ``evidential`` (FEAL's EDL loss, spec 5.1): the logits are evidence,
  ``e = ReLU(logits)``, ``alpha = e + 1`` are Dirichlet parameters and the
  expected class probabilities are ``p = alpha / S`` with ``S = sum_k alpha_k``.

A model carries its head as an attribute (:func:`set_head`), set where the
model is built from the run config, so :func:`fal_shared.training.predict` and
every consumer of its :class:`~fal_shared.training.Prediction` (evaluation,
entropy, BADGE, noise stability, ...) read an evidential model's outputs
correctly without knowing which method trained it. A model without the
attribute is a softmax model (local-only models, regression, tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fal_shared.registry import Registry

__all__ = ["OutputHead", "HEADS", "DEFAULT_HEAD", "set_head", "head_of", "evidential_alpha"]

DEFAULT_HEAD = "softmax"
_ATTRIBUTE = "output_head"


@dataclass(frozen=True)
class OutputHead:
    """Probabilities, log-probabilities and predicted classes of a batch of logits."""

    name: str
    probabilities: Callable[[torch.Tensor], torch.Tensor]
    log_probabilities: Callable[[torch.Tensor], torch.Tensor]
    #: predicted class of each row from (logits, probabilities), numpy in and out
    classes: Callable[[np.ndarray, np.ndarray], np.ndarray]


HEADS: Registry[OutputHead] = Registry("output head")


def evidential_alpha(logits: torch.Tensor) -> torch.Tensor:
    """Dirichlet parameters ``alpha = ReLU(logits) + 1`` (FEAL utils/loss_func.py, selection_methods.py)."""
    return F.relu(logits) + 1


def _evidential_probabilities(logits: torch.Tensor) -> torch.Tensor:
    alpha = evidential_alpha(logits)
    return alpha / alpha.sum(dim=1, keepdim=True)


def _evidential_log_probabilities(logits: torch.Tensor) -> torch.Tensor:
    alpha = evidential_alpha(logits)
    return torch.log(alpha) - torch.log(alpha.sum(dim=1, keepdim=True))


HEADS.register("softmax", set_name=False)(OutputHead(
    name="softmax",
    probabilities=lambda logits: torch.softmax(logits, dim=1),
    log_probabilities=lambda logits: torch.log_softmax(logits, dim=1),
    classes=lambda logits, probs: probs.argmax(1),
))
HEADS.register("evidential", set_name=False)(OutputHead(
    name="evidential",
    probabilities=_evidential_probabilities,
    log_probabilities=_evidential_log_probabilities,
    # argmax p = argmax alpha, except that every class with logit <= 0 has alpha = 1:
    # the argmax of the logits is the same class whenever p has one largest entry and
    # breaks the ties as FEAL's own evaluation does (utils/cls/test.py: argmax(logit)).
    classes=lambda logits, probs: logits.argmax(1),
))


def set_head(model: nn.Module, name: str) -> nn.Module:
    """Record on ``model`` how its logits are read (raises for an unknown head)."""
    HEADS.lookup(name)
    setattr(model, _ATTRIBUTE, name)
    return model


def head_of(model: nn.Module) -> OutputHead:
    """The head recorded on ``model`` (softmax when none was set)."""
    return HEADS.lookup(getattr(model, _ATTRIBUTE, DEFAULT_HEAD))
