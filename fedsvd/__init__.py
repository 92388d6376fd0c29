"""FedSVD with block-diagonal orthogonal masks and FALE's leverage-score selection (numpy/scipy).

FedSVD (Chai et al., KDD 2022) in the row convention of FALE (Tang et al., ICML 2025, Sec. 3): ``X
= [X_1; ...; X_k]`` (``n x d``, samples as rows), client ``i`` holds ``X_i`` (``n_i x d``). A
trusted authority (:class:`TrustedAuthority`) gives client ``i`` the seed of a private orthogonal
``P_i`` (``n_i x n_i``) and every client the seed of a shared orthogonal ``Q`` (``d x d``); both
are block-diagonal Haar matrices (:class:`BlockOrthogonalMask`). Clients send ``X'_i = P_i X_i Q``
(:class:`FedSVDClient`); the server takes the thin SVD ``X' = U' S V'^T`` (:func:`server_svd`) and
returns ``U'_i`` to client ``i``, which recovers ``U_i = P_i^T U'_i``. ``S`` is unchanged and ``V =
Q V'``. FALE then samples by leverage score (:func:`leverage_scores`,
:func:`sample_until_distinct`) and fits a linear model on masked, importance-weighted labelled rows
(:func:`masked_least_squares`). :func:`federated_svd` and :func:`fale_fit` play every role in one
process. :mod:`fedsvd.secure_sum` is a pairwise-masking secure summation (X25519 + HKDF +
ChaCha20).

What the server can learn
-------------------------
The masking is *not* encryption and gives no formal (semantic-security or differential-privacy)
guarantee. The argument of FedSVD/FALE is only that infinitely many ``X`` map to the same ``X'``.
In particular, the known criticism applies: **the server learns ``X`` up to an orthogonal
transform**.

* The row blocks of ``X'`` are disjoint per client (``P`` is block diagonal), so secure aggregation
  does not hide which client sent what: the server sees every ``X'_i = P_i X_i Q`` separately. It
  therefore learns every orthogonal invariant of every client's data: the singular values of each
  ``X_i``, its Gram matrix ``X_i^T X_i`` up to the rotation ``Q`` (``X'_i^T X'_i = Q^T X_i^T X_i
  Q``: eigenvalues, traces, Frobenius norms, ...) and, because ``Q`` is common to all clients, the
  *joint* invariants across clients (e.g. ``tr(G_i G_j)``, angles between the clients' principal
  subspaces), plus ``n_i``.
* ``P_i`` is block diagonal with block size ``b``: it only mixes rows within a block, so the
  statements above hold for every block of ``b`` consecutive rows of ``X_i`` (finer than per
  client). Small blocks reveal more (``b = 1`` reveals ``X_i Q`` up to row signs).
* With ``d = 1``, ``Q = +-1`` and the server learns ``||X_i||`` of each block; in general the
  server learns ``X`` exactly once it learns ``Q`` and ``P_i``: from a client colluding with it
  (every client holds ``Q``; then the server has ``P_i X_i`` and hence ``X_i^T X_i`` exactly, and
  the model ``theta`` in clear), from the trusted authority (which holds every seed), or from known
  rows of ``X`` (a known-plaintext attack on ``Q``).
* Algorithm 1 sends the leverage score ``tau_j = x_j^T (X^T X)^{-1} x_j`` of every row in clear:
  the server learns each sample's "outlyingness" and the selected indices and weights.
* Model learning (Sec. 4.2): the server sees ``P~_i S_i [X^L_i Q, y^L_i]`` per client. It learns the
  weighted Gram of ``[X^L_i Q, y^L_i]``, hence every client's local weighted least-squares solution
  in masked coordinates (``Q^T theta_i``), the residual norms, ``||S_i y^L_i||`` and ``theta_hat =
  Q^T theta`` (so ``||theta||``, but not ``theta`` or predictions, as long as ``Q`` stays secret).

What it cannot learn (honest-but-curious server, no collusion with clients or the TA): the
individual rows of any ``X_i`` or labels ``y_i`` beyond the invariants above, ``Q``, ``P_i``,
``U_i`` (it only has ``U'_i = P_i U_i``), and ``theta`` in original coordinates.

What clients learn: ``U_i`` of their own rows. If they also receive ``S`` and ``V^T`` (as
:func:`federated_svd` returns), every client learns the global Gram ``X^T X = V S^2 V^T``; even
with only ``U_i``, a client whose ``U_i`` has full column rank can solve ``X_i = U_i (S V^T)`` for
``S V^T`` and thus learns ``X^T X``. FALE accepts this; do not send ``S``/``V'^T`` to clients that
do not need them.
"""

from __future__ import annotations

from .authority import TrustedAuthority
from .client import FedSVDClient, leverage_scores
from .inprocess import FaleResult, fale_fit, federated_svd, numerical_rank
from .masks import BlockOrthogonalMask, haar_orthogonal
from .server import (
    ClientSelection,
    Selection,
    masked_least_squares,
    sample_until_distinct,
    sampling_probabilities,
    server_svd,
    split_rows,
)

__all__ = [
    "BlockOrthogonalMask",
    "ClientSelection",
    "FaleResult",
    "FedSVDClient",
    "Selection",
    "TrustedAuthority",
    "fale_fit",
    "federated_svd",
    "haar_orthogonal",
    "leverage_scores",
    "masked_least_squares",
    "numerical_rank",
    "sample_until_distinct",
    "sampling_probabilities",
    "server_svd",
    "split_rows",
]
