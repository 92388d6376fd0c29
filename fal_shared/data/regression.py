"""Regression data sets (FALE experiments) and their federated split.

:func:`load_regression` returns features ``X`` (float64, ``(N, d)``) and target
``y`` (float64, ``(N,)``):

==================== ====================================================================
name                 source
==================== ====================================================================
diabetes             scikit-learn ``load_diabetes(scaled=False)`` (embedded, 442 x 10)
protein              ``protein.csv.gz`` or ``protein.csv`` in the data root or
                     ``<data_root>/uci`` (UCI CASP, 45730 x 9)
kegg-undirected      ``keggundirected.csv.gz`` or ``keggundirected.csv``, same folders
                     (UCI KEGG undirected, 63608 x 26 in the shared copy)
csv:<path>[:<col>]   any comma-separated file (optionally gzipped), target in column
                     ``col`` (default -1, the last); a relative path is taken relative to
                     the data root when one is given; one header line is skipped if it
                     is not numeric
==================== ====================================================================

:func:`regression_split` reproduces the FALE setup (paper Sec. 5.1): 20% uniform
test split, the rest over ``k`` clients by Dirichlet over target bins.

Standardisation
---------------
For the federated experiments, features and target are standardised with the
mean and standard deviation of the **pooled training split** (all clients
together, test excluded), a preprocessing step we assume the data provider does
before the data are distributed; the test split uses the same statistics. In a
real federation the same numbers can be had without sharing data by securely
summing each client's ``(n, sum x, sum x^2)`` (:func:`moment_sums`,
:meth:`Standardizer.from_sums`). See :func:`standardize`.
"""

from __future__ import annotations

import gzip
import math
import numbers
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from ._common import check_seed, make_rng, sklearn_bundled_csv
from .partition import DEFAULT_MIN_SIZE, partition_indices

__all__ = [
    "REGRESSION_DATASETS",
    "RegressionDataset",
    "Standardizer",
    "constant_columns",
    "load_regression",
    "moment_sums",
    "quantile_bins",
    "read_csv_regression",
    "regression_dataset_names",
    "regression_split",
    "standardize",
]

_UCI_SUBDIRS = ("", "uci")
REGRESSION_DATASETS: dict[str, tuple[str, ...]] = {
    "diabetes": (),  # embedded in scikit-learn
    "protein": ("protein.csv.gz", "protein.csv"),
    "kegg-undirected": ("keggundirected.csv.gz", "keggundirected.csv"),
}
_CSV_PREFIX = "csv:"


class RegressionDataset(NamedTuple):
    """Features, target and name; unpacks as ``X, y, name = load_regression(...)``."""

    X: np.ndarray
    y: np.ndarray
    name: str


def regression_dataset_names() -> tuple[str, ...]:
    """Registered names (``csv:<path>[:<col>]`` is accepted as well)."""
    return tuple(REGRESSION_DATASETS)


def load_regression(
    name: str, data_root: str | os.PathLike[str] | None = None
) -> RegressionDataset:
    """Load a regression data set.

    Parameters
    ----------
    name
        ``diabetes``, ``protein``, ``kegg-undirected`` or ``csv:<path>`` /
        ``csv:<path>:<target-column-index>`` (index may be negative).
    data_root
        Folder with the files (``protein`` and ``kegg-undirected`` look in it and
        in ``<data_root>/uci``); base of a relative ``csv:`` path.

    Returns
    -------
    RegressionDataset
        ``X`` float64 ``(N, d)``, ``y`` float64 ``(N,)``, ``name``; complete or not at all.

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid ones), missing data root, or a
        malformed file (non-numeric or non-finite value, ragged row; the message
        names file, line and column).
    FileNotFoundError
        The file is missing; the message lists every path tried.
    """
    if not isinstance(name, str):
        raise ValueError(f"regression dataset name must be a string, got {name!r}")
    if name.startswith(_CSV_PREFIX):
        path, column = _parse_csv_name(name)
        if not path.is_absolute() and data_root is not None and str(data_root) != "":
            path = Path(data_root).expanduser() / path
        if not path.is_file():
            raise FileNotFoundError(f"regression dataset {name!r}: file {str(path)!r} not found")
        X, y = read_csv_regression(path, target_column=column)
        return RegressionDataset(X, y, name)
    if name not in REGRESSION_DATASETS:
        raise ValueError(
            f"unknown regression dataset {name!r}; valid names: "
            f"{', '.join(REGRESSION_DATASETS)}, or csv:<path>[:<target-column-index>]"
        )
    if name == "diabetes":
        # what load_diabetes(scaled=False) reads, without importing scikit-learn
        return RegressionDataset(
            np.asarray(sklearn_bundled_csv("diabetes_data_raw.csv.gz", delimiter=None), dtype=np.float64),
            np.asarray(sklearn_bundled_csv("diabetes_target.csv.gz", delimiter=None), dtype=np.float64).ravel(),
            name,
        )
    files = REGRESSION_DATASETS[name]
    if data_root is None or str(data_root) == "":
        raise ValueError(
            f"regression dataset {name!r} is read from a file: set the data root "
            f"(data_root / config key data-root) to the folder holding {' or '.join(files)} "
            f"(directly or in uci/)"
        )
    root = Path(data_root).expanduser()
    tried = []
    for sub in _UCI_SUBDIRS:
        for fname in files:
            p = (root / sub / fname) if sub else (root / fname)
            tried.append(str(p))
            if p.is_file():
                X, y = read_csv_regression(p, target_column=-1)
                return RegressionDataset(X, y, name)
    raise FileNotFoundError(
        f"regression dataset {name!r}: none of the expected files exists under data root "
        f"{str(root)!r}; tried: {', '.join(tried)}"
    )


def _parse_csv_name(name: str) -> tuple[Path, int]:
    rest = name[len(_CSV_PREFIX):]
    column = -1
    head, sep, tail = rest.rpartition(":")
    if sep and head and re.fullmatch(r"-?\d+", tail):
        rest, column = head, int(tail)
    if not rest:
        raise ValueError(
            f"regression dataset {name!r}: expected csv:<path> or csv:<path>:<target-column-index>"
        )
    return Path(rest).expanduser(), column


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def read_csv_regression(
    path: str | os.PathLike[str], *, target_column: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """Read a numeric comma-separated file into ``(X, y)`` (float64).

    The file may be gzipped (detected by its magic bytes). Blank lines are
    skipped; a first line with a non-numeric cell is taken as a header and
    skipped. Every other cell must be a finite number and every row must have
    the same number of columns (at least 2).

    Parameters
    ----------
    path
        The file.
    target_column
        Column index of the target (negative counts from the end); the other
        columns, in order, are the features.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read file ({exc})") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc})") from exc
    del raw
    lines = text.splitlines()
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        raise ValueError(f"{path}: empty file, expected numeric rows (features..., target)")
    skip = 0
    if not all(_is_number(c) for c in lines[first].split(",")):
        skip = first + 1  # header line
    body = lines[skip:]
    try:
        data = np.loadtxt(body, delimiter=",", dtype=np.float64, ndmin=2, comments=None)
    except ValueError:
        _raise_csv_error(path, lines, skip)
        raise  # pragma: no cover (the scan always finds the bad row)
    if data.shape[0] == 0:
        raise ValueError(f"{path}: no data rows")
    if data.shape[1] < 2:
        raise ValueError(f"{path}: need at least 2 columns (features..., target), found {data.shape[1]}")
    bad = ~np.isfinite(data)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        line_no = _data_line_number(lines, skip, int(r))
        raise ValueError(
            f"{path}: line {line_no}, column {int(c) + 1}: value {data[r, c]!r} is not finite"
        )
    d = data.shape[1]
    if isinstance(target_column, bool) or not isinstance(target_column, numbers.Integral) \
            or not (-d <= target_column < d):
        raise ValueError(
            f"{path}: target column index must lie in [{-d}, {d - 1}] for a file with {d} "
            f"columns, got {target_column!r}"
        )
    t = int(target_column) % d
    y = np.ascontiguousarray(data[:, t])
    X = np.ascontiguousarray(np.delete(data, t, axis=1))
    return X, y


def _data_line_number(lines: list[str], skip: int, data_row: int) -> int:
    """1-based line number of the ``data_row``-th non-blank line after ``skip``."""
    seen = -1
    for i in range(skip, len(lines)):
        if lines[i].strip():
            seen += 1
            if seen == data_row:
                return i + 1
    return len(lines)


def _raise_csv_error(path: Path, lines: list[str], skip: int) -> None:
    width = None
    for i in range(skip, len(lines)):
        if not lines[i].strip():
            continue
        cells = lines[i].split(",")
        if width is None:
            width = len(cells)
        elif len(cells) != width:
            raise ValueError(
                f"{path}: line {i + 1} has {len(cells)} columns, expected {width} as in line "
                f"{_data_line_number(lines, skip, 0)}"
            )
        for j, cell in enumerate(cells):
            if not _is_number(cell):
                raise ValueError(
                    f"{path}: line {i + 1}, column {j + 1}: {cell.strip()!r} is not a number"
                )


# --------------------------------------------------------------------------------------
# Federated split (FALE Sec. 5.1)
# --------------------------------------------------------------------------------------
def quantile_bins(y: np.ndarray | Sequence[float], num_bins: int) -> np.ndarray:
    """Equal-frequency bin label in ``[0, num_bins)`` for each target value.

    Samples are ranked by ``y`` (stable sort, so ties keep their original order)
    and the sample of rank ``r`` gets bin ``floor(r * num_bins / n)``: bins differ
    in size by at most one, and tied values may fall on both sides of a bin edge.
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    n = y.size
    if isinstance(num_bins, bool) or not isinstance(num_bins, numbers.Integral) \
            or not (1 <= num_bins <= max(n, 1)):
        raise ValueError(f"num_bins must be an integer in [1, {max(n, 1)}], got {num_bins!r}")
    order = np.argsort(y, kind="stable")
    bins = np.empty(n, dtype=np.int64)
    bins[order] = (np.arange(n, dtype=np.int64) * int(num_bins)) // max(n, 1)
    return bins


def regression_split(
    X: np.ndarray,
    y: np.ndarray,
    num_partitions: int,
    *,
    test_fraction: float = 0.2,
    alpha: float = 5.0,
    num_bins: int | None = None,
    seed: int,
    scheme: str = "dirichlet",
    min_size: int = DEFAULT_MIN_SIZE,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Test split and non-IID client split of a regression set (FALE Sec. 5.1).

    1. Test: ``round(test_fraction * N)`` indices drawn uniformly without
       replacement (stream ``make_rng(seed, "regression/test-split")``).
    2. The remaining pool's targets are cut into ``num_bins`` equal-frequency
       bins (:func:`quantile_bins`; default ``num_bins = num_partitions``, as
       in the paper: "the number of bins equal to the number of clients").
    3. The bin index is used as a class label for the label-Dirichlet partition
       of Yurochkin et al. 2019 / Hsu et al. 2019 (:func:`~fal_shared.data.partition.
       dirichlet_partition`): for each bin, shares over the ``k`` clients are drawn
       from ``Dir(alpha)`` (clients already holding ``>= n_pool / k`` get none),
       and the bin's shuffled samples are cut accordingly; redrawn until every
       client has ``min_size`` samples. Client sizes differ and a client may lack
       some bins, as the paper notes. ``scheme="iid"`` gives an equal random
       split instead.

    Parameters
    ----------
    X, y
        Features ``(N, d)`` (only its length is used) and target ``(N,)``.
    num_partitions
        Number of clients ``k`` (10 in the paper).
    test_fraction
        Fraction in ``[0, 1)`` held out for testing (0.2).
    alpha
        Dirichlet concentration (5.0 in the paper).
    num_bins
        Number of target bins; ``None`` = ``num_partitions``.
    seed
        Run seed.
    scheme
        ``"dirichlet"`` (default) or ``"iid"``.
    min_size
        Minimum client size for the Dirichlet draw (10).

    Returns
    -------
    test_idx, client_idx
        Sorted int64 global indices: the test set and one array per client; all
        disjoint, together covering ``0..N-1``.
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    n = y.size
    if np.asarray(X).shape[0] != n:
        raise ValueError(f"X has {np.asarray(X).shape[0]} rows but y has {n} values")
    seed = check_seed(seed)
    tf = float(test_fraction)
    if not (0.0 <= tf < 1.0):
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction!r}")
    if scheme not in ("dirichlet", "iid"):
        raise ValueError(f"regression split scheme must be one of dirichlet, iid; got {scheme!r}")
    n_test = int(math.floor(tf * n + 0.5))
    perm = make_rng(seed, "regression/test-split").permutation(n)
    test_idx = np.sort(perm[:n_test]).astype(np.int64)
    pool = np.sort(perm[n_test:]).astype(np.int64)
    bins_n = num_partitions if num_bins is None else num_bins
    if scheme == "iid":
        labels = np.zeros(pool.size, dtype=np.int64)
    else:
        if isinstance(bins_n, bool) or not isinstance(bins_n, numbers.Integral) or bins_n < 1:
            raise ValueError(f"num_bins must be an integer >= 1, got {num_bins!r}")
        labels = quantile_bins(y[pool], int(min(bins_n, max(pool.size, 1))))
    local = partition_indices(
        labels, num_partitions, scheme=scheme, alpha=alpha if scheme == "dirichlet" else None,
        seed=seed, min_size=min_size,
    )
    return test_idx, [pool[part] for part in local]


# --------------------------------------------------------------------------------------
# Standardisation
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Standardizer:
    """``(v - mean) / scale`` per column (or for a 1-D target, one pair).

    ``scale`` is the population standard deviation (ddof 0), with 1.0 where it
    is 0 (constant columns), as scikit-learn's ``StandardScaler``.
    """

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> "Standardizer":
        """Statistics of ``values`` (``(n, d)`` or ``(n,)``) along axis 0."""
        v = np.asarray(values, dtype=np.float64)
        if v.shape[0] == 0:
            raise ValueError("cannot standardise with statistics of an empty array")
        mean = v.mean(axis=0)
        std = v.std(axis=0)
        return cls(np.asarray(mean), np.where(std > 0, std, 1.0))

    @classmethod
    def from_sums(cls, count: float, total: np.ndarray, total_sq: np.ndarray) -> "Standardizer":
        """Statistics from pooled ``(n, sum v, sum v^2)``, e.g. securely aggregated
        :func:`moment_sums` of the clients' training data."""
        if count <= 0:
            raise ValueError("cannot standardise with statistics of zero samples")
        mean = np.asarray(total, dtype=np.float64) / count
        var = np.maximum(np.asarray(total_sq, dtype=np.float64) / count - mean**2, 0.0)
        std = np.sqrt(var)
        return cls(mean, np.where(std > 0, std, 1.0))

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Return ``(values - mean) / scale`` as a new float64 array."""
        return (np.asarray(values, dtype=np.float64) - self.mean) / self.scale

    def inverse_transform(self, values: np.ndarray) -> np.ndarray:
        """Return ``values * scale + mean`` (e.g. predictions back in target units)."""
        return np.asarray(values, dtype=np.float64) * self.scale + self.mean


def constant_columns(X: np.ndarray) -> np.ndarray:
    """Indices of the columns of ``X`` that hold one value only.

    Such a column makes ``X`` column-rank deficient (``X^T X`` singular), which
    leverage scores and least squares (FALE) assume away; the shared
    ``kegg-undirected`` copy has one (column 9, all zeros). Drop them, e.g.
    ``np.delete(X, constant_columns(X_train), axis=1)``, using the training split.
    """
    v = np.asarray(X)
    if v.ndim != 2:
        raise ValueError(f"X must be a 2-D array, got shape {v.shape}")
    if v.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.all(v == v[:1], axis=0)).astype(np.int64)


def moment_sums(values: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """A client's ``(n, sum v, sum v^2)`` along axis 0, for :meth:`Standardizer.from_sums`."""
    v = np.asarray(values, dtype=np.float64)
    return int(v.shape[0]), v.sum(axis=0), (v * v).sum(axis=0)


def standardize(
    train: np.ndarray, test: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, Standardizer]:
    """Standardise ``train`` (and ``test``) with the statistics of ``train``.

    For the federated experiments call it with the pooled training split (all
    clients' data, test excluded) for ``X`` and for ``y`` separately; this is a
    data-provider preprocessing assumption (see the module docstring). The
    returned :class:`Standardizer` maps predictions back to target units.

    Returns
    -------
    train_std, test_std, standardizer
        New float64 arrays (``test_std`` is ``None`` when ``test`` is).
    """
    st = Standardizer.fit(train)
    return st.transform(train), (None if test is None else st.transform(test)), st
