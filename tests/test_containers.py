"""The deployment as containers, for real (marker ``docker``).

Builds the image with ``docker/build.sh`` (options from ``FAL_BUILD_ARGS``, e.g.
``--debian-base --host-ca`` where no container registry is reachable and TLS is
re-signed), makes the CA, SuperLink certificate and SuperNode keys with
``docker/stack.sh certs``, starts the compose stack (SuperLink with TLS and
SuperNode authentication, two registered SuperNodes), starts a third SuperNode
whose key was never registered and checks that it is refused, runs a short
experiment with ``flwr run`` from the cli container, checks
``finished:completed`` and the results and ledgers on the volumes, reaches the
SuperLink over TLS from the host as an operator would, and tears everything
down (volumes included).

Skipped when no Docker engine answers (``docker info``), unless ``FAL_REQUIRE_DOCKER=1``
(``.ci/run`` sets it after starting an engine with ``docker/engine.sh``): then it fails, naming why.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from launcher.flower_processes import free_port

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "docker" / "stack.sh"
IMAGE = os.environ.get("FAL_IMAGE", "fal-test-flower:latest")


def _engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker command on PATH"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 30 s"
    if info.returncode != 0:
        return f"no Docker engine reachable (docker info: {info.stderr.strip()[:200]})"
    if shutil.which("docker-compose") is None and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode != 0:
        return "neither docker-compose nor the docker compose plugin is installed"
    return None


_problem = _engine_problem()
_required = os.environ.get("FAL_REQUIRE_DOCKER", "") not in ("", "0")
pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(_problem is not None and not _required,
                       reason=f"{_problem}; docs/guides/testing.md starts an engine with docker/engine.sh"),
]


def _sh(args: list[str], env: dict[str, str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{shlex.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture
def stack(tmp_path):
    """Environment of a private compose project; everything is removed afterwards."""
    env = {
        **os.environ,
        "FAL_IMAGE": IMAGE,
        "FAL_CERTS": str(tmp_path / "certs"),
        "FAL_PROJECT": f"faltest{os.getpid()}",
        "FAL_SUPERLINK_PUBLISH": f"127.0.0.1:{free_port()}",
    }
    try:
        yield env
    finally:
        subprocess.run([str(STACK), "down", "-v"], env=env, capture_output=True, timeout=300)


def _compose(env: dict[str, str], *args: str, **kw) -> subprocess.CompletedProcess:
    compose = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    return _sh([*compose, "--project-name", env["FAL_PROJECT"], "--file", str(ROOT / "docker" / "compose.yml"), *args], env, **kw)


def test_tls_authenticated_stack_runs_an_experiment_and_refuses_an_unregistered_node(stack, tmp_path):
    if _problem is not None:
        pytest.fail(f"FAL_REQUIRE_DOCKER is set but {_problem}")
    env = stack
    t0 = time.monotonic()
    # With the label-studio extra, as a site whose people label in Label Studio builds it.
    build = _sh([str(ROOT / "docker" / "build.sh"), "--tag", IMAGE, "--extras", "label-studio",
                 *shlex.split(os.environ.get("FAL_BUILD_ARGS", ""))], env, timeout=1800)
    built = time.monotonic()
    sdk = _sh(["docker", "run", "--rm", IMAGE, "python", "-c",
               "import label_studio_sdk, importlib.metadata as m; print(m.version('label-studio-sdk'))"], env)
    pinned = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["label-studio"]
    assert f"label-studio-sdk=={sdk.stdout.strip()}" in pinned, (sdk.stdout, pinned)
    _sh([str(STACK), "certs"], env)
    _sh([str(STACK), "up", "2"], env, timeout=300)  # SuperLink, then supernode-0 and -1 registered and started
    up = time.monotonic()

    # supernode-2's key was never registered: the SuperLink refuses it, it never joins.
    _compose(env, "up", "-d", "supernode-2")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        refused = _compose(env, "logs", "supernode-2", check=False).stdout
        if "Failed to initialize the connection to the SuperLink" in refused:
            break
        time.sleep(2)
    assert "Failed to initialize the connection to the SuperLink" in refused, refused[-2000:]

    run_config = ('rounds-per-cycle=1 local-epochs=1 num-cycles=1 train-subset-size=300 strategy="random" '
                  'num-clients=2 output-dir="/results" run-name="containers"')
    out = _sh([str(STACK), "flwr", "run", "/app", "--stream", "--run-config", run_config], env, timeout=900).stdout
    run_id = re.search(r"Successfully started run (\d+)", out).group(1)
    listing = json.loads(_sh([str(STACK), "flwr", "ls", "--run-id", run_id, "--format", "json"], env).stdout)
    assert listing["runs"][0]["status"] == "finished:completed", out[-3000:]
    ran = time.monotonic()

    results = json.loads(_compose(env, "exec", "-T", "superlink", "cat", "/results/containers/results.json").stdout)
    assert results["status"] == "completed" and sorted(results["clients"]) == ["0", "1"]
    final = results["cycles"][-1]
    for pid in ("0", "1"):
        ledger = json.loads(_compose(env, "exec", "-T", f"supernode-{pid}", "cat", f"/state/containers/partition-{pid}.json").stdout)
        bought = [e[0] for e in ledger["entries"]]
        assert len(bought) == len(set(bought)) == final["labeled-per-client"][pid]

    # Only the two registered SuperNodes are known and online.
    nodes = json.loads(_sh([str(STACK), "flwr", "supernode", "list", "--format", "json"], env).stdout)
    online = [n for n in nodes["nodes"] if n["status"] == "online"]
    assert len(online) == 2, nodes

    # An operator's flwr on the host reaches the published port over TLS with the CA certificate.
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "site"\n[superlink.site]\naddress = "{env["FAL_SUPERLINK_PUBLISH"]}"\n'
        f'root-certificates = "{tmp_path / "certs" / "superlink" / "ca.crt"}"\n'
    )
    flwr = str(Path(sys.executable).parent / "flwr")
    host = _sh([flwr, "ls", "--run-id", run_id, "--format", "json"], {**env, "FLWR_HOME": str(home)})
    assert json.loads(host.stdout)["runs"][0]["status"] == "finished:completed"
    print(f"\n[containers] build {built - t0:.0f} s, certificates + stack up {up - built:.0f} s, "
          f"run {ran - up:.0f} s\n{build.stderr.strip().splitlines()[-1]}")
