"""FALE's client side: FedSVD masking, leverage scores, labelling, masked least squares, unmasking.

FALE (Tang et al., ICML 2025, Algorithm 1 and Sec. 4.2) on top of :mod:`fedsvd` (which does the
linear algebra; this module only moves its inputs and outputs through Flower messages).
Query actions, in protocol order (the server side is ``strategies/fale.py``):

1. ``fale_keys``: a fresh X25519 key pair (private key in the node state); reply the public key
   and ``n_i``.
2. ``fale_authority`` (the *authority client* only, the lowest partition id): draw the seed of the
   shared column mask ``Q`` (:class:`fedsvd.TrustedAuthority`, OS entropy) and seal it for every
   other client with AES-256-GCM under the X25519 + HKDF pair key
   (:func:`fedsvd.secure_sum.pair_seed`) shared with that client. The server relays the sealed
   seeds; without a client's private key it cannot open them.
3. ``fale_mask``: open the ``Q`` seed, draw a private secret (OS entropy) from which the client's
   own ``P_i`` and ``P~_i`` seeds derive, reply ``X'_i = P_i X_i Q``.
4. ``fale_scores``: recover ``U_i = P_i^T U'_i`` from the server's ``U'_i``, reply the leverage
   scores ``||row of U_i||^2``.
5. ``fale_label``: buy the labels of the selected rows the client does not hold yet from the oracle
   through the ledger (idempotent per query token; over several cycles the selection grows and
   earlier rows are already labelled) and, for FALE (not FALE-local), reply the masked weighted
   labelled data ``P~_i S_i [X^L_i Q, y^L_i]`` of every selected row (a fresh ``P~_i`` per cycle).
6. ``fale_model``: unmask ``theta = Q theta_hat`` and keep it in the node state (the linear
   model under :data:`MODEL_KEY`, which the loop's federated evaluation uses, and the float64
   ``theta`` under :data:`THETA_KEY`).

Who holds what
--------------
* Client ``i``: its raw ``X_i`` and the labels it bought (never sent), its private secret (``P_i``,
  ``P~_i``; never sent, generated locally because only client ``i`` ever applies ``P_i``), the
  shared ``Q`` seed, ``U_i`` and the unmasked model ``theta``.
* The authority client additionally generated the ``Q`` seed; it holds nothing about the others'
  data (the server never forwards their masked blocks to it).
* The server: the sealed ``Q`` seeds (undecryptable), every ``X'_i``, the singular values, every
  ``U'_i``, the leverage scores, the selection, the masked labelled blocks and ``theta_hat``.

Secrets (the X25519 private key, the ``Q`` seed, the client secret) are kept in the node state
(a ConfigRecord under :data:`STATE_KEY`): in memory and in a file of mode 0600 beside the site's
ledger (:mod:`client_app.node_state`), never sent; so a SuperNode restarted in the middle of the
protocol is re-admitted and finishes it with the same seeds. The secret and the ``Q`` seed come from
OS entropy, never from the run seed: the server knows the run config and could otherwise
regenerate every mask. A retried message gets the same answer (same seeds), so a resent round
reveals nothing new. See ``strategies/fale.py`` for what the server can and cannot learn.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import nn

from client_app.actions import query_action
from client_app.session import ClientSession
from fal_shared.wire import config_of, int_list

__all__ = [
    "MODEL_KEY",
    "STATE_KEY",
    "THETA_KEY",
    "client_features",
    "load_theta",
    "open_seed",
    "seal_seed",
    "seed_tag",
]

STATE_KEY = "fale"  # ConfigRecord of the node's FALE secrets (private key, Q seed, client secret)
MODEL_KEY = "fale-model"  # ArrayRecord: the unmasked linear model (evaluated by the loop)
THETA_KEY = "fale-theta"  # ArrayRecord: theta in float64, as unmasked


def _reply(config: dict, start: float, **records) -> RecordDict:
    """Reply content as every query action gives it: ``result`` config and ``metrics`` with compute seconds."""
    metrics = MetricRecord({"compute-seconds": time.perf_counter() - start})
    return RecordDict({"result": ConfigRecord(config), "metrics": metrics, **records})


def _state(session: ClientSession, cycle: int, *, fresh: bool = False) -> dict:
    record = session.node_state.get_config(STATE_KEY)
    state = dict(record) if record is not None else {}
    if fresh and int(state.get("cycle", -1)) != cycle:
        state = {"cycle": cycle}
    elif not fresh and int(state.get("cycle", -1)) != cycle:
        raise RuntimeError(
            f"FALE: this node holds no FALE state of cycle {cycle} (fale_keys of this cycle did not run on this "
            f"site's state folder {session.node_state.folder})"
        )
    return state


def _save(session: ClientSession, state: dict) -> None:
    session.node_state.put(STATE_KEY, ConfigRecord(state))


def _arrays(content: RecordDict, key: str) -> list[np.ndarray]:
    if key not in content.array_records:
        raise ValueError(f"FALE: message lacks the array record {key!r}")
    return content.array_records[key].to_numpy_ndarrays()


def client_features(x: np.ndarray, fit_intercept: bool) -> np.ndarray:
    """The rows FedSVD sees: ``X_i`` in float64, with a constant-1 column when ``fale-fit-intercept``."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return np.hstack([x, np.ones((len(x), 1))]) if fit_intercept else x


def load_theta(model: nn.Module, theta: np.ndarray, fit_intercept: bool) -> nn.Module:
    """Write FALE's ``theta`` into the single-layer linear model (weight; bias = last entry or 0)."""
    theta = np.asarray(theta, dtype=np.float64)
    head = model.head
    d = head.in_features
    if theta.shape != (d + int(fit_intercept),):
        raise ValueError(f"theta has shape {theta.shape}, the linear model needs ({d + int(fit_intercept)},)")
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(theta[:d]).view(1, d))
        head.bias.fill_(float(theta[d]) if fit_intercept else 0.0)
    return model


def seed_tag(run_name: str, cycle: int, recipient: int) -> bytes:
    """HKDF context and AES-GCM associated data of the ``Q`` seed sealed for ``recipient``."""
    return f"{run_name}/cycle-{cycle}/fale-q-seed/to-partition-{recipient}".encode()


def seal_seed(private_key, peer_public: bytes, seed: bytes, tag: bytes) -> bytes:
    """AES-256-GCM encryption of ``seed`` under the X25519 + HKDF key of (private_key, peer_public).

    Returns ``nonce (12 bytes) || ciphertext || tag (16 bytes)``; ``tag`` binds run, cycle and
    recipient (HKDF info and associated data), so a sealed seed cannot be replayed elsewhere.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from fedsvd.secure_sum import pair_seed

    key = pair_seed(private_key, peer_public, tag)
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, seed, tag)


def open_seed(private_key, peer_public: bytes, sealed: bytes, tag: bytes) -> bytes:
    """Inverse of :func:`seal_seed`; ``cryptography.exceptions.InvalidTag`` if it was tampered with."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from fedsvd.secure_sum import pair_seed

    key = pair_seed(private_key, peer_public, tag)
    return AESGCM(key).decrypt(bytes(sealed[:12]), bytes(sealed[12:]), tag)


def _private_key(state: dict):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    if "sk" not in state:
        raise RuntimeError("FALE: this node has no key pair of this cycle (fale_keys did not run here)")
    return X25519PrivateKey.from_private_bytes(bytes(state["sk"]))


def _secret_seeds(state: dict, cycle: int) -> tuple[list[int], list[int]]:
    """``P_i`` and ``P~_i`` seeds, both from the client's private secret (never sent)."""
    secret = int.from_bytes(bytes(state["secret"]), "big")
    return [secret, 0], [secret, 1, cycle]


def _dims(session: ClientSession) -> tuple[int, int]:
    return len(session.data.ids), int(np.prod(session.data.input_shape)) + int(session.cfg.fale_fit_intercept)


def _fedsvd_client(session: ClientSession, state: dict):
    from fedsvd import FedSVDClient

    if "q-seed" not in state or "secret" not in state:
        raise RuntimeError("FALE: this node has no mask seeds of this cycle (fale_mask did not run here)")
    p_seed, _ = _secret_seeds(state, int(state["cycle"]))
    x = client_features(session.data.x, session.cfg.fale_fit_intercept)
    return FedSVDClient(x, p_seed, bytes(state["q-seed"]), block_size=session.cfg.fale_block_size)


# ------------------------------------------------------------------------------------ actions
@query_action("fale_keys")
def fale_keys(session: ClientSession, content: RecordDict) -> RecordDict:
    """A fresh X25519 key pair for this cycle (kept on a retry); reply the public key and ``n_i``."""
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    from fedsvd.secure_sum import generate_keypair, public_bytes

    start = time.perf_counter()
    cycle = int(config_of(content)["cycle"])
    state = _state(session, cycle, fresh=True)
    if "sk" in state:
        public = public_bytes(_private_key(state))
    else:
        private, public = generate_keypair()
        state["sk"] = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        _save(session, state)
    n, d = _dims(session)
    return _reply({"public-key": public, "num-samples": n, "partition-id": session.partition_id}, start)


@query_action("fale_authority")
def fale_authority(session: ClientSession, content: RecordDict) -> RecordDict:
    """The authority client: draw the ``Q`` seed and seal it for every other client.

    Content: config ``cycle``; ConfigRecord ``public-keys`` = {partition id: X25519 public key}.
    Reply: ``authority-public-key`` and ``sealed-<pid>`` for every other partition.
    """
    from fedsvd import TrustedAuthority
    from fedsvd.secure_sum import public_bytes

    start = time.perf_counter()
    cycle = int(config_of(content)["cycle"])
    state = _state(session, cycle)
    private = _private_key(state)
    if "q-seed" not in state:
        # The trusted authority's Q seed (fedsvd.authority, OS entropy). Its P seed is not used:
        # every P_i is generated by the client that applies it.
        state["q-seed"] = TrustedAuthority(1, seed=None).client_package(0)["q_seed"]
        _save(session, state)
    peers = config_of(content, "public-keys")
    if str(session.partition_id) not in peers:
        raise ValueError(f"FALE: partition {session.partition_id} was asked to act as authority but is not a participant")
    config: dict = {"authority-public-key": public_bytes(private)}
    for pid, public in peers.items():
        if int(pid) != session.partition_id:
            tag = seed_tag(session.run_name, cycle, int(pid))
            config[f"sealed-{int(pid)}"] = seal_seed(private, bytes(public), bytes(state["q-seed"]), tag)
    return _reply(config, start)


@query_action("fale_mask")
def fale_mask(session: ClientSession, content: RecordDict) -> RecordDict:
    """Open the ``Q`` seed, draw the client secret, reply ``X'_i = P_i X_i Q`` (``n_i x d``)."""
    start = time.perf_counter()
    conf = config_of(content)
    cycle, authority = int(conf["cycle"]), int(conf["authority"])
    state = _state(session, cycle)
    if "q-seed" not in state:
        if authority == session.partition_id:
            raise RuntimeError("FALE: the authority client has no Q seed (fale_authority did not run here)")
        tag = seed_tag(session.run_name, cycle, session.partition_id)
        state["q-seed"] = open_seed(_private_key(state), bytes(conf["authority-public-key"]), bytes(conf["sealed-q-seed"]), tag)
    if "secret" not in state:
        state["secret"] = os.urandom(16)  # OS entropy: the server must not be able to regenerate P_i
    state.pop("sk", None)  # the key pair has done its job
    _save(session, state)
    n, d = _dims(session)
    masked = _fedsvd_client(session, state).mask_data() if n else np.zeros((0, d))
    return _reply({"rows": n, "columns": d}, start, masked=ArrayRecord(numpy_ndarrays=[masked]))


@query_action("fale_scores")
def fale_scores(session: ClientSession, content: RecordDict) -> RecordDict:
    """Recover ``U_i = P_i^T U'_i`` and reply its leverage scores (``n_i``)."""
    from fedsvd import leverage_scores

    start = time.perf_counter()
    cycle = int(config_of(content)["cycle"])
    state = _state(session, cycle)
    (u_masked,) = _arrays(content, "left-factor")
    n, _ = _dims(session)
    if u_masked.shape[0] != n:
        raise ValueError(f"FALE: the server sent {u_masked.shape[0]} rows of U', this client holds {n}")
    scores = leverage_scores(_fedsvd_client(session, state).recover_left(u_masked)) if n else np.zeros(0)
    return _reply({"rows": n}, start, scores=ArrayRecord(numpy_ndarrays=[scores]))


@query_action("fale_label")
def fale_label(session: ClientSession, content: RecordDict) -> RecordDict:
    """Buy the labels of the selected rows; for FALE reply ``P~_i S_i [X^L_i Q, y^L_i]``.

    Content: ArrayRecord ``selection`` = [local row indices, multiplicities, row scales
    ``sqrt(c_j / (n_s p_j))``]; config ``cycle``, ``token``, ``strategy``, ``mask-labelled`` and
    ``fedsvd-cycle`` (the cycle whose FedSVD secrets mask the data; default ``cycle``).
    """
    start = time.perf_counter()
    conf = config_of(content)
    cycle, token = int(conf["cycle"]), str(conf["token"])
    fedsvd_cycle = int(conf.get("fedsvd-cycle", cycle))
    local, counts, scales = _arrays(content, "selection")
    local = np.asarray(local, dtype=np.int64)
    n, d = _dims(session)
    if local.size and (local.min() < 0 or local.max() >= n or np.unique(local).size != local.size):
        raise ValueError(f"FALE: selected rows must be distinct indices in [0, {n})")
    if counts.shape != local.shape or scales.shape != local.shape or (counts.size and counts.min() < 1):
        raise ValueError("FALE: one multiplicity >= 1 and one row scale per selected row expected")
    ids = session.data.ids[local]
    bought = session.ledger.purchase(token)  # a retried query: the recorded purchase
    if bought is None:
        held = set(session.ledger.labeled_ids().tolist())
        new = np.array([i for i in ids.tolist() if i not in held], dtype=np.int64)
        bought = session.buy(new, cycle=cycle, strategy=str(conf["strategy"]), token=token)
    if not set(ids.tolist()) <= set(session.ledger.labeled_ids().tolist()):
        raise RuntimeError(f"FALE: query {token!r} was answered before with other samples (ledger mismatch)")
    config = {
        "selected-ids": int_list(bought),
        "labeled": len(session.ledger),
        "pool-size": n - len(session.ledger),
    }
    records = {}
    if bool(conf["mask-labelled"]):
        state = _state(session, fedsvd_cycle)
        if local.size:
            by_id = dict(zip(session.ledger.labeled_ids().tolist(), session.ledger.labels().tolist()))
            y = np.array([by_id[int(i)] for i in ids], dtype=np.float64)
            _, local_seed = _secret_seeds(state, cycle)
            a, b = _fedsvd_client(session, state).mask_labelled(local, y, scales, seed=local_seed)
        else:
            a, b = np.zeros((0, d)), np.zeros(0)
        records["masked-labelled"] = ArrayRecord(numpy_ndarrays=[a, b])
    return _reply(config, start, **records)


@query_action("fale_model")
def fale_model(session: ClientSession, content: RecordDict) -> RecordDict:
    """Unmask ``theta = Q theta_hat`` and keep it (and the linear model) in the node state."""
    from fedsvd import BlockOrthogonalMask

    start = time.perf_counter()
    conf = config_of(content)
    state = _state(session, int(conf.get("fedsvd-cycle", conf["cycle"])))
    (theta_hat,) = _arrays(content, "theta-hat")
    n, d = _dims(session)
    if n:
        theta = _fedsvd_client(session, state).unmask_model(theta_hat)
    else:  # a client without data still holds Q: FedSVDClient needs rows, the mask does not
        theta = BlockOrthogonalMask(d, session.cfg.fale_block_size, bytes(state["q-seed"])).apply(
            np.asarray(theta_hat, dtype=np.float64)
        )
    session.node_state.put(THETA_KEY, ArrayRecord(numpy_ndarrays=[np.asarray(theta, dtype=np.float64)]))
    model = load_theta(session.new_model(), theta, session.cfg.fale_fit_intercept)
    session.node_state.put(MODEL_KEY, ArrayRecord(model.state_dict()))
    return _reply({"stored": MODEL_KEY}, start)
