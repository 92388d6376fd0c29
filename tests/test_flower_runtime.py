"""Real Flower processes: a simulation run, a crashed run, a local deployment.

These start a private SuperLink (and SuperNodes) on free localhost ports and
stop every process they started, by process group.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from launcher import deploy, simulate
from launcher.flower_processes import FlowerEnvironment, RunFailed

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.flower

FAST = "rounds-per-cycle=1 local-epochs=1 num-cycles=1 train-subset-size=300"


def _all_stopped(env: FlowerEnvironment) -> bool:
    return all(proc.poll() is not None for _, proc, _ in env.processes)


def test_simulation_run_completes_and_writes_results(tmp_path, capsys):
    out = tmp_path / "results"
    rc = simulate.main([
        "--app", str(ROOT),
        "--run-config", f'{FAST} num-clients=2 strategy="entropy" output-dir="{out}" state-dir="{tmp_path}/state" run-name="sim"',
    ])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "[FAL] cycle 0: accuracy=" in printed and "[FAL] completed 2 cycles" in printed
    data = json.loads((out / "sim" / "results.json").read_text())
    assert data["status"] == "completed"
    assert data["cycles"][0]["traffic"]["query.select"]["messages-sent"] == 2
    assert (out / "sim" / "flower.log").exists()


def test_crashed_serverapp_is_a_failure_not_exit_0(tmp_path):
    out = tmp_path / "results"
    run_config = {
        "num-clients": 3, "node-wait-seconds": 3.0, "output-dir": str(out), "state-dir": str(tmp_path / "state"),
        "run-name": "crash", "rounds-per-cycle": 1, "num-cycles": 0,
    }
    env = FlowerEnvironment(ROOT, simulation=True)
    with env:
        env.start_superlink()
        with pytest.raises(RunFailed, match="finished:failed"):
            # only 2 SuperNodes for num-clients=3: the ServerApp raises; flwr run itself exits 0
            env.run(run_config, federation_config="num-supernodes=2 client-resources-num-cpus=1", verbose=False)
    assert _all_stopped(env)
    data = json.loads((out / "crash" / "results.json").read_text())
    assert data["status"] == "failed"
    assert re.search(r"num-clients=3 but only [0-2] node\(s\) connected", data["error"]), data["error"]


def test_bad_config_fails_before_any_process_starts(capsys):
    rc = simulate.main(["--app", str(ROOT), "--run-config", 'strategy="nope"'])
    assert rc == 1
    assert "unknown strategy 'nope'; valid strategies:" in capsys.readouterr().err


def test_local_deployment_superlink_and_supernodes(tmp_path, capsys):
    out, state = tmp_path / "results", tmp_path / "state"
    rc = deploy.main([
        "--app", str(ROOT), "--num-supernodes", "2",
        "--run-config", f'{FAST} strategy="random" output-dir="{out}" state-dir="{state}" run-name="dep"',
    ])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "deployment: 1 SuperLink + 2 SuperNodes" in printed
    data = json.loads((out / "dep" / "results.json").read_text())
    assert data["status"] == "completed"
    for pid in ("0", "1"):
        ledger = json.loads((state / "dep" / f"partition-{pid}.json").read_text())
        bought = [e[0] for e in ledger["entries"]]
        assert len(bought) == len(set(bought)) == data["cycles"][-1]["labeled-per-client"][pid]


def test_flwr_run_tells_the_serverapp_which_keys_the_user_set(tmp_path):
    # num-cycles=3 equals the generic default: only flwr run's override config shows it was set, so FALE
    # keeps it (its own default is 10) and supplies only evaluation="federated", which the clients apply too
    out = tmp_path / "results"
    run_config = {
        "strategy": "fale", "dataset": "diabetes", "num-clients": 2, "num-cycles": 3, "fale-budget-count": 30,
        "output-dir": str(out), "state-dir": str(tmp_path / "state"), "run-name": "fale",
    }
    with FlowerEnvironment(ROOT, simulation=True) as env:
        env.start_superlink()
        env.run(run_config, federation_config="num-supernodes=2 client-resources-num-cpus=1", verbose=False)
    data = json.loads((out / "fale" / "results.json").read_text())
    assert data["status"] == "completed" and data["strategy-defaults"] == {"evaluation": "federated"}
    assert data["config"]["num-cycles"] == 3 and len(data["cycles"]) == 4
    assert [c["labeled"] for c in data["cycles"]] == [0, 10, 20, 30]
    assert all(c["evaluation"]["where"] == "federated" for c in data["cycles"])
