"""A site's side of labeling by people: what is shown, what is accepted, what is recorded.

* :func:`parse_label` validates one answer (a class index in range, or a finite
  number for regression) with an error that names the problem; the Label
  Studio oracle, the file oracle and ``fal-label`` all use it.
* :func:`image_png` and :func:`feature_table` render a sample for a person
  (images enlarged so that 8x8 digits are visible; tabular rows in the data's
  own units).
* :func:`label_hints` computes what helps the person at query time: the pick
  order as priority and the global model's prediction.
* :func:`collect` turns a person oracle's answers into ledger labels and skips.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from client_app.ledger import LedgerError
from client_app.oracle import Answer, OracleUnavailable

if TYPE_CHECKING:  # pragma: no cover
    from client_app.session import ClientSession

__all__ = ["LabelError", "parse_label", "image_png", "feature_table", "label_hints", "collect", "CollectReport"]

#: answers that mean "I cannot label this sample" (case-insensitive), besides a tool's own skip
SKIP_WORDS = ("skip", "skipped", "unclear")
#: smallest side of a rendered image, in pixels (nearest-neighbour enlargement keeps the pixels visible)
IMAGE_MIN_SIDE = 224


class LabelError(ValueError):
    """An answer is not a valid label for the task."""


def parse_label(value: Any, task: str, num_classes: int) -> float:
    """The label ``value`` means: a class index in ``[0, num_classes)`` or a finite number (regression)."""
    text = str(value).strip() if value is not None else ""
    if text == "":
        raise LabelError("empty label")
    try:
        number = float(text)
    except ValueError:
        kind = f"a class index 0..{num_classes - 1}" if task == "classification" else "a number"
        raise LabelError(f"{text!r} is not {kind}") from None
    if not math.isfinite(number):
        raise LabelError(f"{text!r} is not a finite number")
    if task == "classification":
        if number != int(number) or not 0 <= number < num_classes:
            raise LabelError(f"{text!r} is not a class index 0..{num_classes - 1}")
        return float(int(number))
    return number


def is_skip(value: Any) -> bool:
    return str(value).strip().lower() in SKIP_WORDS


def image_png(x: np.ndarray, scale: float) -> bytes:
    """A ``(C, H, W)`` uint8-coded image (``x * scale`` in [0, 1]) as PNG bytes, enlarged to :data:`IMAGE_MIN_SIDE`."""
    from PIL import Image

    pixels = np.clip(np.asarray(x, dtype=np.float64) * scale * 255.0, 0, 255).astype(np.uint8)
    pixels = pixels[0] if pixels.shape[0] == 1 else np.transpose(pixels, (1, 2, 0))
    image = Image.fromarray(pixels)
    factor = max(1, math.ceil(IMAGE_MIN_SIDE / min(image.size)))
    image = image.resize((image.size[0] * factor, image.size[1] * factor), Image.NEAREST)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def feature_table(x: np.ndarray, units: Any | None) -> dict[str, float]:
    """A tabular sample as ``{"feature 1": value, ...}`` in the data's own units (``units`` = the features' standardiser)."""
    values = units.inverse_transform(x) if units is not None else np.asarray(x, dtype=np.float64)
    return {f"feature {k + 1}": round(float(v), 6) for k, v in enumerate(np.asarray(values).reshape(-1))}


def label_hints(session: "ClientSession", ids: np.ndarray, model: Any | None) -> dict[int, dict[str, float]]:
    """Per chosen id: ``priority`` (the selector's pick order, first = highest) and, with ``model``, its prediction."""
    ids = np.asarray(ids, dtype=np.int64)
    hints = {int(i): {"priority": float(len(ids) - k)} for k, i in enumerate(ids)}
    if model is not None and len(ids):
        out = session.predict(model, session.data.x[session.data.rows(np.sort(ids))]).outputs
        by_id = dict(zip(np.sort(ids).tolist(), out))
        for i in ids.tolist():
            o = by_id[i]
            if session.data.task == "classification":
                hints[i].update(prediction=float(np.argmax(o)), confidence=float(np.max(o)))
            else:
                value = float(o)
                if session.data.units is not None:
                    value = float(session.data.units[1].inverse_transform(np.array([value]))[0])
                hints[i].update(prediction=value)
    return hints


@dataclass
class CollectReport:
    labeled: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # invalid answers, unreachable tool, ignored changes


def collect(session: "ClientSession") -> CollectReport:
    """Ask the site's person oracle for every pending query's answers and record them in the ledger.

    Valid labels are bought (with who and when, as the tool says); skipped or
    unclear samples are recorded as skipped (not bought, not offered again);
    invalid answers, answers that would change a bought label, and an
    unreachable tool are reported in ``notes`` and the samples stay pending.
    """
    report = CollectReport()
    ledger, data = session.ledger, session.data
    for token, query in ledger.pending_queries().items():
        if query.get("oracle") != getattr(session.oracle, "name", ""):
            report.notes.append(
                f"query {token}: asked of oracle {query.get('oracle')!r}, but this node's oracle is "
                f"{getattr(session.oracle, 'name', '?')!r} (node config 'oracle'); its labels stay pending"
            )
            continue
        request = session.label_request(token)
        try:
            answers: list[Answer] = session.oracle.collect(request)
        except OracleUnavailable as err:
            report.notes.append(f"query {token}: {err}; will ask again")
            continue
        labels, skips = [], []
        for a in answers:
            if a.skipped or is_skip(a.value):
                skips.append((a.sample_id, a.reason or str(a.value or "skipped").strip().lower(), a.by, a.at))
                continue
            try:
                value = parse_label(a.value, data.task, data.num_classes)
            except LabelError as err:
                report.notes.append(f"query {token}, sample {a.sample_id}: {err} (from {a.by or 'unknown'}); still pending")
                continue
            if data.task == "regression" and data.units is not None:
                value = float(data.units[1].transform(np.array([value]))[0])  # the model learns standardised targets
            labels.append((a.sample_id, value, a.by, a.at))
        try:
            done = ledger.answer(token, labels, skips)
        except LedgerError as err:
            report.notes.append(f"query {token}: {err}")
            continue
        report.labeled += done.labeled
        report.skipped += done.skipped
        report.notes += [f"query {token}, {note}" for note in done.ignored]
    return report
