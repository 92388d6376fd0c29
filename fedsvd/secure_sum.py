"""Secure summation by pairwise additive masking (Bonawitz et al. 2017, without dropout recovery).

Every pair of participants ``(i, j)`` agrees on a 256-bit seed with X25519 (elliptic-curve
Diffie-Hellman) followed by HKDF-SHA256 whose ``info`` binds a protocol label, a caller-supplied
*tag* (run / round / quantity) and both public keys. The seed keys a ChaCha20 keystream that becomes
the pair mask ``m_ij``. Participant ``i`` adds ``+m_ij`` for every peer ``j`` with a larger id and
``-m_ij`` for every peer with a smaller id, so the masks cancel in the sum over all participants and
the server obtains ``sum_i x_i`` without seeing any individual ``x_i``.

Usage (one round)::

    sk, pk = generate_keypair()                 # every client; pk (32 bytes) goes to the server
    # server relays the dict {client_id: pk} of this round's participants to every client
    y_i = mask_vector(x_i, my_id, peers, sk, tag="run42/round3/hist", mode="int")
    total = unmask_sum([y_1, ..., y_k])          # server

Modes
-----
``"int"`` (exact)
    Integer values (counts, or fixed-point numbers from :func:`encode_fixed_point`) are read as
    ``int64``, reinterpreted as ``uint64`` and masked with uniform 64-bit words modulo ``2**64``.
    The unmasked sum is exact whenever the true sum fits in ``int64``; each masked vector is
    uniformly distributed (one-time pad over ``Z_{2^64}``, given the PRG).
``"float"`` (lossless up to round-off)
    ``float64`` values get masks ``scale * U[-1, 1)``. The sum is exact up to float round-off,
    roughly ``n_participants * (scale + max|x|) * 2**-52`` absolute per entry. The masks hide a
    value only relative to ``scale``: a bounded real mask is *not* a one-time pad, and values much
    larger than ``scale`` stay visible in magnitude. Default ``scale = 1.0`` as in FedSVD's
    reference code (FedEval, ``U[-1, 1)``); raise it to hide larger values at a proportional cost
    in precision. Prefer ``"int"`` with fixed-point encoding when the values have a known range.

Threat model
------------
* **Honest-but-curious server**: follows the protocol (relays public keys unchanged, sums what it
  receives) but tries to learn individual inputs from what it sees. It learns the sum, the vector
  length and who participated, nothing else about an individual ``x_i`` as long as every pair mask
  is unknown to it. An *active* server could substitute public keys (man-in-the-middle); defending
  against that needs authenticated keys (signatures / PKI) and is out of scope.
* **Clients do not collude with the server.** A colluding client reveals its pair masks; if all
  participants but one collude, the remaining input equals the sum minus theirs (inherent to sums).
* **Tags must never repeat**: the tag (e.g. ``f"{run_id}/round{r}/{quantity}"``) is part of the
  HKDF input, so masks are fresh per round and quantity. Masking two different vectors under the
  same tag reuses the masks and the server learns their difference. The mode is appended to the tag
  internally, so ``"int"`` and ``"float"`` masks never coincide.
* **Dropouts are not recoverable.** If a participant drops out after the others masked their
  vectors for a participant set that included it, its pair masks with the survivors do not cancel:
  the sum of the survivors' vectors is garbage (in ``"int"`` mode uniformly random modulo
  ``2**64``). The server must **discard that sum and repeat the round with the survivors only,
  under a new tag**. There is no secret-shared recovery of the dropped client's masks (SecAgg /
  SecAgg+ add Shamir sharing of the mask seeds for this; this module deliberately does not), and no
  self-masks, so a late-arriving vector of a client believed dropped must also be discarded.
* Randomness: masks come from ChaCha20 (``cryptography`` package), a cryptographic stream cipher,
  not from numpy generators, which are not designed to resist state recovery.

Hand-written rather than Flower's SecAgg+ because (a) this package must not depend on Flower,
(b) SecAgg+ quantises floats (not lossless for FedSVD) and (c) the AHFAL histogram sums need exact
integers; the cryptographic primitives themselves (X25519, HKDF, ChaCha20) come from
``cryptography``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Literal

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "DEFAULT_FLOAT_SCALE",
    "Mode",
    "decode_fixed_point",
    "encode_fixed_point",
    "generate_keypair",
    "mask_vector",
    "pair_mask",
    "pair_seed",
    "public_bytes",
    "unmask_sum",
]

Mode = Literal["int", "float"]

#: Default half-width of the float-mode masks (``U[-1, 1)``, as in FedSVD's reference code).
DEFAULT_FLOAT_SCALE = 1.0

_PROTOCOL_LABEL = b"fal/fedsvd/secure_sum/v1"
_SEED_BYTES = 32


def generate_keypair() -> tuple[X25519PrivateKey, bytes]:
    """Generate an X25519 key pair for one participant and one round.

    Returns
    -------
    private_key : X25519PrivateKey
        Stays on the client.
    public : bytes
        32-byte raw public key, sent to the server to relay to the other participants.
    """
    private_key = X25519PrivateKey.generate()
    return private_key, public_bytes(private_key)


def public_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    """Raw 32-byte encoding of the public key of ``key`` (a private or a public key)."""
    public = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return public.public_bytes(
        encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
    )


def _tag_bytes(tag: bytes | str) -> bytes:
    raw = tag.encode("utf-8") if isinstance(tag, str) else bytes(tag)
    if not raw:
        raise ValueError("tag must be non-empty (use a unique run/round/quantity string)")
    return raw


def pair_seed(my_private: X25519PrivateKey, peer_public: bytes, tag: bytes | str) -> bytes:
    """Shared 256-bit seed of a pair: X25519 then HKDF-SHA256 bound to ``tag`` and both keys.

    Both members of the pair obtain the same seed (the key order in the HKDF ``info`` is canonical).

    Parameters
    ----------
    my_private
        This participant's private key.
    peer_public
        The peer's raw 32-byte public key.
    tag
        Context string unique per run, round and quantity; masks never repeat across tags.

    Returns
    -------
    bytes
        32-byte seed.
    """
    peer = bytes(peer_public)
    if len(peer) != 32:
        raise ValueError(f"peer_public must be a 32-byte raw X25519 key, got {len(peer)} bytes")
    mine = public_bytes(my_private)
    shared = my_private.exchange(X25519PublicKey.from_public_bytes(peer))
    lo, hi = sorted((mine, peer))
    tag_raw = _tag_bytes(tag)
    info = b"".join(
        [_PROTOCOL_LABEL, len(tag_raw).to_bytes(4, "big"), tag_raw, lo, hi]
    )
    return HKDF(algorithm=hashes.SHA256(), length=_SEED_BYTES, salt=None, info=info).derive(shared)


def _keystream_words(seed: bytes, n_words: int) -> np.ndarray:
    # ChaCha20 keystream (encrypting zeros) as little-endian uint64 words. The key is used for one
    # vector only (fresh HKDF output per tag), so a fixed all-zero nonce/counter is safe.
    cipher = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None)
    stream = cipher.encryptor().update(b"\x00" * (8 * n_words))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)  # writable native copy


def pair_mask(
    seed: bytes, length: int, mode: Mode, *, float_scale: float = DEFAULT_FLOAT_SCALE
) -> np.ndarray:
    """Expand a pair seed into a mask of ``length`` entries.

    Returns ``uint64`` words (``"int"``) or ``float_scale * U[-1, 1)`` doubles (``"float"``,
    53 random bits per entry).
    """
    if len(seed) != _SEED_BYTES:
        raise ValueError(f"seed must be {_SEED_BYTES} bytes, got {len(seed)}")
    words = _keystream_words(seed, int(length))
    if mode == "int":
        return words
    if mode == "float":
        unit = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53  # U[0, 1)
        return float_scale * (2.0 * unit - 1.0)
    raise ValueError(f"mode must be 'int' or 'float', got {mode!r}")


def _prepare_values(values: object, mode: Mode) -> np.ndarray:
    arr = np.asarray(values)
    if mode == "int":
        if arr.dtype == np.bool_:
            arr = arr.astype(np.int64)
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"int mode needs integer values, got dtype {arr.dtype}; "
                "encode reals with encode_fixed_point() or use mode='float'"
            )
        if arr.dtype == np.uint64:
            return arr.copy()
        return arr.astype(np.int64).view(np.uint64)
    if mode == "float":
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"float mode needs real values, got dtype {arr.dtype}")
        out = arr.astype(np.float64)
        if not np.all(np.isfinite(out)):
            raise ValueError("values contain NaN or inf")
        return out
    raise ValueError(f"mode must be 'int' or 'float', got {mode!r}")


def mask_vector(
    values: np.ndarray,
    my_id: Hashable,
    peer_ids_to_public_keys: Mapping[Hashable, bytes],
    private_key: X25519PrivateKey,
    tag: bytes | str,
    mode: Mode = "int",
    *,
    float_scale: float = DEFAULT_FLOAT_SCALE,
) -> np.ndarray:
    """Mask ``values`` for secure summation among this round's participants.

    Parameters
    ----------
    values
        Array of any shape (the same shape and mode on every participant). Integers in ``"int"``
        mode, reals in ``"float"`` mode.
    my_id
        This participant's id. Ids must be distinct and mutually orderable (ints or strs).
    peer_ids_to_public_keys
        ``{id: raw public key}`` of **all** participants of the round (an entry for ``my_id`` is
        ignored). Every participant must use the same set, or the masks do not cancel.
    private_key
        This participant's X25519 private key for the round.
    tag
        Unique per run, round and quantity (see the module docstring).
    mode
        ``"int"`` (exact, modulo ``2**64``) or ``"float"``.
    float_scale
        Half-width of the float masks (``"float"`` mode only); must be the same everywhere.

    Returns
    -------
    numpy.ndarray
        ``uint64`` (``"int"``) or ``float64`` (``"float"``) array of the same shape; send to the
        server.
    """
    if mode not in ("int", "float"):
        raise ValueError(f"mode must be 'int' or 'float', got {mode!r}")
    if not (np.isfinite(float_scale) and float_scale > 0):
        raise ValueError(f"float_scale must be positive and finite, got {float_scale}")
    data = _prepare_values(values, mode)
    flat = data.reshape(-1)
    tag_mode = _tag_bytes(tag) + b"|" + mode.encode()
    total = np.zeros(flat.size, dtype=flat.dtype)
    for peer_id, peer_pub in peer_ids_to_public_keys.items():
        if peer_id == my_id:
            continue
        mask = pair_mask(
            pair_seed(private_key, peer_pub, tag_mode), flat.size, mode, float_scale=float_scale
        )
        if my_id < peer_id:  # type: ignore[operator]
            total += mask  # uint64 arithmetic wraps modulo 2**64 (intended)
        else:
            total -= mask
    return (flat + total).reshape(data.shape)


def unmask_sum(masked_vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Sum the masked vectors of **all** participants; the pair masks cancel.

    The mode is read from the dtype: ``uint64`` vectors are summed modulo ``2**64`` and returned
    as ``int64``; ``float64`` vectors are summed in floating point. If a participant's vector is
    missing (dropout), the result is meaningless and must be discarded (module docstring).

    Parameters
    ----------
    masked_vectors
        Outputs of :func:`mask_vector`, one per participant, all of the same shape and dtype.

    Returns
    -------
    numpy.ndarray
        The sum of the plain values (``int64`` or ``float64``).
    """
    arrays = [np.asarray(v) for v in masked_vectors]
    if not arrays:
        raise ValueError("need at least one masked vector")
    shape, dtype = arrays[0].shape, arrays[0].dtype
    for i, a in enumerate(arrays):
        if a.shape != shape or a.dtype != dtype:
            raise ValueError(
                f"masked_vectors[{i}] has shape {a.shape} dtype {a.dtype}; "
                f"expected shape {shape} dtype {dtype} like masked_vectors[0]"
            )
    if dtype == np.uint64:
        total = np.zeros(shape, dtype=np.uint64)
        for a in arrays:
            total += a  # wraps modulo 2**64
        return total.view(np.int64)
    if dtype == np.float64:
        return np.sum(np.stack(arrays), axis=0)
    raise ValueError(
        f"masked vectors must be uint64 (int mode) or float64 (float mode), got {dtype}"
    )


def encode_fixed_point(values: np.ndarray, frac_bits: int = 32) -> np.ndarray:
    """Encode reals as ``int64`` fixed point, ``round(x * 2**frac_bits)``, for ``"int"`` mode.

    The decoded sum is exact (a multiple of ``2**-frac_bits``) as long as
    ``sum |x| * 2**frac_bits < 2**63``; ``ValueError`` if a single value does not fit.
    """
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("values contain NaN or inf")
    scaled = np.rint(arr * 2.0**frac_bits)
    if np.any(np.abs(scaled) >= 2.0**63):
        raise ValueError(f"values too large for int64 fixed point with frac_bits={frac_bits}")
    return scaled.astype(np.int64)


def decode_fixed_point(values: np.ndarray, frac_bits: int = 32) -> np.ndarray:
    """Inverse of :func:`encode_fixed_point` (applied to a sum returned by :func:`unmask_sum`)."""
    return np.asarray(values, dtype=np.int64).astype(np.float64) * 2.0**-frac_bits
