"""Local training, batched inference and evaluation (plain PyTorch, no Flower).

Used by the ClientApp (local FedAvg updates, local-only models, scoring the
pool) and by the ServerApp (central evaluation of the global model).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = [
    "TrainSettings",
    "Prediction",
    "pick_device",
    "to_tensor",
    "train_model",
    "predict",
    "evaluate",
]


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` takes the GPU when one is present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA device is present")
    return torch.device(name)


def to_tensor(
    x: np.ndarray,
    device: torch.device,
    normalize: tuple[float, np.ndarray, np.ndarray] | None = None,
) -> torch.Tensor:
    """Convert a batch to float32 on ``device``.

    ``normalize = (scale, mean, std)`` maps stored codes (e.g. uint8 pixels) to
    ``(x * scale - mean[c]) / std[c]`` per channel; None leaves values as they are.
    """
    t = torch.as_tensor(np.require(x, requirements=["C", "W"]), device=device).float()
    if normalize is not None:
        scale, mean, std = normalize
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32), device=device)
        std_t = torch.as_tensor(np.asarray(std, dtype=np.float32), device=device)
        shape = (1, -1) + (1,) * (t.dim() - 2)
        t = (t * float(scale) - mean_t.view(shape)) / std_t.view(shape)
    return t


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of one call of :func:`train_model`."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    optimizer: str = "sgd"  # "sgd" | "adam"
    lr_milestones: tuple[int, ...] = ()  # epochs after which lr *= lr_gamma
    lr_gamma: float = 0.1
    early_stop_accuracy: float | None = None  # stop when train accuracy >= this
    task: str = "classification"  # "classification" | "regression"


@dataclass
class TrainReport:
    epochs_run: int = 0
    final_loss: float = float("nan")
    train_accuracy: float | None = None
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)


def train_model(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    settings: TrainSettings,
    *,
    seed: int,
    device: torch.device,
    normalize: tuple[float, np.ndarray, np.ndarray] | None = None,
) -> TrainReport:
    """Train ``model`` in place on ``(x, y)``; shuffling is seeded by ``seed``.

    The learning-rate schedule steps once per *epoch* (the LoGo/FairFAL code
    steps per batch, a bug the spec tells us not to copy).
    """
    report = TrainReport()
    n = len(x)
    if n == 0:
        return report
    start = time.perf_counter()
    model.to(device).train()
    if settings.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
    else:
        opt = torch.optim.SGD(
            model.parameters(),
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=list(settings.lr_milestones), gamma=settings.lr_gamma
    )
    regression = settings.task == "regression"
    loss_fn = nn.MSELoss() if regression else nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    y_t = torch.as_tensor(y, device=device)
    y_t = y_t.float().view(-1, 1) if regression else y_t.long()
    for epoch in range(settings.epochs):
        order = rng.permutation(n)
        total, correct, loss_sum = 0, 0, 0.0
        for start_idx in range(0, n, settings.batch_size):
            idx = order[start_idx : start_idx + settings.batch_size]
            if len(idx) == 1 and n > 1 and any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
                continue  # BatchNorm cannot train on a single sample
            xb = to_tensor(x[idx], device, normalize)
            yb = y_t[torch.as_tensor(idx, device=device)]
            logits, _ = model(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            total += len(idx)
            if not regression:
                correct += int((logits.detach().argmax(1) == yb).sum())
        sched.step()
        report.epochs_run = epoch + 1
        report.final_loss = loss_sum / max(total, 1)
        report.losses.append(report.final_loss)
        if not regression:
            report.train_accuracy = correct / max(total, 1)
            if (
                settings.early_stop_accuracy is not None
                and report.train_accuracy >= settings.early_stop_accuracy
            ):
                break
    report.seconds = time.perf_counter() - start
    return report


@dataclass
class Prediction:
    """Outputs of a model on a set of samples.

    ``outputs`` are softmax probabilities (classification) or predictions
    (regression, shape (n,)); ``logits`` the raw outputs; ``features`` the
    penultimate features.
    """

    outputs: np.ndarray
    logits: np.ndarray
    features: np.ndarray


@torch.no_grad()
def predict(
    model: nn.Module,
    x: np.ndarray,
    *,
    batch_size: int,
    device: torch.device,
    task: str = "classification",
    normalize: tuple[float, np.ndarray, np.ndarray] | None = None,
    with_features: bool = True,
) -> Prediction:
    """Batched inference under ``torch.no_grad()`` in eval mode."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    model.to(device).eval()
    logits_parts, feature_parts = [], []
    for start in range(0, len(x), batch_size):
        xb = to_tensor(x[start : start + batch_size], device, normalize)
        logits, features = model(xb)
        logits_parts.append(logits.float().cpu())
        if with_features:
            feature_parts.append(features.float().cpu())
    if logits_parts:
        logits = torch.cat(logits_parts)
    else:  # empty input: shapes from a dry run are not worth it, keep 0 rows
        logits = torch.zeros((0, getattr(model.head, "out_features", 1)))
    feats = (
        torch.cat(feature_parts).numpy()
        if feature_parts
        else np.zeros((len(x), getattr(model, "feature_dim", 0)), dtype=np.float32)
    )
    if task == "regression":
        outputs = logits.view(-1).numpy()
    else:
        outputs = torch.softmax(logits, dim=1).numpy()
    return Prediction(outputs=outputs, logits=logits.numpy(), features=feats)


def evaluate(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    task: str = "classification",
    normalize: tuple[float, np.ndarray, np.ndarray] | None = None,
) -> dict[str, object]:
    """Accuracy, per-class accuracy and loss (classification) or MSE (regression)."""
    pred = predict(
        model, x, batch_size=batch_size, device=device, task=task,
        normalize=normalize, with_features=False,
    )
    if task == "regression":
        err = pred.outputs - y
        return {"mse": float(np.mean(err**2)) if len(y) else float("nan"), "num-examples": len(y)}
    logits = torch.as_tensor(pred.logits)
    loss = float(nn.functional.cross_entropy(logits, torch.as_tensor(np.asarray(y, dtype=np.int64).copy()))) if len(y) else float("nan")
    predicted = pred.outputs.argmax(1) if len(y) else np.zeros(0, dtype=np.int64)
    correct = predicted == y
    correct_per_class = np.bincount(y[correct], minlength=num_classes)[:num_classes]
    count_per_class = np.bincount(y, minlength=num_classes)[:num_classes]
    per_class = [float(c / k) if k else float("nan") for c, k in zip(correct_per_class, count_per_class)]
    return {
        "accuracy": float(correct.mean()) if len(y) else float("nan"),
        "loss": loss,
        "per-class-accuracy": per_class,
        "correct-per-class": [int(v) for v in correct_per_class],
        "count-per-class": [int(v) for v in count_per_class],
        "num-examples": len(y),
    }
