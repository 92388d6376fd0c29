"""Every command of every tutorial runs, as docs/tutorials/index.md says a reader runs them.

A page's ``bash`` blocks, in order, are one script (``bash -euo pipefail``) run in
the repository root with ``HOME`` a fresh temporary folder and ``TMPDIR`` a short
private one (Ray puts its sockets there, and a socket path may not exceed 107
bytes): the sizes are the page's own, small as written. Real processes start
where the page starts them (SuperLinks, SuperNodes, Ray, Label Studio).
Afterwards every process of the page's process group is stopped, and so is any
process whose command line names one of the page's private folders
(``fal-deploy``'s own process groups, Ray's, should the page fail half-way); the
test checks that nothing is left and that the ports the page used are free
again. On the labeling page the test plays the person: it answers
every Label Studio task through Label Studio's API, as the page's Submit does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
BLOCK = re.compile(r"^```bash\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def bash_blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


def _processes(pgid: int, *folders: Path) -> dict[int, str]:
    """Processes of the page: in its process group, or naming one of its private folders (pid -> command)."""
    out = subprocess.run(["ps", "-eo", "pid=,pgid=,args="], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        pid, group, args = (line.split(None, 2) + [""])[:3]
        if int(pid) != os.getpid() and not args.startswith("ps -eo") and (
                int(group) == pgid or any(str(f) in args for f in folders)):
            found[int(pid)] = args
    return found


def _short_tmpdir() -> Path:
    """A private temp folder short enough for Ray's socket paths (<tmp>/ray/session_<date>_<pid>/sockets/...)."""
    base = tempfile.gettempdir()
    return Path(tempfile.mkdtemp(prefix="fal-tut-", dir=base if len(base) <= 16 else "/tmp"))


def _stop_group(pgid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(2)


def _stop_everything(proc: subprocess.Popen, *folders: Path) -> None:
    _stop_group(proc.pid)
    for pid in _processes(proc.pid, *folders):  # e.g. a SuperLink fal-deploy started in a group of its own
        try:
            _stop_group(os.getpgid(pid))
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_page(name: str, tmp_path: Path, *, timeout: float, person=None) -> tuple[Path, str]:
    """Run the page's bash blocks as one script; the private HOME and the script's output."""
    page = TUTORIALS / f"{name}.md"
    blocks = bash_blocks(page)
    assert blocks, f"{page} has no bash block"
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    tmp = _short_tmpdir()
    script = tmp_path / f"{name}.sh"
    script.write_text("set -euo pipefail\n" + "\n".join(blocks))
    activate = ROOT / ".venv" / "bin" / "activate"
    if "source .venv/bin/activate" in script.read_text():  # the page must run this repository's code
        assert activate.exists(), f"{name}: the page activates .venv; make it as the README's Install says"
        named = re.search(r'^VIRTUAL_ENV="?([^"\n]+)"?$', activate.read_text(), re.MULTILINE)
        assert named and Path(named.group(1)).resolve() == (ROOT / ".venv").resolve(), (
            f"{activate} activates {named and named.group(1)}, not this repository's .venv (a copied venv?): "
            "the page would run other code")
    ports = sorted({int(p) for p in re.findall(r"--port (\d+)", script.read_text())})
    for port in ports:
        if not _port_free(port):
            pytest.skip(f"port {port} that the page uses is taken on this machine")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "FLWR_HOME", "HOST", "PORT")}
    env.update(HOME=str(home), TMPDIR=str(tmp), NO_MKDOCS_2_WARNING="1")
    log = tmp_path / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", str(script)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    stop = threading.Event()
    helper = threading.Thread(target=person, args=(stop,), daemon=True) if person else None
    if helper:
        helper.start()
    left_by_page = {}
    try:
        rc = proc.wait(timeout=timeout)
        # the page stops what it started: give its `kill`s a moment, then nothing of it may be left
        deadline = time.monotonic() + 30
        while (left_by_page := _processes(proc.pid, tmp_path, tmp)) and time.monotonic() < deadline:
            time.sleep(1)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        stop.set()
        _stop_everything(proc, tmp_path, tmp)
        if helper:
            helper.join(timeout=30)
        left_after_stop = _processes(proc.pid, tmp_path, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    output = log.read_text(errors="replace")
    assert rc is not None, f"{name}: still running after {timeout:.0f} s:\n{output[-4000:]}"
    assert rc == 0, f"{name}: a command failed (exit {rc}):\n{output[-4000:]}"
    assert not left_by_page, f"{name}: the page leaves processes running: {left_by_page}"
    assert not left_after_stop, f"{name}: processes still running after the test stopped them: {left_after_stop}"
    left = [p for p in ports if not _port_free(p)]
    assert not left, f"{name}: ports still in use: {left}"
    return home, output


def _results(home: Path, *parts: str) -> dict:
    from server_app.results_schema import validate_results

    data = json.loads(home.joinpath("fal-results", *parts, "results.json").read_text())
    validate_results(data)
    return data


def test_every_tutorial_page_is_tested():
    pages = {p.stem for p in TUTORIALS.glob("*.md")} - {"index"}
    tested = {"first-run", "first-sweep", "federation", "label-studio"}
    assert pages == tested, f"a tutorial without a test, or a test without its page: {pages ^ tested}"


@pytest.mark.flower
def test_first_run(tmp_path):
    home, out = run_page("first-run", tmp_path, timeout=480)
    data = _results(home, "first-run")  # the documented schema (docs: results.json)
    assert data["status"] == "completed" and len(data["cycles"]) == 3 and data["config"]["num-clients"] == 4
    assert "[FAL] cycle 0: accuracy=" in out and "[FAL] completed 3 cycles" in out
    assert data["cycles"][0]["traffic"]["query.select"]["messages-sent"] == 4  # a real query phase, every site
    assert (home / "fal-results" / "first-run" / "flower.log").exists()
    assert (home / "fal-results" / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.ray
def test_first_sweep(tmp_path):
    home, out = run_page("first-sweep", tmp_path, timeout=480)
    sweep = home / "fal-results" / "sweeps" / "tutorial-digits"
    runs = sorted(p.name for p in (sweep / "runs").iterdir())
    assert len(runs) == 6, runs
    for run in runs:
        assert _results(home, "sweeps", "tutorial-digits", "runs", run)["status"] == "completed"
    assert "6 completed already (skipped), 0 to run" in out  # the second invocation
    report = (sweep / "report" / "report.md").read_text()
    assert "entropy-local" in report and "reference" in report


@pytest.mark.flower
def test_federation(tmp_path):
    home, out = run_page("federation", tmp_path, timeout=540)
    assert _results(home, "deploy-tls")["status"] == "completed"
    assert "TLS, SuperNode authentication" in out
    by_hand = _results(home, "by-hand")
    assert by_hand["status"] == "completed"
    ledgers = sorted(p.name for p in (home / "fal-tutorial" / "state" / "by-hand").glob("partition-*.json"))
    assert ledgers == ["partition-0.json", "partition-1.json"]
    for pid in ("0", "1"):  # every label the sites bought is in their own ledger, once
        ledger = json.loads((home / "fal-tutorial" / "state" / "by-hand" / f"partition-{pid}.json").read_text())
        bought = [e[0] for e in ledger["entries"]]
        assert len(bought) == len(set(bought)) == by_hand["cycles"][-1]["labeled-per-client"][pid] > 0


def _label_studio_person(url: str, token: str):
    """Answer every unanswered task of the run's projects with the model's pre-selected guess."""

    def person(stop: threading.Event) -> None:
        from label_studio_sdk import LabelStudio

        ls = None
        while not stop.is_set():
            try:
                ls = ls or LabelStudio(base_url=url, api_key=token)
                for project in ls.projects.list():
                    if not project.title.startswith("FAL ward-study"):
                        continue
                    for task in ls.tasks.list(project=project.id, fields="all"):
                        if task.annotations:
                            continue
                        guess = task.predictions[0].result if task.predictions else [
                            {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["0"]}}]
                        ls.annotations.create(id=task.id, result=guess)
            except Exception:  # the server is not up yet, or restarting: look again
                ls = None
            stop.wait(2.0)

    return person


@pytest.mark.flower
@pytest.mark.label_studio
def test_label_studio(tmp_path):
    from tests.label_studio_server import _template, label_studio_missing

    if missing := label_studio_missing():
        pytest.skip(missing)
    page = (TUTORIALS / "label-studio.md").read_text()
    token = re.search(r"--user-token (\S+)", page).group(1)
    # the page's first start would migrate an empty database (about 70 s): start from a migrated copy
    import shutil

    shutil.copytree(_template(), tmp_path / "home" / "fal-tutorial" / "label-studio")
    home, out = run_page("label-studio", tmp_path, timeout=600,
                         person=_label_studio_person("http://127.0.0.1:8080", token))
    data = _results(home, "ward-study")
    assert data["status"] == "completed" and data["initial-labeling"]["polls"] >= 1
    arrived = data["cycles"][0]["labeling"]["labels-arrived"]
    assert set(arrived) == {"0", "1"} and all(n > 0 for n in arrived.values())
    ledger = json.loads((home / "fal-tutorial" / "state" / "ward-study" / "partition-0.json").read_text())
    assert "you@example.com" in json.dumps(ledger)  # who labeled, as Label Studio says
