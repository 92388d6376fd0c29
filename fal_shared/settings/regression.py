"""Run-config settings of the regression baselines (FALE paper Sec. 5.1; spec section 7).

FALE's authors ran BAIT, ACS-FW, Core-Set (MaxDist), BADGE (k-means++) and LCMD "with the
implementation provided by Holzmueller et al. (2023)", i.e. ``bmdal_reg``, locally on every client,
and did not say which kernel or transformations they used. Each method's BMDAL configuration is
therefore a setting, written in the naming of ``bmdal_reg``'s own experiments
(``run_experiments.py``: ``NN_<method>-<mode>_<base kernel>[_<transform>...]``) without the method
name; the defaults are the configurations ``bmdal_reg``'s ``run_evaluation.py`` lists as the
literature versions of each method (``NN_bait-fb-p_ll_train``, ``NN_fw-p_ll_acs-rf-hyper-512``,
``NN_maxdist-tp_ll``, ``NN_kmeanspp-p_ll_train``) and its own method (``NN_lcmd-tp_grad_rp-512``).

Grammar of a configuration: ``<mode>_<base kernel>[_<transform>...]``

* mode: ``p`` (select from the pool only) or ``tp`` (the labelled set is added to the selection first,
  BMDAL's ``sel_with_train=True``);
* base kernel: ``ll`` (last-layer gradient features), ``grad`` (all-layer gradient features) or
  ``linear`` (the raw inputs); for FALE's single-layer linear model ``ll`` = ``grad`` = ``[x, 1]``;
* transforms, applied in order: ``train`` (GP posterior given the labelled set, noise
  ``bmdal-sigma``), ``scale``, ``rp-<N>`` (sketch to N random features), ``acs-rf-<N>``,
  ``acs-rf-hyper-<N>``, ``acs-grad``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import field_validator

from fal_shared.settings.common import SettingsBase, setting

__all__ = ["BmdalSpec", "RegressionBaselineSettings", "parse_bmdal"]

_BASE_KERNELS = ("ll", "grad", "linear")
_PLAIN_TRANSFORMS = ("train", "scale", "acs-grad")
_SIZED_TRANSFORMS = ("rp", "acs-rf", "acs-rf-hyper")
_GRAMMAR = (
    "<mode>_<base kernel>[_<transform>...] with mode p or tp, base kernel " + ", ".join(_BASE_KERNELS)
    + ", transforms " + ", ".join(_PLAIN_TRANSFORMS) + ", " + ", ".join(f"{t}-<N>" for t in _SIZED_TRANSFORMS)
)


@dataclass(frozen=True)
class BmdalSpec:
    """A parsed BMDAL configuration: mode, base kernel and transforms (``(name, size or None)``)."""

    sel_with_train: bool
    base_kernel: str
    transforms: tuple[tuple[str, int | None], ...]


def parse_bmdal(text: str) -> BmdalSpec:
    """Parse ``<mode>_<base kernel>[_<transform>...]``; ``ValueError`` naming the bad token."""
    tokens = str(text).strip().split("_")
    if len(tokens) < 2:
        raise ValueError(f"{text!r} is not a BMDAL configuration; expected {_GRAMMAR}")
    mode, base, *rest = tokens
    if mode not in ("p", "tp"):
        raise ValueError(f"{text!r}: mode {mode!r} is not p or tp; expected {_GRAMMAR}")
    if base not in _BASE_KERNELS:
        raise ValueError(f"{text!r}: unknown base kernel {base!r}; expected {_GRAMMAR}")
    transforms: list[tuple[str, int | None]] = []
    for token in rest:
        if token in _PLAIN_TRANSFORMS:
            transforms.append((token, None))
            continue
        match = re.fullmatch(r"([a-z-]+)-(\d+)", token)
        if not match or match.group(1) not in _SIZED_TRANSFORMS or int(match.group(2)) < 1:
            raise ValueError(f"{text!r}: unknown transform {token!r}; expected {_GRAMMAR}")
        transforms.append((match.group(1), int(match.group(2))))
    return BmdalSpec(sel_with_train=mode == "tp", base_kernel=base, transforms=tuple(transforms))


_LITERATURE = "bmdal_reg run_evaluation.py literature config"


class RegressionBaselineSettings(SettingsBase):
    """Settings of the regression baselines run with bmdal_reg (spec section 7; FALE Sec. 5.1)."""

    bmdal_sigma: float = setting(
        0.1, "bmdal-sigma",
        "Regression baselines: GP noise standard deviation sigma of BMDAL's train/acs-rf/acs-grad transforms and "
        "BAIT's noise term (bait_sigma).",
        source="bmdal_reg run_experiments.py get_bmdal_configs (post_sigma = bait_sigma = 0.1)", gt=0,
    )
    bait_bmdal: str = setting(
        "p_ll_train", "bait-bmdal",
        "BAIT (and LoGo-BAIT's scores): BMDAL configuration <mode>_<base kernel>[_<transform>...] "
        "(see the docs, Regression baselines).", source=f"{_LITERATURE} NN_bait-fb-p_ll_train",
    )
    bait_overselection: float = setting(
        2.0, "bait-overselection",
        "BAIT: forward-select this many times the budget, then remove the least useful (BAIT-FB); 1 = forward "
        "only (BAIT-F).", unit="x budget", source=f"{_LITERATURE} NN_bait-fb-p_ll_train (fb = 2.0)", ge=1,
    )
    acs_fw_bmdal: str = setting(
        "p_ll_acs-rf-hyper-512", "acs-fw-bmdal",
        "ACS-FW (Frank-Wolfe): BMDAL configuration.", source=f"{_LITERATURE} NN_fw-p_ll_acs-rf-hyper-512",
    )
    lcmd_bmdal: str = setting(
        "tp_grad_rp-512", "lcmd-bmdal",
        "LCMD: BMDAL configuration.", source=f"{_LITERATURE} NN_lcmd-tp_grad_rp-512",
    )
    coreset_bmdal: str = setting(
        "tp_ll", "coreset-bmdal",
        "Core-Set on regression (BMDAL MaxDist): BMDAL configuration.", source=f"{_LITERATURE} NN_maxdist-tp_ll",
    )
    badge_bmdal: str = setting(
        "p_ll_train", "badge-bmdal",
        "BADGE on regression (BMDAL k-means++): BMDAL configuration.", source=f"{_LITERATURE} NN_kmeanspp-p_ll_train",
    )

    @field_validator("bait_bmdal", "acs_fw_bmdal", "lcmd_bmdal", "coreset_bmdal", "badge_bmdal")
    @classmethod
    def _check_bmdal(cls, value: str) -> str:
        parse_bmdal(value)
        return value
