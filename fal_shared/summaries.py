"""Summaries of per-client values for logs and results that stay readable at 1,000 clients.

A log line names clients only while there are few of them (:data:`LIST_AT_MOST`); beyond that it
gives counts and min / median / max, and partition ids as ranges (``0-99, 205``). The full
per-client detail stays in ``results.json``, where a user who needs it finds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["LIST_AT_MOST", "compact_ids", "describe", "grouped", "per_client_text", "summarize"]

#: Up to this many clients a log line lists each one; more are summarised.
LIST_AT_MOST = 10


def summarize(values: Iterable[float] | Mapping[Any, float]) -> dict[str, float | int]:
    """``count``, ``min``, ``median``, ``max`` and ``sum`` of per-client values (a mapping's values).

    Integers stay integers where the statistic is one of the values (min, max, sum); an empty input
    gives ``{"count": 0}``.
    """
    vals = list(values.values()) if isinstance(values, Mapping) else list(values)
    if not vals:
        return {"count": 0}
    arr = np.asarray(vals)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"summarize: per-client values must be numbers, got dtype {arr.dtype}")
    cast = int if np.issubdtype(arr.dtype, np.integer) else float
    return {"count": len(vals), "min": cast(arr.min()), "median": float(np.median(arr)),
            "max": cast(arr.max()), "sum": cast(arr.sum())}


def describe(summary: Mapping[str, float | int], unit: str = "", digits: int = 3) -> str:
    """``"min 6 / median 6 / max 9 over 1000 clients"`` (``unit`` after each value, e.g. ``" s"``)."""
    if not summary.get("count"):
        return "no clients"

    def fmt(v: float | int) -> str:
        return (f"{v:d}" if isinstance(v, int) else f"{v:.{digits}g}") + unit

    n = int(summary["count"])
    return (f"min {fmt(summary['min'])} / median {fmt(summary['median'])} / max {fmt(summary['max'])} "
            f"over {n} client{'s' if n != 1 else ''}")


def compact_ids(ids: Iterable[int], limit: int = 8) -> str:
    """Partition ids as sorted ranges, ``"0-99, 205, 300-301"``; past ``limit`` ranges, ``"..., (N in all)"``."""
    values = sorted({int(i) for i in ids})
    if not values:
        return "none"
    ranges: list[tuple[int, int]] = []
    for v in values:
        if ranges and v == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], v)
        else:
            ranges.append((v, v))
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in ranges]
    text = ", ".join(parts[:limit])
    if len(parts) > limit:
        text += f", ... ({len(values)} in all)"
    return text


def per_client_text(values: Mapping[Any, float | int], unit: str = "") -> str:
    """Each client's value (``"0:6 1:6 2:9"``) for at most :data:`LIST_AT_MOST` clients, else their summary."""
    if len(values) <= LIST_AT_MOST:
        return " ".join(f"{p}:{v}{unit}" for p, v in values.items())
    return describe(summarize(values), unit)


def grouped(items: Mapping[int, str]) -> list[tuple[str, str]]:
    """Clients that report the same text, together: ``[(compact ids, text), ...]`` in order of first appearance."""
    by_text: dict[str, list[int]] = {}
    for pid, text in items.items():
        by_text.setdefault(str(text), []).append(int(pid))
    return [(compact_ids(pids), text) for text, pids in by_text.items()]
