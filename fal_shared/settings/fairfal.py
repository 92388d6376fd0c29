"""Run-config settings of FairFAL (spec section 2)."""

from __future__ import annotations

from fal_shared.settings.common import SettingsBase, setting  # noqa: F401


class FairfalSettings(SettingsBase):
    """Settings of FairFAL (spec section 2); keys are prefixed with the method name."""
