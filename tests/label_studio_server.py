"""A real Label Studio server for tests: SQLite, a free localhost port, a temporary data folder.

The first start migrates an empty database (about 70 s here); the migrated
folder is kept as a template (``~/.cache/fal-tests/label-studio-<version>``,
or ``$FAL_TEST_CACHE``) and copied for every server, which then starts in
about 10 s. The server runs in its own process group and is stopped by it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LabelStudioServer", "label_studio_missing", "start_label_studio"]

USER, PASSWORD, TOKEN = "annotator@example.com", "fal-test-password", "fal-test-token-0123456789"


def _executable() -> str | None:
    beside = Path(sys.executable).with_name("label-studio")
    return str(beside) if beside.exists() else shutil.which("label-studio")


def label_studio_missing() -> str:
    """Why the Label Studio tests cannot run here ('' when they can)."""
    try:
        import label_studio  # noqa: F401
        import label_studio_sdk  # noqa: F401
    except ImportError as err:
        return f"label-studio / label-studio-sdk not installed ({err}); .ci/run installs them"
    return "" if _executable() else "the label-studio command is not on PATH"


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT", "USERNAME", "PASSWORD")}  # LS reads these
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(data_dir), LATEST_VERSION_CHECK="false", COLLECT_ANALYTICS="false",
               DJANGO_DB="sqlite", PYTHONUNBUFFERED="1")
    return env


def _template() -> Path:
    """A migrated, empty data folder (made once per Label Studio version)."""
    from importlib.metadata import version

    import label_studio

    root = Path(os.environ.get("FAL_TEST_CACHE", Path.home() / ".cache" / "fal-tests"))
    folder = root / f"label-studio-{version('label-studio')}"
    if (folder / "migrated").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    ls_dir = Path(label_studio.__file__).parent
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-color", "-v", "0"], cwd=ls_dir, env=_env(folder),
        capture_output=True, text=True, timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(f"Label Studio migration failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    (folder / "migrated").write_text("ok\n")
    return folder


@dataclass
class LabelStudioServer:
    url: str
    token: str
    user: str
    password: str
    data_dir: Path
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def start_label_studio(work_dir: Path, timeout: float = 300) -> LabelStudioServer:
    from launcher.flower_processes import free_port

    data_dir = work_dir / "label-studio-data"
    shutil.copytree(_template(), data_dir)
    port = free_port()
    log_path = work_dir / "label-studio.log"
    log = open(log_path, "w")
    process = subprocess.Popen(
        [_executable(), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data_dir), "--username", USER, "--password", PASSWORD, "--user-token", TOKEN,
         "--enable-legacy-api-token"],
        env=_env(data_dir), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=work_dir,
    )
    server = LabelStudioServer(f"http://127.0.0.1:{port}", TOKEN, USER, PASSWORD, data_dir, process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"label-studio exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as r:
                if b"UP" in r.read():
                    return server
        except OSError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"label-studio did not answer /health on port {port} within {timeout:.0f} s")
