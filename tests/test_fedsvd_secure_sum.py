"""Tests of fedsvd.secure_sum (pairwise additive masking with X25519 + HKDF seeds)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cryptography")

from fedsvd import secure_sum as ss  # noqa: E402


@pytest.fixture(scope="module")
def keys() -> dict[int, tuple[object, bytes]]:
    return {cid: ss.generate_keypair() for cid in (3, 7, 11, 20, 42)}


def _pubs(keys: dict, ids: list[int] | None = None) -> dict[int, bytes]:
    return {cid: pk for cid, (_, pk) in keys.items() if ids is None or cid in ids}


def test_pair_seed_is_symmetric_and_tagged(keys: dict) -> None:
    (sk_a, pk_a), (sk_b, pk_b), (sk_c, pk_c) = keys[3], keys[7], keys[11]
    assert len(pk_a) == 32
    s_ab = ss.pair_seed(sk_a, pk_b, "run/round1")
    assert len(s_ab) == 32
    assert s_ab == ss.pair_seed(sk_b, pk_a, "run/round1")
    assert s_ab != ss.pair_seed(sk_a, pk_b, "run/round2")  # fresh per round
    assert s_ab != ss.pair_seed(sk_a, pk_c, "run/round1")  # fresh per pair
    with pytest.raises(ValueError, match="non-empty"):
        ss.pair_seed(sk_a, pk_b, "")
    with pytest.raises(ValueError, match="32-byte"):
        ss.pair_seed(sk_a, pk_b[:16], "t")


def test_int_mode_is_exact(keys: dict) -> None:
    rng = np.random.default_rng(0)
    ids = sorted(keys)
    values = {cid: rng.integers(-(2**40), 2**40, size=64) for cid in ids}
    values[ids[0]][0] = 2**61  # large entries still exact
    pubs = _pubs(keys)
    masked = {
        cid: ss.mask_vector(values[cid], cid, pubs, keys[cid][0], "r1/hist", mode="int")
        for cid in ids
    }
    for cid in ids:
        assert masked[cid].dtype == np.uint64
        # the server-side vector reveals nothing recognisable
        assert np.count_nonzero(masked[cid] == values[cid].astype(np.int64).view(np.uint64)) == 0
    total = ss.unmask_sum(list(masked.values()))
    assert total.dtype == np.int64
    np.testing.assert_array_equal(total, np.sum([values[c] for c in ids], axis=0))


def test_int_mode_counts_histogram_2d(keys: dict) -> None:
    rng = np.random.default_rng(1)
    ids = [3, 7, 11]
    hist = {cid: rng.integers(0, 1000, size=(4, 10)) for cid in ids}
    pubs = _pubs(keys, ids)
    masked = [ss.mask_vector(hist[c], c, pubs, keys[c][0], "r9/hist") for c in ids]
    assert masked[0].shape == (4, 10)
    np.testing.assert_array_equal(ss.unmask_sum(masked), sum(hist.values()))


def test_float_mode_sum_to_round_off(keys: dict) -> None:
    rng = np.random.default_rng(2)
    ids = sorted(keys)
    values = {cid: rng.standard_normal(500) for cid in ids}
    pubs = _pubs(keys)
    masked = [
        ss.mask_vector(values[c], c, pubs, keys[c][0], "r1/x", mode="float") for c in ids
    ]
    plain = np.sum([values[c] for c in ids], axis=0)
    for c, m in zip(ids, masked, strict=True):
        assert m.dtype == np.float64
        assert np.median(np.abs(m - values[c])) > 0.1  # masked on the server side
    np.testing.assert_allclose(ss.unmask_sum(masked), plain, rtol=0, atol=1e-12)
    # larger scale: larger masks, still lossless up to round-off proportional to the scale
    masked_big = [
        ss.mask_vector(values[c], c, pubs, keys[c][0], "r2/x", mode="float", float_scale=1e3)
        for c in ids
    ]
    assert np.median(np.abs(masked_big[0] - values[ids[0]])) > 100.0
    np.testing.assert_allclose(ss.unmask_sum(masked_big), plain, rtol=0, atol=1e-9)


def test_fixed_point_through_int_mode(keys: dict) -> None:
    rng = np.random.default_rng(3)
    ids = [7, 20, 42]
    values = {cid: rng.uniform(-100, 100, size=30) for cid in ids}
    pubs = _pubs(keys, ids)
    masked = [
        ss.mask_vector(ss.encode_fixed_point(values[c]), c, pubs, keys[c][0], "r1/fp")
        for c in ids
    ]
    total = ss.decode_fixed_point(ss.unmask_sum(masked))
    exact = np.sum([ss.decode_fixed_point(ss.encode_fixed_point(values[c])) for c in ids], axis=0)
    np.testing.assert_array_equal(total, exact)  # exact in fixed point
    np.testing.assert_allclose(total, sum(values.values()), rtol=0, atol=3 * 2.0**-33)


def test_dropout_breaks_the_sum_and_retry_with_survivors_works(keys: dict) -> None:
    rng = np.random.default_rng(4)
    ids = sorted(keys)
    values = {cid: rng.integers(0, 50, size=20) for cid in ids}
    pubs = _pubs(keys)
    masked = {c: ss.mask_vector(values[c], c, pubs, keys[c][0], "r5/hist") for c in ids}
    dropped = ids[2]
    survivors = [c for c in ids if c != dropped]
    wrong = ss.unmask_sum([masked[c] for c in survivors])
    right = np.sum([values[c] for c in survivors], axis=0)
    # documented behaviour: the survivors' pair masks with the dropped client do not cancel
    assert np.count_nonzero(wrong == right) == 0
    # float mode: likewise wrong, by about the mask scale
    fmasked = {
        c: ss.mask_vector(values[c].astype(float), c, pubs, keys[c][0], "r5/f", mode="float")
        for c in ids
    }
    fwrong = ss.unmask_sum([fmasked[c] for c in survivors])
    assert np.max(np.abs(fwrong - right)) > 0.1
    # the round is repeated with the survivors only, under a new tag
    spubs = _pubs(keys, survivors)
    retry = [ss.mask_vector(values[c], c, spubs, keys[c][0], "r5/hist/retry1") for c in survivors]
    np.testing.assert_array_equal(ss.unmask_sum(retry), right)


def test_masks_depend_on_tag_and_string_ids() -> None:
    named = {name: ss.generate_keypair() for name in ("alice", "bob", "carol")}
    pubs = {name: pk for name, (_, pk) in named.items()}
    x = np.arange(5)
    a1 = ss.mask_vector(x, "alice", pubs, named["alice"][0], "t1")
    a1_again = ss.mask_vector(x, "alice", pubs, named["alice"][0], "t1")
    a2 = ss.mask_vector(x, "alice", pubs, named["alice"][0], "t2")
    np.testing.assert_array_equal(a1, a1_again)  # deterministic given keys and tag
    assert np.count_nonzero(a1 == a2) == 0  # a new tag gives new masks
    masked = [ss.mask_vector(x * (i + 1), n, pubs, named[n][0], "t1") for i, n in enumerate(pubs)]
    np.testing.assert_array_equal(ss.unmask_sum(masked), x * 6)


def test_secure_sum_validation(keys: dict) -> None:
    sk, _ = keys[3]
    pubs = _pubs(keys, [3, 7])
    with pytest.raises(ValueError, match="encode_fixed_point"):
        ss.mask_vector(np.array([0.5, 1.5]), 3, pubs, sk, "t", mode="int")
    with pytest.raises(ValueError, match="mode"):
        ss.mask_vector(np.array([1, 2]), 3, pubs, sk, "t", mode="complex")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        ss.mask_vector(np.array([np.nan]), 3, pubs, sk, "t", mode="float")
    with pytest.raises(ValueError, match="shape"):
        ss.unmask_sum([np.zeros(3, np.uint64), np.zeros(4, np.uint64)])
    with pytest.raises(ValueError, match="dtype"):
        ss.unmask_sum([np.zeros(3, np.uint64), np.zeros(3)])
    with pytest.raises(ValueError, match="at least one"):
        ss.unmask_sum([])
