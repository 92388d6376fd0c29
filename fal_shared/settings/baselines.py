"""Run-config settings of the classification baselines (spec sections 3, 6 and 7).

BADGE and Core-Set have no constants of their own: their main choice, the query
model, is the core setting ``query-model`` (shared with ``entropy``). Noise
Stability and LoGo pin the constants of their reference code here. The
``*-variant`` settings select the AHFAL paper's own versions of BADGE, Noise
Stability and LoGo (dgitj/FAL), which are different algorithms
(:mod:`query.baseline_variants`).
"""

from __future__ import annotations

from typing import Literal

from fal_shared.settings.common import SettingsBase, setting  # noqa: F401

_AHFAL_CODE = "dgitj/FAL (the AHFAL paper's code) query_strategies/"


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
    badge_variant: Literal["last-layer-seeding", "input-gradient-kmeans"] = setting(
        "last-layer-seeding", "badge-variant",
        "BADGE: last-layer-seeding = the BADGE authors' method: k-means++ seeding (largest norm first, then D^2 "
        "sampling) on the last-layer gradient embeddings h (x) (onehot(argmax p) - p). input-gradient-kmeans = the "
        "AHFAL paper's version: gradient of -logit[argmax] with respect to the input pixels, KMeans(n_clusters="
        "budget, n_init=10) on them in float64, and each centre's nearest unpicked pool sample.",
        source="JordanAsh/badge badge_sampling.py; " + _AHFAL_CODE + "badge.py; spec 7",
    )
    noise_stability_variant: Literal["output-kcenter", "feature-topk"] = setting(
        "output-kcenter", "noise-stability-variant",
        "Noise Stability: output-kcenter = the authors' method: noise on every module's weight (||xi|| "
        "normalised), softmax-output deviations / ||out0|| concatenated over the copies, k-center greedy from the "
        "origin. feature-topk = the AHFAL paper's version: noise on every parameter, biases included, scaled by the "
        "norm of a second independent draw; score = mean absolute deviation of the penultimate features over the "
        "copies and dimensions; top-budget scores (noise-stability-subset-size applies to both).",
        source="lixingjian/AL-noise-stability noise_stability.py; " + _AHFAL_CODE + "noise_stability.py; spec 6.1",
    )
    logo_variant: Literal["local-only-badge-block", "local-features"] = setting(
        "local-only-badge-block", "logo-variant",
        "LoGo's macro step: local-only-badge-block = the LoGo authors': KMeans on (1 - p_max) h of the local-only "
        "model (trained from scratch on the client's labels), in float64. local-features = the AHFAL paper's "
        "version: KMeans on the raw penultimate features h of the client's local (FL-trained) model, in float32. "
        "The micro step (highest global-model entropy per cluster) is the same.",
        source="raymin0223/LoGo query_strategies/fal/logo.py; " + _AHFAL_CODE + "logo.py; spec 3.1",
    )
