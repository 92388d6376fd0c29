"""Server-side steps of FedSVD / FALE. The server holds no seed and never sees raw data.

What the server receives and computes (FALE, Tang et al. ICML 2025, Algorithm 1 and Section 4.2):

1. The masked blocks ``X'_i = P_i X_i Q``; :func:`server_svd` stacks them into ``X' = P X Q``
   (``P = diag(P_1, ..., P_k)``), computes the thin SVD ``X' = U' S V'^T`` and splits ``U'`` back
   into the per-client row blocks ``U'_i`` (sent to client ``i``; ``S`` and ``V'^T`` optional).
2. The leverage scores ``tau`` (in clear); :func:`sample_until_distinct` draws indices i.i.d. from
   ``p = tau / sum(tau)`` until ``n_q`` distinct indices are selected and returns the distinct
   indices, their multiplicities and importance weights; :meth:`Selection.per_client` splits them
   per client.
3. The masked weighted labelled blocks ``(A_i, b_i)``; :func:`masked_least_squares` solves the
   stacked least-squares problem for ``theta_hat`` (broadcast; clients unmask
   ``theta = Q theta_hat``).

Because ``P`` is block diagonal per client, the row blocks of ``X'`` are disjoint, so summing
zero-padded contributions with secure aggregation (FedSVD's step 3) would not hide which client sent
which rows: the server sees every ``X'_i`` anyway. See the package docstring for what it learns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ._validation import check_matrix, check_parts, check_vector

__all__ = [
    "ClientSelection",
    "Selection",
    "masked_least_squares",
    "sample_until_distinct",
    "sampling_probabilities",
    "server_svd",
    "split_rows",
]


def split_rows(matrix: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """Split the rows of ``matrix`` into consecutive blocks of the given sizes (views, no copy).

    Parameters
    ----------
    matrix
        Array whose first axis has length ``sum(sizes)``.
    sizes
        Per-client row counts ``n_i``, in client order.

    Returns
    -------
    list of numpy.ndarray
        ``matrix[offset_i : offset_i + n_i]`` for every client.
    """
    arr = np.asarray(matrix)
    sizes = [int(s) for s in sizes]
    if any(s < 0 for s in sizes):
        raise ValueError("sizes must be non-negative")
    if sum(sizes) != arr.shape[0]:
        raise ValueError(f"sizes sum to {sum(sizes)} but the array has {arr.shape[0]} rows")
    offsets = np.cumsum([0, *sizes])
    return [arr[offsets[i] : offsets[i + 1]] for i in range(len(sizes))]


def server_svd(
    masked_parts: Sequence[np.ndarray],
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Thin SVD of the stacked masked matrix ``X' = [X'_1; ...; X'_k]``.

    Uses ``scipy.linalg.svd(full_matrices=False)`` (LAPACK ``gesdd``, falling back to ``gesvd``
    if it does not converge) on ``X'`` itself: no Gram matrix, so the condition number is not
    squared (FedEval's eigen-route on ``X'^T X'`` loses small singular values).

    Parameters
    ----------
    masked_parts
        ``X'_i = P_i X_i Q`` (``n_i x d``) from every client, in client order.

    Returns
    -------
    u_parts : list of numpy.ndarray
        ``U'_i`` (``n_i x d``), the row blocks of ``U'``; send block ``i`` to client ``i`` only.
    s : numpy.ndarray
        Singular values (``d,``), descending; equal to those of the unmasked ``X``.
    vt_masked : numpy.ndarray
        ``V'^T`` (``d x d``); clients recover ``V^T = V'^T Q^T``.
    """
    arrays = check_parts(masked_parts)
    sizes = [a.shape[0] for a in arrays]
    # Stack straight into Fortran order so LAPACK can work in place (overwrite_a) without an extra
    # n x d copy; the gesvd fallback needs its own copy because gesdd may have clobbered `stacked`.
    stacked = np.empty((sum(sizes), arrays[0].shape[1]), order="F")
    np.concatenate(arrays, axis=0, out=stacked)
    try:
        u, s, vt = scipy.linalg.svd(
            stacked, full_matrices=False, check_finite=False, overwrite_a=True
        )
    except np.linalg.LinAlgError:
        u, s, vt = scipy.linalg.svd(
            np.vstack(arrays), full_matrices=False, check_finite=False, lapack_driver="gesvd"
        )
    del stacked
    return split_rows(u, sizes), s, vt


def sampling_probabilities(scores: np.ndarray) -> np.ndarray:
    """``p_j = tau_j / sum(tau)`` from non-negative scores (FALE Algorithm 1, line 4)."""
    tau = check_vector(scores, "scores")
    if tau.size == 0:
        raise ValueError("scores must not be empty")
    if np.any(tau < 0):
        raise ValueError("scores must be non-negative (leverage scores are squared norms)")
    total = tau.sum()
    if total <= 0:
        raise ValueError("scores sum to zero: no sample has positive probability")
    return tau / total


@dataclass(frozen=True)
class ClientSelection:
    """What the server sends to one client after selection.

    Attributes
    ----------
    local_indices : numpy.ndarray
        Distinct selected local row indices (ascending).
    counts : numpy.ndarray
        Multiplicity ``c_j`` of each (duplicates do not cost labels, only weight).
    row_scales : numpy.ndarray
        ``sqrt(c_j / (n_s p_j))``: the row scaling ``S_i`` applied before masking.
    """

    local_indices: np.ndarray
    counts: np.ndarray
    row_scales: np.ndarray


@dataclass(frozen=True)
class Selection:
    """Result of :func:`sample_until_distinct`.

    Attributes
    ----------
    indices : numpy.ndarray
        Distinct selected global indices (ascending), exactly ``n_query`` of them.
    counts : numpy.ndarray
        Multiplicities ``c_j`` (``sum(counts) == n_draws``).
    probabilities : numpy.ndarray
        ``p_j`` of each selected index.
    n_draws : int
        Total number of i.i.d. draws ``n_s``.
    """

    indices: np.ndarray
    counts: np.ndarray
    probabilities: np.ndarray
    n_draws: int

    @property
    def draw_weights(self) -> np.ndarray:
        """Per-draw weight ``1 / sqrt(n_s p_j)`` (the non-zero of a row of ``S``, FALE Def. 3.2)."""
        return 1.0 / np.sqrt(self.n_draws * self.probabilities)

    @property
    def ls_weights(self) -> np.ndarray:
        """Least-squares weight of each distinct point, ``c_j / (n_s p_j)``."""
        return self.counts / (self.n_draws * self.probabilities)

    @property
    def row_scales(self) -> np.ndarray:
        """Row scaling of each distinct point, ``sqrt(c_j / (n_s p_j))``."""
        return np.sqrt(self.ls_weights)

    def per_client(self, sizes: Sequence[int]) -> list[ClientSelection]:
        """Split the selection into per-client local indices, counts and row scales.

        Parameters
        ----------
        sizes
            ``n_i`` of every client in the order used to concatenate the scores.
        """
        sizes = [int(s) for s in sizes]
        offsets = np.cumsum([0, *sizes])
        if self.indices.size and self.indices[-1] >= offsets[-1]:
            raise ValueError(f"selected index {self.indices[-1]} >= total size {offsets[-1]}")
        client_of = np.searchsorted(offsets, self.indices, side="right") - 1
        scales = self.row_scales
        out = []
        for i in range(len(sizes)):
            mask = client_of == i
            out.append(
                ClientSelection(
                    local_indices=self.indices[mask] - offsets[i],
                    counts=self.counts[mask],
                    row_scales=scales[mask],
                )
            )
        return out


def sample_until_distinct(
    scores: np.ndarray,
    n_query: int,
    *,
    seed: int | np.random.SeedSequence | np.random.Generator | None = None,
    max_draws: int = 100_000_000,
) -> Selection:
    """Draw i.i.d. from ``p = scores / sum(scores)`` until ``n_query`` distinct indices are hit.

    FALE Algorithm 1, lines 5-12: the total number of draws ``n_s`` is random; duplicates only add
    weight. Draw ``t`` is the index ``j`` with ``cdf[j-1] <= u_t * cdf[-1] < cdf[j]`` for the
    generator's ``t``-th ``random()`` value ``u_t``, so the result is a function of the seed only
    (draws are generated in batches for speed and the batch is cut at the draw that completes the
    ``n_query``-th distinct index; the outcome equals a one-draw-at-a-time loop).

    Hand-written because ``Generator.choice`` has no "until k distinct" stopping rule and drawing
    a fixed ``n_s`` would change the algorithm.

    Parameters
    ----------
    scores
        Non-negative leverage scores ``tau`` (``n,``), concatenated in client order.
    n_query
        Number of distinct indices ``n_q`` (the labelling budget), ``1 <= n_q <= #{j: p_j > 0}``.
    seed
        Server-side sampling randomness. ``None`` draws fresh OS entropy.
    max_draws
        Safety cap on ``n_s`` (tiny probabilities can make the coupon-collector tail very long);
        ``RuntimeError`` if exceeded.

    Returns
    -------
    Selection
        Distinct indices, multiplicities, probabilities and ``n_s``.
    """
    p = sampling_probabilities(scores)
    n = p.size
    support = int(np.count_nonzero(p > 0))
    if isinstance(n_query, bool) or not isinstance(n_query, (int, np.integer)):
        raise ValueError(f"n_query must be an int, got {n_query!r}")
    n_query = int(n_query)
    if n_query < 1:
        raise ValueError(f"n_query must be >= 1, got {n_query}")
    if n_query > support:
        raise ValueError(
            f"n_query={n_query} exceeds the number of samples with positive sampling "
            f"probability ({support} of {n}); at most {support} distinct indices can be drawn"
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    cdf = np.cumsum(p)
    total = cdf[-1]
    last_positive = int(np.flatnonzero(p > 0)[-1])

    counts = np.zeros(n, dtype=np.int64)
    n_distinct = 0
    n_draws = 0
    batch = max(1024, 2 * n_query)
    while n_distinct < n_query:
        if n_draws >= max_draws:
            raise RuntimeError(
                f"sampling stopped after max_draws={max_draws} draws with {n_distinct} of "
                f"{n_query} distinct indices; reduce n_query or raise max_draws"
            )
        size = min(batch, max_draws - n_draws)
        u = rng.random(size)
        draws = np.searchsorted(cdf, u * total, side="right")
        # u * total can round up to total; such a draw belongs to the last positive entry.
        np.minimum(draws, last_positive, out=draws)
        uniq, first = np.unique(draws, return_index=True)
        new = counts[uniq] == 0
        first_new = np.sort(first[new])
        need = n_query - n_distinct
        if first_new.size >= need:
            draws = draws[: first_new[need - 1] + 1]
            n_distinct = n_query
        else:
            n_distinct += first_new.size
        counts += np.bincount(draws, minlength=n)
        n_draws += draws.size
        batch = min(2 * batch, 1 << 22)

    indices = np.flatnonzero(counts)
    return Selection(
        indices=indices,
        counts=counts[indices],
        probabilities=p[indices],
        n_draws=int(n_draws),
    )


def masked_least_squares(
    a_parts: Sequence[np.ndarray], b_parts: Sequence[np.ndarray], *, rcond: float | None = None
) -> np.ndarray:
    """Solve ``theta_hat = argmin ||A theta - b||_2`` for the stacked masked blocks.

    ``A = [A_1; ...; A_k]`` with ``A_i = P~_i S_i X^L_i Q`` and ``b = [b_1; ...; b_k]`` with
    ``b_i = P~_i S_i y^L_i`` (FALE Eq. (2)). The orthogonal ``P~_i`` do not change the solution
    and ``Q`` only rotates it: clients recover ``theta = Q theta_hat``. Solved with
    ``scipy.linalg.lstsq`` (SVD-based ``gelsd``); if ``A`` is rank deficient (e.g. fewer labelled
    points than ``d``) the minimum-norm solution is returned, which also commutes with ``Q``.

    Rank cutoff: singular values of ``A`` below ``rcond * s_max`` count as zero, by default
    ``rcond = max(m, d) * eps`` (``numpy.linalg.lstsq``'s and ``matrix_rank``'s rule) rather than
    LAPACK's ``eps``. The masks' round-off turns an exactly rank-deficient ``X^L`` (duplicated
    columns, e.g. two identical features of kegg-undirected) into one with a singular value of
    order ``eps * s_max``; inverting it gave ``||theta|| ~ 1e10`` (prediction error of order 1 once
    stored as float32) instead of the minimum-norm solution of the unmasked problem.

    Parameters
    ----------
    a_parts
        ``A_i`` (``n^l_i x d``) per client; clients with no labelled point may send ``(0, d)``.
    b_parts
        ``b_i`` (``n^l_i,``) per client.
    rcond
        Relative singular-value cutoff; ``None`` = ``max(m, d) * eps``.

    Returns
    -------
    numpy.ndarray
        ``theta_hat`` (``d,``), in masked coordinates.
    """
    a_list = [np.asarray(a, dtype=np.float64) for a in a_parts]
    b_list = [np.asarray(b, dtype=np.float64) for b in b_parts]
    if not a_list or len(a_list) != len(b_list):
        raise ValueError(
            f"need one b_i per A_i and at least one client: got {len(a_list)} A and {len(b_list)} b"
        )
    nonempty = [i for i, a in enumerate(a_list) if a.ndim == 2 and a.shape[0] > 0]
    if not nonempty:
        raise ValueError("no labelled rows: every A_i is empty")
    d = a_list[nonempty[0]].shape[1]
    for i, (a, b) in enumerate(zip(a_list, b_list, strict=True)):
        if a.ndim != 2 or a.shape[1] != d:
            raise ValueError(f"a_parts[{i}] must be 2-D with d={d} columns, got shape {a.shape}")
        if b.ndim != 1 or b.shape[0] != a.shape[0]:
            raise ValueError(
                f"b_parts[{i}] must be 1-D with {a.shape[0]} entries, got shape {b.shape}"
            )
    a_stack = check_matrix(np.vstack([a_list[i] for i in nonempty]), "A (stacked a_parts)")
    b_stack = check_vector(np.concatenate([b_list[i] for i in nonempty]), "b (stacked b_parts)")
    if rcond is None:
        rcond = max(a_stack.shape) * np.finfo(np.float64).eps
    theta, *_ = scipy.linalg.lstsq(a_stack, b_stack, cond=rcond, check_finite=False)
    return theta
