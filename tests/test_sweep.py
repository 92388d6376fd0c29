"""Sweeps: grid expansion and validation, the report's statistics, and a real Ray sweep killed and resumed."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fal_shared.config import ConfigError
from launcher.report import load_runs, paired_wtl, write_report
from launcher.sweep_spec import load_sweep

REPO = Path(__file__).resolve().parents[1]

TINY = """
[sweep]
name = "tiny"
reference = "random"
cpus-per-run = 1

[base]
dataset = "digits"
num-clients = 2
num-cycles = 1
rounds-per-cycle = 2
local-epochs = 1
train-subset-size = 300
score-batch-size = 256

[grid]
strategy = ["random", "entropy-local"]
seed = [0, 1]

[variants]
entropy-local = { strategy = "entropy", query-model = "local" }
"""


def _write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_grid_expands_methods_variants_and_axes_into_named_validated_runs(tmp_path):
    base_cfg = _write(tmp_path, 'dataset = "digits"\nalpha = 0.3\n', "base.toml")
    path = _write(tmp_path, f"""
[sweep]
configs = ["{base_cfg.name}"]
[base]
num-cycles = 1
[grid]
strategy = ["random", "ahfal", "ahfal-dp5"]
alpha = [0.1, 1.0]
seed = [0, 1]
[variants]
ahfal-dp5 = {{ strategy = "ahfal", ahfal-dp-epsilon = 5.0, record-label-histograms = false }}
""")
    sweep = load_sweep(path, tmp_path / "out")
    assert sweep.name == "sweep" and len(sweep.runs) == 3 * 2 * 2
    names = [r.name for r in sweep.runs]
    assert len(set(names)) == 12 and "ahfal-dp5-alpha0.1-seed1" in names
    dp = next(r for r in sweep.runs if r.name == "ahfal-dp5-alpha1.0-seed0")
    assert dp.method == "ahfal-dp5" and dp.config["strategy"] == "ahfal" and dp.config["ahfal-dp-epsilon"] == 5.0
    assert dp.config["alpha"] == 1.0 and dp.config["num-cycles"] == 1 and dp.config["dataset"] == "digits"
    assert dp.config["output-dir"] == str(tmp_path / "out" / "runs") and dp.config["run-name"] == dp.name
    assert dp.group == (("alpha", 1.0),)
    overridden = load_sweep(path, tmp_path / "out", {"alpha": 0.5, "num-cycles": 2})
    assert {r.config["num-cycles"] for r in overridden.runs} == {2}


def test_a_strategy_supplies_its_defaults_to_the_runs_and_a_contradicting_set_value_is_refused(tmp_path):
    # fale needs evaluation="federated" and defaults to 10 cycles: a sweep file that does not set them gets
    # them in every run's config (so in-process and simulation runs agree); a value the file sets is kept
    path = _write(tmp_path, '[sweep]\nreference = "fale"\n[base]\ndataset = "diabetes"\n[grid]\nstrategy = ["fale", "fale-3"]\n'
                            '[variants]\nfale-3 = { strategy = "fale", num-cycles = 3 }\n')
    runs = {r.name: r.config for r in load_sweep(path, tmp_path / "out").runs}
    assert (runs["fale"]["evaluation"], runs["fale"]["num-cycles"]) == ("federated", 10)
    assert (runs["fale-3"]["evaluation"], runs["fale-3"]["num-cycles"]) == ("federated", 3)
    bad = _write(tmp_path, '[sweep]\nreference = "fale"\n[base]\ndataset = "diabetes"\nevaluation = "central"\n[grid]\nstrategy = ["fale"]\n', "bad.toml")
    with pytest.raises(ConfigError, match='run \'fale\': .*evaluation="federated"'):
        load_sweep(bad, tmp_path / "out")


@pytest.mark.parametrize("text, message", [
    ('[grid]\nstrategy = ["random", "nope"]\nseed = [0]\n', "run 'nope-seed0': .*unknown strategy 'nope'"),
    ('[grid]\nstrategy = ["random"]\nalpha = []\n', r"\[grid\] alpha: an empty list"),
    ('[sweep]\nreference = "entropy"\n[grid]\nstrategy = ["random", "badge"]\n', "reference: 'entropy' is not one of the compared methods"),
    ('[sweep]\ncpus-per-run = 0\n', r"\[sweep\]: cpus-per-run"),
    ('[grids]\nseed = [0]\n', r"unknown table\(s\) \['grids'\]"),
    ('[sweep]\nconfigs = ["missing.toml"]\n', "configs: no such file"),
    ('[grid]\nbatch-size = [0]\n', "run 'entropy-batch-size0': invalid run config:\\s+batch-size"),
])
def test_bad_sweep_files_fail_before_anything_runs_naming_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(_write(tmp_path, text), tmp_path / "out")


def test_paired_wtl_counts_checkpoints_like_fales_table_2():
    ref = {0: [0.50, 0.52, 0.51], 1: [0.60, 0.61, 0.59], 2: [0.70, 0.70, 0.70]}
    better = {0: [0.60, 0.63, 0.61], 1: [0.60, 0.62, 0.58], 2: [0.60, 0.61, 0.59]}
    w, t, l, p = paired_wtl(better, ref, lower_is_better=False)
    assert (w, t, l) == (1, 1, 1) and p < 0.05  # clearly higher, about equal, clearly lower
    w, t, l, _ = paired_wtl(better, ref, lower_is_better=True)  # for an MSE the same numbers swap wins and losses
    assert (w, t, l) == (1, 1, 1)
    assert paired_wtl({0: [1.0]}, {0: [0.0]}, False)[:3] == (0, 1, 0)  # one seed: no test, a tie


def _fake_run(root: Path, name: str, method: str, seed: int, accs: list[float], status: str = "completed") -> None:
    folder = root / "runs" / name
    folder.mkdir(parents=True)
    cycles = [{
        "cycle": c, "labeled-fraction": 0.1 + 0.05 * c,
        "evaluation": {"accuracy": a, "balanced-accuracy": a - 0.01, "per-class-accuracy": [a] * 10},
        "seconds": {"query": 2.0}, "traffic": {"query.select": {"bytes-sent": 1000, "bytes-received": 3000},
                                               "train": {"bytes-sent": 10**6, "bytes-received": 10**6}},
    } for c, a in enumerate(accs)]
    data = {"run-name": name, "status": status, "error": None if status == "completed" else "boom",
            "config": {"strategy": method, "seed": seed, "long-tail-factor": 20.0}, "cycles": cycles,
            "totals": {"wall-seconds": 12.0}, "started": "", "finished": ""}
    (folder / "results.json").write_text(json.dumps(data))


def test_report_tables_equal_the_results_files(tmp_path):
    runs = []
    rng = np.random.default_rng(0)
    for method, shift in (("random", 0.0), ("ahfal", 0.05)):
        for seed in range(3):
            accs = [0.5 + 0.1 * c + shift + rng.normal(0, 0.01) for c in range(3)]
            _fake_run(tmp_path, f"{method}-seed{seed}", method, seed, accs)
            runs.append({"name": f"{method}-seed{seed}", "method": method, "axes": {"seed": seed}})
    _fake_run(tmp_path, "badge-seed0", "badge", 0, [0.4], status="failed")
    runs.append({"name": "badge-seed0", "method": "badge", "axes": {"seed": 0}})
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "t", "settings": {"reference": "random"}, "runs": runs}))
    paths = write_report(tmp_path)
    text = paths["markdown"].read_text()
    rows = [r.split(",") for r in paths["checkpoints"].read_text().splitlines()[1:]]
    _, loaded = load_runs(tmp_path)
    for method in ("random", "ahfal"):
        for cycle in range(3):
            values = [r.cycles[cycle]["evaluation"]["accuracy"] for r in loaded if r.method == method]
            row = next(r for r in rows if r[1] == method and r[2] == str(cycle))
            assert float(row[5]) == pytest.approx(np.mean(values), abs=1e-12)
            assert float(row[6]) == pytest.approx(np.std(values, ddof=1), abs=1e-12)
            assert f"{np.mean(values) * 100:.2f} +- {np.std(values, ddof=1) * 100:.2f}" in text
    assert "| ahfal |" in text and "3/0/0" in text  # 5 points higher at every checkpoint, 3 seeds
    assert "minority-recall" in text  # long-tailed training set
    assert "| badge-seed0 | failed | boom |" in text
    final = paths["final"].read_text().splitlines()
    assert any(line.startswith("all runs,ahfal,3,accuracy") for line in final)
    assert paths["plot-0"].stat().st_size > 1000


def _start_sweep(sweep_file: Path, output: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "launcher.sweep", str(sweep_file), "--output", str(output), "--num-cpus", "2",
         "--progress-seconds", "1"],
        cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )


def _completed(output: Path) -> dict[str, float]:
    done = {}
    for path in (output / "runs").glob("*/results.json"):
        try:
            if json.loads(path.read_text())["status"] == "completed":
                done[path.parent.name] = path.stat().st_mtime
        except (json.JSONDecodeError, KeyError):
            pass
    return done


@pytest.mark.ray
def test_sweep_on_ray_is_killed_resumed_and_reported(tmp_path):
    # the entropy runs train 40 times longer, so the sweep is still busy with them when the first random run
    # completes (on a fast machine the tiny runs take a fraction of a second each)
    slow = TINY.replace('query-model = "local" }', 'query-model = "local", local-epochs = 40 }')
    assert slow != TINY
    sweep_file = _write(tmp_path, slow)
    output = tmp_path / "sweep-out"
    first = _start_sweep(sweep_file, output, tmp_path / "first.log")
    try:
        deadline = time.time() + 600
        while not _completed(output) and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
    finally:  # a crash: the whole process group (driver, Ray, workers) dies at once
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    done_before = _completed(output)
    assert 1 <= len(done_before) < 4, (tmp_path / "first.log").read_text()[-3000:]
    second = subprocess.run(
        [sys.executable, "-m", "launcher.sweep", str(sweep_file), "--output", str(output), "--num-cpus", "2",
         "--progress-seconds", "1"], cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"{len(done_before)} completed already (skipped), {4 - len(done_before)} to run" in second.stdout
    after = _completed(output)
    assert set(after) == {"random-seed0", "random-seed1", "entropy-local-seed0", "entropy-local-seed1"}
    assert all(after[name] == mtime for name, mtime in done_before.items())  # not run again
    for name in after:
        assert (output / "logs" / f"{name}.log").read_text().count("[FAL] cycle") >= 2
    # the report's numbers are the results files' numbers
    rows = [line.split(",") for line in (output / "report" / "checkpoints.csv").read_text().splitlines()[1:]]
    for method in ("random", "entropy-local"):
        for cycle in (0, 1):
            values = [json.loads((output / "runs" / f"{method}-seed{s}" / "results.json").read_text())["cycles"][cycle]
                      ["evaluation"]["accuracy"] for s in (0, 1)]
            row = next(r for r in rows if r[1] == method and r[2] == str(cycle))
            assert float(row[5]) == pytest.approx(np.mean(values), abs=1e-12)
            assert json.loads(",".join(row[8:]).strip('"').replace('""', '"')) == pytest.approx(values)
    manifest = json.loads((output / "sweep.json").read_text())
    assert len(manifest["invocations"]) == 2 and manifest["invocations"][-1]["failed"] == []
    assert "not counting 1 interrupted invocation(s)" in (output / "report" / "report.md").read_text()
    third = subprocess.run([sys.executable, "-m", "launcher.sweep", str(sweep_file), "--output", str(output), "--dry-run"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "4 completed already (skipped), 0 to run" in third.stdout


def test_a_changed_sweep_does_not_silently_reuse_old_results(tmp_path):
    from launcher.sweep import main

    sweep_file = _write(tmp_path, TINY)
    output = tmp_path / "o"
    spec = load_sweep(sweep_file, output).runs[0]
    folder = output / "runs" / spec.name
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"status": "completed", "config": {**spec.config, "lr": 1.0}}))
    assert main([str(sweep_file), "--output", str(output), "--dry-run"]) == 2  # the old run used another lr


def test_report_without_sweep_manifest_groups_by_strategy(tmp_path):
    for s in range(2):
        _fake_run(tmp_path, f"r{s}", "random", s, [0.5, 0.6])
        _fake_run(tmp_path, f"e{s}", "entropy", s, [0.5, 0.7])
    text = write_report(tmp_path)["markdown"].read_text()
    assert "| random | 2 | 50.00 +- 0.00 | 60.00 +- 0.00 |" in text and "| entropy | 2 |" in text
    assert math.isfinite(float(text.count("|")))


@pytest.mark.parametrize("path", sorted((REPO / "experiments" / "sweeps").glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_file_expands_into_valid_runs(path, tmp_path):
    sweep = load_sweep(path, tmp_path / "out", {"data-root": str(tmp_path)})
    assert sweep.runs and len({r.name for r in sweep.runs}) == len(sweep.runs)
    assert all(r.config["data-root"] == str(tmp_path) for r in sweep.runs)  # no machine-specific path inside


def test_where_selects_a_slice_of_the_grid(tmp_path, capsys):
    from launcher.sweep import main

    sweep_file = _write(tmp_path, TINY)
    assert main([str(sweep_file), "--output", str(tmp_path / "o"), "--dry-run", "--where", "strategy=random"]) == 0
    out = capsys.readouterr().out
    assert "2 runs in" in out and "random-seed1" in out and "entropy-local" not in out
    assert main([str(sweep_file), "--output", str(tmp_path / "o"), "--dry-run", "--where", "alpha=0.1"]) == 2
    assert "not a grid axis" in capsys.readouterr().err


def test_report_compares_along_another_axis(tmp_path):
    """compare = "bn-statistics": its values are the rows, the method becomes part of the table's group."""
    runs = []
    for bn, shift in (("average", 0.0), ("recompute", 0.1)):
        for seed in range(3):
            name = f"random-bn-statistics{bn}-seed{seed}"
            _fake_run(tmp_path, name, "random", seed, [0.4 + shift + 0.01 * seed, 0.5 + shift + 0.01 * seed])
            runs.append({"name": name, "method": "random", "axes": {"bn-statistics": bn, "seed": seed}})
    (tmp_path / "sweep.json").write_text(json.dumps({
        "name": "bn", "settings": {"reference": "bn-statistics=average", "compare": "bn-statistics"}, "runs": runs}))
    text = write_report(tmp_path)["markdown"].read_text()
    assert "## method=random" in text
    assert "| bn-statistics=recompute | 3 | 51.00 +- 1.00 | 61.00 +- 1.00 |" in text
    assert "| bn-statistics=recompute | 61.00 +- 1.00 |" in text and "| 2/0/0 |" in text
    with pytest.raises(ValueError, match="'alpha' is not a grid axis"):
        write_report(tmp_path, compare="alpha")
    # grouped by method instead: the plots of the other grouping are replaced, not left beside the new one
    write_report(tmp_path, compare="strategy")
    assert sorted(p.name for p in (tmp_path / "report").glob("curves-*.png")) == [
        "curves-bn-statisticsaverage.png", "curves-bn-statisticsrecompute.png"]


def test_sweep_file_compare_axis_is_checked(tmp_path):
    text = '[sweep]\ncompare = "alpha"\n[grid]\nstrategy = ["random"]\nseed = [0]\n'
    with pytest.raises(ConfigError, match="compare: 'alpha' is not a \\[grid\\] axis"):
        load_sweep(_write(tmp_path, text), tmp_path / "o")
    text = '[sweep]\ncompare = "alpha"\nreference = "alpha=0.1"\n[grid]\nalpha = [0.1, 1.0]\n'
    assert len(load_sweep(_write(tmp_path, text), tmp_path / "o").runs) == 2
