"""The explorer in headless Chromium against a real server: search, candidates, compare, docs.

Chromium resolves no host but 127.0.0.1, and its performance log must show no request leaving
it. Needs Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromedriver``; selenium is
pointed at both, so it never looks for or downloads a driver): skipped without them, failed when
CI is set. ``MIMEA_EXPLORER_SCREENSHOT=docs/explorer.png`` saves the screenshot there too.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from bench.server_process import Server

pytestmark = pytest.mark.slow  # starts server processes and a browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
API_KEY = "explorer-key"
WAIT_S = 30
MODALITIES = {"structure", "relation", "attribute", "visual"}


def _missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} not found: apt-get install {package}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    return None


@contextmanager
def serving(checkpoint: Path, log: Path) -> Iterator[str]:
    """``mimea serve`` on a free loopback port with an API key; yields its URL."""
    process = Server(checkpoint, log, {"MIMEA_REDIS_URL": "", "MIMEA_THREADS": "1",
                                       "MIMEA_API_KEY": API_KEY}, startup_s=60)
    try:
        yield process.url
    finally:
        process.stop()


@pytest.fixture(scope="module")
def server(decided, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serving a checkpoint that stores the decided alignment."""
    with serving(decided.path, tmp_path_factory.mktemp("explorer") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def undecided_server(synthetic, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serving a checkpoint without decisions (``GET /alignment/...`` is 404 there)."""
    with serving(synthetic.path, tmp_path_factory.mktemp("explorer") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # belt and braces: selenium-manager must not go online
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1360,1500", "--host-resolver-rules=MAP * ~NOTFOUND, "
                     "EXCLUDE 127.0.0.1", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     "--disable-default-apps", "--disable-extensions",
                     f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def sent_requests(driver: Any) -> list[str]:
    """The URLs the pages requested since the last call (performance log), less those the
    browser refused itself (a Content-Security-Policy): those never went out."""
    requests: list[tuple[str, str]] = []
    refused: set[str] = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message["params"]
        if message["method"] == "Network.requestWillBeSent":
            requests.append((params["requestId"], params["request"]["url"]))
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            refused.add(params["requestId"])
    return [url for request, url in requests if request not in refused]


def assert_local(urls: list[str]) -> None:
    """Every request on the network went to 127.0.0.1 (data:, blob: and the browser's own
    chrome:// pages are not on the network)."""
    assert urls, "the performance log recorded no request"
    away = [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss", "ftp")
            and urlsplit(u).hostname != "127.0.0.1"]
    assert away == [], away


def assert_no_script_errors(driver: Any) -> None:
    """No uncaught exception and no Content-Security-Policy refusal in the console (the
    console's 'Failed to load resource' lines for expected 401s and 404s are fine)."""
    problems = [e["message"] for e in driver.get_log("browser")
                if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
    assert problems == []


def api(server: str, method: str, path: str, body: Any = None) -> Any:
    response = httpx.request(method, f"{server}{path}", json=body, headers={"X-API-Key": API_KEY})
    assert response.status_code == 200, response.text
    return response.json()


def test_explorer_searches_shows_candidates_decision_and_compares(
        server: str, browser: Any, decided, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)
    sources = [s for s, _ in decided.gold if s.startswith("http://example.org/")]
    decisions = api(server, "POST", "/alignment:batch", {"entities": sources})["results"]
    source, decision = next((s, d) for s, d in zip(sources, decisions, strict=True)
                            if d["decision"] == "match")
    expected = api(server, "GET", f"/candidates/{source}?k=10")["candidates"]

    browser.get(f"{server}/")
    wait.until(ec.text_to_be_present_in_element((By.ID, "model-info"), "API key is needed"))
    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "model-info"), "KG1 300"))

    browser.find_element(By.ID, "search-prefix").send_keys(source)
    hit = wait.until(ec.element_to_be_clickable(
        (By.XPATH, f"//ul[@id='search-results']//button[text()='{source}']")))
    hit.click()

    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#candidates .candidate")) == 10)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#source-weights .weight"))
    cards = browser.find_elements(By.CSS_SELECTOR, "#candidates .candidate")
    shown = [card.find_element(By.CSS_SELECTOR, ".head button.link").text for card in cards]
    assert shown == [c["entity"] for c in expected]
    assert browser.find_element(By.ID, "entity-title").text == source
    first = cards[0]
    assert {th.text for th in first.find_elements(By.CSS_SELECTOR, "tbody th")} == MODALITIES
    assert f"cosine {expected[0]['cosine']:.3f}" in first.text
    assert len(first.find_elements(By.CSS_SELECTOR, ".fill.source")) >= 1
    assert len(first.find_elements(By.CSS_SELECTOR, ".fill.target")) >= 1
    weights = browser.find_elements(By.CSS_SELECTOR, "#source-weights .weight")
    assert len(weights) == len(MODALITIES)

    panel = wait.until(ec.visibility_of_element_located((By.ID, "decision-panel")))
    assert "Decided counterpart" in panel.text and decision["counterpart"] in panel.text
    assert f"probability {decision['probability']:.3f}" in panel.text

    first.find_element(By.XPATH, ".//button[text()='compare']").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#compare-result table.ranks"))
    result = browser.find_element(By.ID, "compare-result").text
    assert "cosine" in result and "source among the target's candidates" in result
    assert "match probability" in result
    assert browser.find_element(By.ID, "compare-target").get_attribute("value") == \
        expected[0]["entity"]

    browser.execute_script("window.scrollTo(0, 0)")
    screenshot = tmp_path / "explorer.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if target := os.environ.get("MIMEA_EXPLORER_SCREENSHOT"):
        shutil.copyfile(screenshot, target)

    urls = sent_requests(browser)
    assert_local(urls)
    assert any("/candidates/" in u for u in urls) and any(u.endswith("/align:batch")
                                                           for u in urls)
    assert_no_script_errors(browser)


def test_explorer_hides_the_decision_without_decisions(undecided_server: str, browser: Any,
                                                       synthetic) -> None:
    """Opened on an entity (the page's address names it), against a checkpoint whose
    ``/alignment`` answers 404: candidates shown, no decision panel."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    source = synthetic.gold[0][0]
    browser.get(f"{undecided_server}/#{quote(source, safe='')}")
    wait = WebDriverWait(browser, WAIT_S)
    wait.until(ec.text_to_be_present_in_element((By.ID, "model-info"), "API key is needed"))
    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait.until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#candidates .candidate")) == 10)
    assert browser.find_element(By.ID, "entity-title").text == source
    assert not browser.find_element(By.ID, "decision-panel").is_displayed()
    assert_local(sent_requests(browser))
    assert_no_script_errors(browser)


@pytest.mark.parametrize("path,rendered", [("/docs", ".swagger-ui .info .title"),
                                           ("/redoc", "h1")])
def test_docs_render_from_local_files_only(server: str, browser: Any, path: str,
                                           rendered: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    sent_requests(browser)  # drop what earlier pages logged
    browser.get(f"{server}{path}")
    title = WebDriverWait(browser, WAIT_S).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, rendered)))
    assert "MIMEA alignment service" in title.text
    assert_local(sent_requests(browser))
