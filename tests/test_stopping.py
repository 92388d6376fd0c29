"""launcher.stopping with real processes (no Flower): what a stopped scope finds and stops.

A scope must stop a descendant that left its session and process group and whose parent died
(a daemon: found by the marker and, reparented to the subreaper, by the tree), one that wiped its
environment (found by the tree), and must leave alone a process that is not the run's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from launcher.stopping import (
    PARENT_VARIABLE, SCOPE_VARIABLE, RunScope, Stopped, process_start_time, reclaim_signals, scope_processes,
)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl (Linux)")

# a child that starts a grandchild in a new session and exits at once: the grandchild is an orphan
DAEMONISE = textwrap.dedent("""
    import subprocess, sys
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(p.pid, flush=True)
""")


def _alive(pid: int, started: float) -> bool:
    """``pid`` still runs and is the same process (not a reused pid)."""
    now = process_start_time(pid)
    if now is None or abs(now - started) > 0.05:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_gone(pids: dict[int, float], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p, t in pids.items() if _alive(p, t)]
        if not left:
            return []
        time.sleep(0.05)
    return left


def test_scope_stops_daemonised_and_env_wiped_descendants_but_not_older_children():
    older = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # not the run's
    try:
        with RunScope("test", grace=5.0, handle_signals=False) as scope:
            assert scope.id in os.environ[SCOPE_VARIABLE].split()
            out = subprocess.run([sys.executable, "-c", DAEMONISE], capture_output=True, text=True, check=True)
            daemon = int(out.stdout.strip())
            wiped = subprocess.Popen(["env", "-i", "sleep", "600"], start_new_session=True)
            time.sleep(0.3)
            assert daemon in {pid for pid, _ in scope_processes(scope.id)}  # the marker, across sessions
            assert scope.id not in open(f"/proc/{wiped.pid}/environ").read()  # the marker is gone here ...
            with open(f"/proc/{daemon}/stat") as f:  # ... and the orphan was reparented to the subreaper
                assert int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid()
            started = {p: process_start_time(p) for p in (daemon, wiped.pid)}
        assert _wait_gone(started) == []
        assert set(scope.signalled) >= {daemon, wiped.pid}
        assert older.poll() is None  # a child from before the scope is not the run's
        assert SCOPE_VARIABLE not in os.environ or scope.id not in os.environ[SCOPE_VARIABLE]
    finally:
        older.kill()
        older.wait()


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period():
    with RunScope("test", grace=1.0, handle_signals=False) as scope:
        stubborn = subprocess.Popen([sys.executable, "-c",
                                     "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        time.sleep(0.5)
        t0 = time.monotonic()
    assert stubborn.wait(timeout=5) == -signal.SIGKILL
    assert 0.9 < time.monotonic() - t0 < 5
    assert stubborn.pid in scope.signalled


SCRIPT = textwrap.dedent("""
    import subprocess, sys, time
    from launcher.stopping import RunScope, Stopped
    try:
        with RunScope("script", grace=5.0):
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
            print("ready", flush=True)
            time.sleep(600)
    except Stopped as stop:
        sys.exit(stop.exit_code)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_stops_the_scope_and_exits_128_plus_the_signal(sig):
    marker = f"test-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, SCOPE_VARIABLE: marker}, start_new_session=True)
    assert proc.stdout.readline().strip() == "ready"
    members = {pid: process_start_time(pid) for pid, _ in scope_processes(marker)}
    assert len(members) == 2  # the script and its child in another session
    proc.send_signal(sig)
    assert proc.wait(timeout=15) == 128 + sig
    assert _wait_gone(members) == []


def test_a_launcher_whose_parent_dies_stops_its_run():
    """FAL_STOP_WITH_PARENT (a sweep's Ray worker killed without warning): the kernel sends SIGTERM."""
    marker = f"test-{uuid.uuid4().hex[:8]}"
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import os, subprocess, sys, time
            env = {{**os.environ, "{PARENT_VARIABLE}": str(os.getpid())}}
            child = subprocess.Popen([sys.executable, "-c", {SCRIPT!r}], env=env, stdout=sys.stdout)
            time.sleep(600)
        """)],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, SCOPE_VARIABLE: marker}, start_new_session=True,
    )
    try:
        assert parent.stdout.readline().strip() == "ready"
        members = {pid: process_start_time(pid) for pid, _ in scope_processes(marker) if pid != parent.pid}
        assert len(members) == 2  # the launcher and its child
        parent.kill()  # as ray.cancel(force=True) kills a worker: no chance to clean up
        parent.wait()
        assert _wait_gone(members) == []
    finally:
        if parent.poll() is None:
            parent.kill()


def test_stopped_is_not_an_exception_that_except_exception_swallows():
    assert not issubclass(Stopped, Exception)
    assert Stopped(signal.SIGTERM).exit_code == 143 and str(Stopped(signal.SIGINT)) == "stopped by SIGINT"


def test_reclaim_signals_takes_sigterm_back_from_a_library_that_set_its_own():
    """ray.init sets SIGTERM to sys.exit(15); after reclaim_signals() a SIGTERM stops the scope again."""
    with pytest.raises(Stopped) as stopped:
        with RunScope("test", grace=1.0) as scope:
            signal.signal(signal.SIGTERM, lambda s, f: sys.exit(s))  # what ray.init does
            reclaim_signals()
            assert signal.getsignal(signal.SIGTERM) == scope._on_signal
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert stopped.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) != scope._on_signal  # the scope's handlers are gone with it
