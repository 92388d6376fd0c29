"""A real multi-node Ray cluster on this machine for tests: one ``ray start`` per node, stopped by PID.

Each node gets its own CPUs, a custom resource naming it, free ports (never Ray's defaults, so
other Ray instances on the machine are not touched) and a private temporary folder. ``ray stop``
would stop every Ray process of the user on the machine, so the nodes are found and stopped by
the marker in their environment (``launcher.stopping``), which all their processes inherit.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from launcher.stopping import SCOPE_VARIABLE, scope_processes, stop_processes

RAY = str(Path(sys.executable).parent / "ray")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _free_range(width: int) -> int:
    """The first port of ``width`` consecutive ports that are free now."""
    for _ in range(200):
        base = _free_ports(1)[0]
        if base + width >= 65535:
            continue
        try:
            socks = []
            for port in range(base, base + width):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {width} consecutive free ports")


@dataclass
class RayCluster:
    """Nodes started with ``ray start``; ``address`` is the head's GCS address for ``ray.init``/``--address``."""

    marker: str
    temp_dir: Path
    address: str = ""
    nodes: list[str] = field(default_factory=list)  # the custom resource naming each node
    log: list[str] = field(default_factory=list)

    def env(self, node: str) -> dict[str, str]:
        return {**os.environ, SCOPE_VARIABLE: f"{self.marker} {node}", "RAY_worker_niceness": "0",
                "RAY_USAGE_STATS_ENABLED": "0"}

    def start_node(self, name: str, *, num_cpus: int = 1, head: bool = False) -> None:
        agent, grpc, runtime_env, metrics, manager, objects, client, dashboard = _free_ports(8)
        workers = _free_range(16)
        args = [
            RAY, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus), "--num-gpus", "0",
            "--resources", json.dumps({name: 1}), "--object-store-memory", str(100 * 1024 * 1024),
            "--node-manager-port", str(manager), "--object-manager-port", str(objects),
            "--min-worker-port", str(workers), "--max-worker-port", str(workers + 15),
            "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(grpc),
            "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
            "--temp-dir", str(self.temp_dir), "--disable-usage-stats",
        ]
        if head:
            port = _free_ports(1)[0]
            args += ["--head", "--port", str(port), "--ray-client-server-port", str(client),
                     "--include-dashboard", "false", "--dashboard-port", str(dashboard)]
            self.address = f"127.0.0.1:{port}"
        else:
            args += ["--address", self.address]
        done = subprocess.run(args, env=self.env(name), capture_output=True, text=True, timeout=120)
        self.log.append(done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"ray start ({name}) failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        self.nodes.append(name)

    def wait_for_nodes(self, timeout: float = 60.0) -> dict[str, str]:
        """Custom resource -> Ray node id, once every node started is alive in the cluster."""
        probe = (
            "import json, ray; ray.init(address=%r, log_to_driver=False, configure_logging=False); "
            "print(json.dumps({k: n['NodeID'] for n in ray.nodes() if n['Alive'] for k in n['Resources'] "
            "if k.startswith('fal-node-')}))" % self.address
        )
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run([sys.executable, "-c", probe], env=self.env("probe"), capture_output=True, text=True,
                                 timeout=120)
            ids = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else {}
            if set(ids) >= set(self.nodes):
                return ids
            if time.monotonic() > deadline:
                raise RuntimeError(f"nodes {self.nodes} not all alive within {timeout:.0f} s: {ids} {out.stderr[-1000:]}")
            time.sleep(1.0)

    def processes(self) -> list[tuple[int, str]]:
        return scope_processes(self.marker)

    def stop(self) -> list[int]:
        """Stop every process of the cluster by PID (SIGTERM, then SIGKILL): never ``ray stop``."""
        pids = stop_processes(lambda: [pid for pid, _ in self.processes()], grace=10.0)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return pids


def start_cluster(nodes: dict[str, int]) -> RayCluster:
    """``{resource name: CPUs}``; the first is the head. Stop it with :meth:`RayCluster.stop`."""
    # a short path: Ray's Unix sockets live under it (108 characters at most)
    cluster = RayCluster(marker=f"ray-cluster-{uuid.uuid4().hex[:10]}", temp_dir=Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp")))
    try:
        for i, (name, cpus) in enumerate(nodes.items()):
            cluster.start_node(name, num_cpus=cpus, head=i == 0)
    except BaseException:
        cluster.stop()
        raise
    return cluster
