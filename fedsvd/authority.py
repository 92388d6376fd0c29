"""Trusted authority (TA) of FedSVD: the only party that generates mask seeds.

Who holds what
--------------
* **Trusted authority**: every seed (``q_seed`` and every ``p_seed(i)``). It can therefore rebuild
  every mask and must never collude with the server or see masked data. It sees no data itself.
* **Client i**: ``q_seed`` (shared by all clients, defines ``Q``, ``d x d``) and its own
  ``p_seed(i)`` (defines ``P_i``, ``n_i x n_i``). It must not learn other clients' ``p_seed``.
* **Server**: *no seed at all*. Only the masked arrays pass through it.

In a deployment the TA is a separate process (or, as in FedEval, a "masking server" distinct from
the aggregation server) that sends :meth:`TrustedAuthority.client_package` to client ``i`` over
a confidential channel. The server must not relay these packages in clear.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SEED_BYTES", "TrustedAuthority"]

#: Size of every generated seed (128 bits).
SEED_BYTES = 16


def _seed_from_sequence(seq: np.random.SeedSequence) -> int:
    words = seq.generate_state(SEED_BYTES // 4, dtype=np.uint32)
    return int.from_bytes(words.astype(">u4").tobytes(), "big")


class TrustedAuthority:
    """Generate the shared ``Q`` seed and one ``P_i`` seed per client.

    Parameters
    ----------
    n_clients
        Number of clients ``k``.
    seed
        Reproducibility seed for simulations/tests. ``None`` (the default, and what a deployment
        should use) draws fresh OS entropy through ``numpy.random.SeedSequence()``.

    Attributes
    ----------
    q_seed : int
        128-bit seed of the shared ``d x d`` mask ``Q`` (clients only).
    """

    def __init__(
        self, n_clients: int, seed: int | np.random.SeedSequence | None = None
    ) -> None:
        if isinstance(n_clients, bool) or not isinstance(n_clients, (int, np.integer)):
            raise ValueError(f"n_clients must be an int, got {n_clients!r}")
        if n_clients < 1:
            raise ValueError(f"n_clients must be >= 1, got {n_clients}")
        root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        children = root.spawn(int(n_clients) + 1)
        self.n_clients = int(n_clients)
        self.q_seed: int = _seed_from_sequence(children[0])
        self._p_seeds: tuple[int, ...] = tuple(_seed_from_sequence(c) for c in children[1:])

    def p_seed(self, client: int) -> int:
        """128-bit seed of client ``client``'s private ``P_i`` (send to that client only)."""
        if not 0 <= client < self.n_clients:
            raise IndexError(f"client index {client} out of range [0, {self.n_clients})")
        return self._p_seeds[client]

    def client_package(self, client: int) -> dict[str, bytes]:
        """What the TA sends to client ``client``: its ``P_i`` seed and the shared ``Q`` seed.

        Seeds are 16-byte big-endian ``bytes`` so they fit message formats whose integers are
        limited to 64 bits; :class:`fedsvd.masks.BlockOrthogonalMask` accepts them directly.
        """
        return {
            "p_seed": self.p_seed(client).to_bytes(SEED_BYTES, "big"),
            "q_seed": self.q_seed.to_bytes(SEED_BYTES, "big"),
        }
