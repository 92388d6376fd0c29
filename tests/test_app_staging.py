"""The app copy `flwr run` is given (launcher.flower_processes.stage_app) builds the same FAB as the app folder."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from launcher.flower_processes import stage_app

ROOT = Path(__file__).resolve().parents[1]


def _fab(folder: Path) -> dict[str, bytes]:
    fab = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(folder)))
    return {name: fab.read(name) for name in fab.namelist()}


def test_staged_app_builds_the_same_fab_without_entering_ignored_folders(tmp_path):
    app = tmp_path / "app"
    (app / "pkg" / "__pycache__").mkdir(parents=True)
    (app / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (app / ".gitignore").write_text(".venv/\n__pycache__/\n*.log\n/results/\n")
    (app / "pkg" / "__init__.py").write_text("x = 1\n")
    (app / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    (app / "run.log").write_text("ignored\n")
    (app / "README.md").write_text("# app\n")
    (app / "results").mkdir()
    (app / "results" / "r.json").write_text("{}")
    venv = app / ".venv" / "lib"
    venv.mkdir(parents=True)
    for i in range(300):  # what flwr run would walk: the virtual environment
        (venv / f"m{i}.py").write_text("")
    (app / "link.py").symlink_to(app / "pkg" / "__init__.py")
    staged = stage_app(app, tmp_path / "staged")
    assert not (staged / ".venv").exists() and not (staged / "results").exists() and not (staged / "link.py").exists()
    ours, flowers = _fab(staged), _fab(app)
    assert sorted(ours) == sorted(flowers) and "pkg/__init__.py" in ours
    assert all(ours[k] == flowers[k] for k in ours)
