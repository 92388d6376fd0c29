"""The AHFAL paper's versions of BADGE, Noise Stability and LoGo (dgitj/FAL), as selectable variants.

The AHFAL paper (shared/papers/ahfal.txt) re-benchmarks BADGE, Noise Stability
and LoGo with its own implementations (dgitj/FAL ``query_strategies/``), which
are different algorithms from the methods' authors' code that the defaults of
:mod:`query.baselines` follow. To compare with the AHFAL paper's numbers, each
is a value of a run-config setting (``badge-variant``, ``noise-stability-variant``,
``logo-variant``); ``tests/test_parity_selection.py`` checks each against the
authors' function. Re-implemented from their behaviour, not copied:

* ``badge-variant=input-gradient-kmeans`` (dgitj/FAL ``badge.py``): the embedding
  is the gradient of ``-logit[argmax]`` with respect to the **input pixels** (not
  the last layer's weights), and the selection is a full ``KMeans(n_clusters=B,
  n_init=10)`` (not k-means++ seeding) followed by, for every centre, its
  nearest pool sample (the next nearest if that one was already taken). They
  fit KMeans on a torch tensor, which scikit-learn converts to float64; so do we.
* ``noise-stability-variant=feature-topk`` (dgitj/FAL ``noise_stability.py``):
  every parameter (weights **and biases**) of each of K copies gets Gaussian
  noise ``xi * scale * ||W|| / ||xi'||``, where ``xi'`` is a **second, independent**
  draw (not ``||xi||``); the score is the mean over the K copies and over the
  feature dimensions of ``|h_k(x) - h(x)|`` of the **penultimate features**, and
  the top-B scores are selected (no k-center greedy).
* ``logo-variant=local-features`` (dgitj/FAL ``logo.py``): KMeans on the raw
  penultimate features of the client's **local** (FL-trained) model, not on
  ``(1 - p_max) h`` of a local-only model; clustering in float32 (they pass a
  numpy float32 array). The micro step (global-model entropy) is the same.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

__all__ = ["InputGradient", "feature_noise_scores", "kmeans_closest", "perturb_every_parameter"]


class InputGradient(nn.Module):
    """Wraps a model so that ``predict`` returns, as features, the input gradient of ``-logit[argmax]``.

    ``forward`` re-enables autograd (``predict`` runs under ``no_grad``) and
    differentiates ``-sum_i logit_i[argmax_i]`` with respect to the batch; in eval
    mode each sample's gradient depends on that sample only, so the batch size
    does not matter. Returns ``(logits, gradient flattened per sample)``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.head = getattr(model, "head", None)  # predict reads head.out_features for empty inputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            logits, _ = self.model(x)
            picked = logits.gather(1, logits.argmax(dim=1, keepdim=True))
            (grad,) = torch.autograd.grad(-picked.sum(), x)
        return logits.detach(), grad.reshape(len(x), -1)


def _kmeans(points: np.ndarray, n_clusters: int, random_state: int, n_init: int, max_iter: int):
    from sklearn.cluster import KMeans  # about 2 s of CPU to import: only in the processes that cluster
    from sklearn.exceptions import ConvergenceWarning

    km = KMeans(n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, random_state=random_state)
    # threads follow the client's torch thread budget (see query.baselines.logo_kmeans)
    with warnings.catch_warnings(), threadpool_limits(limits=torch.get_num_threads()):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return km.fit(points)


def kmeans_closest(points: np.ndarray, budget: int, random_state: int, *, n_init: int = 10, max_iter: int = 300) -> np.ndarray:
    """``KMeans(n_clusters=budget)`` on ``points`` (float64), then each centre's nearest point, in centre order.

    A centre whose nearest point was already taken gets its nearest point not yet
    taken (dgitj/FAL takes the second nearest even if that one is taken too, and
    could then return a duplicate; that case does not arise on their inputs).
    """
    x = np.asarray(points, dtype=np.float64)
    km = _kmeans(x, budget, random_state, n_init, max_iter)
    taken = np.zeros(len(x), dtype=bool)
    picks = []
    for center in km.cluster_centers_:
        dist = np.linalg.norm(x - center, axis=1)
        dist[taken] = np.inf
        j = int(np.argmin(dist))
        taken[j] = True
        picks.append(j)
    return np.asarray(picks, dtype=np.intp)


def perturb_every_parameter(model: nn.Module, relative_scale: float, generator: torch.Generator) -> None:
    """dgitj/FAL's noise: ``p += xi * scale * ||p|| / ||xi'||`` for every trainable parameter with ``||p|| > 0``.

    ``xi`` and ``xi'`` are two successive draws of the generator (CPU), in
    ``model.parameters()`` order; a parameter of norm 0 draws nothing.
    """
    with torch.no_grad():
        for param in model.parameters():
            if not param.requires_grad:
                continue
            norm = param.norm()
            if norm > 0:
                xi = torch.randn(param.shape, generator=generator, dtype=param.dtype)
                xi_norm = torch.randn(param.shape, generator=generator, dtype=param.dtype).norm()
                if xi_norm > 0:
                    param.add_((xi * relative_scale * norm.cpu() / xi_norm).to(param.device))


def feature_noise_scores(
    model: nn.Module, x: np.ndarray, predict, *, num_copies: int, relative_scale: float, generator: torch.Generator,
) -> np.ndarray:
    """Mean over K noisy copies and the feature dimensions of ``|h_k(x) - h(x)|`` (penultimate features)."""
    base = predict(model, x).features
    total = np.zeros_like(base)
    for _ in range(num_copies):
        noisy = copy.deepcopy(model)
        perturb_every_parameter(noisy, relative_scale, generator)
        total += np.abs(predict(noisy, x).features - base)
        del noisy
    return (total / num_copies).mean(axis=1)
