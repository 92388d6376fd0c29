"""benchmarks/run_parity.py: every parity spec gives valid run configs; the report compares what the runs wrote."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import run_parity  # noqa: E402
from parity import report as parity_report  # noqa: E402

SPECS = sorted((REPO / "experiments" / "parity").glob("*.toml"))
FIXTURE = REPO / "tests" / "fixtures" / "partition" / "dgitj-fal-mnist-alpha1.0-seed1.json"


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_every_method_and_arm_of_a_spec_is_a_valid_run_config(spec_path, tmp_path):
    from fal_shared.config import parse_run_config

    spec = run_parity.load_spec(spec_path)
    seed = spec["shared"]["seeds"][0]
    per_client = spec["shared"]["initial-per-client"]
    clients = [{"ids": list(range(i * 100, i * 100 + 100)), "initial-labeled": list(range(i * 100, i * 100 + per_client))}
               for i in range(spec["shared"]["clients"])]
    for method, entry in spec["methods"].items():
        folder = run_parity.run_dir(tmp_path, "theirs", entry.get("partition-from", method), seed)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "partition.json").write_text(json.dumps({"format": "fal-partition/1", "clients": clients}))
    for method in spec["methods"]:
        for arm in spec["arms"]:
            cfg = parse_run_config(run_parity.our_overrides(spec, method, arm, seed, tmp_path, "/data"))
            assert cfg.partition == "file" and cfg.seed == seed
            assert cfg.num_cycles == spec["shared"]["trainings"] - 1
            assert cfg.budget_count == spec["shared"]["budget-per-client"]


def test_ours_needs_the_reference_partition_with_the_specs_initial_labels(tmp_path):
    spec = run_parity.load_spec(REPO / "experiments" / "parity" / "dgitj-fal-mnist.toml")
    with pytest.raises(SystemExit, match="run the reference side of random seed 1 first"):
        run_parity.our_overrides(spec, "random", "average", 1, tmp_path, "/data")
    folder = run_parity.run_dir(tmp_path, "theirs", "random", 1)
    folder.mkdir(parents=True)
    shutil.copy(FIXTURE, folder / "partition.json")
    assert run_parity.our_overrides(spec, "random", "average", 1, tmp_path, "/data")["partition-file"].endswith("partition.json")
    spec["shared"]["initial-per-client"] = 50
    with pytest.raises(SystemExit, match="initial labels per client \\[60\\]"):
        run_parity.our_overrides(spec, "random", "average", 1, tmp_path, "/data")


def _write_runs(out: Path, theirs: dict[int, list[float]], ours: dict[int, list[float]], failed_seed: int) -> None:
    labeled = [600, 900]
    for seed, acc in theirs.items():
        folder = run_parity.run_dir(out, "theirs", "random", seed)
        folder.mkdir(parents=True)
        (folder / "reference.json").write_text(json.dumps({
            "accuracy": [*acc, 99.0], "labeled": [*labeled, 1200],  # a third cycle beyond the spec's two
            "seconds": {"wall-total": 100.0, "cpu-total": 90.0,
                        "summary": {"train": 60.0, "query": 10.0, "evaluate": 5.0, "unused-query": 4.0}}}))
    for seed, acc in ours.items():
        folder = out / "ours" / "average" / f"random-seed{seed}"
        folder.mkdir(parents=True)
        cycles = [{"labeled": n, "labeled-fraction": n / 6000, "evaluation": {"accuracy": a / 100},
                   "seconds": {"train": 20.0, "query": 1.0, "evaluate": 2.0}} for n, a in zip(labeled, acc)]
        status = "failed" if seed == failed_seed else "completed"
        (folder / "results.json").write_text(json.dumps({"status": status, "cycles": cycles}))
        (folder / "timing.json").write_text(json.dumps({"wall-total": 50.0, "cpu-total": 48.0}))


def test_report_rows_tests_and_seconds(tmp_path):
    spec = {"name": "toy", "shared": {"trainings": 2, "seeds": [1, 2, 3, 4]},
            "reference": {"repository": "someone/code", "commit": "abc1234"},
            "methods": {"random": {}}, "arms": {"average": {}, "recompute": {}}}
    theirs = {1: [30.0, 50.0], 2: [35.0, 52.0], 3: [33.0, 49.0], 4: [31.0, 55.0]}
    ours = {1: [60.0, 51.0], 2: [62.0, 50.0], 3: [58.0, 53.0], 4: [10.0, 10.0]}  # seed 4 failed: left out
    _write_runs(tmp_path, theirs, ours, failed_seed=4)
    text = parity_report.report(spec, tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| random | average |")]
    assert len(rows) == 3  # two cycles, one summary row; the arm without runs (recompute) is left out
    welch = stats.ttest_ind([60.0, 62.0, 58.0], [30.0, 35.0, 33.0, 31.0], equal_var=False).pvalue
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert cells[2:8] == ["0", "600", "4 / 3", "32.2 +- 2.2", "60.0 +- 2.0", "+27.8"]
    assert cells[8] == (f"{welch:.3f} *" if welch >= 0.001 else "< 0.001 *")
    late = [c.strip() for c in rows[1].split("|")[1:-1]]
    assert not late[8].endswith("*")  # 51.3 vs 51.5: no difference
    seconds = [c.strip() for c in next(line for line in text.splitlines() if line.startswith("| random | theirs |")).split("|")[1:-1]]
    assert seconds[3:] == ["60", "10", "5", "-", "21", "96", "90"]  # total: 100 wall less the unused last query
    ours_seconds = [c.strip() for c in next(line for line in text.splitlines()
                                            if line.startswith("| random | ours-average |")).split("|")[1:-1]]
    assert ours_seconds[2:] == ["3", "40", "2", "4", "-", "4", "50", "48"]
    assert "theirs: 4 runs, 0.11 h wall, 0.10 h CPU; ours: 3 runs, 0.04 h wall, 0.04 h CPU" in text
    saved = json.loads((tmp_path / "parity-toy.json").read_text())
    assert sorted(saved["random"]["ours-average"]) == ["1", "2", "3"]
    assert np.allclose(saved["random"]["theirs"]["1"]["accuracy"], [30.0, 50.0])
