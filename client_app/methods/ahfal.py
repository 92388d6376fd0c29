"""AHFAL's client side of the statistics round (Sec. 6.1 step 1, privacy Sec. 6.3).

Actions (``query.<name>``):

* ``ahfal_histogram``: the client's labeled-class histogram (Laplace-noised when
  ``ahfal-dp-epsilon > 0``), in the clear.
* ``ahfal_keys`` then ``ahfal_masked_stats`` (``ahfal-secure-sum=true``): a fresh
  X25519 key pair per cycle (the private key stays in the node state); the
  server relays every public key; the client answers with one pairwise-masked
  uint64 vector ``[n_i, fix(p_i), fix(p_i^2), 1[|n_i| > 0]]`` (``fedsvd.secure_sum``,
  integer mode modulo 2^64). Only the sum over all clients is meaningful.

Local DP: the noisy histogram of a cycle is drawn once and kept in the
client's privacy ledger (a JSON file next to its label ledger), so a retried
message or a restarted node returns the same answer and spends no further
epsilon; everything sent (counts, proportions, squares) is post-processing of
that noisy histogram. Each client keeps its own epsilon account and refuses to
exceed ``ahfal-dp-epsilon``. The private keys of secure summation are kept in
the node state (memory, and a 0600 file beside the ledger: :mod:`client_app.node_state`),
so a restarted node answers a retried round with the same key.
"""

from __future__ import annotations

import json
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client_app.actions import query_action
from client_app.session import ClientSession
from fal_shared.files import atomic_write_text
from fal_shared.wire import config_of
from query.ahfal import client_statistics

__all__ = ["PrivacyLedger", "STATE_KEY", "dp_epsilon_per_cycle", "noisy_histogram", "stats_vector"]

STATE_KEY = "ahfal"
_DP_SALT = 0xA4FA1  # separates the DP noise stream from every other seeded stream


def _reply(config: dict, start: float, **records) -> RecordDict:
    """Reply content as every query action gives it: ``result`` config and ``metrics`` with compute seconds."""
    metrics = MetricRecord({"compute-seconds": time.perf_counter() - start})
    return RecordDict({"result": ConfigRecord(config), "metrics": metrics, **records})


def dp_epsilon_per_cycle(total_epsilon: float, num_cycles: int) -> float:
    """Equal split of the total budget over the query phases (Table 3: 5 over 5 cycles = 1)."""
    if total_epsilon <= 0:
        return 0.0
    return float(total_epsilon) / max(int(num_cycles), 1)


def noisy_histogram(counts: np.ndarray, epsilon: float, sensitivity: float, rng: np.random.Generator) -> np.ndarray:
    """Laplace mechanism on a histogram, post-processed to non-negative integers.

    ``n + Laplace(0, sensitivity / epsilon)`` per class, rounded and clipped at 0
    (post-processing keeps epsilon-DP). ``epsilon = 0`` returns the counts unchanged.
    """
    n = np.asarray(counts, dtype=np.int64)
    if epsilon <= 0:
        return n.copy()
    noisy = n + rng.laplace(0.0, sensitivity / epsilon, size=n.shape)
    return np.clip(np.rint(noisy), 0, None).astype(np.int64)


def _state(session: ClientSession) -> dict:
    record = session.node_state.get_config(STATE_KEY)
    return dict(record) if record is not None else {}


def _save_state(session: ClientSession, state: dict) -> None:
    session.node_state.put(STATE_KEY, ConfigRecord(state))


class PrivacyLedger:
    """The client's DP releases and epsilon spent, in a JSON file next to its label ledger.

    On disk, not in the node's memory, for the same reason as the label ledger: a
    restarted SuperNode must neither forget the epsilon it spent nor draw a fresh
    noisy histogram for a cycle it already released (two independent releases of
    one histogram cost twice the epsilon). Rewritten atomically.
    """

    def __init__(self, session: ClientSession) -> None:
        self.path = session.ledger_path.with_name(session.ledger_path.stem + "-ahfal-dp.json")
        self.data = {"releases": {}, "spent": 0.0}
        if self.path.exists():
            self.data = json.loads(self.path.read_text())

    @property
    def spent(self) -> float:
        return float(self.data["spent"])

    def release(self, cycle: int) -> tuple[np.ndarray, float] | None:
        entry = self.data["releases"].get(str(cycle))
        return None if entry is None else (np.asarray(entry["histogram"], dtype=np.int64), float(entry["epsilon"]))

    def record(self, cycle: int, histogram: np.ndarray, epsilon: float) -> None:
        self.data["releases"][str(cycle)] = {"histogram": [int(v) for v in histogram], "epsilon": float(epsilon)}
        self.data["spent"] = self.spent + float(epsilon)
        atomic_write_text(self.path, json.dumps(self.data))


def _released_histogram(session: ClientSession, cycle: int) -> tuple[np.ndarray, float, float]:
    """This cycle's released histogram; (histogram, epsilon of this cycle, epsilon spent so far).

    Without DP the exact histogram (no ledger). With DP the noisy histogram is
    drawn once per cycle and kept in the :class:`PrivacyLedger`: a retry, the
    masked round after the key round, or a restarted node gets the same release
    and spends nothing more.
    """
    cfg = session.cfg
    if cfg.ahfal_dp_epsilon <= 0:
        return np.asarray(session.label_histogram(), dtype=np.int64), 0.0, 0.0
    ledger = PrivacyLedger(session)
    previous = ledger.release(cycle)
    if previous is not None:
        return previous[0], previous[1], ledger.spent
    eps = dp_epsilon_per_cycle(cfg.ahfal_dp_epsilon, cfg.num_cycles)
    if ledger.spent + eps > cfg.ahfal_dp_epsilon * (1 + 1e-9):
        raise RuntimeError(
            f"ahfal-dp-epsilon: releasing the histogram of cycle {cycle} would spend {ledger.spent + eps:g} > "
            f"{cfg.ahfal_dp_epsilon:g} (more query phases than num-cycles={cfg.num_cycles}?)"
        )
    if cfg.ahfal_dp_noise_seed == "run-seed":
        rng = np.random.default_rng(session.query_seed(cycle, _DP_SALT))
    else:
        rng = np.random.default_rng()  # OS entropy: the server cannot regenerate the noise
    hist = noisy_histogram(np.asarray(session.label_histogram()), eps, cfg.ahfal_dp_sensitivity, rng)
    ledger.record(cycle, hist, eps)
    return hist, eps, ledger.spent


def stats_vector(histogram: np.ndarray, frac_bits: int) -> np.ndarray:
    """``[n_i, fix(p_i), fix(p_i^2), contributes]`` as int64 (fixed point with ``frac_bits``)."""
    from fedsvd.secure_sum import encode_fixed_point

    s = client_statistics(histogram)
    return np.concatenate([
        s.counts,
        encode_fixed_point(s.proportions, frac_bits),
        encode_fixed_point(s.squares, frac_bits),
        np.array([s.contributes], dtype=np.int64),
    ]).astype(np.int64)


@query_action("ahfal_histogram")
def ahfal_histogram(session: ClientSession, content: RecordDict) -> RecordDict:
    """The labeled-class histogram in the clear (noised under local DP)."""
    start = time.perf_counter()
    cycle = int(config_of(content)["cycle"])
    hist, eps, spent = _released_histogram(session, cycle)
    config = {"histogram": [int(v) for v in hist], "dp-epsilon": eps, "dp-epsilon-spent": spent}
    return _reply(config, start)


def _tag(session: ClientSession, cycle: int) -> str:
    # Unique per run and cycle (fresh keys per cycle as well): masks never repeat
    # across cycles; a retry re-masks the same values under the same tag (same output).
    return f"{session.run_name}/cycle-{cycle}/ahfal-stats"


@query_action("ahfal_keys")
def ahfal_keys(session: ClientSession, content: RecordDict) -> RecordDict:
    """Key round of secure summation: a fresh X25519 key pair per cycle; the public key goes to the server."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    from fedsvd.secure_sum import generate_keypair, public_bytes

    start = time.perf_counter()
    cycle = int(config_of(content)["cycle"])
    state = _state(session)
    key = f"sk-{cycle}"
    if key in state:  # retry: same key pair
        public = public_bytes(X25519PrivateKey.from_private_bytes(bytes(state[key])))
    else:
        private, public = generate_keypair()
        for old in [k for k in state if k.startswith(("sk-", "peers-"))]:
            del state[old]
        state[key] = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        _save_state(session, state)
    return _reply({"public-key": public, "partition-id": session.partition_id}, start)


@query_action("ahfal_masked_stats")
def ahfal_masked_stats(session: ClientSession, content: RecordDict) -> RecordDict:
    """Masked statistics vector; config ``peer-ids`` / ``peer-keys`` = every participant's public key."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from fedsvd.secure_sum import mask_vector

    start = time.perf_counter()
    conf = config_of(content)
    cycle = int(conf["cycle"])
    peer_ids = [int(v) for v in conf["peer-ids"]]
    peer_keys = [bytes(v) for v in conf["peer-keys"]]
    if len(peer_ids) != len(peer_keys) or len(set(peer_ids)) != len(peer_ids):
        raise ValueError("ahfal_masked_stats: peer-ids and peer-keys must be equally long, ids distinct")
    if session.partition_id not in peer_ids:
        raise ValueError(f"ahfal_masked_stats: partition {session.partition_id} is not among the participants")
    state = _state(session)
    if f"sk-{cycle}" not in state:
        raise RuntimeError(f"ahfal_masked_stats: no key pair for cycle {cycle} (node restarted after the key round?)")
    # One participant set per key pair: masking the same values for two different sets
    # would hand the server the difference, i.e. a pair mask (only an active server could ask).
    peers = ",".join(str(p) for p in sorted(peer_ids))
    if state.setdefault(f"peers-{cycle}", peers) != peers:
        raise ValueError(f"ahfal_masked_stats: cycle {cycle} was already masked for participants {state[f'peers-{cycle}']}")
    _save_state(session, state)
    private = X25519PrivateKey.from_private_bytes(bytes(state[f"sk-{cycle}"]))
    hist, eps, spent = _released_histogram(session, cycle)
    values = stats_vector(hist, session.cfg.ahfal_secure_sum_frac_bits)
    masked = mask_vector(values, session.partition_id, dict(zip(peer_ids, peer_keys)), private,
                         tag=_tag(session, cycle), mode="int")
    config = {"dp-epsilon": eps, "dp-epsilon-spent": spent}
    return _reply(config, start, masked=ArrayRecord(numpy_ndarrays=[np.ascontiguousarray(masked)]))
