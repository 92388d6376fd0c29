"""The docs site: a strict build, the generated reference against the code, offline, and in a browser.

``mkdocs build --strict`` fails on a broken link or anchor, a page missing from
the navigation, a link to a repository file that does not exist, or a generated
block that fails (docs/hooks/reference.py). The browser test serves the built
site on a free localhost port and opens it in headless Chromium.
"""

from __future__ import annotations

import functools
import html
import http.server
import os
import re
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from fal_shared.config import RunConfig, toml_value
from fal_shared.settings.labeling import NodeLabelingConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return out


def _text(site: Path, page: str) -> str:
    """The page's HTML with tags removed and entities decoded (what a reader sees, roughly)."""
    raw = (site / page / "index.html").read_text()
    return html.unescape(re.sub(r"<[^>]+>", "", raw))


def test_the_site_builds_strictly_and_every_page_is_in_it(site):
    pages = [p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts]
    assert len(pages) > 30
    for page in pages:
        rel = page.relative_to(ROOT / "docs")
        built = site / (rel.parent if rel.name == "index.md" else rel.with_suffix("")) / "index.html"
        assert built.exists(), f"{page} was not built"


def test_run_config_and_node_config_pages_are_generated_from_the_models(site):
    text = _text(site, "reference/run-config")
    for info in RunConfig.model_fields.values():
        assert info.alias in text, info.alias
        assert toml_value(info.default) in text, (info.alias, info.default)
    node = _text(site, "reference/node-config")
    for info in NodeLabelingConfig.model_fields.values():
        assert info.alias in node, info.alias
    assert "<!-- generated" not in (site / "reference/run-config/index.html").read_text()


def test_strategies_page_lists_every_registered_strategy(site):
    from strategies import STRATEGIES

    text = _text(site, "reference/strategies")
    for name, cls in STRATEGIES.items():
        assert name in text and html.unescape(cls.source) in text, name


def test_commands_page_holds_every_commands_help(site):
    import importlib

    text = _text(site, "reference/commands")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) >= {"fal-simulate", "fal-deploy", "fal-sweep", "fal-report", "fal-plot", "fal-certs", "fal-label"}
    for name, target in scripts.items():
        parser = importlib.import_module(target.split(":")[0]).build_parser()
        assert parser.prog == name
        assert f"usage: {name}" in text, name
        for action in parser._actions:
            for option in action.option_strings:
                assert option in text, (name, option)


def test_results_json_page_names_every_field_of_the_schema(site):
    from server_app.results_schema import MODELS

    text = _text(site, "reference/results-json")
    for model in MODELS:
        for name, info in model.model_fields.items():
            assert (info.alias or name) in text, (model.__name__, name)


def test_nothing_is_loaded_from_another_host(site):
    for page in site.rglob("*.html"):
        raw = page.read_text()
        loads = re.findall(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=\"(https?:)?//[^\"]*\"", raw)
        assert not loads, f"{page}: loads {loads}"
        assert "fonts.googleapis" not in raw and "fonts.gstatic" not in raw, page


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(site):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.browser
def test_the_site_in_a_browser_home_navigation_and_search(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.browser import chromium_driver

    browser = chromium_driver()
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(served + "/")
        assert "Federated active learning on Flower" in browser.title
        assert browser.find_element(By.TAG_NAME, "h1").text == "Federated active learning on Flower"
        loop = browser.find_element(By.CSS_SELECTOR, "img[src$='fal-loop.svg']")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", loop) > 0
        browser.save_screenshot(str(tmp_path / "home.png"))
        # the navigation: every section, and a page reached through it
        nav = browser.find_element(By.CSS_SELECTOR, "nav.md-nav--primary").get_attribute("textContent")
        for section in ("Tutorials", "How-to guides", "Reference", "Explanation", "Results"):
            assert section in nav, section
        link = browser.find_element(By.CSS_SELECTOR, "nav.md-nav--primary a[href$='reference/run-config/']")
        browser.execute_script("arguments[0].click();", link)
        wait.until(lambda b: b.current_url.endswith("/reference/run-config/"))
        assert wait.until(ec.presence_of_element_located((By.TAG_NAME, "h1"))).text == "Run config"
        assert "ahfal-tau" in browser.find_element(By.CSS_SELECTOR, "article").text
        # search (Material's, in the browser, on the index built with the site)
        box = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "input.md-search__input")))
        box.click()
        box.send_keys("BatchNorm")  # results appear as you type
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".md-search-result__item"))
        titles = " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, ".md-search-result__item"))
        assert "BatchNorm" in titles
        browser.save_screenshot(str(tmp_path / "search.png"))
        # everything the pages loaded came from this server
        origins = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)")
        assert set(origins) <= {served}, set(origins)
    finally:
        browser.quit()
