"""Real Flower processes: a simulation run, a crashed run, a local deployment with
TLS and SuperNode authentication, and a SuperNode killed in the middle of a round.

These start a private SuperLink (and SuperNodes) on free localhost ports and
stop every process they started, by process group.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from launcher import simulate
from launcher.flower_processes import FlowerEnvironment, RunFailed
from server_app.results_schema import validate_results

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.flower

FAST = "rounds-per-cycle=1 local-epochs=1 num-cycles=1 train-subset-size=300"


def _all_stopped(env: FlowerEnvironment) -> bool:
    return all(proc.poll() is not None for _, proc, _ in env.processes)


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
    validate_results(data)
    assert data["status"] == "failed"
    assert re.search(r"num-clients=3 but only [0-2] node\(s\) connected", data["error"]), data["error"]


def test_bad_config_fails_before_any_process_starts(capsys):
    rc = simulate.main(["--app", str(ROOT), "--run-config", 'strategy="nope"'])
    assert rc == 1
    assert "unknown strategy 'nope'; valid strategies:" in capsys.readouterr().err


@pytest.mark.parametrize("run_config, message", [
    ('strategy="random" dataset="diabetes" model="resnet8"', "model: 'resnet8' is an image model, but dataset 'diabetes'"),
    ('model="cnn4conv"', "model: 'cnn4conv' cannot take dataset 'digits' (input shape (1, 8, 8)): model 'cnn4conv' needs images of at least 16 pixels"),
])
def test_model_that_cannot_take_the_data_fails_before_any_process_starts(run_config, message, capsys, monkeypatch):
    monkeypatch.setattr(FlowerEnvironment, "start_superlink", lambda self: pytest.fail("a SuperLink was started"))
    assert simulate.main(["--app", str(ROOT), "--run-config", run_config]) == 1
    assert message in capsys.readouterr().err


def test_failed_run_prints_the_serverapps_error(tmp_path, capsys):
    # found only inside the run (it needs the partitions' sizes): the launcher must say why, not only "failed"
    rc = simulate.main([
        "--app", str(ROOT),
        "--run-config", f'num-clients=2 budget-mode="count" budget-count=5000 num-cycles=1 output-dir="{tmp_path}" '
                        f'state-dir="{tmp_path}/state" run-name="bad-budget"',
    ])
    err = capsys.readouterr().err
    assert rc == 1
    assert "ended as 'finished:failed'" in err
    assert "the ServerApp's error: ValueError: budget-count: 5000 labels x 1 cycles = 5000 exceeds the largest client pool" in err


class _RestartPolicy(threading.Thread):
    """Restart a SuperNode whenever it exits, as a site's supervisor would (docker's restart policy).

    With SuperNode authentication the SuperLink refuses the node's key while it
    still counts the killed process as online (Flower's heartbeat: up to 60 s),
    and flower-supernode exits; it is started again until it stays.
    """

    def __init__(self, env: FlowerEnvironment, pid: int, n: int, state: Path) -> None:
        super().__init__(daemon=True)
        self.env, self.pid, self.n, self.state = env, pid, n, state
        self.stop = threading.Event()
        self.starts = 0

    def run(self) -> None:
        while not self.stop.is_set():
            proc = self.env.supernodes.get(self.pid)
            if proc is None or proc.poll() is not None:
                self.env.start_supernode(self.pid, self.n, state_dir=self.state)
                self.starts += 1
            self.stop.wait(2.0)


def test_deployment_survives_a_supernode_killed_mid_round(tmp_path):
    """Kill one SuperNode (SIGKILL, as a power cut) during a training round of cycle 0 and let it
    restart: the run completes, its ledger keeps every label bought before (the initial ones),
    nothing is bought twice, and it is re-admitted (it buys its budget in cycle 0's query)."""
    out, state, n = tmp_path / "results", tmp_path / "state", 3
    run_config = {
        "rounds-per-cycle": 2, "local-epochs": 1, "num-cycles": 1, "train-subset-size": 300, "strategy": "entropy",
        "num-clients": n, "output-dir": str(out), "state-dir": str(state), "run-name": "fault",
        "train-min-fraction": 0.5, "query-missing-client": "fail",  # the restarted site must come back to label
    }
    ledger = state / "fault" / "partition-1.json"
    with FlowerEnvironment(ROOT, simulation=False, tls=True) as env:
        env.start_superlink()
        for pid in range(n):
            env.start_supernode(pid, n, state_dir=state)
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["run-id"] = env.run(run_config, timeout=1500, verbose=False)
            except BaseException as err:  # reported below
                outcome["error"] = err

        runner = threading.Thread(target=run)
        runner.start()
        log, training = env.log_dir / "flwr-run.log", False
        while runner.is_alive() and not training:
            text = log.read_text(errors="replace") if log.exists() else ""
            # the ServerApp logs "[ROUND 1/2]" as it sends cycle 0's first training round (after the
            # setup round that bought the initial labels)
            training = "[ROUND 1/2]" in text
            time.sleep(0.2)
        assert training, outcome
        before = [e[0] for e in json.loads(ledger.read_text())["entries"]]
        assert before, "the initial labels are in the ledger before the kill"
        env.kill_supernode(1)
        supervisor = _RestartPolicy(env, 1, n, state)
        supervisor.start()
        runner.join(timeout=1500)
        supervisor.stop.set()
        supervisor.join()
        assert "error" not in outcome, outcome.get("error")
    data = json.loads((out / "fault" / "results.json").read_text())
    validate_results(data)
    assert data["status"] == "completed"
    cycle0 = data["cycles"][0]
    assert ("train", 1) in [(e["message-type"], e["partition"]) for e in cycle0.get("lost-clients", [])], cycle0
    assert len(cycle0["selected-ids"]["1"]) == cycle0["budgets"]["1"] > 0, "re-admitted: it bought its budget"
    after = [e[0] for e in json.loads(ledger.read_text())["entries"]]
    assert after[: len(before)] == before, "every label bought before the kill is still in the ledger"
    assert len(after) == len(set(after)) == data["cycles"][-1]["labeled-per-client"]["1"], "none bought twice"
    assert supervisor.starts >= 1


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
    validate_results(data)
    assert data["status"] == "completed" and data["strategy-defaults"] == {"evaluation": "federated"}
    assert data["config"]["num-cycles"] == 3 and len(data["cycles"]) == 4
    assert [c["labeled"] for c in data["cycles"]] == [0, 10, 20, 30]
    assert all(c["evaluation"]["where"] == "federated" for c in data["cycles"])
