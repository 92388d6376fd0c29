"""Live curves in a real MLflow server: a tiny campaign logs to it, headless Chromium reads the curves off its page.

The server (``mlflow server``, SQLite store, a free localhost port, its own process
group) is stopped by its PID's group. The page's charts are Plotly plots; the test reads
the x/y arrays the page plots and compares them with what the run recorded in
``results.json``: the audit estimate per cycle, and the budget curve (x = labels bought).
Set ``FAL_SCREENSHOT=<path>`` to keep a screenshot of the page.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from server_app.inprocess import run_inprocess
from tests.browser import chromium_driver

pytestmark = [pytest.mark.browser]


@pytest.fixture
def mlflow_server(tmp_path):
    pytest.importorskip("mlflow")
    from launcher.flower_processes import free_port

    port = free_port()
    log = open(tmp_path / "mlflow.log", "w")
    exe = Path(sys.executable).with_name("mlflow")
    process = subprocess.Popen(
        [str(exe), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--default-artifact-root", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{(tmp_path / 'mlflow.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.read().strip() == b"OK":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not answer /health within 120 s")
            time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        log.close()


def _plotted(driver, wanted: int, timeout: float = 60.0) -> list[dict]:
    """The traces of every Plotly chart on the page, once at least ``wanted`` charts have data."""
    script = ("return Array.from(document.querySelectorAll('.js-plotly-plot')).map(p => ({title: "
              "(p.closest('[data-testid]') || p.parentElement).innerText, "
              "traces: (p.data || []).map(t => ({name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || [])}))}))")
    deadline = time.monotonic() + timeout
    charts: list[dict] = []
    while time.monotonic() < deadline:
        charts = driver.execute_script(script)
        if sum(1 for c in charts if c["traces"]) >= wanted:
            return charts
        time.sleep(1)
    return charts


def test_the_campaign_curves_appear_on_the_mlflow_page(mlflow_server, small_run):
    results = run_inprocess({**small_run, "strategy": "entropy", "audit-size": 0.1, "tracker": "mlflow",
                             "tracking-uri": mlflow_server, "tracking-experiment": "browser-test"}, num_clients=2)
    assert results["status"] == "completed"
    tracking = results["tracking"]
    assert tracking["uri"] == mlflow_server and "errors" not in tracking
    estimates = [c["campaign"]["audit"]["pooled"]["estimate"] for c in results["cycles"]]
    labels = [c["labeled"] for c in results["cycles"]]
    driver = chromium_driver(1400, 1600)
    try:
        driver.get(f"{mlflow_server}/#/experiments/{tracking['experiment-id']}/runs/{tracking['run-id']}/model-metrics")
        charts = _plotted(driver, wanted=5)
        if os.environ.get("FAL_SCREENSHOT"):
            driver.save_screenshot(os.environ["FAL_SCREENSHOT"])
        text = driver.find_element("tag name", "body").text
    finally:
        driver.quit()
    traces = [t for c in charts for t in c["traces"]]
    by_cycle = [t for t in traces if t["x"] == [0, 1, 2] and t["y"] == pytest.approx(estimates)]
    assert by_cycle, f"no chart plots the audit estimate {estimates}: {traces}"
    budget = [t for t in traces if t["x"] == labels and t["y"] == pytest.approx(estimates)]
    assert budget, f"no chart plots the budget curve (x = labels {labels}): {traces}"
    assert "audit/estimate" in text and "budget-curve/audit-estimate" in text
    assert "test-run" in text  # the run is named as the FAL run
