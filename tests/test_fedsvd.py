"""Tests of fedsvd: masks, FedSVD, leverage scores, sampling, masked least squares, FALE."""

from __future__ import annotations

import numpy as np
import pytest

from fedsvd import (
    BlockOrthogonalMask,
    FedSVDClient,
    TrustedAuthority,
    fale_fit,
    federated_svd,
    haar_orthogonal,
    leverage_scores,
    masked_least_squares,
    sample_until_distinct,
    server_svd,
)

# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize(
    ("n", "block_size"), [(1, 1), (1, 5), (7, 3), (10, 10), (10, 25), (23, 5), (64, 1), (130, 40)]
)
def test_mask_is_orthogonal_block_diagonal(n: int, block_size: int) -> None:
    mask = BlockOrthogonalMask(n, block_size, seed=123)
    dense = mask.dense()
    assert dense.shape == (n, n)
    np.testing.assert_allclose(dense.T @ dense, np.eye(n), atol=1e-12)
    np.testing.assert_allclose(dense @ dense.T, np.eye(n), atol=1e-12)
    sizes = [end - start for start, end in mask.block_bounds]
    assert sum(sizes) == n
    if block_size >= n:
        assert sizes == [n]
    else:
        assert all(s == block_size for s in sizes[:-1])
        assert block_size <= sizes[-1] < 2 * block_size  # last block absorbs the remainder
    # nothing outside the diagonal blocks
    off = dense.copy()
    for start, end in mask.block_bounds:
        off[start:end, start:end] = 0.0
    assert np.count_nonzero(off) == 0
    if n > 1 and block_size > 1:
        assert not np.allclose(np.abs(dense), np.eye(n))  # a real rotation, not a signed identity


def test_mask_products_match_dense() -> None:
    rng = np.random.default_rng(0)
    mask = BlockOrthogonalMask(23, 5, seed=7)
    dense = mask.dense()
    x_left = rng.standard_normal((23, 4))
    x_right = rng.standard_normal((3, 23))
    v = rng.standard_normal(23)
    np.testing.assert_allclose(mask.apply(x_left), dense @ x_left, atol=1e-13)
    np.testing.assert_allclose(mask.apply_transpose(x_left), dense.T @ x_left, atol=1e-13)
    np.testing.assert_allclose(mask.apply_right(x_right), x_right @ dense, atol=1e-13)
    np.testing.assert_allclose(mask.apply_right_transpose(x_right), x_right @ dense.T, atol=1e-13)
    np.testing.assert_allclose(mask.apply(v), dense @ v, atol=1e-13)
    np.testing.assert_allclose(mask.apply_right(v), v @ dense, atol=1e-13)
    np.testing.assert_allclose(mask.apply_transpose(mask.apply(x_left)), x_left, atol=1e-13)
    # inputs are never modified in place (LAPACK works on copies)
    x_copy, v_copy, r_copy = x_left.copy(), v.copy(), x_right.copy()
    for op in (mask.apply, mask.apply_transpose):
        op(x_left)
        op(v)
    for op in (mask.apply_right, mask.apply_right_transpose):
        op(x_right)
        op(v)
    np.testing.assert_array_equal(x_left, x_copy)
    np.testing.assert_array_equal(v, v_copy)
    np.testing.assert_array_equal(x_right, r_copy)
    with pytest.raises(ValueError, match="22 rows"):
        mask.apply(np.zeros((22, 2)))
    with pytest.raises(ValueError, match="columns"):
        mask.apply_right(np.zeros((2, 24)))


def test_mask_deterministic_from_seed_and_different_across_seeds() -> None:
    a = BlockOrthogonalMask(50, 16, seed=2024).dense()
    b = BlockOrthogonalMask(50, 16, seed=2024).dense()
    c = BlockOrthogonalMask(50, 16, seed=2025).dense()
    cached = BlockOrthogonalMask(50, 16, seed=2024, cache=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, cached.dense())
    np.testing.assert_array_equal(a, cached.dense())  # second pass served from the cache
    assert np.max(np.abs(a - c)) > 0.1
    # bytes seeds (message transport) are read big-endian
    big = 2**100 + 12345
    np.testing.assert_array_equal(
        BlockOrthogonalMask(9, 4, seed=big).dense(),
        BlockOrthogonalMask(9, 4, seed=big.to_bytes(16, "big")).dense(),
    )
    # block j depends only on (seed, j): regenerating one block in isolation gives the same block
    m = BlockOrthogonalMask(50, 16, seed=2024)
    start, end = m.block_bounds[2]
    np.testing.assert_array_equal(m.block(2), a[start:end, start:end])
    # the compact-Householder fast path equals the plain reference construction
    seq = np.random.SeedSequence(entropy=2024, spawn_key=(2,))
    ref = haar_orthogonal(end - start, np.random.Generator(np.random.PCG64(seq)))
    np.testing.assert_allclose(m.block(2), ref, atol=1e-13)


def test_mask_blocks_are_haar_distributed() -> None:
    # Without the QR sign fix, Q[0, 0] of a Householder QR has mean about -0.42 (n = 4);
    # under the Haar measure every entry has mean 0 and standard deviation 1/2.
    entries = np.array([BlockOrthogonalMask(4, 4, seed=s).dense()[0, 0] for s in range(2000)])
    assert abs(entries.mean()) < 0.05
    assert abs(entries.std() - 0.5) < 0.03


def test_mask_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="positive"):
        BlockOrthogonalMask(0, 5, seed=1)
    with pytest.raises(ValueError, match="block_size"):
        BlockOrthogonalMask(5, 0, seed=1)
    with pytest.raises(ValueError, match="non-negative"):
        BlockOrthogonalMask(5, 2, seed=-1)


def test_trusted_authority_seeds() -> None:
    ta = TrustedAuthority(3, seed=5)
    seeds = {ta.q_seed, *(ta.p_seed(i) for i in range(3))}
    assert len(seeds) == 4  # all distinct
    assert ta.q_seed == TrustedAuthority(3, seed=5).q_seed
    assert ta.q_seed != TrustedAuthority(3, seed=6).q_seed
    pkg = ta.client_package(1)
    assert int.from_bytes(pkg["p_seed"], "big") == ta.p_seed(1)
    assert int.from_bytes(pkg["q_seed"], "big") == ta.q_seed


# ----------------------------------------------------------------------------- FedSVD


def _svd_checks(parts: list[np.ndarray], block_size: int, seed: int = 0) -> None:
    x = np.vstack(parts)
    d = x.shape[1]
    u_parts, s, vt = federated_svd(parts, block_size=block_size, seed=seed)
    assert [u.shape for u in u_parts] == [(p.shape[0], d) for p in parts]
    assert s.shape == (d,) and vt.shape == (d, d)
    u_np, s_np, vt_np = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_allclose(s, s_np, rtol=1e-10, atol=0)
    u = np.vstack(u_parts)
    rec = (u * s) @ vt
    assert np.linalg.norm(rec - x) <= 1e-12 * np.linalg.norm(x)
    np.testing.assert_allclose(u.T @ u, np.eye(d), atol=1e-12)
    np.testing.assert_allclose(vt @ vt.T, np.eye(d), atol=1e-12)
    # singular vectors equal numpy's up to sign (distinct singular values here)
    np.testing.assert_allclose(np.abs(u.T @ u_np), np.eye(d), atol=1e-8)
    np.testing.assert_allclose(np.abs(vt @ vt_np.T), np.eye(d), atol=1e-8)


@pytest.mark.parametrize(
    ("sizes", "d", "block_size"),
    [
        ([50, 40, 60], 8, 16),  # block size divides nothing
        ([5, 100, 30], 20, 1000),  # one client with n_i < d; block size > every n_i
        ([30, 20], 1, 7),  # d = 1
        ([200], 10, 64),  # single client
        ([64, 64], 16, 1),  # degenerate 1x1 blocks: P_i, Q are diagonal +-1
        ([33, 17, 50, 3], 12, 5),
        ([2, 2, 2, 2, 2], 6, 3),  # every client n_i < d
    ],
)
def test_federated_svd_matches_numpy(sizes: list[int], d: int, block_size: int) -> None:
    rng = np.random.default_rng(sum(sizes) + d)
    parts = [rng.standard_normal((n, d)) * rng.uniform(0.5, 3.0, size=d) for n in sizes]
    _svd_checks(parts, block_size)


def test_federated_svd_ill_conditioned() -> None:
    rng = np.random.default_rng(42)
    n, d = 300, 10
    u0, _ = np.linalg.qr(rng.standard_normal((n, d)))
    v0, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s_true = np.logspace(0, -8, d)  # condition number 1e8
    x = (u0 * s_true) @ v0.T
    parts = [x[:90], x[90:100], x[100:]]
    u_parts, s, vt = federated_svd(parts, block_size=64, seed=1)
    s_np = np.linalg.svd(x, compute_uv=False)
    # normwise: every singular value to 1e-10 relative to ||X||
    assert np.max(np.abs(s - s_np)) <= 1e-10 * s_np[0]
    assert np.max(np.abs(s - s_true)) <= 1e-10 * s_true[0]
    # the smallest singular value keeps ~8 digits: a Gram/eigen route (cond^2 = 1e16) would lose all
    assert abs(s[-1] - s_true[-1]) <= 1e-6 * s_true[-1]
    u = np.vstack(u_parts)
    assert np.linalg.norm((u * s) @ vt - x) <= 1e-12 * np.linalg.norm(x)
    np.testing.assert_allclose(np.abs(u.T @ u0), np.eye(d), atol=1e-6)


def test_federated_svd_seed_dependence() -> None:
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal((40, 5)), rng.standard_normal((25, 5))]
    a = federated_svd(parts, block_size=8, seed=11)
    b = federated_svd(parts, block_size=8, seed=11)
    c = federated_svd(parts, block_size=8, seed=12)
    for ua, ub in zip(a[0], b[0], strict=True):
        np.testing.assert_array_equal(ua, ub)
    np.testing.assert_allclose(a[1], c[1], rtol=1e-12)  # masks change, the result does not


def test_server_sees_masked_data_only() -> None:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((30, 4))
    ta = TrustedAuthority(1, seed=0)
    client = FedSVDClient(x, **ta.client_package(0), block_size=16)
    masked = client.mask_data()
    assert masked.shape == x.shape
    assert np.max(np.abs(masked - x)) > 0.5
    # ... but it has the same singular values (the documented leak)
    np.testing.assert_allclose(
        np.linalg.svd(masked, compute_uv=False), np.linalg.svd(x, compute_uv=False), rtol=1e-12
    )
    u_masked, _, _ = server_svd([masked])
    u = client.recover_left(u_masked[0])
    np.testing.assert_allclose(np.abs(u.T @ np.linalg.svd(x, full_matrices=False)[0]), np.eye(4),
                               atol=1e-10)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([np.ones((5, 3)), np.ones((5, 4))], "same number of columns"),
        ([np.ones((1, 5)), np.ones((2, 5))], "n=3 rows < d=5"),
        ([np.ones((4, 2, 1))], "2-D"),
        ([np.ones(4)], "2-D"),
        ([np.array([[1.0, np.nan], [0.0, 1.0], [2.0, 2.0]])], "NaN or inf"),
        ([np.array([[1.0, np.inf], [0.0, 1.0], [2.0, 2.0]])], "NaN or inf"),
        ([], "at least one"),
        ([np.zeros((0, 3)), np.ones((4, 3))], "at least one row"),
    ],
)
def test_federated_svd_validation(parts: list[np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        federated_svd(parts)


# ----------------------------------------------------------------------------- leverage scores


def test_leverage_scores_equal_hat_diagonal() -> None:
    rng = np.random.default_rng(5)
    parts = [rng.standard_normal((n, 6)) for n in (40, 4, 70)]
    parts[1] *= 10.0  # high-leverage client
    u_parts, _, _ = federated_svd(parts, block_size=32, seed=9)
    x = np.vstack(parts)
    gram_inv = np.linalg.inv(x.T @ x)
    expected = np.einsum("ij,jk,ik->i", x, gram_inv, x)
    tau = np.concatenate([leverage_scores(u) for u in u_parts])
    np.testing.assert_allclose(tau, expected, rtol=1e-10, atol=1e-14)
    assert tau.sum() == pytest.approx(6.0, abs=1e-10)
    assert np.all(tau >= 0) and np.all(tau <= 1 + 1e-12)


def test_leverage_scores_rank_deficient() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((50, 4))
    x = np.hstack([x, x[:, :1]])  # rank 4, d = 5
    fale_rank_u, s, _ = federated_svd([x[:20], x[20:]], block_size=16, seed=0)
    from fedsvd import numerical_rank

    r = numerical_rank(s, x.shape)
    assert r == 4
    tau = np.concatenate([leverage_scores(u, rank=r) for u in fale_rank_u])
    hat = x @ np.linalg.pinv(x)
    np.testing.assert_allclose(tau, np.diag(hat), atol=1e-10)
    assert tau.sum() == pytest.approx(4.0, abs=1e-10)


# ----------------------------------------------------------------------------- sampling


def _reference_sampling(scores: np.ndarray, n_query: int, seed: int) -> tuple[dict[int, int], int]:
    """One draw at a time, literally as in FALE Algorithm 1 lines 5-11."""
    p = scores / scores.sum()
    cdf = np.cumsum(p)
    rng = np.random.default_rng(seed)
    counts: dict[int, int] = {}
    n_draws = 0
    while len(counts) < n_query:
        q = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        counts[q] = counts.get(q, 0) + 1
        n_draws += 1
    return counts, n_draws


def test_sampling_until_distinct() -> None:
    rng = np.random.default_rng(0)
    tau = rng.gamma(0.5, size=400)
    sel = sample_until_distinct(tau, 60, seed=17)
    p = tau / tau.sum()
    assert sel.indices.size == 60
    assert np.unique(sel.indices).size == 60 and np.all(np.diff(sel.indices) > 0)
    assert np.all(sel.counts >= 1)
    assert int(sel.counts.sum()) == sel.n_draws
    assert sel.n_draws > 60  # heavy-tailed p: duplicates are (almost surely) drawn
    np.testing.assert_allclose(sel.probabilities, p[sel.indices], rtol=1e-15)
    np.testing.assert_allclose(sel.draw_weights, 1.0 / np.sqrt(sel.n_draws * p[sel.indices]))
    np.testing.assert_allclose(sel.ls_weights, sel.counts / (sel.n_draws * p[sel.indices]))
    np.testing.assert_allclose(sel.row_scales**2, sel.ls_weights)
    # identical to the literal one-draw-at-a-time loop of Algorithm 1
    ref_counts, ref_draws = _reference_sampling(tau, 60, seed=17)
    assert sel.n_draws == ref_draws
    assert dict(zip(sel.indices.tolist(), sel.counts.tolist(), strict=True)) == ref_counts


def test_sampling_batches_cut_at_the_right_draw() -> None:
    # n_query close to the support forces several batches and a long coupon-collector tail
    tau = np.linspace(0.01, 1.0, 300)
    sel = sample_until_distinct(tau, 300, seed=4)
    ref_counts, ref_draws = _reference_sampling(tau, 300, seed=4)
    assert sel.n_draws == ref_draws > 1024
    assert dict(zip(sel.indices.tolist(), sel.counts.tolist(), strict=True)) == ref_counts


def test_sampling_deterministic_and_seed_dependent() -> None:
    tau = np.random.default_rng(1).random(1000)
    a = sample_until_distinct(tau, 50, seed=3)
    b = sample_until_distinct(tau, 50, seed=3)
    c = sample_until_distinct(tau, 50, seed=4)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert a.n_draws == b.n_draws
    assert not np.array_equal(a.indices, c.indices)


def test_sampling_support_and_errors() -> None:
    tau = np.array([0.0, 2.0, 0.0, 1.0, 1.0, 0.0])
    sel = sample_until_distinct(tau, 3, seed=0)  # n_q == support: every positive index
    np.testing.assert_array_equal(sel.indices, [1, 3, 4])
    with pytest.raises(ValueError, match="exceeds the number of samples with positive"):
        sample_until_distinct(tau, 4, seed=0)
    with pytest.raises(ValueError, match=">= 1"):
        sample_until_distinct(tau, 0, seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        sample_until_distinct(np.array([1.0, -0.5, 1.0]), 1, seed=0)
    with pytest.raises(ValueError, match="sum to zero"):
        sample_until_distinct(np.zeros(4), 1, seed=0)
    with pytest.raises(RuntimeError, match="max_draws"):
        sample_until_distinct(np.array([1.0, 1e-12]), 2, seed=0, max_draws=5000)


def test_selection_per_client() -> None:
    tau = np.random.default_rng(2).random(30) + 0.1
    sel = sample_until_distinct(tau, 12, seed=5)
    sizes = [10, 0, 15, 5]
    split = sel.per_client(sizes)
    offsets = np.cumsum([0, *sizes])
    rebuilt = np.concatenate([cs.local_indices + offsets[i] for i, cs in enumerate(split)])
    np.testing.assert_array_equal(rebuilt, sel.indices)
    np.testing.assert_array_equal(np.concatenate([cs.counts for cs in split]), sel.counts)
    np.testing.assert_allclose(np.concatenate([cs.row_scales for cs in split]), sel.row_scales)
    assert split[1].local_indices.size == 0
    for cs, n_i in zip(split, sizes, strict=True):
        assert np.all((cs.local_indices >= 0) & (cs.local_indices < max(n_i, 1)))


# ----------------------------------------------------------------------------- masked least squares


def test_masked_least_squares_equals_weighted_ls() -> None:
    rng = np.random.default_rng(10)
    d = 7
    xs = [rng.standard_normal((n, d)) for n in (40, 25, 30)]
    ys = [rng.standard_normal(n) for n in (40, 25, 30)]
    ta = TrustedAuthority(3, seed=2)
    clients = [FedSVDClient(x, **ta.client_package(i), block_size=8) for i, x in enumerate(xs)]
    picks = [np.array([0, 3, 5, 11, 39]), np.array([], dtype=np.int64), np.arange(0, 30, 3)]
    scales = [rng.uniform(0.5, 2.0, size=p.size) for p in picks]
    a_parts, b_parts = [], []
    for i, (c, idx, sc) in enumerate(zip(clients, picks, scales, strict=True)):
        a, b = c.mask_labelled(idx, ys[i][idx], sc, seed=100 + i)
        assert a.shape == (idx.size, d) and b.shape == (idx.size,)
        if idx.size:
            assert np.max(np.abs(a - sc[:, None] * xs[i][idx])) > 0.1  # rows are masked
        a_parts.append(a)
        b_parts.append(b)
    theta_hat = masked_least_squares(a_parts, b_parts)
    theta = clients[0].unmask_model(theta_hat)
    # plain weighted LS: rows scaled by sqrt(w) = row_scales
    xl = np.vstack([xs[i][p] for i, p in enumerate(picks)])
    yl = np.concatenate([ys[i][p] for i, p in enumerate(picks)])
    sw = np.concatenate(scales)
    expected, *_ = np.linalg.lstsq(sw[:, None] * xl, sw * yl, rcond=None)
    np.testing.assert_allclose(theta, expected, rtol=1e-10, atol=1e-12)
    assert np.linalg.norm(theta_hat - expected) > 0.1 * np.linalg.norm(expected)  # masked
    assert np.linalg.norm(theta_hat) == pytest.approx(np.linalg.norm(expected), rel=1e-10)
    # every client unmasks the same model (shared Q)
    np.testing.assert_allclose(clients[2].unmask_model(theta_hat), theta, rtol=0, atol=0)


def test_masked_least_squares_underdetermined_min_norm() -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((20, 6))
    y = rng.standard_normal(20)
    ta = TrustedAuthority(1, seed=0)
    client = FedSVDClient(x, **ta.client_package(0), block_size=4)
    idx = np.array([1, 4, 9])  # 3 labelled rows < d = 6
    a, b = client.mask_labelled(idx, y[idx], np.ones(3), seed=1)
    theta = client.unmask_model(masked_least_squares([a], [b]))
    np.testing.assert_allclose(theta, np.linalg.pinv(x[idx]) @ y[idx], atol=1e-12)


def test_masked_least_squares_validation() -> None:
    with pytest.raises(ValueError, match="no labelled rows"):
        masked_least_squares([np.zeros((0, 3))], [np.zeros(0)])
    with pytest.raises(ValueError, match="b_parts\\[0\\]"):
        masked_least_squares([np.ones((3, 2))], [np.ones(4)])
    with pytest.raises(ValueError, match="one b_i per A_i"):
        masked_least_squares([np.ones((3, 2))], [])


# ----------------------------------------------------------------------------- FALE end to end


def test_fale_fit_end_to_end() -> None:
    rng = np.random.default_rng(12)
    d = 5
    sizes = (120, 60, 200)
    parts = [rng.standard_normal((n, d)) for n in sizes]
    parts[1][:3] *= 40.0  # three outliers with leverage close to 1
    theta_true = np.arange(1.0, d + 1)
    ys = [x @ theta_true + 0.3 * rng.standard_normal(x.shape[0]) for x in parts]
    res = fale_fit(parts, ys, 25, seed=7, block_size=64)
    assert len(res.selected) == 25 == len(set(res.selected))
    assert all(0 <= j < sizes[i] for i, j in res.selected)
    assert {(1, 0), (1, 1), (1, 2)} <= set(res.selected)  # high leverage rows are picked
    assert int(res.counts.sum()) == res.n_draws
    assert sum(float(t.sum()) for t in res.scores) == pytest.approx(d, abs=1e-10)
    # theta equals the plain weighted LS on the selected rows with weights c/(n_s p)
    xl = np.array([parts[i][j] for i, j in res.selected])
    yl = np.array([ys[i][j] for i, j in res.selected])
    sw = np.sqrt(res.weights)
    expected, *_ = np.linalg.lstsq(sw[:, None] * xl, sw * yl, rcond=None)
    np.testing.assert_allclose(res.theta, expected, rtol=1e-10, atol=1e-12)
    assert np.linalg.norm(res.theta - theta_true) < 0.5
    # deterministic under the seed
    again = fale_fit(parts, ys, 25, seed=7, block_size=64)
    assert again.selected == res.selected
    np.testing.assert_allclose(again.theta, res.theta, rtol=1e-12)


def test_fale_fit_noiseless_recovers_model_exactly() -> None:
    rng = np.random.default_rng(13)
    parts = [rng.standard_normal((n, 4)) for n in (30, 3, 50)]
    theta_true = np.array([0.5, -2.0, 3.0, 1.0])
    ys = [x @ theta_true for x in parts]
    res = fale_fit(parts, ys, 8, seed=0, block_size=16)
    np.testing.assert_allclose(res.theta, theta_true, atol=1e-10)


def test_fale_fit_validation() -> None:
    parts = [np.ones((5, 2)) + np.arange(10).reshape(5, 2)]
    with pytest.raises(ValueError, match="label parts"):
        fale_fit(parts, [], 2)
    with pytest.raises(ValueError, match="length 5"):
        fale_fit(parts, [np.ones(4)], 2)
