"""Point sets that answer squared Euclidean distance queries without big matrices.

The selection kernels in :mod:`query.kernels` (k-center greedy, k-means++ seeding)
only ever need three things from a set of points:

* the squared norm of every point (distance to the origin),
* the squared distance from every point to *one* point (incremental updates),
* the minimum squared distance from every point to a whole other set
  (e.g. the labelled anchors), computed in bounded-size blocks.

:class:`PointSet` is that small interface. Two implementations exist:

* :class:`DenseFeatures`: an explicit ``(n, d)`` feature matrix (Core-Set
  penultimate features, Noise Stability deviation vectors, LoGo's ``D``-dim
  BADGE block, ...).
* :class:`GradientEmbeddings`: the BADGE gradient embedding
  ``g(x) = h(x) (x) (onehot(y) - p(x))`` kept in factorised form. Its squared
  distances are computed from per-sample norms and two dot products,

  ``||g_i - g_j||^2 = ||a_i||^2 ||h_i||^2 + ||a_j||^2 ||h_j||^2 - 2 (a_i . a_j)(h_i . h_j)``

  with ``a = onehot(y) - p``, so the ``n x (C * d)`` matrix is never built
  (CIFAR-100 with ``d = 256`` would be 25,600 floats per sample).

All distances use the expansion ``||x||^2 + ||y||^2 - 2 x.y`` (one BLAS
matrix-vector product per query instead of an ``n x d`` temporary), and are
clipped at 0 because the expansion can return tiny negative values through
cancellation. In float32 the absolute error of a squared distance is about
``1e-7 * (||x||^2 + ||y||^2)``: it only matters when two candidate distances
differ by less than that, i.e. for practical ties.

This module has no Flower imports on purpose: it is a pure numerical kernel.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DEFAULT_MAX_BLOCK_ELEMS",
    "DenseFeatures",
    "GradientEmbeddings",
    "PointSet",
]

#: Largest number of entries of a temporary distance block built by
#: :meth:`PointSet.min_sq_dists_to` (2**22 entries = 16 MiB in float32), so the extra
#: memory is ``O(n + DEFAULT_MAX_BLOCK_ELEMS)``, independent of the number of anchors.
DEFAULT_MAX_BLOCK_ELEMS: int = 1 << 22
#: Rows of ``self`` a block of :meth:`PointSet.min_sq_dists_to` spans at least (when ``self`` has
#: that many): enough for a matrix product that reuses each row block across many columns.
MIN_BLOCK_ROWS: int = 256

_P = TypeVar("_P", bound="PointSet")


def _as_float_array(x: ArrayLike, name: str, ndim: int) -> NDArray[np.floating]:
    """Return ``x`` as a C-contiguous float32/float64 array of the given rank.

    float32 and float64 inputs keep their precision; any other dtype (ints,
    float16, bools) is promoted to float64.
    """
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f"`{name}` must be a {ndim}-D array, got shape {arr.shape}.")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    arr = np.ascontiguousarray(arr)
    if not np.isfinite(arr).all():
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return arr


def _row_sq_norms(x: NDArray[np.floating]) -> NDArray[np.floating]:
    """Squared L2 norm of every row, without an ``x * x`` temporary."""
    return np.einsum("ij,ij->i", x, x)


class PointSet(ABC):
    """A set of ``n`` points in some Euclidean space, queried by squared distances.

    Subclasses must implement :meth:`__len__`, :meth:`sq_norms`, :meth:`_dots`
    and :meth:`subset`, and keep their squared norms in ``self._sq``;
    :meth:`sq_dists_to` (a matrix-vector product), :meth:`sq_dists_to_many` and
    :meth:`min_sq_dists_to` are derived from them.

    Distances are only defined between point sets of the same type and the
    same dimensions; mixing them raises ``TypeError`` / ``ValueError``.
    """

    @abstractmethod
    def __len__(self) -> int:
        """Number of points."""

    @property
    @abstractmethod
    def dtype(self) -> np.dtype:
        """Floating dtype in which distances are computed and returned."""

    @abstractmethod
    def sq_norms(self) -> NDArray[np.floating]:
        """Squared norm of every point, shape ``(n,)`` (distance to the origin)."""

    @abstractmethod
    def _dots(self, other: PointSet, index: int | NDArray[np.intp]) -> NDArray[np.floating]:
        """Inner products ``<self_i, other_index>``: shape ``(n,)`` for an int, ``(n, m)`` for ``m`` indices.

        The only geometry a subclass defines; squared distances follow from it
        and the squared norms the subclass keeps in ``self._sq``.
        """

    def _sq_dists(self, other: PointSet, index: int | NDArray[np.intp]) -> NDArray[np.floating]:
        self._check_compatible(other)
        out = self._dots(other, index)
        out *= -2.0
        out += self._sq if np.ndim(index) == 0 else self._sq[:, None]
        out += other._sq[index]
        return np.maximum(out, 0.0, out=out)

    def sq_dists_to_many(self, other: PointSet, indices: ArrayLike) -> NDArray[np.floating]:
        """Squared distances from every point of ``self`` to ``other[indices]``.

        Parameters
        ----------
        other
            A point set of the same type and dimensions as ``self``.
        indices
            1-D integer indices into ``other`` (length ``m``).

        Returns
        -------
        numpy.ndarray
            Shape ``(len(self), m)``, clipped at 0.
        """
        return self._sq_dists(other, np.asarray(indices, dtype=np.intp).reshape(-1))

    @abstractmethod
    def subset(self: _P, indices: ArrayLike) -> _P:
        """A new point set holding ``self[indices]`` (copies the selected rows)."""

    def sq_dists_to(self, other: PointSet, j: int) -> NDArray[np.floating]:
        """Squared distance from every point of ``self`` to point ``j`` of ``other``.

        Parameters
        ----------
        other
            A point set of the same type and dimensions as ``self`` (may be ``self``).
        j
            Index of the target point in ``other``.

        Returns
        -------
        numpy.ndarray
            Shape ``(len(self),)``, clipped at 0.
        """
        return self._sq_dists(other, int(j))

    def min_sq_dists_to(
        self, other: PointSet, *, max_block_elems: int = DEFAULT_MAX_BLOCK_ELEMS
    ) -> NDArray[np.floating]:
        """Squared distance from every point of ``self`` to its nearest point of ``other``.

        Computed in ``(rows, width)`` blocks of at most ``max_block_elems`` entries
        (at least one row and one column), so the temporary memory stays
        ``O(n + max_block_elems)`` however large ``other`` is. A block spans up to
        all of ``other`` and at least ``min(n, MIN_BLOCK_ROWS)`` rows of ``self``:
        each row block of ``self`` is read from memory once per ``width`` points of
        ``other``, not once per handful of them (a 1M-row pool against 1,000
        anchors: 4 columns per pass over the pool before, 3-8x slower; the
        minima are the same).

        Parameters
        ----------
        other
            Non-empty point set of the same type and dimensions.
        max_block_elems
            Upper bound on the entries of one temporary ``(n, m)`` block.

        Returns
        -------
        numpy.ndarray
            Shape ``(len(self),)``.
        """
        self._check_compatible(other)
        if len(other) == 0:
            raise ValueError("`other` must contain at least one point.")
        if max_block_elems < 1:
            raise ValueError(f"`max_block_elems` must be >= 1, got {max_block_elems}.")
        n, m = len(self), len(other)
        out = np.full(n, np.inf, dtype=np.result_type(self.dtype, other.dtype))
        if n == 0:
            return out
        width = min(m, max(1, max_block_elems // min(n, MIN_BLOCK_ROWS)))
        rows = min(n, max(1, max_block_elems // width))
        for r0 in range(0, n, rows):
            part = self if rows >= n else self.subset(np.arange(r0, min(r0 + rows, n)))
            best = out[r0 : r0 + rows]
            for c0 in range(0, m, width):
                block = part.sq_dists_to_many(other, np.arange(c0, min(c0 + width, m)))
                np.minimum(best, block.min(axis=1), out=best)
        return out

    def _check_compatible(self, other: PointSet) -> None:
        """Raise if distances between ``self`` and ``other`` are undefined."""
        if type(other) is not type(self):
            raise TypeError(
                f"`other` must be a {type(self).__name__} like `self`, got {type(other).__name__}."
            )


class DenseFeatures(PointSet):
    """Points given explicitly as the rows of an ``(n, d)`` matrix.

    Parameters
    ----------
    X
        Feature matrix, shape ``(n, d)``. float32 and float64 are kept as they are
        (float32 halves memory and time; see the module docstring for its
        round-off); other dtypes are promoted to float64. Must be finite.
    """

    def __init__(self, X: ArrayLike) -> None:
        self._X = _as_float_array(X, "X", ndim=2)
        self._sq = _row_sq_norms(self._X)

    def __len__(self) -> int:
        return self._X.shape[0]

    def __repr__(self) -> str:
        n, d = self._X.shape
        return f"DenseFeatures(n={n}, d={d}, dtype={self._X.dtype})"

    @property
    def dtype(self) -> np.dtype:
        return self._X.dtype

    @property
    def X(self) -> NDArray[np.floating]:
        """The feature matrix (read it, do not modify it: norms are cached)."""
        return self._X

    def sq_norms(self) -> NDArray[np.floating]:
        return self._sq.copy()

    def _check_compatible(self, other: PointSet) -> None:
        super()._check_compatible(other)
        assert isinstance(other, DenseFeatures)
        if other._X.shape[1] != self._X.shape[1]:
            raise ValueError(
                f"`other` has dimension {other._X.shape[1]}, `self` has {self._X.shape[1]}."
            )

    def _dots(self, other: PointSet, index: int | NDArray[np.intp]) -> NDArray[np.floating]:
        assert isinstance(other, DenseFeatures)
        return self._X @ other._X[index].T

    def subset(self, indices: ArrayLike) -> DenseFeatures:
        idx = np.asarray(indices, dtype=np.intp).reshape(-1)
        new = type(self).__new__(type(self))
        new._X = self._X[idx]
        new._sq = self._sq[idx]
        return new


class GradientEmbeddings(PointSet):
    """BADGE gradient embeddings ``g(x) = h(x) (x) (onehot(y) - p(x))``, factorised.

    ``g(x)`` is the gradient of the cross-entropy loss with respect to the last
    linear layer's weights, with label ``y``; it lives in ``C * d`` dimensions but
    is stored as the pair ``(h, a = onehot(y) - p)`` of sizes ``d`` and ``C``. The
    squared distance factorises (see the module docstring), so one query costs
    ``O(n (d + C))`` time and ``O(n)`` extra memory instead of ``O(n C d)``.

    Parameters
    ----------
    h
        Penultimate-layer features, shape ``(n, d)``.
    probs
        Softmax probabilities, shape ``(n, C)``.
    labels
        Optional integer labels in ``[0, C)``, shape ``(n,)``. If given (labelled
        anchors: FairFAL step 9 uses the true label), ``y = labels``; otherwise the
        hallucinated label ``y = argmax p`` (ties: lowest class index).

    Notes
    -----
    The computation dtype is ``result_type(h, probs)`` restricted to float32 /
    float64, so float32 ``h`` and ``probs`` give float32 distances.
    """

    def __init__(self, h: ArrayLike, probs: ArrayLike, labels: ArrayLike | None = None) -> None:
        h_arr = _as_float_array(h, "h", ndim=2)
        p_arr = _as_float_array(probs, "probs", ndim=2)
        if h_arr.shape[0] != p_arr.shape[0]:
            raise ValueError(
                f"`h` has {h_arr.shape[0]} rows but `probs` has {p_arr.shape[0]}; they must match."
            )
        n, num_classes = p_arr.shape
        if num_classes < 1:
            raise ValueError("`probs` must have at least one class column.")
        dtype = np.result_type(h_arr.dtype, p_arr.dtype)
        if labels is None:
            y = np.argmax(p_arr, axis=1) if n else np.empty(0, dtype=np.intp)
        else:
            y = np.asarray(labels)
            if y.shape != (n,):
                raise ValueError(f"`labels` must have shape ({n},), got {y.shape}.")
            if n and not np.issubdtype(y.dtype, np.integer):
                raise ValueError(f"`labels` must be integers, got dtype {y.dtype}.")
            if n and (y.min() < 0 or y.max() >= num_classes):
                raise ValueError(f"`labels` must lie in [0, {num_classes}), got [{y.min()}, {y.max()}].")
        a = -p_arr.astype(dtype, copy=True)
        a[np.arange(n), y] += 1.0
        self._h = h_arr.astype(dtype, copy=False)
        self._a = a
        self._labels = np.asarray(y, dtype=np.intp)
        self._sq = _row_sq_norms(self._a) * _row_sq_norms(self._h)

    def __len__(self) -> int:
        return self._h.shape[0]

    def __repr__(self) -> str:
        return (
            f"GradientEmbeddings(n={len(self)}, d={self._h.shape[1]}, "
            f"num_classes={self._a.shape[1]}, dtype={self.dtype})"
        )

    @property
    def dtype(self) -> np.dtype:
        return self._h.dtype

    @property
    def labels(self) -> NDArray[np.intp]:
        """The label ``y`` used in each embedding (given or ``argmax p``)."""
        return self._labels

    @property
    def embedding_dim(self) -> int:
        """Dimension ``C * d`` of the (never materialised) embedding."""
        return self._a.shape[1] * self._h.shape[1]

    def sq_norms(self) -> NDArray[np.floating]:
        return self._sq.copy()

    def _check_compatible(self, other: PointSet) -> None:
        super()._check_compatible(other)
        assert isinstance(other, GradientEmbeddings)
        if other._h.shape[1] != self._h.shape[1] or other._a.shape[1] != self._a.shape[1]:
            raise ValueError(
                f"`other` has (d, C) = ({other._h.shape[1]}, {other._a.shape[1]}), "
                f"`self` has ({self._h.shape[1]}, {self._a.shape[1]})."
            )

    def _dots(self, other: PointSet, index: int | NDArray[np.intp]) -> NDArray[np.floating]:
        # <g_i, g_j> = (h_i . h_j)(a_i . a_j): the C*d embedding is never formed
        assert isinstance(other, GradientEmbeddings)
        out = self._h @ other._h[index].T
        out *= self._a @ other._a[index].T
        return out

    def subset(self, indices: ArrayLike) -> GradientEmbeddings:
        idx = np.asarray(indices, dtype=np.intp).reshape(-1)
        new = type(self).__new__(type(self))
        new._h = self._h[idx]
        new._a = self._a[idx]
        new._labels = self._labels[idx]
        new._sq = self._sq[idx]
        return new

    def dense(self) -> NDArray[np.floating]:
        """Materialise the ``(n, C * d)`` embedding. **For tests only** (memory ``O(n C d)``).

        Row ``i`` is ``concat_c h_i * a_i[c]`` (class-major blocks, the layout of
        BADGE's ``get_grad_embedding``).
        """
        n = len(self)
        return (self._a[:, :, None] * self._h[:, None, :]).reshape(n, self.embedding_dim)
