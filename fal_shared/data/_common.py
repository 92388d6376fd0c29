"""Small helpers shared by the data modules (seeding and argument checks).

Every random choice in :mod:`fal_shared.data` comes from a local
:class:`numpy.random.Generator` made by :func:`make_rng`; no function here reads
or changes a global RNG (``numpy.random.seed``, ``random.seed``,
``torch.manual_seed``).
"""

from __future__ import annotations

import numbers
import zlib

import numpy as np

__all__ = ["make_rng", "check_seed"]


def check_seed(seed: object, setting: str = "seed") -> int:
    """Return ``seed`` as a Python int, or raise ``ValueError``.

    Parameters
    ----------
    seed
        The value to check; must be a non-negative integer (``bool`` is refused).
    setting
        The name of the setting, used in the error message.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise ValueError(f"{setting} must be a non-negative integer, got {seed!r}")
    return int(seed)


def make_rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """Return an independent, reproducible Generator for one use of a run seed.

    The stream is ``numpy.random.default_rng([seed, crc32(purpose), *keys])``,
    so the same ``(seed, purpose, keys)`` always gives the same numbers, and two
    purposes that share a run seed (say the long-tail subsample and the client
    partition) do not draw the same numbers.

    Parameters
    ----------
    seed
        The run seed (a non-negative integer).
    purpose
        A short fixed tag for the use, e.g. ``"partition/dirichlet"``.
    *keys
        Further non-negative integers, e.g. a partition id.
    """
    seed = check_seed(seed)
    entropy = [seed, zlib.crc32(purpose.encode("utf-8"))]
    for k in keys:
        entropy.append(check_seed(k, "rng key"))
    return np.random.default_rng(entropy)
