"""Shared fixtures: a small, fast in-process experiment config and the shared datasets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(autouse=True)
def _quiet_flower_logs():
    logging.getLogger("flwr").setLevel(logging.WARNING)
    yield


@pytest.fixture
def small_run(tmp_path):
    """Overrides for a seconds-long digits experiment writing into tmp_path."""
    return {
        "output-dir": str(tmp_path / "results"),
        "state-dir": str(tmp_path / "state"),
        "run-name": "test-run",
        "num-cycles": 2,
        "rounds-per-cycle": 2,
        "local-epochs": 1,
        "train-subset-size": 400,
        "score-batch-size": 256,
    }


@pytest.fixture
def shared_datasets() -> Path:
    if not SHARED_DATASETS.exists():
        pytest.skip(f"shared datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """One real Label Studio server for the session (tests use their own projects)."""
    from tests.label_studio_server import label_studio_missing, start_label_studio

    missing = label_studio_missing()
    if missing:
        pytest.skip(missing)
    server = start_label_studio(tmp_path_factory.mktemp("label-studio"))
    try:
        yield server
    finally:
        server.stop()
