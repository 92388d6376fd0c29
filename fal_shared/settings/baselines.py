"""Run-config settings of the classification baselines (spec sections 3, 6 and 7).

BADGE and Core-Set have no constants of their own: their only choice, the query
model, is the core setting ``query-model`` (shared with ``entropy``). Noise
Stability and LoGo pin the constants of their reference code here.
"""

from __future__ import annotations

from fal_shared.settings.common import SettingsBase, setting  # noqa: F401


class BaselineSettings(SettingsBase):
    """Settings of the classification baselines (spec sections 3, 6, 7); keys are prefixed with the method name."""

    noise_stability_num_copies: int = setting(
        30, "noise-stability-num-copies",
        "Noise Stability: number K of noisy copies of the query model; the deviation embedding has K x C dimensions.",
        unit="copies", source="AL-noise-stability run.sh -k 30 (argparse default 50); spec 6.1", ge=1,
    )
    noise_stability_noise_scale: float = setting(
        0.001, "noise-stability-noise-scale",
        "Noise Stability: Frobenius norm of the Gaussian noise added to each weight tensor, relative to that tensor's "
        "norm (every module with a weight, BatchNorm included; biases untouched).",
        unit="fraction of the weight norm", source="AL-noise-stability config NOISE_SCALE; spec 6.1", gt=0,
    )
    noise_stability_subset_size: int = setting(
        10000, "noise-stability-subset-size",
        "Noise Stability: random subset of the client's pool scored per query (at least the budget); 0 = the whole pool.",
        unit="samples", source="AL-noise-stability configs SUBSET (default 10000, CIFAR-10 25000); spec 6.1", ge=0,
    )
    logo_kmeans_n_init: int = setting(
        10, "logo-kmeans-n-init",
        "LoGo: KMeans restarts (pinned: newer sklearn defaults to n_init='auto' = 1, which changes results).",
        unit="restarts", source="LoGo logo.py with sklearn 1.0.1 KMeans defaults; spec 3.3", ge=1,
    )
    logo_kmeans_max_iter: int = setting(
        300, "logo-kmeans-max-iter",
        "LoGo: KMeans iterations per restart.",
        unit="iterations", source="sklearn KMeans default used by LoGo logo.py; spec 3.1", ge=1,
    )
