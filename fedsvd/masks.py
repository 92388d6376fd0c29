"""Block-diagonal random orthogonal masks (FedSVD's ``P_i`` and ``Q``).

A mask ``M`` of size ``n x n`` is block diagonal, ``M = diag(B_0, ..., B_{m-1})``.
Every block ``B_j`` is a Haar-distributed orthogonal matrix obtained from the QR
decomposition of a standard Gaussian matrix with the sign fix ``B_j = Q_j diag(sign(diag R_j))``
(Mezzadri 2007, "How to generate random matrices from the classical compact groups";
without the sign fix the distribution of ``Q`` depends on the LAPACK sign convention and is not
Haar).

Block layout (the FedSVD reference code's ``generate_orthogonal_matrix(n, block_reduce=b)``):
``m = max(1, n // b)`` blocks of size ``b``, the last block absorbing the remainder
(so its size lies in ``[b, 2b)``); if ``b >= n`` there is a single ``n x n`` block.

Every block is regenerated on demand from ``(seed, block index)`` through
``numpy.random.SeedSequence(entropy=seed, spawn_key=(j,))``, so holders of the seed can rebuild
any block independently, in any order, without ever materialising the dense ``n x n`` matrix.
Generation costs ``O(n b^2)`` time and ``O(b^2)`` memory per block (instead of ``O(n^3)`` /
``O(n^2)``).

Hand-written rather than ``scipy.stats.ortho_group``: that function only produces a dense
``n x n`` matrix (``O(n^3)`` time, ``O(n^2)`` memory) and draws from a caller-supplied global-ish
``random_state``; we need per-block regeneration from a seed and block-diagonal application.

Privacy note: block diagonality is a cost/privacy trade-off. A block-diagonal ``P_i`` only mixes
rows *within* a block, so whoever sees ``P_i X_i Q`` learns the Gram invariants (singular values,
``X_b^T X_b`` up to the rotation ``Q``) of every block ``X_b`` of ``b`` consecutive rows, not only
of the whole ``X_i``. Larger blocks reveal less and cost more.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import scipy.linalg.lapack

SeedLike = int | bytes | Sequence[int]

__all__ = ["BlockOrthogonalMask", "SeedLike", "haar_orthogonal", "seed_to_entropy"]


def seed_to_entropy(seed: SeedLike) -> int | tuple[int, ...]:
    """Normalise a mask seed into ``SeedSequence`` entropy.

    Parameters
    ----------
    seed
        A non-negative ``int`` (any size), ``bytes`` (read big-endian as an unsigned integer,
        convenient for message transport where integers are limited to 64 bits) or a sequence of
        non-negative ints.

    Returns
    -------
    int or tuple of int
        Value accepted by ``numpy.random.SeedSequence(entropy=...)``.
    """
    if isinstance(seed, (bytes, bytearray)):
        if len(seed) == 0:
            raise ValueError("mask seed given as bytes must not be empty")
        return int.from_bytes(bytes(seed), "big")
    if isinstance(seed, (bool, np.bool_)):
        raise ValueError("mask seed must be an int, bytes or a sequence of ints, not a bool")
    if isinstance(seed, (int, np.integer)):
        if int(seed) < 0:
            raise ValueError(f"mask seed must be non-negative, got {int(seed)}")
        return int(seed)
    try:
        values = tuple(int(v) for v in seed)
    except TypeError as exc:  # pragma: no cover - defensive
        raise ValueError(f"unsupported mask seed type {type(seed).__name__}") from exc
    if not values or any(v < 0 for v in values):
        raise ValueError("mask seed sequence must be non-empty and non-negative")
    return values


def haar_orthogonal(size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one Haar-distributed ``size x size`` orthogonal matrix.

    Parameters
    ----------
    size
        Matrix order (``>= 1``).
    rng
        Explicit generator; consumed for ``size * size`` standard normals.

    Returns
    -------
    numpy.ndarray
        Orthogonal matrix ``Q diag(sign(diag R))`` where ``G = QR`` and ``G`` is standard Gaussian.
    """
    gaussian = rng.standard_normal((size, size))
    q, r = np.linalg.qr(gaussian)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0  # probability-zero event; keep the matrix orthogonal anyway
    q *= signs[np.newaxis, :]
    return q


def _ormqr_lwork(side: bytes, trans: bytes, h: np.ndarray, tau: np.ndarray, c: np.ndarray) -> int:
    _, work, info = scipy.linalg.lapack.dormqr(side, trans, h, tau, c, -1)
    if info != 0:  # pragma: no cover - LAPACK argument error
        raise RuntimeError(f"dormqr workspace query failed (info={info})")
    return max(1, int(work[0]))


class _BlockFactor:
    """One Haar block ``B = Q diag(signs)`` kept in LAPACK's compact Householder form.

    Hand-written on top of ``scipy.linalg.lapack`` (``dgeqrf`` + ``dormqr``) instead of
    ``numpy.linalg.qr`` + ``@``: applying the ``b`` Householder reflectors to a ``b x d`` slice
    costs ``O(b^2 d)`` and skips forming ``Q`` explicitly (``dorgqr``, ``4/3 b^3`` flops), which
    halves the dominant cost of FedSVD (about 2.3x faster per 1000 x 1000 block, measured
    single-threaded). The matrix is identical to :func:`haar_orthogonal` on the same Gaussian draw
    (up to round-off).
    """

    __slots__ = ("h", "signs", "size", "tau")

    def __init__(self, h: np.ndarray, tau: np.ndarray, signs: np.ndarray) -> None:
        self.h, self.tau, self.signs = h, tau, signs
        self.size = h.shape[0]

    @classmethod
    def draw(cls, size: int, rng: np.random.Generator) -> _BlockFactor:
        gaussian = np.asfortranarray(rng.standard_normal((size, size)))
        lapack = scipy.linalg.lapack
        _, _, work, info = lapack.dgeqrf(gaussian, lwork=-1)
        h, tau, _, info = lapack.dgeqrf(gaussian, lwork=max(1, int(work[0])), overwrite_a=1)
        if info != 0:  # pragma: no cover - LAPACK argument error
            raise RuntimeError(f"dgeqrf failed (info={info})")
        signs = np.sign(np.diag(h)).astype(np.float64)  # diag(R); B = Q diag(sign(diag R)) is Haar
        signs[signs == 0] = 1.0
        return cls(h, tau, signs)

    def left(self, c: np.ndarray, *, transpose: bool) -> np.ndarray:
        """``B @ c`` (``Q (D c)``) or ``B.T @ c`` (``D (Q^T c)``)."""
        lapack = scipy.linalg.lapack
        if transpose:
            lw = _ormqr_lwork(b"L", b"T", self.h, self.tau, c)
            out, _, _ = lapack.dormqr(b"L", b"T", self.h, self.tau, c, lw)
            return self.signs[:, np.newaxis] * out
        dc = self.signs[:, np.newaxis] * c
        lw = _ormqr_lwork(b"L", b"N", self.h, self.tau, dc)
        out, _, _ = lapack.dormqr(b"L", b"N", self.h, self.tau, dc, lw, overwrite_c=1)
        return out

    def right(self, c: np.ndarray, *, transpose: bool) -> np.ndarray:
        """``c @ B`` (``(c Q) D``) or ``c @ B.T`` (``(c D) Q^T``)."""
        lapack = scipy.linalg.lapack
        if transpose:
            cd = c * self.signs[np.newaxis, :]
            lw = _ormqr_lwork(b"R", b"T", self.h, self.tau, cd)
            out, _, _ = lapack.dormqr(b"R", b"T", self.h, self.tau, cd, lw, overwrite_c=1)
            return out
        lw = _ormqr_lwork(b"R", b"N", self.h, self.tau, c)
        out, _, _ = lapack.dormqr(b"R", b"N", self.h, self.tau, c, lw)
        return out * self.signs[np.newaxis, :]


class BlockOrthogonalMask:
    """Block-diagonal Haar orthogonal matrix ``M`` (``n x n``) regenerated from a seed.

    Parameters
    ----------
    n
        Order of the matrix (``>= 1``).
    block_size
        Nominal block size ``b`` (``>= 1``). ``max(1, n // b)`` blocks; the last absorbs the
        remainder.
    seed
        Secret seed (see :func:`seed_to_entropy`). Whoever holds it can rebuild ``M``.
    cache
        Keep generated blocks in memory (``O(n b)`` floats) so repeated applications skip the QR
        decompositions. Default ``False``: every application regenerates blocks (``O(b^2)`` memory).

    Notes
    -----
    ``apply(X) = M @ X``, ``apply_transpose(X) = M.T @ X``, ``apply_right(X) = X @ M`` and
    ``apply_right_transpose(X) = X @ M.T``. One-dimensional inputs are treated as a column
    (left multiplication) or a row (right multiplication) and returned 1-D.
    """

    def __init__(self, n: int, block_size: int, seed: SeedLike, *, cache: bool = False) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 1:
            raise ValueError(f"mask order n must be a positive int, got {n!r}")
        if (
            isinstance(block_size, bool)
            or not isinstance(block_size, (int, np.integer))
            or int(block_size) < 1
        ):
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        self.n = int(n)
        self.block_size = int(block_size)
        self._entropy = seed_to_entropy(seed)
        self._cache: dict[int, _BlockFactor] | None = {} if cache else None
        n_blocks = max(1, self.n // self.block_size)
        starts = [j * self.block_size for j in range(n_blocks)]
        ends = starts[1:] + [self.n]
        self._bounds: tuple[tuple[int, int], ...] = tuple(zip(starts, ends, strict=True))

    # ------------------------------------------------------------------ structure
    @property
    def n_blocks(self) -> int:
        """Number of diagonal blocks."""
        return len(self._bounds)

    @property
    def block_bounds(self) -> tuple[tuple[int, int], ...]:
        """``(start, end)`` row/column range of every block."""
        return self._bounds

    def _factor(self, j: int) -> _BlockFactor:
        if not 0 <= j < self.n_blocks:
            raise IndexError(f"block index {j} out of range [0, {self.n_blocks})")
        if self._cache is not None and j in self._cache:
            return self._cache[j]
        start, end = self._bounds[j]
        seq = np.random.SeedSequence(entropy=self._entropy, spawn_key=(j,))
        factor = _BlockFactor.draw(end - start, np.random.Generator(np.random.PCG64(seq)))
        if self._cache is not None:
            self._cache[j] = factor
        return factor

    def block(self, j: int) -> np.ndarray:
        """Return diagonal block ``j`` as a dense matrix (regenerated from ``(seed, j)``).

        Parameters
        ----------
        j
            Block index in ``[0, n_blocks)``.

        Returns
        -------
        numpy.ndarray
            The ``(end - start) x (end - start)`` orthogonal block.
        """
        factor = self._factor(j)
        return factor.left(np.eye(factor.size), transpose=False)

    def _iter_factors(self) -> Iterator[tuple[int, int, _BlockFactor]]:
        for j, (start, end) in enumerate(self._bounds):
            yield start, end, self._factor(j)

    # ------------------------------------------------------------------ products
    def _as_2d(self, x: np.ndarray, *, left: bool) -> tuple[np.ndarray, bool]:
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[:, np.newaxis] if left else arr[np.newaxis, :]
            was_1d = True
        elif arr.ndim == 2:
            was_1d = False
        else:
            raise ValueError(f"expected a 1-D or 2-D array, got ndim={arr.ndim}")
        axis_len = arr.shape[0] if left else arr.shape[1]
        if axis_len != self.n:
            side = "rows" if left else "columns"
            raise ValueError(f"mask is {self.n} x {self.n} but the array has {axis_len} {side}")
        return arr, was_1d

    def _left(self, x: np.ndarray, transpose: bool) -> np.ndarray:
        arr, was_1d = self._as_2d(x, left=True)
        out = np.empty_like(arr)
        for start, end, factor in self._iter_factors():
            out[start:end] = factor.left(arr[start:end], transpose=transpose)
        return out[:, 0] if was_1d else out

    def _right(self, x: np.ndarray, transpose: bool) -> np.ndarray:
        arr, was_1d = self._as_2d(x, left=False)
        out = np.empty_like(arr)
        for start, end, factor in self._iter_factors():
            out[:, start:end] = factor.right(arr[:, start:end], transpose=transpose)
        return out[0] if was_1d else out

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Return ``M @ x`` (``x`` has ``n`` rows, or is a length-``n`` vector)."""
        return self._left(x, transpose=False)

    def apply_transpose(self, x: np.ndarray) -> np.ndarray:
        """Return ``M.T @ x`` (undoes :meth:`apply`)."""
        return self._left(x, transpose=True)

    def apply_right(self, x: np.ndarray) -> np.ndarray:
        """Return ``x @ M`` (``x`` has ``n`` columns, or is a length-``n`` vector)."""
        return self._right(x, transpose=False)

    def apply_right_transpose(self, x: np.ndarray) -> np.ndarray:
        """Return ``x @ M.T`` (undoes :meth:`apply_right`)."""
        return self._right(x, transpose=True)

    def dense(self) -> np.ndarray:
        """Materialise the dense ``n x n`` matrix. For tests and small ``n`` only."""
        out = np.zeros((self.n, self.n))
        for j, (start, end) in enumerate(self._bounds):
            out[start:end, start:end] = self.block(j)
        return out

    def __repr__(self) -> str:
        return (
            f"BlockOrthogonalMask(n={self.n}, block_size={self.block_size}, "
            f"n_blocks={self.n_blocks}, cached={self._cache is not None})"
        )
