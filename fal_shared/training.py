"""Local training, batched inference and evaluation (plain PyTorch, no Flower).

Used by the ClientApp (local FedAvg updates, local-only models, scoring the
pool) and by the ServerApp (central evaluation of the global model).
"""

from __future__ import annotations

import time
import weakref
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fal_shared.heads import HEADS, head_of
from fal_shared.objectives import CrossEntropy, Objective, ObjectiveInputs, unlabeled_batch_rows

__all__ = [
    "TrainSettings",
    "Prediction",
    "pick_device",
    "to_tensor",
    "on_device",
    "DeviceCache",
    "DEVICE_CACHE",
    "PRECISIONS",
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


Normalize = tuple[float, "np.ndarray | tuple[float, ...]", "np.ndarray | tuple[float, ...]"]


def _normalized(t: torch.Tensor, normalize: Normalize | None) -> torch.Tensor:
    """Stored codes -> float32 inputs: ``(x * scale - mean[c]) / std[c]`` per channel.

    The same element-wise operations in the same order for every caller, so a
    batch normalised here equals the one the CPU path produced before inputs
    were kept on the device (bit for bit).
    """
    t = t.float()
    if normalize is not None:
        scale, mean, std = normalize
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32), device=t.device)
        std_t = torch.as_tensor(np.asarray(std, dtype=np.float32), device=t.device)
        shape = (1, -1) + (1,) * (t.dim() - 2)
        t = (t * float(scale) - mean_t.view(shape)) / std_t.view(shape)
    return t


def to_tensor(x: np.ndarray | torch.Tensor, device: torch.device, normalize: Normalize | None = None) -> torch.Tensor:
    """Convert a batch to float32 on ``device``.

    ``normalize = (scale, mean, std)`` maps stored codes (e.g. uint8 pixels) to
    ``(x * scale - mean[c]) / std[c]`` per channel; None leaves values as they are.
    """
    return _normalized(on_device(x, device), normalize)


def on_device(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` as a tensor on ``device`` in its stored dtype (uint8 pixels stay uint8: 4x less to copy).

    A tensor already there is returned as is; a numpy array is wrapped without a
    copy on the CPU and copied once otherwise.
    """
    if isinstance(x, torch.Tensor):
        return x if x.device == device else x.to(device)
    return torch.as_tensor(np.require(x, requirements=["C", "W"]), device=device)


class DeviceCache:
    """Whole arrays kept on a device while the host array lives (one copy per process).

    A client's partition and the server's test set are loaded once per process
    (``fal_shared.experiment_data`` caches them); keeping their device copies
    here lets every message of that process (each FedAvg round, each query)
    gather its batches on the device instead of copying them from the host
    again. Entries are keyed by the host array's identity and dropped when it
    is garbage-collected. On the CPU nothing is cached: the tensor is a
    zero-copy view of the array.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, str], tuple[weakref.ref, torch.Tensor]] = {}

    def get(self, x: np.ndarray, device: torch.device) -> torch.Tensor:
        if device.type == "cpu":  # a zero-copy view; caching it would keep the array alive
            return on_device(x, device)
        key = (id(x), str(device))
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is x:
            return entry[1]
        tensor = on_device(x, device)
        self._entries[key] = (weakref.ref(x, lambda _ref, key=key: self._entries.pop(key, None)), tensor)
        return tensor

    def rows(self, x: np.ndarray, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        """``x[rows]`` gathered on the device from the cached copy of ``x``."""
        full = self.get(x, device)
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=device)
        return full.index_select(0, index)

    def clear(self) -> None:
        self._entries.clear()


DEVICE_CACHE = DeviceCache()


PRECISIONS = ("fp32", "bf16")


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
    precision: str = "fp32"  # "fp32" | "bf16" (autocast of forward and loss; weights stay fp32)
    crop_padding: int = 0  # random-crop augmentation: pad by this many pixels, crop back (0 = off)
    flip: bool = False  # random horizontal flip augmentation


@dataclass
class TrainReport:
    epochs_run: int = 0
    final_loss: float = float("nan")
    train_accuracy: float | None = None
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    optimizer_state: dict[int, dict[str, torch.Tensor]] | None = None  # per-parameter state, when asked for


def _autocast(device: torch.device, precision: str):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def augment(xb: torch.Tensor, crop_padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop (zero padding, as torchvision's ``RandomCrop(padding=p)``) and flip, on the device.

    Written by hand because torchvision's transforms draw one crop per call:
    applying them per sample would bring a Python loop (and host work) back into
    the batch loop. ``xb`` holds stored codes (before normalisation), so the
    padding is pixel value 0 as in the reference code's ``RandomCrop`` on PIL images.
    """
    n, _, h, w = xb.shape
    if crop_padding > 0:
        p = crop_padding
        padded = torch.nn.functional.pad(xb, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), device=xb.device, generator=generator)
        dx = torch.randint(0, 2 * p + 1, (n,), device=xb.device, generator=generator)
        rows = (dy[:, None] + torch.arange(h, device=xb.device)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=xb.device)[None, :])[:, None, None, :]
        batch = torch.arange(n, device=xb.device)[:, None, None, None]
        chans = torch.arange(xb.shape[1], device=xb.device)[None, :, None, None]
        xb = padded[batch, chans, rows, cols]
    if flip:
        mask = torch.rand(n, device=xb.device, generator=generator) < 0.5
        xb = torch.where(mask[:, None, None, None], xb.flip(-1), xb)
    return xb


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def train_model(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    settings: TrainSettings,
    *,
    seed: int,
    device: torch.device,
    normalize: Normalize | None = None,
    optimizer_state: dict[int, dict[str, torch.Tensor]] | None = None,
    objective: Objective | None = None,
    unlabeled: np.ndarray | torch.Tensor | None = None,
) -> TrainReport:
    """Train ``model`` in place on ``(x, y)``; shuffling is seeded by ``seed``.

    The inputs go to the device once per call (or are already there: pass a
    tensor gathered from :data:`DEVICE_CACHE`) and batches are gathered and
    normalised on the device. Nothing inside the batch loop waits for the
    device: the loss and accuracy sums stay on it and are read once at the end
    (once per epoch only when early stopping needs the accuracy). On the CPU the
    arithmetic is the same as a plain loop over numpy batches, so results are
    unchanged bit for bit.

    The learning-rate schedule steps once per *epoch* (the LoGo/FairFAL code
    steps per batch, a bug the spec tells us not to copy).

    ``optimizer_state`` (per-parameter state by parameter position, e.g. SGD
    momentum buffers, from a previous call's ``report.optimizer_state``)
    continues an optimiser across calls; the hyper-parameters come from
    ``settings``. When it is given (``{}`` for a first call), the report
    carries the state at the end.

    ``objective`` (:mod:`fal_shared.objectives`; default: cross-entropy, MSE
    for regression) gives each batch's loss. One that uses unlabeled data gets
    with every labeled batch an unlabeled one from ``unlabeled``
    (:func:`~fal_shared.objectives.unlabeled_batch_rows`), gathered, augmented
    and normalised on the device the same way. Its randomness comes from a
    second stream of ``seed``: the labeled batches are those of cross-entropy.
    """
    report = TrainReport()
    n = len(x)
    if n == 0 or settings.epochs <= 0:
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
    params = [p for group in opt.param_groups for p in group["params"]]
    for i, state in (optimizer_state or {}).items():
        opt.state[params[i]] = {k: v.to(device) if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in state.items()}
    regression = settings.task == "regression"
    if objective is None:
        objective = CrossEntropy(ObjectiveInputs(num_classes=0, task=settings.task))
    rng = np.random.default_rng(seed)
    x_dev = on_device(x, device)
    y_t = on_device(y, device)
    y_t = y_t.float().view(-1, 1) if regression else y_t.long()
    augmenting = settings.crop_padding > 0 or settings.flip
    generator = torch.Generator(device=device).manual_seed(int(seed)) if augmenting else None
    skip_single = n > 1 and _has_batchnorm(model)  # BatchNorm cannot train on a single sample
    batch = settings.batch_size
    starts = [s for s in range(0, n, batch) if not (skip_single and min(batch, n - s) == 1)]

    def batch_of(source: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        xb = source.index_select(0, idx)
        if augmenting:
            xb = augment(xb, settings.crop_padding, settings.flip, generator)
        return _normalized(xb, normalize)

    # All epochs' permutations drawn up front (same numpy stream as before) and sent in one copy.
    orders = torch.as_tensor(np.stack([rng.permutation(n) for _ in range(settings.epochs)]), device=device)
    extra_rng = np.random.default_rng([int(seed), 1])  # the objective's stream; the labeled one is untouched
    rows = unlabeled_batch_rows(objective, unlabeled, settings.epochs, len(starts), batch, extra_rng)
    u_dev, u_orders = (None, None) if rows is None else (on_device(unlabeled, device), torch.as_tensor(rows, device=device))
    objective.prepare(settings.epochs * len(starts), 0 if rows is None else rows.shape[1], extra_rng, device)
    epoch_sums: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    step = 0
    for epoch in range(settings.epochs):
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        total = 0
        for start_idx in starts:
            size = min(batch, n - start_idx)
            idx = orders[epoch, start_idx : start_idx + size]
            xb = batch_of(x_dev, idx)
            yb = y_t.index_select(0, idx)
            ub = None if u_orders is None else batch_of(u_dev, u_orders[step])
            with _autocast(device, settings.precision):
                loss, logits = objective.loss(model, xb, yb, ub, step)
            step += 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().double() * size
            total += size
            if not regression:
                correct += (logits.detach().argmax(1) == yb).sum()
        sched.step()
        epoch_sums.append((loss_sum, correct, total))
        report.epochs_run = epoch + 1
        if settings.early_stop_accuracy is not None and not regression:
            if int(correct) / max(total, 1) >= settings.early_stop_accuracy:  # one sync per epoch, only here
                break
    for loss_sum, correct, total in epoch_sums:  # the only reads of device values
        report.losses.append(float(loss_sum) / max(total, 1))
        if not regression:
            report.train_accuracy = int(correct) / max(total, 1)
    report.final_loss = report.losses[-1]
    if optimizer_state is not None:
        report.optimizer_state = {
            i: {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state[p].items()}
            for i, p in enumerate(params) if p in opt.state
        }
    report.seconds = time.perf_counter() - start
    return report


@dataclass
class Prediction:
    """Outputs of a model on a set of samples.

    ``outputs`` are class probabilities (classification: softmax, or
    ``alpha / S`` for an evidential model, see :mod:`fal_shared.heads`) or
    predictions (regression, shape (n,)); ``logits`` the raw outputs;
    ``features`` the penultimate features; ``head`` how the logits were read.
    """

    outputs: np.ndarray
    logits: np.ndarray
    features: np.ndarray
    head: str = "softmax"

    def classes(self) -> np.ndarray:
        """Predicted class of each sample (classification)."""
        return HEADS.lookup(self.head).classes(self.logits, self.outputs)


@torch.no_grad()
def predict(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    task: str = "classification",
    normalize: Normalize | None = None,
    with_features: bool = True,
    precision: str = "fp32",
) -> Prediction:
    """Batched inference under ``torch.no_grad()`` in eval mode.

    Batches are gathered on the device and the outputs stay there until one
    copy to the host at the end (no synchronisation per batch).
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    model.to(device).eval()
    x_dev = on_device(x, device)
    n = len(x_dev)
    # outputs written into arrays of the final size, allocated at the first batch (a list of
    # batches and a torch.cat would hold them twice: 2 GiB of 256-wide features for a 1M pool)
    logits_all: torch.Tensor | None = None
    feats_all: torch.Tensor | None = None
    for start in range(0, n, batch_size):
        xb = _normalized(x_dev[start : start + batch_size], normalize)
        with _autocast(device, precision):
            logits, features = model(xb)
        stop = start + len(xb)
        if logits_all is None:
            logits_all = torch.empty((n, *logits.shape[1:]), dtype=torch.float32, device=logits.device)
            if with_features:
                feats_all = torch.empty((n, *features.shape[1:]), dtype=torch.float32, device=features.device)
        logits_all[start:stop] = logits.float()
        if feats_all is not None:
            feats_all[start:stop] = features.float()
    if logits_all is not None:
        logits = logits_all.cpu()
    else:  # empty input: shapes from a dry run are not worth it, keep 0 rows
        logits = torch.zeros((0, getattr(model.head, "out_features", 1)))
    feats = (
        feats_all.cpu().numpy()
        if feats_all is not None
        else np.zeros((n, getattr(model, "feature_dim", 0)), dtype=np.float32)
    )
    head = head_of(model)
    if task == "regression":
        outputs = logits.view(-1).numpy()
    else:
        outputs = head.probabilities(logits).numpy()
    return Prediction(outputs=outputs, logits=logits.numpy(), features=feats, head=head.name)


def evaluate(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray,
    *,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    task: str = "classification",
    normalize: Normalize | None = None,
    precision: str = "fp32",
) -> dict[str, object]:
    """Accuracy, per-class accuracy and loss (classification) or MSE (regression).

    The loss is the negative log-likelihood of the model's class probabilities
    (the cross-entropy of a softmax model), the accuracy that of its head's
    predicted class (:mod:`fal_shared.heads`).
    """
    pred = predict(
        model, x, batch_size=batch_size, device=device, task=task,
        normalize=normalize, with_features=False, precision=precision,
    )
    if task == "regression":
        err = pred.outputs - y
        return {"mse": float(np.mean(err**2)) if len(y) else float("nan"), "num-examples": len(y)}
    logits = torch.as_tensor(pred.logits)
    log_probs = HEADS.lookup(pred.head).log_probabilities(logits)  # log_softmax: the cross-entropy as before
    loss = float(nn.functional.nll_loss(log_probs, torch.as_tensor(np.asarray(y, dtype=np.int64).copy()))) if len(y) else float("nan")
    predicted = pred.classes() if len(y) else np.zeros(0, dtype=np.int64)
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
