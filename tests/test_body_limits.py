"""Slow bodies are cut off (408) and the bytes held by bodies in progress are capped (503), changing nothing.

The pacing rule (docs/hostile-inputs.md): a body gets BODY_GRACE_SECONDS to
start, then must average BODY_MIN_RATE bytes per second. The budget counts
bytes actually received and held until the answer is made, so trickling
connections hold almost none of it and many parallel large bodies cannot grow
the process past it.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from safepassage.server import inputs
from safepassage.server.inputs import BODY_BUDGET

from .deployment import Deployment
from .intake_calls import Applicant, Calls, seal_for
from .openapi import check_response
from .test_intake_server import recipients


async def _raw_request(base_url: str, head: bytes, body_pieces: list[bytes], gap: float) -> tuple[bytes, float]:
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    try:
        writer.write(head)
        for piece in body_pieces:
            writer.write(piece)
            await writer.drain()
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=gap)
            except TimeoutError:
                continue
            return line + await asyncio.wait_for(reader.read(4096), timeout=5), time.monotonic() - started
        line = await asyncio.wait_for(reader.readline(), timeout=30)
        return line + await asyncio.wait_for(reader.read(4096), timeout=5), time.monotonic() - started
    finally:
        writer.close()


async def test_a_trickling_body_is_cut_off(
    deployment: Deployment, public_calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inputs, "BODY_GRACE_SECONDS", 1.0)
    applicant = Applicant()
    pow_header = await public_calls.pow_header()
    headers = applicant.submission_headers(b"", "general", 0, pow_header)
    head = (
        b"POST /api/v1/contacts?pool=general&attachments=0 HTTP/1.1\r\nHost: x\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
        + b"Content-Length: 100000\r\n\r\n"
    )
    before = await deployment.snapshot()
    answer, took = await _raw_request(deployment.base_url, head, [b"\x00"] * 40, gap=0.25)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"body_too_slow"' in answer
    assert 1.0 <= took < 4.0, took
    assert await deployment.snapshot() == before
    assert deployment.app[BODY_BUDGET].used == 0


async def test_a_body_that_keeps_pace_is_taken(
    deployment: Deployment, public_calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pieces every 0.3 s, well above the floor once the grace period is over: accepted.
    monkeypatch.setattr(inputs, "BODY_GRACE_SECONDS", 1.0)
    monkeypatch.setattr(inputs, "BODY_MIN_RATE", 1024)
    applicant = Applicant()
    sealed = seal_for(recipients(deployment), applicant.contact())
    headers = applicant.submission_headers(sealed.data, "general", 0, await public_calls.pow_header())
    head = (
        b"POST /api/v1/contacts?pool=general&attachments=0 HTTP/1.1\r\nHost: x\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
        + f"Content-Length: {len(sealed.data)}\r\n\r\n".encode()
    )
    step = 1024
    pieces = [sealed.data[i : i + step] for i in range(0, len(sealed.data), step)]
    answer, took = await _raw_request(deployment.base_url, head, pieces, gap=0.3)
    assert answer.startswith(b"HTTP/1.1 201 "), answer
    assert took > 1.0  # it really was slow, and still taken


async def test_bodies_past_the_budget_are_refused_and_the_budget_comes_back(
    deployment: Deployment, public_calls: Calls
) -> None:
    budget = deployment.app[BODY_BUDGET]
    applicant = Applicant()
    sealed = seal_for(recipients(deployment), applicant.contact())
    budget.limit = len(sealed.data) // 2
    before = await deployment.snapshot()
    headers = applicant.submission_headers(sealed.data, "general", 0, await public_calls.pow_header())
    refused = await public_calls.call(
        "POST", "/api/v1/contacts?pool=general&attachments=0", data=sealed.data, headers=headers
    )
    assert refused.status == 503
    assert refused.body["error"]["code"] == "busy"
    assert await deployment.snapshot() == before
    assert budget.used == 0
    # With room again, the same applicant gets through, and the bytes are given back afterwards.
    budget.limit = inputs.BODY_BUDGET_BYTES
    headers = applicant.submission_headers(sealed.data, "general", 0, await public_calls.pow_header())
    accepted = await public_calls.call(
        "POST", "/api/v1/contacts?pool=general&attachments=0", data=sealed.data, headers=headers
    )
    assert accepted.status == 201, accepted.body
    assert budget.used == 0
    check_response("public", "POST", "/api/v1/contacts", refused.status, refused.body)


async def test_slow_web_forms_are_cut_off_and_do_not_hold_the_upload_slots(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The no-JavaScript contact form holds one of a few upload slots while it is read: as many
    trickling forms as there are slots are each cut off with 408 after the grace period, and a
    form sent at normal speed afterwards is sealed and stored."""
    import aiohttp

    from safepassage.server.web.sealing import MAX_PARALLEL_UPLOADS

    from .test_web_pages import _contact_form, _get
    from .web_helpers import form_token

    monkeypatch.setattr(inputs, "BODY_GRACE_SECONDS", 1.0)
    boundary = "slowform"
    head = (
        b"POST /en/contact HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Type: multipart/form-data; boundary={boundary}\r\n".encode()
        + b"Content-Length: 1000000\r\n\r\n"
    )
    first = f'--{boundary}\r\nContent-Disposition: form-data; name="attachment"; filename="a.bin"\r\n\r\n'.encode()
    before = await deployment.snapshot()
    answers = await asyncio.gather(
        *(
            _raw_request(deployment.base_url, head, [first] + [b"\x00"] * 40, gap=0.25)
            for _ in range(MAX_PARALLEL_UPLOADS)
        )
    )
    for answer, took in answers:
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert 1.0 <= took < 4.0, took
    assert await deployment.snapshot() == before
    async with aiohttp.ClientSession() as session:
        token = form_token(await _get(session, deployment.base_url + "/en/contact"))
        async with session.post(deployment.base_url + "/en/contact", data=_contact_form(token)) as resp:
            assert resp.status == 201, await resp.text()
