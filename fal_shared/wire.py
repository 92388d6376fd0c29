"""Helpers for message contents shared by server and client (Flower records)."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import RecordDict

__all__ = ["RUN_CONFIG_DEFAULTS", "content_bytes", "config_of", "int_list"]

#: message config key: JSON of the run-config values the server's strategy supplied
#: (strategies.resolve_run_config), applied by every client on top of Flower's run config
RUN_CONFIG_DEFAULTS = "run-config-defaults"


def content_bytes(content: RecordDict) -> int:
    """Bytes of a message's content as Flower serialises it (every object, children included)."""
    total, stack = 0, [content]
    while stack:
        obj = stack.pop()
        total += len(obj.deflate())
        children = obj.children
        if children:
            stack.extend(children.values())
    return total


def config_of(content: RecordDict, key: str = "config") -> dict[str, Any]:
    record = content.config_records.get(key)
    return dict(record) if record is not None else {}


def int_list(values: Any) -> list[int]:
    return [int(v) for v in np.asarray(values).reshape(-1)]
