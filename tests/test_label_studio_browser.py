"""A person labels a queried sample on Label Studio's own page, in headless Chromium.

The Label Studio oracle creates a task for a digit (image, prediction,
priority); Selenium logs in, opens the task, clicks the true class and
Submit; the oracle then reads the label back with who gave it. The screenshot
of the page is the one in the docs (``FAL_SCREENSHOT=docs/label-studio-queried-sample.png``
keeps it).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from client_app.labeling import image_png
from client_app.oracle import LabelRequest
from client_app.oracles.label_studio import LabelStudioOracle
from fal_shared.config import RunConfig
from fal_shared.experiment_data import client_data
from fal_shared.settings.labeling import NodeLabelingConfig
from tests.browser import chromium_driver

pytestmark = [pytest.mark.label_studio, pytest.mark.browser]


def _browser():
    return chromium_driver()


def test_a_label_given_on_the_label_studio_page_reaches_the_oracle(label_studio, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    cfg = RunConfig(train_subset_size=400, num_clients=2)
    data = client_data(cfg, 0, 2)
    sid = int(data.ids[3])
    truth = int(data.y[3])
    scale = data.normalize[0]
    request = LabelRequest(
        "browser-run", 0, "cycle-0-select", 0, [sid], "classification", 10,
        hints={sid: {"priority": 1.0, "prediction": float((truth + 1) % 10), "confidence": 0.41}},
        image=lambda i: image_png(data.x[data.rows(np.array([i]))[0]], scale),
    )
    oracle = LabelStudioOracle(NodeLabelingConfig(
        oracle="label-studio", label_studio_url=label_studio.url, label_studio_token=label_studio.token,
        label_studio_project="Hospital A: digits"))
    oracle.submit(request)
    assert oracle.collect(request) == []  # nobody labeled yet
    project = oracle.project(request)
    (task_id,) = [t.id for t in oracle.tasks(project, request).values()]

    browser = _browser()
    try:
        # the page re-renders while it loads: an element found a moment ago may be replaced (stale), so the
        # waits look it up again instead of failing
        wait = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))
        browser.get(f"{label_studio.url}/user/login/")
        wait.until(ec.presence_of_element_located((By.NAME, "email"))).send_keys(label_studio.user)
        browser.find_element(By.NAME, "password").send_keys(label_studio.password)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        wait.until(lambda b: "/user/login" not in b.current_url)
        browser.get(f"{label_studio.url}/projects/{project}/data?task={task_id}")
        choice = (By.XPATH, f"//label[.//*[normalize-space(text())='{truth}'] or normalize-space(.)='{truth}']")
        wait.until(ec.element_to_be_clickable(choice))
        time.sleep(2.0)  # the image and the prediction finish rendering (the page re-renders meanwhile)
        shot = tmp_path / "label-studio-task.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("FAL_SCREENSHOT"):
            shutil.copy(shot, Path(os.environ["FAL_SCREENSHOT"]))
        def click(locator, scroll=False):
            def attempt(b):
                try:
                    element = ec.element_to_be_clickable(locator)(b)
                    if element:
                        if scroll:
                            b.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
                        element.click()
                    return bool(element)
                except StaleElementReferenceException:
                    return False
            wait.until(attempt)

        click(choice, scroll=True)
        click((By.XPATH, "//button[normalize-space(.)='Submit']"))
        deadline = time.monotonic() + 30
        answers = []
        while not answers and time.monotonic() < deadline:
            time.sleep(0.5)
            answers = oracle.collect(request)
    finally:
        browser.quit()
    assert shot.read_bytes()[:4] == b"\x89PNG"
    (answer,) = answers
    assert (answer.sample_id, answer.value, answer.skipped, answer.by) == (sid, str(truth), False, label_studio.user)
    assert answer.at
