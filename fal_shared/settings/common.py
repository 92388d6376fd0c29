"""The base class and field helper of every settings group."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SettingsBase", "setting"]


class SettingsBase(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)


def setting(default: Any, alias: str, description: str, *, unit: str = "", source: str = "", **kw: Any) -> Any:
    """A documented setting: ``alias`` is the run-config key, ``unit`` and ``source`` go to the docs' run-config table."""
    return Field(
        default,
        alias=alias,
        description=description,
        json_schema_extra={"unit": unit, "source": source},
        **kw,
    )
