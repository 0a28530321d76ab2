"""Debian's chromium, driven headless through chromium-driver (selenium), JavaScript off.

Nothing is downloaded: the browser and the driver are the Debian packages
(scripts/ensure-system-deps installs them). With CI=true a missing browser is
a failure, never a skip. Selenium calls block, so tests run them in a worker
thread while the server under test keeps the event loop.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Screenshots for people to look at; build/ is not committed.
SCREENSHOTS = Path(__file__).resolve().parents[1] / "build" / "screenshots"
#: A size Tor Browser's letterboxing rounds windows to (multiples of 200 x 100).
WINDOW = (1000, 900)


def _have_browser() -> bool:
    return all(shutil.which(p) or Path(p).exists() for p in (CHROMIUM, CHROMEDRIVER))


@pytest.fixture
def browser() -> Iterator[object]:
    """Chromium with JavaScript off, as at Tor Browser's "Safest" level."""
    yield from _driver(javascript=False)


@pytest.fixture
def browser_js() -> Iterator[object]:
    """Chromium with JavaScript on: the pages seal in the browser."""
    yield from _driver(javascript=True)


def _driver(*, javascript: bool) -> Iterator[object]:
    if not _have_browser():
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are required (scripts/ensure-system-deps installs them)")
        pytest.skip("chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in a container
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ):
        options.add_argument(arg)
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    # CSP violations are reported on the browser console, even with scripts off.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def csp_violations(driver: object) -> list[str]:
    """Console entries about the Content Security Policy since the last call."""
    entries = driver.get_log("browser")  # type: ignore[attr-defined]
    return [
        e["message"]
        for e in entries
        if "Content Security Policy" in e["message"] or "Content-Security-Policy" in e["message"]
    ]


def screenshot(driver: object, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    # The whole page from its top, whatever is scrolled into view (a page that scrolled to a
    # message would otherwise lose its header).
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]  # type: ignore[attr-defined]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(  # type: ignore[attr-defined]
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
