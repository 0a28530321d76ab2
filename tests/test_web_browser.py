"""The no-JavaScript path in a real browser: Debian's chromium, headless, scripts off.

Contact with two attachments, the codename page, a handler's reply read on the
return page, a follow-up, in Russian and in English. Any CSP violation on any
page fails the test; a probe page proves the violation detector sees them.
Screenshots land in build/screenshots/.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import select

from safepassage.crypto import envelope as E
from safepassage.crypto.intake import Contact, FollowUp
from safepassage.server.db.models import Contact as ContactRow
from safepassage.server.db.models import Message
from safepassage.server.security import add_security_headers

from .browser import WINDOW, csp_violations, screenshot
from .deployment import Deployment
from .web_helpers import CANARY, CANARY_FIELD, CANARY_FOLLOW_UP, all_rows, files_containing, plant_reply

REPLY = {"ru": "Мы вас прочитали. Напишите в четверг.", "en": "We read you. Write on Thursday."}


@pytest.fixture
def database_url() -> str:
    # One store is enough here: the HTTP tests cover both; the browser is the slow part.
    return ""


@pytest.fixture
async def probe_url() -> AsyncIterator[str]:
    """A page under the same headers that breaks the CSP on purpose (inline style)."""

    async def page(request: web.Request) -> web.Response:
        body = '<!DOCTYPE html><p style="color:red">x</p><style>p{}</style><noscript><p id="nojs">off</p></noscript>'
        return web.Response(text=body, content_type="text/html")

    app = web.Application()
    app.on_response_prepare.append(add_security_headers)
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/"
    finally:
        await runner.cleanup()


async def test_the_violation_detector_sees_violations_and_scripts_are_off(browser: object, probe_url: str) -> None:
    def visit() -> tuple[list[str], str]:
        browser.get(probe_url)  # type: ignore[attr-defined]
        return csp_violations(browser), browser.find_element("id", "nojs").text  # type: ignore[attr-defined]

    violations, nojs = await asyncio.to_thread(visit)
    assert violations, "the detector must see an inline style refused by the CSP"
    assert nojs == "off"  # <noscript> content shows: JavaScript is off


def _submit(driver: object, button: str, element_id: str) -> Any:
    """Click ``button`` and return the element ``element_id`` of the NEXT page, once it has text.

    The old page is waited out first (staleness of its root), and the element is
    found afresh on every poll: the server derives a codename (Argon2id) before
    answering, and a form page may carry an element of the same id.
    """
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")  # type: ignore[attr-defined]
    driver.find_element(By.CSS_SELECTOR, button).click()  # type: ignore[attr-defined]

    def gone(_: Any) -> bool:
        # chromedriver reports a node of a replaced document either as stale or as
        # "Node with given id does not belong to the document": both mean it is gone.
        try:
            old.is_enabled()
        except (StaleElementReferenceException, WebDriverException):
            return True
        return False

    WebDriverWait(driver, 120).until(gone)

    def ready(d: Any) -> Any:
        element = d.find_element(By.ID, element_id)
        return element if element.text.strip() else False

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, 120, ignored_exceptions=ignored).until(ready)


def _contact(driver: object, base: str, lang: str, files: list[Path]) -> tuple[str, list[str], list[Path]]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    shots, violations = [], []
    for page in ("", "safety"):
        driver.get(f"{base}/{lang}/{page}")  # type: ignore[attr-defined]
        assert driver.find_element(By.ID, "browser-warning").is_displayed()  # type: ignore[attr-defined]
        shots.append(screenshot(driver, f"{lang}-{page or 'index'}"))
        violations += csp_violations(driver)
    driver.find_element(By.LINK_TEXT, "Написать нам" if lang == "ru" else "Write to us").click()  # type: ignore[attr-defined]
    Select(driver.find_element(By.ID, "pool")).select_by_value("general")  # type: ignore[attr-defined]
    Select(driver.find_element(By.ID, "language")).select_by_value(lang)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "role").send_keys(CANARY_FIELD)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "message").send_keys(f"{CANARY} ({lang})")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "attachment").send_keys("\n".join(str(f) for f in files))  # type: ignore[attr-defined]
    shots.append(screenshot(driver, f"{lang}-contact"))
    violations += csp_violations(driver)
    codename = _submit(driver, "button[type=submit]", "codename").text
    shots.append(screenshot(driver, f"{lang}-codename"))
    violations += csp_violations(driver)
    return codename, violations, shots


def _return(driver: object, base: str, lang: str, codename: str) -> tuple[str, list[str], list[Path]]:
    from selenium.webdriver.common.by import By

    shots, violations = [], []
    driver.get(f"{base}/{lang}/return")  # type: ignore[attr-defined]
    # A mistyped codename: the page explains, in the page's language, and keeps nothing.
    driver.find_element(By.ID, "codename").send_keys("not a codename")  # type: ignore[attr-defined]
    assert _submit(driver, "button[value=read]", "form-error").is_displayed()
    shots.append(screenshot(driver, f"{lang}-return-error"))
    violations += csp_violations(driver)
    driver.find_element(By.ID, "codename").send_keys(codename)  # type: ignore[attr-defined]
    replies = _submit(driver, "button[value=read]", "replies").text
    shots.append(screenshot(driver, f"{lang}-return-replies"))
    violations += csp_violations(driver)
    driver.find_element(By.ID, "codename").send_keys(codename)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "message").send_keys(f"{CANARY_FOLLOW_UP} ({lang})")  # type: ignore[attr-defined]
    assert _submit(driver, "button[value=follow-up]", "follow-up-sent").is_displayed()
    shots.append(screenshot(driver, f"{lang}-return-follow-up-sent"))
    violations += csp_violations(driver)
    return replies, violations, shots


@pytest.mark.parametrize("lang", ["ru", "en"])
async def test_contact_codename_reply_and_follow_up_with_javascript_off(
    deployment: Deployment, browser: object, tmp_path: Path, lang: str
) -> None:
    files = [tmp_path / "uploads" / "note.txt", tmp_path / "uploads" / "scan.bin"]
    files[0].parent.mkdir()
    files[0].write_text("attachment one", encoding="utf-8")
    files[1].write_bytes(bytes(range(256)) * 6000)  # two chunks: with the first, the test server's limit
    base = deployment.base_url

    codename, violations, shots = await asyncio.to_thread(_contact, browser, base, lang, files)
    async with deployment.store.read() as s:
        [row] = (await s.scalars(select(ContactRow))).all()
    assert row.server_sealed
    opened = E.open_envelope(row.envelope, [deployment.org.intake["alice"]], expected_purpose=E.Purpose.CONTACT)
    contact = Contact.open_payload(opened.plaintext)
    assert contact.message == f"{CANARY} ({lang})"
    assert contact.language == lang
    assert [(a.name, a.size) for a in contact.attachments] == [(f.name, f.stat().st_size) for f in files]

    await plant_reply(deployment, codename, row.id, row.owner, REPLY[lang])
    replies, more, more_shots = await asyncio.to_thread(_return, browser, base, lang, codename)
    assert REPLY[lang] in replies
    violations += more
    shots += more_shots
    async with deployment.store.read() as s:
        [follow] = (await s.scalars(select(Message).where(Message.kind == "follow-up"))).all()
    opened_follow = E.open_envelope(
        follow.envelope, [deployment.org.intake["bob"]], expected_purpose=E.Purpose.FOLLOW_UP
    )
    assert FollowUp.open_payload(opened_follow.plaintext).message == f"{CANARY_FOLLOW_UP} ({lang})"
    assert follow.server_sealed

    assert violations == []
    assert all(p.stat().st_size > 1000 for p in shots)
    needles = [CANARY.encode(), CANARY_FIELD.encode(), CANARY_FOLLOW_UP.encode(), codename.encode()]
    rows = await all_rows(deployment)
    assert not [n for n in needles if n in rows]
    assert files_containing(tmp_path / "server", needles) == []


def _widths(driver: Any, url: str) -> tuple[float, float]:
    driver.get(url)
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    return metrics["cssContentSize"]["width"], metrics["cssLayoutViewport"]["clientWidth"]


async def test_pages_fit_narrow_letterboxed_windows(deployment: Deployment, browser: object) -> None:
    """Tor Browser rounds its window down to steps of 200 x 100 (phones are narrower still):
    at 400 and 600 CSS pixels no page scrolls sideways, in either language."""

    def measure() -> list[tuple[str, int, float, float]]:
        out = []
        for width in (400, 600):
            browser.set_window_size(width, 800)  # type: ignore[attr-defined]
            for lang in ("ru", "en"):
                for page in ("", "safety", "contact", "return"):
                    content, viewport = _widths(browser, f"{deployment.base_url}/{lang}/{page}")
                    out.append((f"{lang}/{page}", width, content, viewport))
        browser.set_window_size(*WINDOW)  # type: ignore[attr-defined]
        return out

    for page, width, content, viewport in await asyncio.to_thread(measure):
        assert content <= viewport + 1, (page, width, content, viewport)
