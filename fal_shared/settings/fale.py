"""Run-config settings of FedSVD / FALE (shared/papers/fale.txt; spec section 8)."""

from __future__ import annotations

from fal_shared.settings.common import SettingsBase, setting  # noqa: F401


class FaleSettings(SettingsBase):
    """Settings of FedSVD / FALE (shared/papers/fale.txt; spec section 8); keys are prefixed with the method name."""
