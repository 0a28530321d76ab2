"""The applicant's web pages over real HTTP, on SQLite and PostgreSQL (no browser here;
tests/test_web_browser.py drives chromium through the same paths).

The no-JavaScript path: the server seals in memory with the client's own
envelope code; handlers open what it stored with their keys; the canary
plaintext is in no row, no file and no log line.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select

from safepassage.crypto import envelope as E
from safepassage.crypto.intake import Contact, FollowUp
from safepassage.server.config import ConfigError, load_config
from safepassage.server.context import INTAKE
from safepassage.server.db.models import Chunk, Message
from safepassage.server.db.models import Contact as ContactRow
from safepassage.server.security import HEADERS
from safepassage.server.web.pages import SEALER

from .deployment import Deployment
from .web_helpers import (
    CANARY,
    CANARY_FIELD,
    CANARY_FILE,
    CANARY_FOLLOW_UP,
    all_rows,
    codename_of,
    files_containing,
    form_token,
    plant_forged_reply,
    plant_reply,
)

PAGES = ("", "safety", "contact", "return")


def _contact_form(
    token: str, *, message: str = CANARY, files: list[tuple[str, bytes]] | None = None, **extra: str
) -> aiohttp.FormData:
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("form", token)
    form.add_field("pool", extra.pop("pool", "general"))
    form.add_field("language", extra.pop("language", "ru"))
    form.add_field("role", CANARY_FIELD)
    for name, value in extra.items():
        form.add_field(name, value)
    form.add_field("message", message)
    for name, data in files or []:
        form.add_field("attachment", data, filename=name, content_type="application/octet-stream")
    return form


def _fields(values: dict[str, str]) -> aiohttp.FormData:
    form = aiohttp.FormData(default_to_multipart=True)
    for name, value in values.items():
        form.add_field(name, value)
    return form


async def _get(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as resp:
        assert resp.status == 200
        return await resp.text()


@pytest.fixture
def watched_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where Python's tempfile would put anything (aiohttp spools uploads there if asked to)."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


async def test_pages_in_both_languages_are_static_safe_and_strict(deployment: Deployment) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(deployment.base_url + "/", allow_redirects=False) as resp:
            assert resp.status == 302
            assert resp.headers["Location"] == "/ru/"
        for lang, word in (("ru", "Написать нам"), ("en", "Write to us")):
            for page in PAGES:
                async with session.get(f"{deployment.base_url}/{lang}/{page}") as resp:
                    assert resp.status == 200, page
                    body = await resp.text()
                    for name, value in HEADERS.items():
                        assert resp.headers[name] == value
                    assert resp.headers["Content-Language"] == lang
                    assert "Set-Cookie" not in resp.headers
                assert f'<html lang="{lang}">' in body
                assert word in body
                # One script, the bundled file from this server; no inline script, style or handler.
                assert re.findall(r"<script[^>]*>[^<]*</script>", body) == [
                    '<script src="/static/seal.js" defer></script>'
                ]
                assert body.count("<script") == 1
                assert "<style" not in body
                assert " style=" not in body
                assert not re.search(r"\son[a-z]+=", body)
                assert not re.search(r'(src|href|action)="(https?:)?//', body)
                assert deployment.org.admin_set.fingerprint() in body
                # Every visible input has a label.
                for field_id in re.findall(r'<(?:input|select|textarea) id="([^"]+)"', body):
                    assert f'<label for="{field_id}">' in body, field_id
        async with session.get(deployment.base_url + "/static/style.css") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/css"
            assert "url(" not in await resp.text()  # no fonts, no images
        async with session.get(deployment.base_url + "/de/") as resp:
            assert resp.status == 404


async def test_browser_banner_follows_user_agent_and_host(deployment: Deployment) -> None:
    tor_ua = "Mozilla/5.0 (Windows NT 10.0; rv:128.0) Gecko/20100101 Firefox/128.0"
    onion = "a" * 56 + ".onion"
    async with aiohttp.ClientSession() as session:

        async def banner(ua: str, host: str | None) -> bool:
            headers = {"User-Agent": ua} | ({"Host": host} if host else {})
            async with session.get(deployment.base_url + "/en/", headers=headers) as resp:
                return 'id="browser-warning"' in await resp.text()

        assert not await banner(tor_ua, onion)
        assert await banner(tor_ua, None)  # loopback, not an onion
        assert await banner("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36", onion)
        assert await banner("Mozilla/5.0 (Windows NT 10.0; rv:128.0) Gecko/20100101 Firefox/127.0", onion)
        # Tor Browser for Android: the Gecko token repeats the version, on that platform only.
        android = "Mozilla/5.0 (Android 10; Mobile; rv:128.0) Gecko/128.0 Firefox/128.0"
        assert not await banner(android, onion)
        assert await banner("Mozilla/5.0 (Android 10; Mobile; rv:128.0) Gecko/115.0 Firefox/128.0", onion)
        assert await banner("Mozilla/5.0 (Windows NT 10.0; rv:128.0) Gecko/128.0 Firefox/128.0", onion)


async def test_server_sealed_contact_reply_and_follow_up(
    deployment: Deployment, tmp_path: Path, watched_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    big = bytes(range(256)) * (E.CHUNK_DATA_MAX // 256 + 10)  # two chunks
    async with aiohttp.ClientSession() as session:
        token = form_token(await _get(session, deployment.base_url + "/ru/contact"))
        form = _contact_form(token, files=[("report.txt", CANARY_FILE), ("scan.bin", big)])
        async with session.post(deployment.base_url + "/ru/contact", data=form) as resp:
            assert resp.status == 201
            page = await resp.text()
            assert resp.headers["Cache-Control"] == "no-store"
        codename = codename_of(page)
        assert len(codename.split()) >= 7
        assert CANARY not in page

        async with deployment.store.read() as s:
            [row] = (await s.scalars(select(ContactRow))).all()
            chunks = (await s.scalars(select(Chunk).order_by(Chunk.attachment, Chunk.index))).all()
        assert row.server_sealed
        assert row.state == "complete"
        assert row.attachments == 2
        assert row.pool == "general"
        opened = E.open_envelope(row.envelope, [deployment.org.intake["carol"]], expected_purpose=E.Purpose.CONTACT)
        contact = Contact.open_payload(opened.plaintext)
        assert contact.message == CANARY
        assert contact.origin == "server-sealed"
        assert contact.language == "ru"
        assert dict(contact.fields) == {"role": CANARY_FIELD}
        assert [(a.name, a.size, a.chunks) for a in contact.attachments] == [
            ("report.txt", len(CANARY_FILE), 1),
            ("scan.bin", len(big), 2),
        ]
        for number, expected in enumerate((CANARY_FILE, big)):
            opener = opened.attachment_opener(number)
            assert b"".join(opener.open_chunk(c.frame) for c in chunks if c.attachment == number) == expected
            opener.finish()

        # Return: no reply yet; then a real handler reply and a forged one.
        token = form_token(await _get(session, deployment.base_url + "/en/return"))
        async with session.post(
            deployment.base_url + "/en/return", data=_fields({"form": token, "codename": codename, "action": "read"})
        ) as resp:
            assert resp.status == 200
            assert 'id="no-replies"' in await resp.text()
        await plant_reply(deployment, codename, row.id, row.owner, "We read you. Write on Thursday.")
        await plant_forged_reply(deployment, codename, row.id, "forged: come to the embassy")
        token = form_token(await _get(session, deployment.base_url + "/en/return"))
        async with session.post(
            deployment.base_url + "/en/return",
            data=_fields({"form": token, "codename": codename.upper(), "action": "read"}),
        ) as resp:
            page = await resp.text()
            assert resp.status == 200
        assert "We read you. Write on Thursday." in page
        assert row.owner.title() in page
        assert "signature checked" in page
        assert "forged: come to the embassy" not in page
        assert "not signed by the organisation" in page

        # A follow-up, sealed by the server to the pool's handlers.
        token = form_token(page)
        data = {"form": token, "codename": codename, "action": "follow-up", "message": CANARY_FOLLOW_UP}
        async with session.post(deployment.base_url + "/en/return", data=_fields(data)) as resp:
            assert resp.status == 201
            assert 'id="follow-up-sent"' in await resp.text()
    async with deployment.store.read() as s:
        [follow] = (await s.scalars(select(Message).where(Message.kind == "follow-up"))).all()
    assert follow.server_sealed
    assert follow.contact_id == row.id
    opened_follow = E.open_envelope(
        follow.envelope, [deployment.org.intake["alice"]], expected_purpose=E.Purpose.FOLLOW_UP
    )
    assert FollowUp.open_payload(opened_follow.plaintext).message == CANARY_FOLLOW_UP

    # The plaintexts are nowhere: no row, no file (data folder, temp folder), no log line.
    needles = [CANARY.encode(), CANARY_FIELD.encode(), CANARY_FILE[:40], CANARY_FOLLOW_UP.encode(), codename.encode()]
    rows = await all_rows(deployment)
    assert not [n for n in needles if n in rows]
    assert files_containing(tmp_path, needles) == []
    assert list(watched_tmp.iterdir()) == []
    logged = "\n".join(r.getMessage() for r in caplog.records).encode()
    assert not [n for n in needles if n in logged]


async def test_hostile_contact_forms_are_refused_and_store_nothing(deployment: Deployment, watched_tmp: Path) -> None:
    base = deployment.base_url
    before = await deployment.snapshot()
    async with aiohttp.ClientSession() as session:

        async def post(form: aiohttp.FormData | dict[str, str] | bytes, **kw: object) -> tuple[int, str]:
            async with session.post(base + "/ru/contact", data=form, **kw) as resp:  # type: ignore[arg-type]
                return resp.status, await resp.text()

        token = form_token(await _get(session, base + "/ru/contact"))
        # A form used twice: the second is refused, and the text comes back to the applicant.
        status, _ = await post(_contact_form(token, message="one", pool="no-such-pool"))
        assert status == 400
        status, page = await post(_contact_form(token, message="kept text"))
        assert status == 409
        assert "kept text" in page
        assert "уже отправлена" in page
        # Forged, expired-looking or missing tokens.
        assert (await post(_contact_form("AAAA")))[0] == 400
        assert (await post(_contact_form("")))[0] == 400
        # Unknown and repeated fields, wrong encoding, non-UTF-8 text.
        token = form_token(await _get(session, base + "/ru/contact"))
        assert (await post(_contact_form(token, extra_field="x")))[0] == 400
        repeated = _contact_form(token)
        repeated.add_field("message", "again")
        assert (await post(repeated))[0] == 400
        assert (await post({"form": token, "message": "x"}))[0] == 415
        # A complete form but for one text part (no file name) whose bytes are not UTF-8.
        fields = {"form": token, "pool": "general", "language": "ru"}
        bad = "".join(f'--b\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items())
        bad_bytes = bad.encode() + b'--b\r\nContent-Disposition: form-data; name="message"\r\n\r\n'
        bad_bytes += b"\xff\xfe\r\n--b--\r\n"
        assert (await post(bad_bytes, headers={"Content-Type": "multipart/form-data; boundary=b"}))[0] == 400
        # Empty message, bad language.
        assert (await post(_contact_form(token, message="   ")))[0] == 400
        assert (await post(_contact_form(token, language="RU1")))[0] == 400
        # Too large: the upload limit and the number of files.
        limit = deployment.config.web_max_upload_bytes
        status, page = await post(_contact_form(token, message="big", files=[("a.bin", b"x" * (limit + 1))]))
        assert status == 413
        assert "big" in page
        many = [(f"{i}.txt", b"x") for i in range(deployment.config.max_attachments + 1)]
        assert (await post(_contact_form(token, files=many)))[0] == 413
        # A message too long for the largest envelope.
        assert (await post(_contact_form(token, message="я" * (E.MAX_BODY // 2 + 10))))[0] == 413
    assert await deployment.snapshot() == before
    assert list(watched_tmp.iterdir()) == []


async def test_hostile_return_forms(deployment: Deployment, watched_tmp: Path) -> None:
    base = deployment.base_url
    async with aiohttp.ClientSession() as session:

        async def post(data: object, **kw: object) -> tuple[int, str]:
            body = _fields(data) if isinstance(data, dict) else data
            async with session.post(base + "/en/return", data=body, **kw) as resp:  # type: ignore[arg-type]
                return resp.status, await resp.text()

        token = form_token(await _get(session, base + "/en/return"))
        status, page = await post({"form": token, "codename": "not a real codename at all", "action": "read"})
        assert status == 400
        assert "not a valid codename" in page
        # A file part is refused before anything reads it; urlencoded is refused too.
        form = aiohttp.FormData()
        form.add_field("codename", b"x" * 100_000, filename="f.bin")
        assert (await post(form))[0] == 400
        assert (await post(b"codename=x", headers={"Content-Type": "application/x-www-form-urlencoded"}))[0] == 415
        assert list(watched_tmp.iterdir()) == []
        assert (await post({"form": token, "codename": "x", "surprise": "1"}))[0] == 400
        # A valid codename that never wrote: nothing to read, nothing to continue.
        from safepassage.crypto.codename import generate_codename

        stranger = generate_codename().reveal()
        token = form_token(await _get(session, base + "/en/return"))
        status, page = await post({"form": token, "codename": stranger, "action": "follow-up", "message": "hello"})
        assert status == 404
        assert "hello" in page  # the text comes back
        token = form_token(page)
        status, _ = await post({"form": token, "codename": stranger, "action": "delete"})
        assert status == 400


async def test_operator_can_switch_server_sealing_off(deployment: Deployment) -> None:
    async with aiohttp.ClientSession() as session:
        assert 'id="about-server-sealing"' in await _get(session, f"{deployment.base_url}/en/")
    state = deployment.app[INTAKE]
    state.config = replace(state.config, web_server_sealing=0)
    before = await deployment.snapshot()
    async with aiohttp.ClientSession() as session:
        for lang in ("ru", "en"):
            page = await _get(session, f"{deployment.base_url}/{lang}/contact")
            # The form stays for the browser-sealing path; the page says the server will not seal.
            assert 'id="sealing-off"' in page
            assert "safepassage contact send" in page
            assert 'id="notice-server" hidden' in page
            # The front page no longer says the server would encrypt for the browser.
            index = await _get(session, f"{deployment.base_url}/{lang}/")
            assert 'id="about-sealing-off"' in index
            assert 'id="about-server-sealing"' not in index
        async with session.post(deployment.base_url + "/en/contact", data=_contact_form("x")) as resp:
            assert resp.status == 403
        async with session.post(deployment.base_url + "/en/return", data={"codename": "x"}) as resp:
            assert resp.status == 403
    assert await deployment.snapshot() == before


async def test_derivations_are_rate_limited(deployment: Deployment) -> None:
    sealer = deployment.app[SEALER]
    from safepassage.server.limits import RateLimiter

    sealer.limit = RateLimiter(1, "messages sealed by this server")
    async with aiohttp.ClientSession() as session:
        for expected in (201, 429):
            token = form_token(await _get(session, deployment.base_url + "/en/contact"))
            async with session.post(
                deployment.base_url + "/en/contact", data=_contact_form(token, message="kept")
            ) as resp:
                assert resp.status == expected
                if expected == 429:
                    assert "kept" in await resp.text()
        # Memory is bounded too: with every upload slot taken, a form is refused at once.
        sealer.limit = RateLimiter(100, "messages sealed by this server")
        sealer._uploads = asyncio.Semaphore(0)
        token = form_token(await _get(session, deployment.base_url + "/en/contact"))
        async with session.post(deployment.base_url + "/en/contact", data=_contact_form(token)) as resp:
            assert resp.status == 429


def test_web_settings_are_checked(tmp_path: Path) -> None:
    assert load_config(tmp_path, env={"SAFEPASSAGE_WEB_SERVER_SEALING": "0"}).web_server_sealing == 0
    for name, value in (
        ("WEB_SERVER_SEALING", "2"),
        ("WEB_MAX_UPLOAD_BYTES", str(300 * 1024 * 1024)),
        ("WEB_SEALING_PER_MINUTE", "0"),
        ("OPERATOR_NAME", "x" * 201),
    ):
        with pytest.raises(ConfigError):
            load_config(tmp_path, env={f"SAFEPASSAGE_{name}": value})
