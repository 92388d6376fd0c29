"""Run-config settings of Classification and regression baselines (spec sections 3-7)."""

from __future__ import annotations

from fal_shared.settings.common import SettingsBase, setting  # noqa: F401


class BaselineSettings(SettingsBase):
    """Settings of Classification and regression baselines (spec sections 3-7); keys are prefixed with the method name."""
