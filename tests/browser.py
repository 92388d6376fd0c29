"""Headless Chromium for the browser tests (Debian's chromium and chromium-driver, Selenium); skips, saying why."""

from __future__ import annotations

import shutil

import pytest

__all__ = ["chromium_driver"]


def chromium_driver(width: int = 1280, height: int = 1200):
    """A Selenium driver of headless Chromium, or a skip naming what is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed; .ci/run installs it")
    if not chromium or not driver:
        pytest.skip("chromium / chromedriver not found (apt-get install chromium chromium-driver; .ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)
