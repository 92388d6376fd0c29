"""Small helpers shared by the data modules (seeding and argument checks).

Every random choice in :mod:`fal_shared.data` comes from a local
:class:`numpy.random.Generator` made by :func:`make_rng`; no function here reads
or changes a global RNG (``numpy.random.seed``, ``random.seed``,
``torch.manual_seed``).
"""

from __future__ import annotations

import numbers
import zlib
from pathlib import Path

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


def sklearn_bundled_csv(name: str, delimiter: str | None = ",") -> np.ndarray:
    """A data file scikit-learn ships (``sklearn/datasets/data/<name>``), read as its loader reads it.

    ``load_digits`` and ``load_diabetes`` only ``np.loadtxt`` these files, but importing
    ``sklearn.datasets`` to call them costs about 2 s of CPU (it imports scipy and much of
    scikit-learn), paid in every ClientApp process: a deployed SuperNode starts one per message.
    ``delimiter`` is the loader's (``None``: whitespace, as ``load_diabetes`` reads its files).
    The file is found without importing scikit-learn; tests/test_data_classification.py and
    tests/test_data_regression.py check that the arrays equal the loaders'.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package, does not import it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-learn is not installed: its bundled datasets (digits, diabetes) need it")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"scikit-learn's bundled data file {str(path)!r} is missing")
    return np.loadtxt(path, delimiter=delimiter)
