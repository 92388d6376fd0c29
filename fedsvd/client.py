"""Client-side steps of FedSVD / FALE (everything that touches raw data or a mask seed).

Client ``i`` holds its raw features ``X_i`` (``n_i x d``), the labels it queries, the seed of its
private ``P_i`` and the seed of the shared ``Q`` (both from
:class:`fedsvd.authority.TrustedAuthority`). It sends only masked arrays (``P_i X_i Q``, ``P~_i S_i
[X^L_i Q, y^L_i]``) and leverage scores.

Steps, in protocol order (FALE, Tang et al. ICML 2025, Algorithm 1 and Section 4.2):

1. :meth:`FedSVDClient.mask_data` -> ``X'_i = P_i X_i Q`` (to the server).
2. :meth:`FedSVDClient.recover_left` -> ``U_i = P_i^T U'_i`` from the server's row block ``U'_i``.
   (:meth:`FedSVDClient.recover_right` -> ``V^T = V'^T Q^T`` if the right factor is wanted.)
3. :func:`leverage_scores` -> ``tau_i`` (to the server, in clear, as in Algorithm 1 line 3).
4. :meth:`FedSVDClient.mask_labelled` -> ``(P~_i S_i X^L_i Q, P~_i S_i y^L_i)`` (to the server).
5. :meth:`FedSVDClient.unmask_model` -> ``theta = Q theta_hat`` from the server's ``theta_hat``.
"""

from __future__ import annotations

import numpy as np

from ._validation import check_matrix, check_vector
from .masks import BlockOrthogonalMask, SeedLike

__all__ = ["FedSVDClient", "leverage_scores"]


def leverage_scores(u_part: np.ndarray, *, rank: int | None = None) -> np.ndarray:
    """Leverage scores ``tau_j = ||e_j^T U||^2`` of the rows of a (part of an) orthonormal basis.

    Parameters
    ----------
    u_part
        ``(n_i, r)`` rows of the left singular matrix ``U`` of the stacked ``X`` that belong to one
        client (``U_i`` from :meth:`FedSVDClient.recover_left`).
    rank
        Use only the first ``rank`` columns (those with non-negligible singular values) when ``X``
        is rank deficient; ``None`` uses all columns. For a column-full-rank ``X`` the scores equal
        ``x_j^T (X^T X)^{-1} x_j`` (FALE Def. 3.1) and sum to ``d`` over all clients.

    Returns
    -------
    numpy.ndarray
        ``(n_i,)`` non-negative scores.
    """
    u = check_matrix(u_part, "u_part")
    if rank is not None:
        if not 0 <= rank <= u.shape[1]:
            raise ValueError(f"rank must be in [0, {u.shape[1]}], got {rank}")
        u = u[:, :rank]
    return np.einsum("ij,ij->i", u, u)


class FedSVDClient:
    """One data holder in FedSVD / FALE.

    Parameters
    ----------
    x
        Local feature matrix ``X_i`` (``n_i x d``); never leaves the client.
    p_seed
        Seed of the private row mask ``P_i`` (``n_i x n_i``), from the trusted authority.
    q_seed
        Seed of the column mask ``Q`` (``d x d``) shared by all clients, from the trusted authority.
    block_size
        Block size of the block-diagonal masks (same value on every client; ``Q`` too).
    cache_masks
        Keep mask blocks in memory between steps (faster, ``O(n_i * block_size)`` floats).
    """

    def __init__(
        self,
        x: np.ndarray,
        p_seed: SeedLike,
        q_seed: SeedLike,
        *,
        block_size: int = 1000,
        cache_masks: bool = False,
    ) -> None:
        self._x = check_matrix(x, "x")
        self.n, self.d = self._x.shape
        self.block_size = int(block_size)
        self._p = BlockOrthogonalMask(self.n, block_size, p_seed, cache=cache_masks)
        self._q = BlockOrthogonalMask(self.d, block_size, q_seed, cache=True)

    # -------------------------------------------------------------- FedSVD
    def mask_data(self) -> np.ndarray:
        """Return ``X'_i = P_i X_i Q`` (``n_i x d``), the array sent to the server."""
        return self._p.apply(self._q.apply_right(self._x))

    def recover_left(self, u_masked: np.ndarray) -> np.ndarray:
        """Return ``U_i = P_i^T U'_i`` from this client's row block ``U'_i`` of ``U'``."""
        u = check_matrix(u_masked, "u_masked")
        if u.shape[0] != self.n:
            raise ValueError(f"u_masked has {u.shape[0]} rows, this client has n_i={self.n}")
        return self._p.apply_transpose(u)

    def recover_right(self, vt_masked: np.ndarray) -> np.ndarray:
        """Return ``V^T = V'^T Q^T`` (``r x d``) from the server's masked right factor ``V'^T``."""
        vt = check_matrix(vt_masked, "vt_masked")
        if vt.shape[1] != self.d:
            raise ValueError(f"vt_masked has {vt.shape[1]} columns, expected d={self.d}")
        return self._q.apply_right_transpose(vt)

    # -------------------------------------------------------------- FALE Section 4.2
    def mask_labelled(
        self,
        local_indices: np.ndarray,
        y: np.ndarray,
        row_scales: np.ndarray,
        *,
        seed: SeedLike | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mask the importance-weighted labelled rows: ``(P~_i S_i X^L_i Q, P~_i S_i y^L_i)``.

        Parameters
        ----------
        local_indices
            Distinct local row indices of the labelled points (``n^l_i`` of them).
        y
            Their labels (``n^l_i,``), in the same order.
        row_scales
            ``S_i`` diagonal: ``sqrt(c_j / (n_s p_j))`` per distinct point (multiplicity ``c_j``,
            ``n_s`` draws, probability ``p_j``), as sent by the server
            (:attr:`fedsvd.server.Selection.row_scales`). Folding duplicates into one row of
            weight ``c_j/(n_s p_j)`` gives the same least-squares problem as FALE Eq. (2) with
            repeated rows ``1/sqrt(n_s p_j)``, and sends each labelled point once.
        seed
            Seed of the fresh local ``P~_i`` (``n^l_i x n^l_i``). Generated and kept by the client
            only; ``None`` draws fresh OS entropy. It does not change the solution, only hides the
            rows.

        Returns
        -------
        tuple of numpy.ndarray
            ``A_i`` (``n^l_i x d``) and ``b_i`` (``n^l_i,``), to be stacked by the server.
        """
        idx = np.asarray(local_indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise ValueError("local_indices must be a 1-D integer array")
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise ValueError(f"local_indices must lie in [0, {self.n})")
        if np.unique(idx).size != idx.size:
            raise ValueError("local_indices must be distinct (fold duplicates into row_scales)")
        y_arr = check_vector(y, "y", idx.size) if idx.size else np.zeros(0)
        scales = check_vector(row_scales, "row_scales", idx.size) if idx.size else np.zeros(0)
        if np.any(scales < 0):
            raise ValueError("row_scales must be non-negative")
        if idx.size == 0:
            return np.zeros((0, self.d)), np.zeros(0)
        if seed is None:
            seed = np.random.SeedSequence().entropy  # fresh OS entropy, client-local
        p_tilde = BlockOrthogonalMask(idx.size, self.block_size, seed)
        a = p_tilde.apply(scales[:, None] * self._q.apply_right(self._x[idx]))
        b = p_tilde.apply(scales * y_arr)
        return a, b

    def unmask_model(self, theta_masked: np.ndarray) -> np.ndarray:
        """Return ``theta = Q theta_hat`` (``d,``) from the server's masked solution."""
        th = check_vector(theta_masked, "theta_masked", self.d)
        return self._q.apply(th)
