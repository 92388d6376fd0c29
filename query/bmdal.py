"""Regression baselines on ``bmdal_reg``: BAIT, LCMD, ACS-FW, MaxDist, k-means++ and LoGo-BAIT (no Flower).

FALE's experiments (Sec. 5.1; spec section 7) ran these baselines locally on every client with the
BMDAL implementation of Holzmueller et al. (JMLR 2023), the ``bmdal-reg`` package, on the current
global linear model; so do these selectors: each is one call of ``bmdal_reg``'s ``select_batch``
with the client's pool, its labelled set and the query model (``query-model``, default the global
model). Nothing here re-implements a BMDAL kernel or selection rule.

============  ====================  ==========================  =========================
selector      BMDAL method          configuration setting       strategy
============  ====================  ==========================  =========================
``bait``      ``bait`` (F / FB)     ``bait-bmdal``              ``bait``
``lcmd``      ``lcmd``              ``lcmd-bmdal``              ``lcmd``
``acs-fw``    ``fw`` (Frank-Wolfe)  ``acs-fw-bmdal``            ``acs-fw``
``maxdist``   ``maxdist``           ``coreset-bmdal``           ``coreset`` on regression
``kmeanspp``  ``kmeanspp``          ``badge-bmdal``             ``badge`` on regression
``logo-bait`` BAIT scores           ``bait-bmdal``              ``logo-bait``
============  ====================  ==========================  =========================

``logo-bait`` is LoGo (Kim et al., CVPR 2023; spec 3.1) with the entropy replaced by BAIT, as FALE's
authors did: KMeans with ``budget`` clusters on the local-only model's penultimate features (the
regression counterpart of LoGo's ``(1 - p_max) h``: a regression head's last-layer gradient is
``h`` itself, there is no class probability to weight it), then in each cluster the pool sample
with the highest BAIT score of the global model (BMDAL's first greedy BAIT score,
``phi^T C phi / (k(x, x) + sigma^2)``), LoGo's round-robin fill when clusters run short.

For the single-layer linear model of FALE's experiments the ``ll`` and ``grad`` features are
``[x, 1]``: the selections do not depend on the model's weights, only on the pool, the labelled set
(and, for ``acs-rf-hyper``, its labels). ``tests/test_regression_baselines.py`` checks that, and the
benchmark's library path relies on it.

Randomness (sketches, random features, k-means++ draws, BMDAL's random fill-up after a failed
greedy step) comes from torch's and numpy's global generators inside ``bmdal_reg``; every call runs
under generators seeded from ``ctx.rng`` and restores them afterwards, so the same seed gives the
same picks and nothing else is disturbed.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fal_shared.settings.regression import BmdalSpec, RegressionBaselineSettings, parse_bmdal
from query.base import PoolContext, Selector, register_selector
from query.baselines import baseline_settings, check_finite, logo_cluster_pick, logo_kmeans, query_model_kind

__all__ = [
    "AcsFwSelector",
    "BaitSelector",
    "KmeansppSelector",
    "LcmdSelector",
    "LoGoBaitSelector",
    "MaxDistSelector",
    "bait_scores",
    "bmdal_select",
    "regression_settings",
]

_REGRESSION_KEYS = tuple(info.alias for info in RegressionBaselineSettings.model_fields.values())


def regression_settings(params: Mapping[str, Any]) -> RegressionBaselineSettings:
    """The regression-baseline settings in ``params`` (validated), defaults for the rest."""
    return RegressionBaselineSettings.model_validate({k: params[k] for k in _REGRESSION_KEYS if k in params})


# ------------------------------------------------------------------------------ bmdal_reg glue
class _NumpyWithInf(types.ModuleType):
    """numpy as ``bmdal_reg.bmdal.selection`` sees it, plus the ``np.Inf`` alias NumPy 2.0 removed.

    bmdal_reg 3.0.2 (the newest release, and its GitHub master) still writes ``np.Inf`` in every
    selection method, which raises AttributeError on NumPy >= 2.0 (this project needs NumPy 2).
    The alias is given to that one module only; numpy itself is not patched.
    """

    Inf = np.inf

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def _bmdal():
    """``bmdal_reg``'s ``select_batch``, ``BatchSelectorImpl``, BAIT and feature-data classes (lazy import)."""
    from bmdal_reg.bmdal import algorithms, selection
    from bmdal_reg.bmdal.feature_data import TensorFeatureData

    if not isinstance(selection.np, _NumpyWithInf):
        selection.np = _NumpyWithInf("numpy")
    return algorithms.BatchSelectorImpl, selection.BaitFeatureSpaceSelectionMethod, TensorFeatureData


class _OutputOnly(nn.Module):
    """The project's models return ``(outputs, features)``; BMDAL's gradient kernels need ``outputs`` only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's and numpy's global generators (bmdal_reg draws from them); restore both afterwards."""
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(state)


def _kernel_transforms(spec: BmdalSpec, sigma: float) -> list[tuple[str, list]]:
    """BMDAL's ``kernel_transforms`` list for ``spec``, with the arguments bmdal_reg's paper configs use."""
    args = {
        "train": lambda n: [sigma, None],
        "scale": lambda n: [None],
        "acs-grad": lambda n: [sigma, None],
        "rp": lambda n: [n],
        "acs-rf": lambda n: [n, sigma, None],
        "acs-rf-hyper": lambda n: [n, None],
    }
    return [(name, args[name](size)) for name, size in spec.transforms]


def _selector_impl(model, x_pool, x_train, y_train):
    impl, _, tensor_data = _bmdal()
    data = {
        "train": tensor_data(torch.as_tensor(np.asarray(x_train, dtype=np.float32))),
        "pool": tensor_data(torch.as_tensor(np.asarray(x_pool, dtype=np.float32))),
    }
    y = torch.as_tensor(np.asarray(y_train, dtype=np.float32).reshape(-1, 1))
    return impl([_OutputOnly(model).eval()], data, y)


def _run(impl, spec: BmdalSpec, method: str, budget: int, sigma: float, **config: Any):
    with warnings.catch_warnings():
        # bmdal_reg's backward hooks on a model whose inputs need no gradient, and its list indexing
        # of tensors, warn on every call with torch 2.x; neither changes a result
        warnings.filterwarnings("ignore", message=".*backward hook.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*non-tuple sequence.*", category=UserWarning)
        return impl.select(
            base_kernel=spec.base_kernel, kernel_transforms=_kernel_transforms(spec, sigma),
            selection_method=method, batch_size=budget, sel_with_train=spec.sel_with_train,
            # allow_float64: every configuration of bmdal_reg's paper (get_bmdal_configs)
            allow_float64=True, bait_sigma=sigma, verbosity=0, **config,
        )


def bmdal_select(
    model: nn.Module, x_pool: np.ndarray, x_train: np.ndarray, y_train: np.ndarray, spec: BmdalSpec,
    method: str, budget: int, *, sigma: float, seed: int, **config: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``bmdal_reg``'s ``select_batch`` on one client: ``budget`` pool positions and BMDAL's results dict."""
    with _seeded(seed):
        idxs, info = _run(_selector_impl(model, x_pool, x_train, y_train), spec, method, budget, sigma, **config)
    return idxs.cpu().numpy().astype(np.int64), info


def bait_scores(
    model: nn.Module, x_pool: np.ndarray, x_train: np.ndarray, y_train: np.ndarray, spec: BmdalSpec, *,
    sigma: float, seed: int,
) -> np.ndarray:
    """BMDAL's first greedy BAIT score of every pool sample, ``phi^T C phi / (k(x, x) + sigma^2 + 1e-8)``.

    ``C = Phi_pool^T Phi_pool + Phi_train^T Phi_train`` in the kernel of ``spec`` (P mode). bmdal_reg
    exposes the transformed kernel features only through a selector object after ``select()``, so
    a one-sample ``random`` selection builds them and BMDAL's own BAIT class scores them.
    """
    _, bait, _ = _bmdal()
    with _seeded(seed):
        impl = _selector_impl(model, x_pool, x_train, y_train)
        _run(impl, spec, "random", 1, sigma)
        method = bait(impl.features["pool"], impl.features["train"], sel_with_train=False, noise_sigma=sigma)
        scores = method.get_scores()
    return scores.detach().cpu().numpy().astype(np.float64)


# ------------------------------------------------------------------------------ selectors
def _query_model(ctx: PoolContext, who: str) -> tuple[str, nn.Module]:
    """The query model (``query-model``), after checking its predictions on the pool and labelled set."""
    if ctx.task != "regression":
        raise ValueError(f"{who}: a regression baseline (BMDAL); the task here is {ctx.task}")
    _need_labels(ctx, who)
    kind = query_model_kind(ctx.params)
    check_finite(ctx.models.pool(kind).outputs, f"{who}: predictions of the {kind} model on the pool")
    check_finite(ctx.models.labeled(kind).outputs, f"{who}: predictions of the {kind} model on the labeled set")
    return kind, ctx.models.model(kind)


def _need_labels(ctx: PoolContext, who: str) -> None:
    if not len(ctx.labeled_ids):
        raise ValueError(
            f"{who}: bmdal_reg conditions on the labeled set and needs at least one labeled sample on every client "
            "(initial-labeled-fraction gives each client at least one)"
        )


class _BmdalSelector(Selector):
    """One ``select_batch`` call; subclasses name the BMDAL method and the configuration setting."""

    method: ClassVar[str] = ""
    setting: ClassVar[str] = ""  # attribute of RegressionBaselineSettings holding the configuration
    contract_task: ClassVar[str] = "regression"

    @classmethod
    def contract_params(cls, ctx: PoolContext) -> dict[str, Any]:
        return {"query-model": "global"}

    def config(self, settings: RegressionBaselineSettings) -> dict[str, Any]:
        return {}

    def select(self, ctx: PoolContext) -> np.ndarray:
        settings = regression_settings(ctx.params)
        _, model = _query_model(ctx, self.name)
        spec = parse_bmdal(getattr(settings, self.setting))
        picks, info = bmdal_select(
            model, ctx.models.x_pool, ctx.models.x_labeled, ctx.labeled_y, spec, self.method, ctx.budget,
            sigma=settings.bmdal_sigma, seed=int(ctx.rng.integers(2**62)), **self.config(settings),
        )
        ctx.timings["bmdal-kernel"] = float(info["kernel_time"]["total"])
        ctx.timings["bmdal-selection"] = float(info["selection_time"]["total"])
        if info.get("selection_status"):  # BMDAL filled up with random samples after a failed greedy step
            ctx.diagnostics["bmdal-status"] = str(info["selection_status"])
        return picks


@register_selector("bait")
class BaitSelector(_BmdalSelector):
    """BAIT (Ash et al. 2021) in BMDAL's feature-space form; FB when ``bait-overselection`` > 1."""

    method, setting = "bait", "bait_bmdal"

    def config(self, settings: RegressionBaselineSettings) -> dict[str, Any]:
        return {"overselection_factor": settings.bait_overselection}


@register_selector("lcmd")
class LcmdSelector(_BmdalSelector):
    """LCMD (Holzmueller et al. 2023): the farthest point of the largest cluster, per pick."""

    method, setting = "lcmd", "lcmd_bmdal"


@register_selector("acs-fw")
class AcsFwSelector(_BmdalSelector):
    """ACS-FW (Pinsler et al. 2019): Frank-Wolfe sparse approximation of the pool's kernel embedding."""

    method, setting = "fw", "acs_fw_bmdal"


@register_selector("maxdist")
class MaxDistSelector(_BmdalSelector):
    """Core-Set for regression: BMDAL's MaxDist (greedy k-center in the kernel's feature space)."""

    method, setting = "maxdist", "coreset_bmdal"


@register_selector("kmeanspp")
class KmeansppSelector(_BmdalSelector):
    """BADGE for regression: BMDAL's k-means++ seeding in the kernel's feature space."""

    method, setting = "kmeanspp", "badge_bmdal"


@register_selector("logo-bait")
class LoGoBaitSelector(Selector):
    """LoGo with BAIT in place of the entropy (FALE Sec. 5.1): cluster locally, pick by the global BAIT score."""

    contract_task: ClassVar[str] = "regression"

    @classmethod
    def contract_params(cls, ctx: PoolContext) -> dict[str, Any]:
        return {"logo-kmeans-n-init": 2}

    def select(self, ctx: PoolContext) -> np.ndarray:
        settings = regression_settings(ctx.params)
        if ctx.task != "regression":
            raise ValueError(f"logo-bait: a regression baseline; the task here is {ctx.task}")
        _need_labels(ctx, "logo-bait")
        local = ctx.models.pool("local-only")
        check_finite(local.outputs, "logo-bait: predictions of the local-only model")
        h_local = check_finite(local.features, "logo-bait: features of the local-only model")
        labels = logo_kmeans(h_local, ctx.budget, baseline_settings(ctx.params), ctx.rng)
        ctx.diagnostics["logo-clusters-found"] = int(len(np.unique(labels)))
        global_model = ctx.models.model("global")
        check_finite(ctx.models.pool("global").outputs, "logo-bait: predictions of the global model on the pool")
        scores = bait_scores(
            global_model, ctx.models.x_pool, ctx.models.x_labeled, ctx.labeled_y, parse_bmdal(settings.bait_bmdal),
            sigma=settings.bmdal_sigma, seed=int(ctx.rng.integers(2**62)),
        )
        return logo_cluster_pick(labels, check_finite(scores, "logo-bait: BAIT scores"), ctx.budget)
