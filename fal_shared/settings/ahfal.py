"""Run-config settings of AHFAL (shared/papers/ahfal.txt; spec section 2b)."""

from __future__ import annotations

from fal_shared.settings.common import SettingsBase, setting  # noqa: F401


class AhfalSettings(SettingsBase):
    """Settings of AHFAL (shared/papers/ahfal.txt; spec section 2b); keys are prefixed with the method name."""
