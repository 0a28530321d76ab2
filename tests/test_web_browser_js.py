"""The JavaScript path in a real browser: chromium seals the contact with the
bundled protocol code (server/web/static/seal.js), solves the proof of work and
uploads through /api/v1; Python handlers open what it sent; the browser opens
and verifies a reply Python sealed. Both languages; any CSP violation fails.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from safepassage.crypto import envelope as E
from safepassage.crypto import pow as W
from safepassage.crypto.intake import Contact, FollowUp
from safepassage.server.context import INTAKE
from safepassage.server.db.models import Chunk, Message
from safepassage.server.db.models import Contact as ContactRow
from safepassage.server.limits import PowDifficulty

from .browser import SCREENSHOTS, csp_violations, screenshot
from .deployment import Deployment
from .web_helpers import CANARY, CANARY_FIELD, all_rows, plant_forged_reply, plant_reply

REPLY = {"ru": "Ответ из браузера: четверг.", "en": "Reply read in the browser: Thursday."}
FOLLOW_UP = {"ru": "Да, четверг подходит.", "en": "Yes, Thursday suits me."}


@pytest.fixture
def database_url() -> str:
    return ""


def _wait_visible(driver: Any, element_id: str, timeout: float = 240) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(expected_conditions.visibility_of_element_located((By.ID, element_id)))


def _contact(driver: Any, base: str, lang: str, attachment: Path) -> dict[str, Any]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(f"{base}/{lang}/contact")
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("data-sealing") == "browser"
    assert driver.find_element(By.ID, "notice-browser").is_displayed()
    assert not driver.find_element(By.ID, "notice-server").is_displayed()
    Select(driver.find_element(By.ID, "pool")).select_by_value("general")
    Select(driver.find_element(By.ID, "language")).select_by_value(lang)
    driver.find_element(By.ID, "role").send_keys(CANARY_FIELD)
    driver.find_element(By.ID, "message").send_keys(f"{CANARY} (js, {lang})")
    driver.find_element(By.ID, "attachment").send_keys(str(attachment))
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    codename = _wait_visible(driver, "js-done").find_element(By.ID, "codename").text
    html = driver.find_element(By.TAG_NAME, "html")
    shot = screenshot(driver, f"{lang}-js-codename")
    return {
        "codename": codename,
        "day": driver.find_element(By.ID, "js-day").text,
        "pow_ms": int(html.get_attribute("data-pow-ms")),
        "pow_attempts": int(html.get_attribute("data-pow-attempts")),
        "codename_ms": int(html.get_attribute("data-codename-ms")),
        "violations": csp_violations(driver),
        "shot": shot,
    }


def _read(driver: Any, base: str, lang: str, codename: str) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/{lang}/return")
    driver.find_element(By.ID, "codename").send_keys(codename)
    driver.find_element(By.CSS_SELECTOR, "button[value=read]").click()
    section = _wait_visible(driver, "js-replies-section")
    items = section.find_elements(By.CSS_SELECTOR, "#js-replies li")
    shot = screenshot(driver, f"{lang}-js-return-replies")
    html = driver.find_element(By.TAG_NAME, "html")
    return {
        "items": [i.text for i in items],
        "warnings": len(section.find_elements(By.CSS_SELECTOR, "#js-replies .warning")),
        "codename_ms": int(html.get_attribute("data-codename-ms")),
        "choice_shown": driver.find_element(By.ID, "js-contact-choice").is_displayed(),
        "violations": csp_violations(driver),
        "shot": shot,
    }


def _follow_up(driver: Any, lang: str, text: str) -> dict[str, Any]:
    """On the return page just read: write a new message and send it (sealed in the browser)."""
    from selenium.webdriver.common.by import By

    assert driver.find_element(By.ID, "notice-return-browser").is_displayed()
    driver.find_element(By.ID, "message").send_keys(text)
    driver.find_element(By.CSS_SELECTOR, "button[value=follow-up]").click()
    _wait_visible(driver, "js-follow-up-sent")
    return {
        "message_left": driver.find_element(By.ID, "message").get_attribute("value"),
        "failed": driver.find_element(By.ID, "js-failed").is_displayed(),
        "violations": csp_violations(driver),
        "shot": screenshot(driver, f"{lang}-js-follow-up-sent"),
    }


@pytest.mark.parametrize("lang", ["ru", "en"])
async def test_browser_seals_contact_and_opens_replies(
    deployment: Deployment, browser_js: object, tmp_path: Path, lang: str
) -> None:
    if lang == "ru":
        # The production proof of work (difficulty 10, 2 MiB per attempt), to
        # measure it in the browser; English keeps the test setting (fast).
        state = deployment.app[INTAKE]
        state.config = replace(state.config, pow_memlimit_kib=W.DEFAULT_MEMLIMIT_KIB)
        state.difficulty = PowDifficulty(W.DEFAULT_DIFFICULTY, W.DEFAULT_DIFFICULTY, 10_000)
    attachment = tmp_path / "scan.bin"
    attachment.write_bytes(bytes(range(256)) * 5000)  # two chunks
    sent = await asyncio.to_thread(_contact, browser_js, deployment.base_url, lang, attachment)
    assert sent["violations"] == []
    async with deployment.store.read() as s:
        [row] = (await s.scalars(select(ContactRow))).all()
        chunks = (await s.scalars(select(Chunk))).all()
    # Sealed by the browser: the server never saw the plaintext and says so.
    assert not row.server_sealed
    assert row.state == "complete"
    opened = E.open_envelope(row.envelope, [deployment.org.intake["bob"]], expected_purpose=E.Purpose.CONTACT)
    contact = Contact.open_payload(opened.plaintext)
    assert contact.origin == "browser"
    assert contact.message == f"{CANARY} (js, {lang})"
    assert contact.language == lang
    assert dict(contact.fields) == {"role": CANARY_FIELD}
    [info] = contact.attachments
    assert (info.name, info.size, info.chunks) == ("scan.bin", attachment.stat().st_size, 2)
    opener = opened.attachment_opener(0)
    assert (
        b"".join(opener.open_chunk(c.frame) for c in sorted(chunks, key=lambda c: c.index)) == attachment.read_bytes()
    )
    opener.finish()

    await plant_reply(deployment, sent["codename"], row.id, row.owner, REPLY[lang])
    await plant_forged_reply(deployment, sent["codename"], row.id, "forged: come to the embassy")
    read = await asyncio.to_thread(_read, browser_js, deployment.base_url, lang, sent["codename"])
    assert read["violations"] == []
    assert len(read["items"]) == 2
    assert REPLY[lang] in read["items"][0]
    assert row.owner.title() in read["items"][0]
    assert read["warnings"] == 1
    assert "forged" not in read["items"][1]
    assert not read["choice_shown"]  # one contact: nothing to choose

    # A follow-up from the same page is sealed in the browser too: the server stores an
    # envelope it did not make, and the handlers open the applicant's own signed text.
    text = f"{FOLLOW_UP[lang]} {CANARY}"
    followed = await asyncio.to_thread(_follow_up, browser_js, lang, text)
    assert followed["violations"] == []
    assert not followed["failed"]
    assert followed["message_left"] == ""
    async with deployment.store.read() as s:
        [message] = (await s.scalars(select(Message).where(Message.kind == "follow-up"))).all()
    assert not message.server_sealed
    assert message.contact_id == row.id
    sealed_follow_up = E.open_envelope(
        message.envelope, [deployment.org.intake["bob"]], expected_purpose=E.Purpose.FOLLOW_UP
    )
    follow_up = FollowUp.open_payload(sealed_follow_up.plaintext)
    assert (follow_up.contact_id, follow_up.message) == (row.id, text)

    rows = await all_rows(deployment)
    assert CANARY.encode() not in rows
    assert sent["codename"].encode() not in rows
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    timings = {k: sent[k] for k in ("pow_ms", "pow_attempts", "codename_ms")} | {
        "read_codename_ms": read["codename_ms"]
    }
    (SCREENSHOTS / f"timings-{lang}.json").write_text(json.dumps(timings), encoding="utf-8")
