"""fal-sweep spreads its runs over a real two-node Ray cluster (two `ray start` nodes on this machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.stopping import SCOPE_VARIABLE
from tests.ray_cluster import start_cluster
from tests.test_sweep import TINY

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc (Linux)")]

SWEEP = TINY  # 4 short runs (2 strategies x 2 seeds), 2 clients each


def test_sweep_runs_on_both_nodes_of_a_two_node_ray_cluster(tmp_path):
    cluster = start_cluster({"fal-node-head": 1, "fal-node-worker": 1})  # one CPU each: one run per node at a time
    try:
        node_ids = cluster.wait_for_nodes()
        assert len(set(node_ids.values())) == 2
        sweep = tmp_path / "sweep.toml"
        sweep.write_text(SWEEP)
        out = tmp_path / "out"
        env = {**cluster.env("sweep"), SCOPE_VARIABLE: f"{cluster.marker} sweep"}
        done = subprocess.run(
            [sys.executable, "-m", "launcher.sweep", str(sweep), "--output", str(out), "--address", cluster.address,
             "--progress-seconds", "1"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "Ray: 2 CPUs, 0 GPUs; 2 run(s) at a time" in done.stdout
        runs = json.loads((out / "sweep.json").read_text())["runs"]
        assert len(runs) == 4 and all(r["status"] == "completed" for r in runs)
        ran_on = {r["name"]: r["node"] for r in runs}
        # every run names its node: the Ray node id and that node's own resource
        for node in ran_on.values():
            assert node["ray-node-id"] in node_ids.values()
            assert node_ids[next(iter(node["ray-node-resources"]))] == node["ray-node-id"]
        assert {n["ray-node-id"] for n in ran_on.values()} == set(node_ids.values())  # both nodes ran runs
        for name, node in ran_on.items():  # the run's own log says the same
            assert f"Ray node {node['ray-node-id']}" in (out / "logs" / f"{name}.log").read_text()
        report = (out / "report" / "report.md").read_text()
        assert "fal-node-head=1" in report and "fal-node-worker=1" in report
    finally:
        cluster.stop()
    assert cluster.processes() == []
    assert not any(os.path.exists(p) for p in [cluster.temp_dir])
