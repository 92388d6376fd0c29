"""Every launcher stops all it started on a stop signal, with the right exit status (real processes).

Each test starts a launcher as a user would (its own session, so the signal reaches only it, as
``timeout`` or a job scheduler sends it), with a marker in its environment
(``FAL_RUN_SCOPES``: every process it starts inherits it), waits until the run's processes
that used to be left behind exist (``flwr-simulation`` in SuperExec's session, Ray's head, the
ClientApp actors, ``flwr-clientapp``, a sweep's Ray workers), sends the signal, and asserts the
exit status is 128 + the signal and that no process of the run is left: none with the marker,
and none of the process tree recorded just before the signal. A run stopped in the middle of its
query keeps consistent ledgers and resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from launcher.stopping import SCOPE_VARIABLE, descendants, process_start_time, scope_processes

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc (Linux)")

TINY = 'rounds-per-cycle=1 local-epochs=1 train-subset-size=300 score-batch-size=256 dataset="digits"'


class Launched:
    """A launcher started in its own session with a fresh marker; its output goes to ``log``."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.marker = f"test-{uuid.uuid4().hex[:10]}"
        self.log = log
        env = {**os.environ, SCOPE_VARIABLE: self.marker, "PYTHONUNBUFFERED": "1", "RAY_worker_niceness": "0"}
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def processes(self) -> list[tuple[int, str]]:
        return scope_processes(self.marker)

    def wait_for(self, what: str, predicate, timeout: float = 240.0) -> list[tuple[int, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            procs = self.processes()
            if predicate(procs):
                return procs
            if self.proc.poll() is not None:
                pytest.fail(f"the launcher exited ({self.proc.returncode}) before {what}:\n{self.output()[-3000:]}")
            time.sleep(0.1)
        self.kill()
        pytest.fail(f"no {what} within {timeout:.0f} s:\n{self.output()[-3000:]}")

    def stop(self, sig: int, timeout: float = 60.0) -> int:
        """Record the run's processes (marker and tree), send ``sig``, wait; the exit status. Asserts none is left."""
        recorded = {pid: process_start_time(pid) for pid, _ in self.processes()}
        recorded.update({pid: process_start_time(pid) for pid in descendants(self.proc.pid)})
        recorded = {p: t for p, t in recorded.items() if t is not None}
        assert len(recorded) > 3
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the launcher did not exit within {timeout:.0f} s of {signal.Signals(sig).name}")
        time.sleep(0.2)
        assert self.processes() == [], "processes of the run left behind (marker)"
        left = [p for p, t in recorded.items() if _same_process_alive(p, t)]
        assert left == [], f"processes of the run left behind (process tree): {left}"
        return rc

    def kill(self) -> None:
        for pid, _ in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _same_process_alive(pid: int, started: float) -> bool:
    now = process_start_time(pid)
    if now is None or abs(now - started) > 0.05:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _has(procs: list[tuple[int, str]], *needles: str) -> bool:
    return all(any(n in cmd for _, cmd in procs) for n in needles)


def _ledgers(state: Path) -> dict[str, list[list]]:
    out = {}
    for path in sorted(state.rglob("partition-*.json")):
        payload = json.loads(path.read_text())  # a half-written ledger would not parse
        ids = [e[0] for e in payload["entries"]]
        assert len(ids) == len(set(ids)), f"{path}: a sample bought twice"
        out[path.name] = payload["entries"]
    return out


@pytest.mark.flower
def test_fal_simulate_stopped_mid_query_stops_everything_keeps_ledgers_and_resumes(tmp_path):
    out, state = tmp_path / "results", tmp_path / "state"
    run_config = (f'{TINY} num-clients=3 num-cycles=2 strategy="entropy" output-dir="{out}" state-dir="{state}" '
                  'run-name="stopped"')
    cmd = [str(BIN / "fal-simulate"), "--app", str(REPO), "--run-config", run_config]
    run = Launched(cmd, tmp_path / "first.log")
    # the processes the issue found left behind: flwr-simulation (SuperExec's session), Ray's head, the actors
    run.wait_for("ClientApp actors", lambda p: _has(p, "flwr-simulation", "gcs_server", "raylet", "ray::ClientAppActor"))
    deadline = time.monotonic() + 240
    while "[FAL] cycle 0:" not in run.output() and time.monotonic() < deadline:  # cycle 0 evaluated: its query starts
        time.sleep(0.02)
    assert run.stop(signal.SIGTERM) == 128 + signal.SIGTERM
    assert "[FAL] stopped by SIGTERM" in run.output()
    results = json.loads((out / "stopped" / "results.json").read_text())
    assert results["status"] == "stopped" and results["launcher"]["signal"] == "SIGTERM"
    assert results["launcher"]["scope"] and scope_processes(results["launcher"]["scope"]) == []
    before = _ledgers(state)
    assert len(before) == 3  # every client had bought its initial labels

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    after = _ledgers(state)
    for name, entries in before.items():  # every label bought before the stop is still there, unchanged
        assert [e[:5] for e in entries] == [e[:5] for e in after[name][:len(entries)]]
    results = json.loads((out / "stopped" / "results.json").read_text())
    assert results["status"] == "completed" and len(results["cycles"]) == 3
    assert results["cycles"][-1]["labeled"] == sum(len(v) for v in after.values())


@pytest.mark.flower
def test_fal_simulate_stopped_by_sighup_while_ray_starts(tmp_path):
    out = tmp_path / "results"
    run = Launched([str(BIN / "fal-simulate"), "--app", str(REPO), "--run-config",
                    f'{TINY} num-clients=2 num-cycles=1 output-dir="{out}" state-dir="{tmp_path}/state" run-name="hup"'],
                   tmp_path / "hup.log")
    run.wait_for("Ray's head", lambda p: _has(p, "flower-superexec", "flwr-simulation", "gcs_server"))
    assert run.stop(signal.SIGHUP) == 128 + signal.SIGHUP


@pytest.mark.flower
def test_fal_deploy_stopped_by_sigint_while_clientapps_run(tmp_path):
    out = tmp_path / "results"
    run = Launched([str(BIN / "fal-deploy"), "--app", str(REPO), "--num-supernodes", "2", "--run-config",
                    f'{TINY} num-cycles=1 output-dir="{out}" state-dir="{tmp_path}/state" run-name="int"'],
                   tmp_path / "int.log")
    run.wait_for("a ClientApp process", lambda p: _has(p, "flower-supernode", "flwr-serverapp", "flwr-clientapp"))
    assert run.stop(signal.SIGINT) == 128 + signal.SIGINT
    assert "[FAL] stopped by SIGINT" in run.output()


SWEEP = """
[sweep]
name = "stoppable"
cpus-per-run = 1
runtime = "{runtime}"

[base]
dataset = "digits"
num-clients = 2
num-cycles = 1
rounds-per-cycle = 2
local-epochs = {epochs}
train-subset-size = 300

[grid]
strategy = ["random"]
seed = [0, 1, 2]
"""


@pytest.mark.ray
def test_fal_sweep_stopped_by_sigterm_stops_its_ray_workers(tmp_path):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(SWEEP.format(runtime="inprocess", epochs=400))  # long enough to be stopped while running
    run = Launched([str(BIN / "fal-sweep"), str(sweep), "--output", str(tmp_path / "out"), "--num-cpus", "2",
                    "--progress-seconds", "1"], tmp_path / "sweep.log")
    run.wait_for("a running run", lambda p: _has(p, "raylet", "ray::execute_run"))
    assert run.stop(signal.SIGTERM) == 128 + signal.SIGTERM
    assert "[sweep] stopped by SIGTERM" in run.output()
    manifest = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert manifest["invocations"][-1]["stopped"] == "SIGTERM" and manifest["invocations"][-1]["scope"]


@pytest.mark.ray
@pytest.mark.flower
def test_fal_sweep_under_the_simulation_runtime_stopped_by_sigint_stops_the_runs_it_started(tmp_path):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(SWEEP.format(runtime="simulation", epochs=1))
    run = Launched([str(BIN / "fal-sweep"), str(sweep), "--output", str(tmp_path / "out"), "--num-cpus", "2",
                    "--progress-seconds", "1"], tmp_path / "sweep.log")
    runs = tmp_path / "out" / "runs"
    # a run's own SuperLink, SuperExec, flwr-simulation and Ray head, under the sweep's Ray worker, and its
    # ServerApp started (results.json written)
    run.wait_for("a run's ServerApp", lambda p: _has(p, "ray::execute_run", "flower-superlink", "flwr-simulation")
                 and any(runs.glob("*/results.json")))
    assert run.stop(signal.SIGINT) == 128 + signal.SIGINT
    assert "[sweep] stopped by SIGINT" in run.output()
    # each run that had started was stopped by its own fal-simulate (SIGTERM from the cancelled task), not
    # killed under it: its log and its results say so
    logs = [p for p in (tmp_path / "out" / "logs").glob("*.log") if "[sweep] run" in p.read_text()]
    assert logs
    for log in logs:
        assert "[FAL] stopped by SIGTERM" in log.read_text(), log.read_text()[-2000:]
    for results in runs.glob("*/results.json"):
        data = json.loads(results.read_text())
        assert data["status"] == "stopped" and data["launcher"]["signal"] == "SIGTERM", results
        assert "labels bought so far are kept" in (tmp_path / "out" / "logs" / f"{results.parent.name}.log").read_text()
