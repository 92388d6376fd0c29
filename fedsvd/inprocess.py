"""In-process drivers that play every role (TA, clients, server) in one Python process.

For tests, benchmarks and simulations. A deployment (the Flower app) runs the same role functions
on different machines and ships the arrays named in the role modules' docstrings in messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._validation import check_parts, check_vector
from .authority import TrustedAuthority
from .client import FedSVDClient, leverage_scores
from .server import masked_least_squares, sample_until_distinct, server_svd

__all__ = ["FaleResult", "fale_fit", "federated_svd", "numerical_rank"]


def numerical_rank(s: np.ndarray, shape: tuple[int, int]) -> int:
    """Count singular values above ``max(shape) * eps * s[0]`` (``numpy.linalg.matrix_rank``'s
    rule)."""
    s = np.asarray(s, dtype=np.float64)
    if s.size == 0 or s[0] == 0:
        return 0
    tol = max(shape) * np.finfo(np.float64).eps * s[0]
    return int(np.count_nonzero(s > tol))


def federated_svd(
    parts: Sequence[np.ndarray],
    *,
    block_size: int = 1000,
    seed: int | np.random.SeedSequence | None = 0,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """FedSVD (FALE convention) of the horizontally partitioned ``X = [X_1; ...; X_k]``.

    Parameters
    ----------
    parts
        Client matrices ``X_i`` (``n_i x d``, finite, common ``d``, ``sum n_i >= d``).
    block_size
        Block size of the block-diagonal orthogonal masks ``P_i`` and ``Q``.
    seed
        Seed of the trusted authority's mask seeds (simulation only; ``None`` = OS entropy).
        The result does not depend on it beyond float round-off and singular-vector signs.

    Returns
    -------
    u_parts : list of numpy.ndarray
        ``U_i`` (``n_i x d``): the rows of the thin left singular matrix of ``X`` owned by client i.
    s : numpy.ndarray
        Singular values (``d,``), descending.
    vt : numpy.ndarray
        ``V^T`` (``d x d``), recovered by the clients as ``V'^T Q^T``.

    Raises
    ------
    ValueError
        Non-2-D part, NaN/inf, different ``d`` across parts, or stacked ``n < d``.
    """
    arrays = check_parts(parts)
    ta = TrustedAuthority(len(arrays), seed=seed)
    clients = [
        FedSVDClient(x, **ta.client_package(i), block_size=block_size)
        for i, x in enumerate(arrays)
    ]
    masked = [c.mask_data() for c in clients]  # client -> server
    u_masked, s, vt_masked = server_svd(masked)  # server
    del masked
    # server -> client i: U'_i; client i recovers U_i = P_i^T U'_i
    u_parts = [c.recover_left(u) for c, u in zip(clients, u_masked, strict=True)]
    vt = clients[0].recover_right(vt_masked)  # every client can do this (all hold Q)
    return u_parts, s, vt


@dataclass(frozen=True)
class FaleResult:
    """Outcome of :func:`fale_fit`.

    Attributes
    ----------
    selected : list of tuple of int
        Distinct ``(client, local_index)`` pairs queried for labels (``n_query`` of them).
    counts : numpy.ndarray
        Multiplicity of each selected pair in the ``n_draws`` draws.
    weights : numpy.ndarray
        Least-squares weight ``c_j / (n_s p_j)`` of each selected pair.
    theta : numpy.ndarray
        Global linear model ``theta_g = Q theta_hat`` (``d,``), in original coordinates.
    n_draws : int
        Number of i.i.d. draws ``n_s``.
    probabilities : numpy.ndarray
        Sampling probability ``p_j`` of each selected pair.
    scores : list of numpy.ndarray
        Leverage scores computed by every client.
    singular_values : numpy.ndarray
        Singular values of ``X``.
    """

    selected: list[tuple[int, int]]
    counts: np.ndarray
    weights: np.ndarray
    theta: np.ndarray
    n_draws: int
    probabilities: np.ndarray
    scores: list[np.ndarray]
    singular_values: np.ndarray


def fale_fit(
    parts: Sequence[np.ndarray],
    y_parts: Sequence[np.ndarray],
    n_query: int,
    *,
    seed: int | None = 0,
    block_size: int = 1000,
) -> FaleResult:
    """Run FALE (Algorithm 1 + Section 4.2) end to end in one process.

    Steps: TA seeds -> clients mask ``P_i X_i Q`` -> server thin SVD -> clients recover ``U_i`` and
    leverage scores -> server samples until ``n_query`` distinct -> clients label the selected rows
    (``y_parts`` acts as the oracle; only selected labels are read) and mask them with a fresh
    ``P~_i`` -> server solves the masked weighted least squares -> clients unmask
    ``theta = Q theta_hat``.

    Parameters
    ----------
    parts
        Client feature matrices ``X_i`` (``n_i x d``).
    y_parts
        Client label vectors (``n_i,``), read only at the selected indices.
    n_query
        Labelling budget (distinct points).
    seed
        Seeds the TA, the server's sampling and the clients' ``P~_i`` (``None`` = OS entropy).
    block_size
        Block size of all orthogonal masks.

    Returns
    -------
    FaleResult
    """
    arrays = check_parts(parts)
    y_list = list(y_parts)
    if len(y_list) != len(arrays):
        raise ValueError(f"got {len(arrays)} feature parts but {len(y_list)} label parts")
    ys = [
        check_vector(y, f"y_parts[{i}]", a.shape[0])
        for i, (y, a) in enumerate(zip(y_list, arrays, strict=True))
    ]
    sizes = [a.shape[0] for a in arrays]
    n, d = sum(sizes), arrays[0].shape[1]

    ta_seq, sample_seq, local_seq = np.random.SeedSequence(seed).spawn(3)
    ta = TrustedAuthority(len(arrays), seed=ta_seq)
    clients = [
        FedSVDClient(x, **ta.client_package(i), block_size=block_size)
        for i, x in enumerate(arrays)
    ]

    # Global data selection (Algorithm 1).
    u_masked, s, _ = server_svd([c.mask_data() for c in clients])
    rank = numerical_rank(s, (n, d))
    scores = [
        leverage_scores(c.recover_left(u), rank=rank)
        for c, u in zip(clients, u_masked, strict=True)
    ]
    selection = sample_until_distinct(np.concatenate(scores), n_query, seed=sample_seq)
    per_client = selection.per_client(sizes)

    # Global model learning (Section 4.2).
    local_seeds = local_seq.spawn(len(clients))
    a_parts, b_parts = [], []
    for c, sel, y, lseed in zip(clients, per_client, ys, local_seeds, strict=True):
        labels = y[sel.local_indices]  # oracle query
        a, b = c.mask_labelled(
            sel.local_indices,
            labels,
            sel.row_scales,
            seed=tuple(int(w) for w in lseed.generate_state(4)),
        )
        a_parts.append(a)
        b_parts.append(b)
    theta_hat = masked_least_squares(a_parts, b_parts)
    theta = clients[0].unmask_model(theta_hat)

    selected = [
        (i, int(j)) for i, sel in enumerate(per_client) for j in sel.local_indices
    ]
    return FaleResult(
        selected=selected,
        counts=selection.counts,
        weights=selection.ls_weights,
        theta=theta,
        n_draws=selection.n_draws,
        probabilities=selection.probabilities,
        scores=scores,
        singular_values=s,
    )
