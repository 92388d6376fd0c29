"""Input checks shared by the client, server and in-process entry points."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["check_matrix", "check_parts", "check_vector"]


def check_matrix(x: object, name: str) -> np.ndarray:
    """Return ``x`` as a finite 2-D float64 array or raise ``ValueError`` naming the problem."""
    arr = np.asarray(x)
    if arr.dtype == object or np.iscomplexobj(arr):
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_i x d), got ndim={arr.ndim} shape={arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf values")
    return arr


def check_vector(x: object, name: str, length: int | None = None) -> np.ndarray:
    """Return ``x`` as a finite 1-D float64 array (optionally of a given length)."""
    arr = np.asarray(x)
    if arr.dtype == object or np.iscomplexobj(arr):
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got ndim={arr.ndim} shape={arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if length is not None and arr.shape[0] != length:
        raise ValueError(f"{name} must have length {length}, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf values")
    return arr


def check_parts(parts: Sequence[object], *, require_tall: bool = True) -> list[np.ndarray]:
    """Validate the per-client matrices of a horizontally partitioned ``X``.

    Parameters
    ----------
    parts
        Non-empty sequence of ``(n_i, d)`` arrays with a common ``d``.
    require_tall
        Require the stacked ``n = sum n_i >= d`` (thin SVD with ``d`` left singular vectors).

    Returns
    -------
    list of numpy.ndarray
        float64 views/copies of the parts.
    """
    if isinstance(parts, np.ndarray):
        raise ValueError("parts must be a list of (n_i x d) arrays, one per client, not one array")
    parts = list(parts)
    if not parts:
        raise ValueError("parts must contain at least one client matrix")
    arrays = [check_matrix(p, f"parts[{i}]") for i, p in enumerate(parts)]
    d = arrays[0].shape[1]
    for i, arr in enumerate(arrays):
        if arr.shape[1] != d:
            raise ValueError(
                f"all parts must have the same number of columns d: parts[0] has d={d}, "
                f"parts[{i}] has d={arr.shape[1]}"
            )
    n = sum(arr.shape[0] for arr in arrays)
    if require_tall and n < d:
        raise ValueError(
            f"the stacked matrix has n={n} rows < d={d} columns; FedSVD/leverage scores need n >= d"
        )
    return arrays
