"""BatchNorm running statistics that match the weights they are used with.

Why this exists (docs/explanation/batchnorm.md): a BatchNorm layer normalises with the
batch's statistics in training and with its *running* statistics in eval mode
(evaluation, pool scoring). The running statistics are an exponential moving
average (momentum 0.1) over the last few training steps. Two things make them
wrong in federated active learning:

* few, fast steps: a client with 100 labels and batch 32 takes 4 steps per
  epoch at lr 0.1; the average lags weights that move quickly (measured here:
  a centrally trained ResNet-8 at 92% training accuracy scored 40% in eval
  mode and 88% once its statistics were recomputed);
* averaging: FedAvg averages each client's running mean and variance, but the
  variance of a mixture is the mean of the variances *plus* the spread of the
  client means, which under label skew (Dirichlet alpha 0.1) is large, so the
  aggregated model divides by too small a variance and predicts one class.

The fix is "precise BN" (Wu & Johnson 2021, "Rethinking 'Batch' in
BatchNorm"): after training, run the final weights over data in training mode
and set the running statistics to the population moments. Federated, every
client sends per-channel *sums* (count, sum of x, sum of x^2) of every BN
layer's input over its own data, and the server pools them; sums add, so the
pooled mean and variance are exact for the union of the clients' data (and a
secure summation could hide each client's share). Written here rather than
with ``torch.optim.swa_utils.update_bn`` because that function averages
per-batch variances with equal weight, which cannot be pooled across clients
exactly.

Cost (``bn-statistics-samples``): a client need not run its whole partition
through the model. It draws a seeded random subset of ``m`` of its ``n``
samples (:func:`statistics_rows`) and scales its sums by ``n / m``
(:func:`scaled_sums`), so the pooled moments are an unbiased estimate of the
union's, with every client weighted by its data size as before. Precise BN
needs a few thousand samples in all, not a pass over all the data.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fal_shared.training import Normalize, _normalized, on_device

__all__ = [
    "batchnorm_layers",
    "scaled_sums",
    "statistics_rows",
    "has_batchnorm",
    "moment_sums",
    "pooled_statistics",
    "install_statistics",
    "recompute_statistics",
]


def batchnorm_layers(model: nn.Module) -> "OrderedDict[str, nn.modules.batchnorm._BatchNorm]":
    """BatchNorm layers that track running statistics, by module name."""
    return OrderedDict(
        (name, m) for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    )


def has_batchnorm(model: nn.Module) -> bool:
    return bool(batchnorm_layers(model))


@torch.no_grad()
def moment_sums(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    normalize: Normalize | None = None,
) -> dict[str, np.ndarray]:
    """Per-channel moment sums of every BN layer's input over ``x``, in training mode.

    Returns ``{"<layer>.count": (1,), "<layer>.sum": (C,), "<layer>.sumsq": (C,)}``
    (float64). The forward pass normalises with batch statistics, as in
    training; ``model`` is left unchanged (its running buffers are restored).
    """
    layers = batchnorm_layers(model)
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    sums: dict[str, list] = {name: [0.0, None, None] for name in layers}

    def hook(name: str):
        def fn(_module, inputs, _output) -> None:
            t = inputs[0].detach().double()
            dims = [0] + list(range(2, t.dim()))
            entry = sums[name]
            entry[0] += t.numel() / t.shape[1]
            s, sq = t.sum(dims), (t * t).sum(dims)
            entry[1] = s if entry[1] is None else entry[1] + s
            entry[2] = sq if entry[2] is None else entry[2] + sq
        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    try:
        model.to(device).train()
        x_dev = on_device(x, device)
        n = len(x_dev)
        for start in range(0, n, batch_size):
            if n > 1 and n - start == 1:
                break  # BatchNorm cannot normalise one sample in training mode
            model(_normalized(x_dev[start : start + batch_size], normalize))
    finally:
        for h in handles:
            h.remove()
        model.load_state_dict(saved)
        model.train(was_training)
    out: dict[str, np.ndarray] = {}
    for name, (count, s, sq) in sums.items():
        channels = layers[name].num_features
        out[f"{name}.count"] = np.array([count], dtype=np.float64)
        out[f"{name}.sum"] = s.cpu().numpy() if s is not None else np.zeros(channels)
        out[f"{name}.sumsq"] = sq.cpu().numpy() if sq is not None else np.zeros(channels)
    return out


def statistics_rows(n: int, samples: int, seed: Sequence[int]) -> np.ndarray:
    """Sorted positions of the rows (of ``n``) whose BatchNorm statistics a client computes.

    ``samples`` rows drawn without replacement from ``numpy.random.default_rng(seed)``
    (the same seed gives the same rows); all ``n`` rows when ``samples`` is 0 or
    at least ``n`` (``bn-statistics-samples``).
    """
    if samples < 0:
        raise ValueError(f"bn-statistics-samples must be >= 0, got {samples}")
    if samples == 0 or samples >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([int(v) for v in seed])
    return np.sort(rng.choice(n, size=samples, replace=False)).astype(np.int64)


def scaled_sums(sums: dict[str, np.ndarray], factor: float) -> dict[str, np.ndarray]:
    """Moment sums of a subsample scaled to stand for the whole partition (``factor`` = n / m).

    Counts, sums and sums of squares all scale, so the client's mean and
    variance are unchanged and its weight in :func:`pooled_statistics` is its
    partition size.
    """
    return {k: v * factor for k, v in sums.items()}


def pooled_statistics(parts: list[dict[str, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Running mean and (unbiased) variance per layer from the clients' moment sums.

    Layers no client saw any data for are left out (their buffers stay).
    """
    if not parts:
        return {}
    names = [k[: -len(".count")] for k in parts[0] if k.endswith(".count")]
    stats = {}
    for name in names:
        count = sum(float(p[f"{name}.count"][0]) for p in parts)
        if count <= 1:
            continue
        s = np.sum([p[f"{name}.sum"] for p in parts], axis=0)
        sq = np.sum([p[f"{name}.sumsq"] for p in parts], axis=0)
        mean = s / count
        var = np.maximum(sq / count - mean * mean, 0.0) * count / (count - 1)
        stats[name] = (mean, var)
    return stats


def install_statistics(state: dict[str, torch.Tensor], stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
    """A copy of the state dict with every layer's running mean/var replaced."""
    new = dict(state)
    for name, (mean, var) in stats.items():
        for key, value in ((f"{name}.running_mean", mean), (f"{name}.running_var", var)):
            if key not in new:
                raise KeyError(f"BatchNorm statistics for {name!r}, but the model has no buffer {key!r}")
            new[key] = torch.as_tensor(value, dtype=new[key].dtype)
    return new


def recompute_statistics(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    normalize: Normalize | None = None,
) -> nn.Module:
    """Set ``model``'s running statistics to the moments of its layers' inputs over ``x`` (in place)."""
    if not has_batchnorm(model) or len(x) < 2:
        return model
    stats = pooled_statistics([moment_sums(model, x, batch_size=batch_size, device=device, normalize=normalize)])
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    model.load_state_dict(install_statistics(state, stats))
    return model
