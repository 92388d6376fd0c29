"""AHFAL end to end through the real ServerApp loop and ClientApp handlers (in-process Flower messages)."""

from __future__ import annotations

import numpy as np

from query.ahfal import server_statistics, sums_from_histograms
from server_app.inprocess import run_inprocess

BASE = {
    "strategy": "ahfal", "run-name": "t", "num-cycles": 1, "rounds-per-cycle": 1, "local-epochs": 1,
    "train-subset-size": 300, "seed": 3,
}


def test_plain_run_statistics_match_the_clients_histograms(tmp_path):
    results = run_inprocess({
        **BASE, "output-dir": str(tmp_path), "state-dir": str(tmp_path / "state"),
        "ahfal-allocation": "reference", "ahfal-target": "pooled", "ahfal-hybrid-rule": "reference",
    }, num_clients=3)
    assert results["status"] == "completed"
    cycle = results["cycles"][0]
    hists = [cycle["labels-per-class-per-client"][str(p)] for p in range(3)]  # before the query
    expected = server_statistics(sums_from_histograms(hists), 12.0, target="pooled")
    rec = cycle["strategy"]["ahfal"]
    np.testing.assert_allclose(rec["sigma-pp"], expected.sigma)
    np.testing.assert_allclose(rec["target"], np.sum(hists, axis=0) / np.sum(hists))
    assert rec["c-low"] == expected.c_low and "dp-epsilon-spent" not in cycle["strategy"]
    assert set(cycle["traffic"]) >= {"query.ahfal_histogram", "query.select"}
    for pid, ids in cycle["selected-ids"].items():
        assert len(ids) == len(set(ids)) == cycle["budgets"][pid]
        diag = cycle["strategy"]["client-diagnostics"][pid]
        assert sum(int(v) for v in diag["class-budgets"].split(",")) == cycle["budgets"][pid]
