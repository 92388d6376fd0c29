"""AHFAL's secure summation: masked client vectors, unmasked sums, the server's view end to end.

Needs ``fedsvd.secure_sum`` (X25519/HKDF pairwise masking) and the ``cryptography`` package.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from client_app.app import app as client_app
from client_app.methods.ahfal import ahfal_keys, ahfal_masked_stats, stats_vector
from client_app.session import ClientSession
from fal_shared.config import RunConfig
from fal_shared.wire import config_of
from fedsvd.secure_sum import unmask_sum
from query.ahfal import server_statistics, sums_from_histograms
from server_app.app import run_experiment
from server_app.inprocess import InProcessGrid
from tests.test_ahfal_e2e import BASE
from tests.test_ahfal_privacy import _msg, _result, _session


def test_masked_vector_hides_the_histogram(tmp_path):
    sessions = [_session(tmp_path)]
    for pid in (1, 2):
        run_config = dict(sessions[0].context.run_config)
        ctx = Context(run_id=1, node_id=1 + pid, node_config={"partition-id": pid, "num-partitions": 3},
                      state=RecordDict(), run_config=run_config)
        s = ClientSession(ctx, "unit")
        s.ensure_initial_labels()
        sessions.append(s)
    keys = [bytes(_result(ahfal_keys(s, _msg(0)))["public-key"]) for s in sessions]
    assert _result(ahfal_keys(sessions[0], _msg(0)))["public-key"] == keys[0]  # a retry keeps the key pair
    msg = _msg(0, **{"peer-ids": [0, 1, 2], "peer-keys": keys})
    masked = [next(iter(ahfal_masked_stats(s, msg).array_records["masked"].values())).numpy() for s in sessions]
    plain = [stats_vector(np.array(s.label_histogram()), 32) for s in sessions]
    for m, p in zip(masked, plain):
        assert m.dtype == np.uint64 and (m != p.view(np.uint64)).all()
    total = unmask_sum(masked)
    assert np.array_equal(total, np.sum(plain, axis=0))
    # the server's statistics from the unmasked sums equal those of the plain histograms
    c = 10
    assert np.array_equal(total[:c], np.sum([s.label_histogram() for s in sessions], axis=0))
    assert total[3 * c] == 3
    # a retry with the same participants gives the same vector; another participant set is refused
    again = next(iter(ahfal_masked_stats(sessions[0], msg).array_records["masked"].values())).numpy()
    assert np.array_equal(again, masked[0])
    with pytest.raises(ValueError, match="already masked"):
        ahfal_masked_stats(sessions[0], _msg(0, **{"peer-ids": [0, 1], "peer-keys": keys[:2]}))
    # a participant list without this client is refused
    with pytest.raises(ValueError, match="not among"):
        ahfal_masked_stats(sessions[0], _msg(0, **{"peer-ids": [1, 2], "peer-keys": keys[1:]}))



def _masked(reply) -> np.ndarray:
    return next(iter(reply.content.array_records["masked"].values())).numpy()


def test_secure_sum_server_sees_only_masked_values(tmp_path):
    overrides = {
        **BASE, "output-dir": str(tmp_path), "state-dir": str(tmp_path / "state"),
        "ahfal-secure-sum": True, "ahfal-dp-epsilon": 4.0, "ahfal-dp-noise-seed": "run-seed",
        "record-label-histograms": False, "query-retries": 1, "num-clients": 3,
    }
    run_config = {**RunConfig().to_flower(), **overrides}
    grid = InProcessGrid(client_app, run_config, [{"partition-id": i, "num-partitions": 3} for i in range(3)])
    inner = grid.send_and_receive
    seen, lost = [], {}

    def spy(messages, *, timeout=None):
        out = []
        for m in messages:
            replies = list(inner([m], timeout=timeout))
            kind = m.metadata.message_type
            if kind == "query.ahfal_masked_stats" and not lost:
                lost[m.metadata.dst_node_id] = _masked(replies[0])  # the client answered, the reply got lost
                continue
            out += replies
            seen.extend((kind, r) for r in replies)
        return out

    grid.send_and_receive = spy
    results = run_experiment(grid, run_config)
    assert results["status"] == "completed"

    masked = {r.metadata.src_node_id: _masked(r) for k, r in seen if k == "query.ahfal_masked_stats"}
    assert sorted(masked) == sorted(grid.contexts)
    (node, first), = lost.items()
    assert np.array_equal(masked[node], first)  # the re-sent round gives the identical vector: nothing new leaks

    # the noisy histograms the clients released (their privacy ledgers, next to the label ledgers)
    released = {
        n: np.array(json.loads((tmp_path / "state" / "t" / f"partition-{n - 1000}-ahfal-dp.json").read_text())
                    ["releases"]["0"]["histogram"])
        for n in sorted(grid.contexts)
    }
    plain = {n: stats_vector(h, 32) for n, h in released.items()}
    for n in masked:  # every entry masked (uniform modulo 2^64), none equal to the client's value
        assert masked[n].dtype == np.uint64 and (masked[n] != plain[n].view(np.uint64)).all()
    assert np.array_equal(unmask_sum(list(masked.values())), np.sum(list(plain.values()), axis=0))

    # nothing per-client reaches the server in the clear
    for kind, r in seen:
        result = config_of(r.content, "result") if r.has_content() else {}
        assert "histogram" not in result and "label-histogram" not in result, kind

    rec = results["cycles"][0]["strategy"]
    expected = server_statistics(sums_from_histograms(list(released.values())), 12.0)
    np.testing.assert_allclose(rec["ahfal"]["sigma-pp"], expected.sigma, atol=1e-6)
    assert rec["ahfal"]["c-low"] == expected.c_low and rec["ahfal"]["secure-sum"] is True
    assert rec["dp-epsilon-spent"] == {"0": 4.0, "1": 4.0, "2": 4.0}  # total 4 over 1 cycle
    assert all(len(v) == b for v, b in zip(results["cycles"][0]["selected-ids"].values(),
                                            results["cycles"][0]["budgets"].values()))
