"""Local training objectives, registered by name (torch, no Flower).

The ClientApp's ``train`` handler trains with the run's objective: the run-config
key ``local-objective``, whose default ``auto`` takes the strategy's own
(``FALStrategy.objective``: ``cross-entropy`` for most, ``kcfu`` for KAFAL,
``edl`` for FEAL). An objective declares what it needs in :attr:`Objective.needs`
and :func:`build_objective` hands it exactly that:

* ``class-counts``: the client's labeled class counts n_c (KCFU's balanced
  softmax and compensation weights, FEAL's class prior);
* ``teacher``: the received global model, frozen (KCFU's distillation);
* ``unlabeled``: batches of the client's pool, drawn on the device next to the
  labeled batches by :func:`fal_shared.training.train_model`;
* ``round``: the FedAvg round index within the cycle (KCFU's start round,
  FEAL's annealing).

Per-client optimiser state across the rounds of a cycle is the core setting
``optimizer-state=keep`` and works with every objective. The loop in
``train_model`` calls :meth:`Objective.prepare` once (all of the call's
randomness drawn up front and copied to the device once) and
:meth:`Objective.loss` per batch, so it never synchronises with the host and
has no method-specific branch. An objective also names the output head its
models are read with (:mod:`fal_shared.heads`).
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fal_shared.heads import evidential_alpha
from fal_shared.registry import Registry

if TYPE_CHECKING:
    from fal_shared.config import RunConfig

__all__ = [
    "NEEDS",
    "ObjectiveInputs",
    "Objective",
    "OBJECTIVES",
    "register_objective",
    "build_objective",
    "unlabeled_batch_rows",
    "CrossEntropy",
    "KCFU",
    "EvidentialLoss",
    "compensation_weights",
    "kcfu_compensation",
    "dirichlet_kl_to_uniform",
    "edl_loss",
]

NEEDS = ("class-counts", "teacher", "unlabeled", "round")


@dataclass
class ObjectiveInputs:
    """What the ``train`` handler hands an objective (only what it declares in ``needs`` is filled)."""

    num_classes: int
    task: str = "classification"
    class_counts: np.ndarray | None = None  # labeled samples per class, shape (C,)
    teacher: nn.Module | None = None  # the received global model, frozen
    round_index: int = 0  # FedAvg round within the cycle, from 0


class Objective(ABC):
    """The loss of one local training batch. Subclasses set ``name`` (by registering) and implement :meth:`loss`."""

    name: ClassVar[str] = ""
    head: ClassVar[str] = "softmax"
    needs: ClassVar[frozenset[str]] = frozenset()
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    description: ClassVar[str] = ""

    def __init__(self, inputs: ObjectiveInputs, cfg: "RunConfig | None" = None) -> None:
        missing = [n for n, v in (("class-counts", inputs.class_counts), ("teacher", inputs.teacher)) if n in self.needs and v is None]
        if missing:
            raise ValueError(f"objective {self.name!r} needs {', '.join(missing)}, which the caller did not provide")
        self.inputs = inputs

    @property
    def uses_unlabeled(self) -> bool:
        return "unlabeled" in self.needs

    def prepare(self, steps: int, unlabeled_batch: int, rng: np.random.Generator, device: torch.device) -> None:
        """Before the first batch: move state to ``device`` and draw the randomness of ``steps`` batches.

        ``unlabeled_batch`` is the size of every unlabeled batch (0: none will be
        given). Drawing everything here keeps host work out of the batch loop.
        """

    @abstractmethod
    def loss(
        self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, ub: torch.Tensor | None, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, logits of xb)`` of batch number ``step`` (from 0 over the whole call); runs under autocast.

        ``ub`` is the batch's unlabeled inputs (augmented and normalised like
        ``xb``) when the objective uses them, else None.
        """


OBJECTIVES: Registry[type[Objective]] = Registry("local objective")


def register_objective(name: str):
    """Class decorator adding an objective to :data:`OBJECTIVES` under ``name``."""
    return OBJECTIVES.register(name)


def build_objective(
    name: str, cfg: "RunConfig | None", *, num_classes: int, task: str = "classification",
    y: np.ndarray | None = None, model: nn.Module | None = None, server_round: int = 1,
) -> Objective:
    """The objective ``name`` with what it needs from one ``train`` message.

    ``y``: the labels of the client's labeled set; ``model``: the received
    global model, before training (copied and frozen as the teacher);
    ``server_round``: the FedAvg round within the cycle, from 1.
    """
    cls = OBJECTIVES.lookup(name)
    if task not in cls.tasks:
        raise ValueError(f"local objective {name!r} supports {', '.join(cls.tasks)} tasks, not {task}")
    inputs = ObjectiveInputs(num_classes=num_classes, task=task, round_index=server_round - 1)
    if "class-counts" in cls.needs:
        labels = np.asarray(y if y is not None else [], dtype=np.int64)
        inputs.class_counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    if "teacher" in cls.needs and model is not None:
        inputs.teacher = copy.deepcopy(model).requires_grad_(False)
    return cls(inputs, cfg)


def unlabeled_batch_rows(
    objective: Objective, unlabeled: np.ndarray | torch.Tensor | None, epochs: int, steps_per_epoch: int,
    batch_size: int, rng: np.random.Generator,
) -> np.ndarray | None:
    """Rows of ``unlabeled`` for every labeled batch, shape ``(epochs * steps_per_epoch, size)``; None = no unlabeled batches.

    One batch of ``size = min(batch_size, len(unlabeled))`` per labeled batch:
    consecutive slices of a stream of fresh permutations of the pool, a new
    stream every epoch (the reference code re-creates its unlabeled iterator
    every epoch and cycles it when it runs out; full-size slices here, so a
    batch never has one sample, which BatchNorm cannot train on). None when the
    objective does not use unlabeled data or the pool has fewer than 2 samples.
    """
    if not objective.uses_unlabeled or unlabeled is None or len(unlabeled) < 2 or steps_per_epoch == 0:
        return None
    m = len(unlabeled)
    size = min(batch_size, m)
    need = steps_per_epoch * size
    per_epoch = []
    for _ in range(epochs):
        stream = np.concatenate([rng.permutation(m) for _ in range(-(-need // m))])
        per_epoch.append(stream[:need].reshape(steps_per_epoch, size))
    return np.concatenate(per_epoch)


# ------------------------------------------------------------ cross-entropy
@register_objective("cross-entropy")
class CrossEntropy(Objective):
    """Plain cross-entropy (mean squared error for regression): the loss of every strategy before this hook.

    The arithmetic is exactly that of the loop before objectives existed, so
    results are bit-identical (``tests/test_training.py``).
    """

    tasks = ("classification", "regression")
    description = "cross-entropy on the labeled batch (MSE for regression)"

    def __init__(self, inputs: ObjectiveInputs, cfg: "RunConfig | None" = None) -> None:
        super().__init__(inputs, cfg)
        self.regression = inputs.task == "regression"
        self.loss_fn = nn.MSELoss() if self.regression else nn.CrossEntropyLoss()

    def loss(self, model, xb, yb, ub, step):
        logits, _ = model(xb)
        return self.loss_fn(logits.float(), yb), logits


# --------------------------------------------------------------------- KCFU
def compensation_weights(counts: np.ndarray | torch.Tensor) -> torch.Tensor:
    """KCFU's class weights Gamma (spec 4.3): inverse label frequency, normalised to sum 1.

    ``w_c = (sum_k n_k) / (n_c + 1e-6)`` for classes the client has labels of and
    0 for the others, ``Gamma = w / sum w`` (KAFAL ``train_epoch_client_distil``).
    Quirk (iii) kept: a mixed sample the teacher assigns to a class the client
    never labeled gets no compensation. The alternative would need a weight for
    an infinite inverse frequency, and KSAS leaves those classes out as well.
    All zeros for a client without labels.
    """
    n = torch.as_tensor(counts, dtype=torch.float32)
    w = (n.sum() / (n + 1e-6)) * (n > 0).float()
    total = w.sum()
    return w / total if total > 0 else w


def kcfu_compensation(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: torch.Tensor,
    partner: torch.Tensor, gamma: torch.Tensor,
) -> torch.Tensor:
    """KCFU's compensation loss on one batch of mixed unlabeled inputs (spec 4.3 (b)).

    ``mixed_j = beta_j u_j + (1 - beta_j) u_partner[j]``; the teacher's label of
    mixed sample j is ``y_j = argmax teacher(mixed_j)``;
    ``omega_j = beta_j Gamma[y_j] + (1 - beta_j) Gamma[y_partner[j]]``, and the
    loss is ``mean_j omega_j * mean_c KL_c(teacher || student)``.

    Two quirks of the reference code are kept, each for its reason:
    the partner's weight uses the teacher's label of the *mixed* sample
    ``mixed_partner[j]``, not of ``u_partner[j]`` (quirk (ii): both reference codes
    do this, and the alternative costs a third forward pass); and the KL is
    averaged over classes (``nn.KLDivLoss(reduce=False)(...).mean(1)``), not
    summed, which scales the term by 1/C: that scale is part of the
    reference's balance between the two terms.
    """
    teacher_labels = teacher_logits.argmax(1)
    omega = beta * gamma[teacher_labels] + (1 - beta) * gamma[teacher_labels[partner]]
    kl = F.kl_div(
        F.log_softmax(student_logits, dim=1), F.log_softmax(teacher_logits, dim=1),
        reduction="none", log_target=True,
    )
    return (omega * kl.mean(1)).mean()


@register_objective("kcfu")
class KCFU(Objective):
    """KAFAL's Knowledge-Compensatory Federated Update (Cao et al., ICCV 2023; spec 4.3).

    ``L = CE(f(x) + log n, y) + 1[round >= start] * compensation(mixed unlabeled batch)``:
    a balanced softmax on the labeled batch (logit adjustment by the client's
    class counts; classes without labels get logit -inf, which no target ever
    is, so the loss and its gradient stay finite) plus the distillation of
    :func:`kcfu_compensation` from the received global model. One unlabeled
    batch of the labeled batch size per labeled batch, as the reference code.
    The mixing weights come from Beta(``kafal-mixup-beta``, same), the partner
    from ``kafal-mixup-partner``; ``kafal-teacher-batchnorm`` sets the
    teacher's BatchNorm mode.
    """

    needs = frozenset({"class-counts", "teacher", "unlabeled", "round"})
    description = "KAFAL KCFU: balanced softmax on labels + class-weighted mixup distillation from the global model"

    def __init__(self, inputs: ObjectiveInputs, cfg: "RunConfig | None" = None) -> None:
        super().__init__(inputs, cfg)
        from fal_shared.settings.kafal import KafalSettings

        settings = cfg if cfg is not None else KafalSettings()
        self.beta_param = float(settings.kafal_mixup_beta)
        self.partner_mode = settings.kafal_mixup_partner
        self.start_round = int(settings.kafal_compensation_start_round)
        counts = torch.as_tensor(inputs.class_counts, dtype=torch.float32)
        self.log_counts = torch.log(counts)  # -inf for classes without labels
        self.gamma = compensation_weights(counts)
        self.teacher = inputs.teacher
        self.teacher.train(settings.kafal_teacher_batchnorm == "batch")
        self.compensating = inputs.round_index + 1 >= self.start_round
        self.betas: torch.Tensor | None = None
        self.partners: torch.Tensor | None = None

    @property
    def uses_unlabeled(self) -> bool:  # no pool batches before the start round
        return self.compensating

    def prepare(self, steps, unlabeled_batch, rng, device):
        self.log_counts = self.log_counts.to(device)
        self.gamma = self.gamma.to(device)
        self.compensating = self.compensating and unlabeled_batch > 0 and steps > 0
        if not self.compensating:
            return
        self.teacher.to(device)
        b = unlabeled_batch
        betas = rng.beta(self.beta_param, self.beta_param, size=(steps, b)).astype(np.float32)
        if self.partner_mode == "permutation":
            partners = np.stack([rng.permutation(b) for _ in range(steps)])
        else:  # one partner for the whole batch (ycao5602/KAFAL)
            partners = np.repeat(rng.integers(0, b, size=(steps, 1)), b, axis=1)
        self.betas = torch.as_tensor(betas, device=device)
        self.partners = torch.as_tensor(partners, device=device)

    def loss(self, model, xb, yb, ub, step):
        logits, _ = model(xb)
        loss = F.cross_entropy(logits.float() + self.log_counts, yb)
        if ub is None or not self.compensating:
            # before the start round nothing is computed on unlabeled data (the reference
            # computes the term and multiplies it by 0, which also moves the student's
            # BatchNorm running statistics; FedAvg and bn-statistics make that moot)
            return loss, logits
        beta, partner = self.betas[step], self.partners[step]
        shape = (-1,) + (1,) * (ub.dim() - 1)
        mixed = beta.view(shape) * ub + (1 - beta.view(shape)) * ub.index_select(0, partner)
        with torch.no_grad():
            teacher_logits, _ = self.teacher(mixed)
        student_logits, _ = model(mixed)
        return loss + kcfu_compensation(student_logits.float(), teacher_logits.float(), beta, partner, self.gamma), logits


# ---------------------------------------------------------------------- EDL
def dirichlet_kl_to_uniform(alpha: torch.Tensor) -> torch.Tensor:
    """``KL(Dir(alpha) || Dir(1, ..., 1))`` per row (FEAL utils/loss_func.py kl_divergence)."""
    s = alpha.sum(dim=1)
    k = alpha.shape[1]
    return (
        torch.lgamma(s) - torch.lgamma(alpha).sum(dim=1) - math.lgamma(k)
        + ((alpha - 1) * (torch.digamma(alpha) - torch.digamma(s)[:, None])).sum(dim=1)
    )


def edl_loss(
    logits: torch.Tensor, y: torch.Tensor, prior: torch.Tensor, annealing: float, kl_weight: float
) -> torch.Tensor:
    """FEAL's evidential loss (spec 5.1, FEAL utils/loss_func.py EDL_Loss).

    With ``alpha = ReLU(logits) + 1``, ``S = sum alpha``, one-hot ``y`` and the
    client's labeled class proportions ``prior``:
    ``L_ce = mean_batch sum_k (2 - prior_k) y_k (digamma(S) - digamma(alpha_k))``,
    ``L_kl = annealing * mean_batch KL(Dir(alpha~) || Dir(1))`` with
    ``alpha~ = (alpha - 1)(1 - y) + 1`` (the evidence of the wrong classes),
    ``L_cor = mean_batch sum_k -(K / stopgrad(S)) y_k logit_k``;
    ``L = L_ce + kl_weight (L_kl + L_cor)``. Finite everywhere: alpha >= 1.
    """
    n, k = logits.shape
    alpha = evidential_alpha(logits)
    s = alpha.sum(dim=1, keepdim=True)
    onehot = F.one_hot(y, k).to(logits.dtype)
    loss_ce = ((2 - prior) * onehot * (torch.digamma(s) - torch.digamma(alpha))).sum() / n
    alpha_wrong = (alpha - 1) * (1 - onehot) + 1
    loss_kl = annealing * dirichlet_kl_to_uniform(alpha_wrong).mean()
    loss_cor = (-(k / s.detach()) * onehot * logits).sum() / n
    return loss_ce + kl_weight * (loss_kl + loss_cor)


@register_objective("edl")
class EvidentialLoss(Objective):
    """FEAL's evidential deep learning loss (Chen et al., CVPR 2024; spec 5.1); the model's head is evidential.

    ``prior`` = the client's labeled class proportions; the KL term is annealed
    by ``min(1, t / feal-annealing-step)`` with t the FedAvg round within the
    cycle from 0 (FEAL ``train(round_idx=...)``).
    """

    head = "evidential"
    needs = frozenset({"class-counts", "round"})
    description = "FEAL EDL: evidential (Dirichlet) loss with class-prior weights, annealed KL and correction term"

    def __init__(self, inputs: ObjectiveInputs, cfg: "RunConfig | None" = None) -> None:
        super().__init__(inputs, cfg)
        from fal_shared.settings.feal import FealSettings

        settings = cfg if cfg is not None else FealSettings()
        counts = torch.as_tensor(inputs.class_counts, dtype=torch.float32)
        self.prior = counts / counts.sum() if counts.sum() > 0 else counts
        self.annealing = min(1.0, inputs.round_index / settings.feal_annealing_step)
        self.kl_weight = float(settings.feal_kl_weight)

    def prepare(self, steps, unlabeled_batch, rng, device):
        self.prior = self.prior.to(device)

    def loss(self, model, xb, yb, ub, step):
        logits, _ = model(xb)
        return edl_loss(logits.float(), yb, self.prior, self.annealing, self.kl_weight), logits
