"""Start and stop the Flower processes a run needs, and surface failures.

Why this exists: ``flwr run . --stream`` leaves a background SuperLink
running, reinstalls the app's dependencies by default, and exits 0 even when
the ServerApp crashed. A :class:`FlowerEnvironment` owns a private
``FLWR_HOME``, starts its own SuperLink (and SuperNodes for a deployment) on
free localhost ports with dependency installation off, runs ``flwr run``,
asks the SuperLink for the run's final status, and stops every process it
started whatever happens: not only the ones it started itself, but everything
they started in turn (the SuperExec the SuperLink starts in a new session,
``flwr-simulation``, Ray's head and actors, ``flwr-clientapp`` processes),
found by the marker every one of them inherits (``launcher.stopping``).

With ``tls=True`` (deployment only) it runs the SuperLink as a site should:
TLS with a private CA and SuperNode authentication; every SuperNode gets its
own key pair, registered with ``flwr supernode register`` before it starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO

from fal_shared.config import toml_value
from launcher.certs import make_superlink_certificates, make_supernode_key
from launcher.flower_simulation import write_shim
from launcher.stopping import SCOPE_VARIABLE, scope_processes, stop_processes

__all__ = ["FlowerEnvironment", "RunFailed", "free_port"]


class RunFailed(RuntimeError):
    """The Flower run did not finish as ``finished:completed``."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on port {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def stage_app(app_dir: Path, into: Path) -> Path:
    """Copy the app's files into ``into``, leaving out what its ``.gitignore`` leaves out; ``into``.

    ``flwr run <dir>`` walks *every* file under ``<dir>`` (``os.walk`` and a ``resolve()`` per
    file) before it applies ``.gitignore``: with the virtual environment inside the app folder, as
    the install instructions make it, that is some 74,000 files and 13 s (7 s of CPU) per run. This
    walk prunes ignored folders instead of entering them, so ``flwr run`` on the copy builds the
    same FAB (Flower applies ``.gitignore`` and its own rules again) from a few hundred files.
    """
    import pathspec  # a dependency of flwr, which reads .gitignore with it

    ignore = app_dir / ".gitignore"
    patterns = ignore.read_text().splitlines() if ignore.exists() else []
    spec = pathspec.GitIgnoreSpec.from_lines(patterns + [".git/"])
    for root, dirs, files in os.walk(app_dir):
        rel = Path(root).relative_to(app_dir)
        dirs[:] = [d for d in dirs if not spec.match_file(f"{(rel / d).as_posix()}/")
                   and not os.path.islink(os.path.join(root, d))]
        for name in files:
            path = rel / name
            if spec.match_file(path.as_posix()) or os.path.islink(os.path.join(root, name)):
                continue
            (into / rel).mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.join(root, name), into / path)
    return into


def run_config_arg(overrides: dict[str, object]) -> str:
    """``key=value`` pairs as ``flwr run --run-config`` expects (TOML values)."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in overrides.items())


class FlowerEnvironment:
    """A private Flower home with a SuperLink (simulation or deployment) and SuperNodes.

    Use as a context manager; every process started is stopped on exit.
    """

    def __init__(self, app_dir: Path, *, simulation: bool, log_dir: Path | None = None, tls: bool = False) -> None:
        if tls and simulation:
            raise ValueError("tls applies to a deployment (SuperNodes connect over the network), not to simulation")
        self.app_dir = app_dir.resolve()
        self.simulation = simulation
        self.tls_dir: Path | None = None
        self.home = Path(tempfile.mkdtemp(prefix="fal-flwr-home-"))
        self.log_dir = log_dir or self.home / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: list[tuple[str, subprocess.Popen, IO]] = []
        bin_dir = str(Path(sys.executable).parent)
        #: inherited by every process of this environment, in whatever session it ends up (launcher.stopping)
        self.scope_id = f"flwr-env-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.env = {
            **os.environ,
            # flower-superlink starts flower-superexec by name: the venv's bin must be on PATH
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "FLWR_HOME": str(self.home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
            # Ray (simulation): no idle workers started ahead for the first job; they were started with
            # the default runtime environment, Flower's actors need another one (its PYTHONPATH), so Ray
            # killed them unused (two Python processes importing Ray, about 1.5 s of CPU each)
            "RAY_prestart_worker_first_driver": os.environ.get("RAY_prestart_worker_first_driver", "0"),
            "RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0"),
            SCOPE_VARIABLE: f"{os.environ.get(SCOPE_VARIABLE, '')} {self.scope_id}".strip(),
        }
        if simulation:  # Flower's flwr-simulation with a message pump linear in the number of clients
            shim_dir = self.home / "bin"
            write_shim(shim_dir)
            self.env["PATH"] = str(shim_dir) + os.pathsep + self.env["PATH"]
        self.bin_dir = bin_dir
        self.control_port: int | None = None
        self.fleet_port: int | None = None
        self.supernodes: dict[int, subprocess.Popen] = {}  # partition id -> process
        if tls:
            self.tls_dir = self.home / "tls"
            self.tls = make_superlink_certificates(self.tls_dir, ["127.0.0.1"])

    # ------------------------------------------------------------ processes
    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "a")
        proc = subprocess.Popen(
            [os.path.join(self.bin_dir, args[0]), *args[1:]],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=self.home,
        )
        self.processes.append((name, proc, log))
        return proc

    def start_superlink(self) -> None:
        self.control_port = free_port()
        # Flower 1.41 serves the Control, Fleet and ServerAppIo APIs on one HTTP port.
        args = [
            "flower-superlink", "--disable-runtime-dependency-installation",
            "--database", str(self.home / "state.db"), "--host", "127.0.0.1", "--port", str(self.control_port),
        ]
        if self.tls_dir is not None:
            args += [
                "--ssl-ca-certfile", str(self.tls["ca"]), "--ssl-certfile", str(self.tls["certfile"]),
                "--ssl-keyfile", str(self.tls["keyfile"]), "--enable-supernode-auth",
            ]
            security = f'root-certificates = "{self.tls["ca"]}"\n'
        else:
            args.append("--insecure")
            security = "insecure = true\n"
        if self.simulation:
            args.append("--simulation")
        else:
            self.fleet_port = self.control_port
        proc = self._start("superlink", args)
        try:
            _wait_port(self.control_port, proc, "flower-superlink")
        except RuntimeError as err:
            tail = (self.log_dir / "superlink.log").read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"{err}; its log ends:\n" + "\n".join(tail)) from None
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "local"\n[superlink.local]\n'
            f'address = "127.0.0.1:{self.control_port}"\n' + security
        )

    def register_supernode(self, name: str) -> Path:
        """Make the key pair ``name`` (once) and register its public key with the SuperLink; the private key."""
        assert self.tls_dir is not None
        key, pub = self.tls_dir / f"{name}.key", self.tls_dir / f"{name}.pub"
        if not key.exists():
            key, pub = make_supernode_key(self.tls_dir, name)
            result = self.flwr("supernode", "register", str(pub), "local", "--name", name)
            if result.returncode != 0:
                raise RuntimeError(f"flwr supernode register {pub} failed: {result.stdout[-500:]} {result.stderr[-500:]}")
        return key

    def start_supernode(self, partition_id: int, num_partitions: int, state_dir: Path | None = None) -> subprocess.Popen:
        """Start (or restart, with the same key) the SuperNode serving ``partition_id``."""
        if self.fleet_port is None:
            raise RuntimeError("start a deployment SuperLink before SuperNodes")
        node_config = f"partition-id={partition_id} num-partitions={num_partitions}"
        if state_dir is not None:
            node_config += f' state-dir="{state_dir}"'
        name = f"supernode-{partition_id}"
        if self.tls_dir is not None:
            security = [
                "--root-certificates", str(self.tls["ca"]),
                "--auth-supernode-private-key", str(self.register_supernode(name)),
            ]
        else:
            security = ["--insecure"]
        proc = self._start(
            name,
            [
                "flower-supernode", *security, "--superlink", f"127.0.0.1:{self.fleet_port}",
                "--host", "127.0.0.1", "--port", str(free_port()),
                "--node-config", node_config,
            ],
        )
        self.supernodes[partition_id] = proc
        return proc

    def kill_supernode(self, partition_id: int, sig: int = signal.SIGKILL) -> None:
        """Stop the SuperNode of ``partition_id`` and its ClientApp processes (default: as a power cut would)."""
        proc = self.supernodes.pop(partition_id)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def members(self) -> list[int]:
        """Live processes of this environment: the ones started here and all they started (by the marker)."""
        started = [proc.pid for _, proc, _ in self.processes if proc.poll() is None]
        return sorted(set(started) | {pid for pid, _ in scope_processes(self.scope_id)})

    def close(self, grace: float = 10.0) -> None:
        """Stop every process of the environment at once (SIGTERM, then SIGKILL after ``grace`` s)."""
        stop_processes(self.members, grace=grace)
        for _, proc, log in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            log.close()
        self.processes.clear()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> "FlowerEnvironment":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ runs
    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [os.path.join(self.bin_dir, "flwr"), *args], env=self.env, capture_output=True, text=True,
            timeout=timeout, cwd=self.app_dir,
        )

    def run(
        self, run_config: dict[str, object], *, federation_config: str | None = None,
        timeout: float = 3600, verbose: bool = True, phases: dict[str, float] | None = None,
    ) -> str:
        """``flwr run --stream``; returns the run id, raises :class:`RunFailed` unless it completed.

        The whole log goes to ``log_dir/flwr-run.log``; the terminal gets every
        line (``verbose``) or only the experiment's ``[FAL]`` lines and errors.
        ``phases`` gets the times (``time.time()``) of the steps.
        """
        phases = {} if phases is None else phases
        staged = stage_app(self.app_dir, self.home / "app")
        args = [os.path.join(self.bin_dir, "flwr"), "run", str(staged), "local", "--stream"]
        if run_config:
            args += ["--run-config", run_config_arg(run_config)]
        if federation_config:
            args += ["--federation-config", federation_config]
        out_path = self.log_dir / "flwr-run.log"
        with open(out_path, "w", buffering=1) as out:  # line-buffered: the log can be followed live
            phases["flwr-run-started"] = time.time()
            proc = subprocess.Popen(args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.app_dir)
            run_id = None
            deadline = time.monotonic() + timeout
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                if verbose or "[FAL]" in line or "ERROR" in line or "Error" in line:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                match = re.search(r"Successfully started run (\d+)", line)
                if match:
                    run_id = match.group(1)
                    phases["run-submitted"] = time.time()
                if time.monotonic() > deadline:
                    proc.kill()
                    raise RunFailed(f"flwr run exceeded {timeout:.0f} s")
            proc.wait()
            phases["flwr-run-exited"] = time.time()
        if run_id is None:
            tail = "".join(out_path.read_text().splitlines(keepends=True)[-15:])
            raise RunFailed(f"flwr run did not start a run (exit code {proc.returncode}):\n{tail}")
        status = self.run_status(run_id)
        phases["status-known"] = time.time()
        if status != "finished:completed":
            raise RunFailed(f"Flower run {run_id} ended as {status!r}")
        return run_id

    def run_status(self, run_id: str) -> str:
        """The run's status as ``flwr ls`` shows it (``finished:completed``), waiting up to 60 s for it to finish."""
        deadline = time.monotonic() + 60
        while True:
            status = self._status_from_control_api(run_id) or self._status_from_cli(run_id)
            if status.startswith("finished") or time.monotonic() > deadline:
                return status
            time.sleep(0.2)

    def _status_from_control_api(self, run_id: str) -> str | None:
        """Ask the SuperLink's Control API in this process (``flwr ls`` is a new process: 1-3 s); None if that fails."""
        try:
            from flwr.proto.control_pb2 import ListRunsRequest
            from flwr.supercore.control import ControlHttpClient

            client = ControlHttpClient.from_server_address(
                f"127.0.0.1:{self.control_port}", insecure=self.tls_dir is None, interceptors=[],
                root_certificates=None if self.tls_dir is None else self.tls["ca"].read_bytes(),
            )
            try:
                status = client.ListRuns(ListRunsRequest(run_id=int(run_id))).run_dict[int(run_id)].status
            finally:
                client.close()
        except Exception:  # noqa: BLE001 - another Flower version, TLS trouble: the CLI says it then
            return None
        return f"{status.status}:{status.sub_status}" if status.sub_status else str(status.status)

    def _status_from_cli(self, run_id: str) -> str:
        result = self.flwr("ls", "local", "--run-id", run_id, "--format", "json")
        try:
            return str(json.loads(result.stdout)["runs"][0]["status"])
        except (ValueError, KeyError, IndexError):
            return f"unknown ({result.stdout.strip()[:200]} {result.stderr.strip()[:200]})"
