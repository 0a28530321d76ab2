"""Regression tests for the second security review (intake server and applicant client).

One test per finding; each docstring describes the bug as it was found and the
fix. They were written to fail on the reviewed code and pass since the fixes;
they run against the real intake server (SQLite) and, for client findings,
the stand-in intake.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, update

from safepassage.crypto import envelope as E
from safepassage.crypto import pow as W
from safepassage.crypto.directory import SignedDirectory
from safepassage.crypto.encoding import b64d, b64e
from safepassage.crypto.errors import PowRejected
from safepassage.crypto.intake import AttachmentInfo, sign_mailbox_auth
from safepassage.server.app import housekeeping
from safepassage.server.context import INTAKE, Intake
from safepassage.server.db.models import Contact as ContactRow
from safepassage.server.db.models import Mailbox, MailboxNonce, SpentChallenge
from safepassage.server.limits import PowDifficulty, RateLimiter

from .deployment import Deployment, now_ts
from .intake_calls import Applicant, Calls, seal_for


@pytest.fixture
def database_url() -> str:
    """SQLite only (overrides the shared two-backend fixture)."""
    return ""


@pytest.fixture
async def calls(deployment: Deployment) -> AsyncIterator[Calls]:
    async with aiohttp.ClientSession() as session:
        yield Calls(deployment.base_url, session)


def _state(dep: Deployment) -> Intake:
    return dep.app[INTAKE]


def _recipients(dep: Deployment, pool: str = "general") -> list[Any]:
    return [key for _, key in dep.directory.recipients(pool, now_ts())]


def _wrong_counter(dep: Deployment, challenge: W.Challenge) -> int:
    for c in range(100_000):
        try:
            W.verify_solution(dep.keys.pow, challenge.to_text(), c, now=now_ts())
        except PowRejected:
            return c
    raise AssertionError("no wrong counter")


async def _bogus_submission(calls: Calls, pow_header: str) -> int:
    """A request that did no work: a random mailbox key, an unsolved challenge, no body."""
    answer = await calls.call(
        "POST",
        "/api/v1/contacts?pool=general",
        check=False,
        headers={
            "Safe-Passage-Mailbox-Key": b64e(b"\x07" * 32),
            "Safe-Passage-PoW": pow_header,
        },
    )
    return answer.status


async def _submit(
    calls: Calls, dep: Deployment, applicant: Applicant, attachments: int = 0, envelope: bytes | None = None
) -> Any:
    data = envelope if envelope is not None else seal_for(_recipients(dep), applicant.contact()).data
    headers = applicant.submission_headers(data, "general", attachments, await calls.pow_header())
    return await calls.call(
        "POST", f"/api/v1/contacts?pool=general&attachments={attachments}", data=data, headers=headers, check=False
    )


# --- F1: one free challenge locks every applicant out ------------------------------------------------


async def test_f1_unsolved_challenge_reused_exhausts_the_global_submission_limit(
    calls: Calls, deployment: Deployment
) -> None:
    """server/intake.py submit_contact/post_follow_up: the global submission limit and the
    difficulty load counter are charged after only the MAC check (``_pow``), before the work
    is verified, and the nonce is never spent when the work is wrong. One challenge (free
    from POST /pow) replayed with counter 0 and no body therefore uses up
    ``rate_limit_per_minute`` for everybody: genuine applicants get 429 for as long as the
    attacker keeps sending ~20 tiny requests a second.

    Fix: spend the nonce (insert into spent_challenges, committed) right after
    ``check_challenge``, verify the work, and only then charge ``submission_limit`` and
    ``difficulty`` (or charge them per *verified* solution only).
    """
    _state(deployment).submission_limit = RateLimiter(5, "submissions")
    challenge = await calls.challenge()
    unsolved = f"{challenge.to_text()}.{_wrong_counter(deployment, challenge)}"
    for _ in range(5):
        assert await _bogus_submission(calls, unsolved) in (400, 403, 415)
    answer = await _submit(calls, deployment, Applicant())
    assert answer.status == 201, answer.body


async def test_f1b_unsolved_challenge_reused_raises_everyones_difficulty(calls: Calls, deployment: Deployment) -> None:
    """server/intake.py:346 ``app.difficulty.record_submission()`` runs before the work is
    checked, so requests that did no work raise the proof-of-work difficulty for every
    applicant (one bit per doubling, up to ``pow_max_difficulty``). An attacker can make a
    genuine applicant's browser work 2^k times longer at no cost to itself.

    Fix: record load only for submissions whose work verified.
    """
    _state(deployment).difficulty = PowDifficulty(1, 8, 2)
    challenge = await calls.challenge()
    unsolved = f"{challenge.to_text()}.{_wrong_counter(deployment, challenge)}"
    for _ in range(16):
        await _bogus_submission(calls, unsolved)
    assert (await calls.challenge()).difficulty == 1


async def test_f1c_each_issued_challenge_costs_at_most_one_argon2id(
    calls: Calls, deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/protocol.md 12.5: the server SHOULD mark the nonce spent after the bounds check
    and *before* the Argon2id evaluation, "so that each issued challenge costs it at most
    one Argon2id evaluation however many wrong counters are sent with it".
    server/intake.py runs ``_verify_pow`` first and ``_spend`` only inside the final
    transaction, so one challenge buys the sender an Argon2id evaluation per request (and a
    replayed *valid* solution costs one too before it is refused as spent).

    Fix: insert the nonce into spent_challenges (its own committed transaction, unique
    key) before ``verify_work``; refuse 409 ``pow_reused`` on conflict.
    """
    evaluations = 0
    real = W.verify_work

    def counting(checked: W.CheckedChallenge, counter: int) -> W.VerifiedPow:
        nonlocal evaluations
        evaluations += 1
        return real(checked, counter)

    applicant = Applicant()
    data = seal_for(_recipients(deployment), applicant.contact()).data
    challenge = await calls.challenge()
    wrong = _wrong_counter(deployment, challenge)
    monkeypatch.setattr(W, "verify_work", counting)
    for _ in range(5):
        headers = applicant.submission_headers(data, "general", 0, f"{challenge.to_text()}.{wrong}")
        answer = await calls.call("POST", "/api/v1/contacts?pool=general", data=data, headers=headers)
        assert answer.status in (403, 409)
    assert evaluations <= 1


# --- F2: the mailbox fetch body is read with one read() -------------------------------------------


async def test_f2_mailbox_fetch_body_arriving_in_two_pieces(calls: Calls, deployment: Deployment) -> None:
    """server/intake.py _read_json: ``request.content.read(limit + 1)`` returns whatever is
    buffered, not the whole body. A valid body that arrives in two TCP segments (normal over
    Tor, where a stream is cut into 498-byte cells) is parsed half-read and refused as "not
    valid JSON"; the nonce is not consumed, but the applicant cannot read replies.

    Fix: read until EOF with a bound (``iter_chunked`` loop as in read_binary, or
    ``await request.content.readexactly(content_length)`` after checking it), and refuse
    bodies without Content-Length if that is preferred.
    """
    applicant = Applicant()
    first = await _submit(calls, deployment, applicant)
    assert first.status == 201
    challenge = await calls.call("POST", f"/api/v1/mailboxes/{applicant.mailbox_id}/challenge")
    nonce = b64d(challenge.body["nonce"])
    body = json.dumps(
        {"nonce": b64e(nonce), "signature": b64e(sign_mailbox_auth(applicant.keys.mailbox_key, nonce))}
    ).encode()

    async def pieces() -> AsyncIterator[bytes]:
        yield body[:40]
        await asyncio.sleep(0.2)
        yield body[40:]

    answer = await calls.call(
        "POST",
        f"/api/v1/mailboxes/{applicant.mailbox_id}/fetch",
        data=pieces(),
        headers={"Content-Type": "application/json"},
        check=False,
    )
    assert answer.status == 200, answer.body


# --- F3: what a seized database says about exact times and abandoned contacts -------------------------


async def test_f3_spent_challenge_expiry_dates_a_contact_to_the_second(calls: Calls, deployment: Deployment) -> None:
    """server/intake.py _spend stores ``spent_challenges.expires`` to the second, in the
    same transaction as the contact row. On PostgreSQL both rows carry the same ``xmin``;
    on SQLite they share a WAL commit and adjacent rowids. Anyone imaging the live server
    (threat model) can therefore pair each contact or follow-up of the last
    ``pow_lifetime`` seconds with ``expires - pow_lifetime``: the second the applicant
    asked for the challenge, i.e. the arrival time to within the solve time.
    docs/storage.md claims "(not which)", and ARCHITECTURE.md says the server never
    knows exact times.

    Fix: store ``expires`` rounded up to a coarse bucket (e.g. the next hour, as
    ``upload_expires`` already is; keeping a spent nonce a little longer is harmless) and
    the same for ``mailbox_nonces.expires``; fix the storage.md wording.
    """
    first = await _submit(calls, deployment, Applicant())
    assert first.status == 201
    async with deployment.store.read() as session:
        rows = (await session.scalars(select(SpentChallenge))).all()
    assert rows
    assert all(r.expires % 3600 == 0 for r in rows), [r.expires for r in rows]


async def test_f3b_abandoned_pending_contact_leaves_its_mailbox_forever(calls: Calls, deployment: Deployment) -> None:
    """server/intake.py submit_contact creates the ``mailboxes`` row in the transaction of a
    *pending* contact; server/app.py housekeeping deletes the expired pending contact (and
    its chunks) but never the mailbox. An applicant who gave up (or whose upload broke)
    leaves a permanent row with ``created_day``: "someone began a contact that day", and
    a mailbox id that links to any later attempt with the same codename. Half-written
    state after a failure.

    Fix: in housekeeping, delete mailboxes that no longer have any contact (in the same
    transaction as the pending-contact deletion), or create the mailbox row only when
    the contact completes.
    """
    applicant = Applicant()
    info = AttachmentInfo("a.txt", "text/plain", 3, 1)
    sealed = seal_for(_recipients(deployment), applicant.contact(attachments=(info,)))
    answer = await _submit(calls, deployment, applicant, attachments=1, envelope=sealed.data)
    assert answer.status == 201
    assert answer.body["status"] == "pending"
    async with deployment.store.write() as session:
        await session.execute(
            update(ContactRow).where(ContactRow.id == answer.body["contact"]).values(upload_expires=now_ts() - 1)
        )
    counts = await housekeeping(_state(deployment))
    assert counts["expired_pending_contacts"] == 1
    async with deployment.store.read() as session:
        assert await session.get(Mailbox, applicant.mailbox_id) is None


async def test_f3_a_mailbox_with_another_contact_survives_an_abandoned_upload(
    calls: Calls, deployment: Deployment
) -> None:
    """Housekeeping removes only the mailboxes left empty by the uploads it just deleted."""
    applicant = Applicant()
    kept = await _submit(calls, deployment, applicant)
    assert kept.body["status"] == "complete"
    info = AttachmentInfo("a.txt", "text/plain", 3, 1)
    sealed = seal_for(_recipients(deployment), applicant.contact(attachments=(info,)))
    pending = await _submit(calls, deployment, applicant, attachments=1, envelope=sealed.data)
    async with deployment.store.write() as session:
        await session.execute(
            update(ContactRow).where(ContactRow.id == pending.body["contact"]).values(upload_expires=now_ts() - 1)
        )
    counts = await housekeeping(_state(deployment))
    assert (counts["expired_pending_contacts"], counts["orphan_mailboxes"]) == (1, 0)
    async with deployment.store.read() as session:
        assert await session.get(Mailbox, applicant.mailbox_id) is not None
        assert await session.get(ContactRow, kept.body["contact"]) is not None
        assert await session.get(ContactRow, pending.body["contact"]) is None


# --- F4: GET /log/entries re-verifies every entry on the event loop ---------------------------------


async def test_f4_log_entries_are_served_without_reparsing(
    calls: Calls, deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """server/intake.py get_log_entries answers with
    ``SignedDirectory.from_bytes(e).to_json()`` for up to 64 entries per request:
    each parse checks every intake-key signature and loads every hybrid key, synchronously
    on the event loop, for an unauthenticated, unlimited GET (and every stateless client
    walks the whole log on every run). A directory of a few hundred handlers makes each
    request cost seconds of CPU and tens of MB of JSON; a few requests in parallel stall
    every other request.

    Fix: the stored entries are already canonical JSON: write
    ``b'{"entries":[' + b",".join(entries) + b"]}"`` directly (or cache the encoded
    page), and rate-limit the endpoint.
    """
    parses = 0
    real = SignedDirectory.from_bytes

    def counting(data: bytes) -> SignedDirectory:
        nonlocal parses
        parses += 1
        return real(data)

    monkeypatch.setattr(SignedDirectory, "from_bytes", staticmethod(counting))
    for _ in range(3):
        answer = await calls.call("GET", "/api/v1/log/entries?start=0&end=1")
        assert answer.status == 200
    assert parses == 0


# --- F5: the codename is lost when the answer to a stored contact is lost ---------------------------


def test_f5_codename_is_shown_when_delivery_is_uncertain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """client/applicant.py send_contact generates the codename and returns it only on
    success; client/contact_cli.py prints it only after ``send_contact`` returned. If the
    server stores the contact but its answer is lost (a Tor circuit dropping after the
    POST, a 5xx from a front end, a finalise that times out after commit), the contact
    reaches the handlers but its author never sees the codename: replies can never be
    read, and the applicant's natural retry creates a second, unlinked contact.

    Fix: once the envelope has been sent (outcome unknown), make the codename reach the
    applicant anyway: e.g. raise a ``DeliveryUncertain`` error carrying the SentContact
    material and have the CLI print the codename with "delivery uncertain; keep it and run
    'contact check' later"; or show the codename (and ask for confirmation it was written
    down) before the upload starts.
    """
    import sys

    from aiohttp import web

    from safepassage.client.cli import main
    from safepassage.crypto.codename import wordlist

    from .test_client_flows import FP, new_fake

    fake = new_fake()

    async def stored_but_answer_lost(request: web.Request) -> web.StreamResponse:
        await fake.submit(request)
        return web.Response(status=502)

    fake.override["/api/v1/contacts"] = stored_but_answer_lost
    with fake.in_thread() as url:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"canary")))
        code = main(["contact", "send", "--server", url, "--org", FP, "--pool", "general", "--message-file", "-"])
        out, err = capsys.readouterr()
    assert code != 0
    assert len(fake.contacts) == 1  # the handlers have it
    words = set(wordlist())
    lines = [line.strip() for line in (out + err).splitlines()]
    assert any(len(line.split()) == 7 and all(w in words for w in line.split()) for line in lines), (out, err)


# --- F6: malformed HTTP bypasses the middleware: raw request bytes logged, version disclosed ---------


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /api/v1/contacts HTTP/1.1\r\nHost: x\r\nSafe-Passage-Upload: canary-token-9f3\x01\r\n"
        b"Content-Length: 0\r\n\r\n",
        b"canary-token-9f3 / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: canary-token-9f3\r\n\r\n",
        b"GET /" + b"canary-token-9f3" * 1000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["bad-header-byte", "bad-method", "bad-length", "line-too-long"],
)
async def test_f6_malformed_request_is_neither_logged_nor_answered_by_aiohttp(
    deployment: Deployment, caplog: pytest.LogCaptureFixture, raw: bytes
) -> None:
    """A request aiohttp's parser rejects never reaches ``error_middleware`` or the
    ``on_response_prepare`` signal: aiohttp's own ``handle_error`` used to log it with a
    traceback quoting the raw header line, and to answer text/plain quoting it back, with
    ``Server: Python/3.x aiohttp/3.y`` and none of the security headers. server/security.py
    ``secure`` replaces that answer with the fixed JSON error and our headers."""
    import logging

    caplog.set_level(logging.INFO)
    host, port = deployment.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(raw)
    await writer.drain()
    answer = await reader.read(65536)
    writer.close()
    await asyncio.sleep(0.1)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split(b" ")[1] in (b"400", b"413", b"431"), head
    assert b"canary-token-9f3" not in answer
    assert b"canary-token-9f3" not in caplog.text.encode()
    assert b"aiohttp" not in answer.lower()
    assert b"python" not in answer.lower()
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert headers[b"Server"] == b"safepassage"
    assert headers[b"X-Content-Type-Options"] == b"nosniff"
    assert headers[b"Cache-Control"] == b"no-store"
    assert headers[b"Content-Type"].startswith(b"application/json")
    assert json.loads(body) == {"error": {"code": "bad_request", "message": "The request is not valid HTTP."}}


# --- F7: answers the OpenAPI document does not list ---------------------------------------------------


async def test_f7_follow_up_with_a_spent_proof_of_work_is_documented(calls: Calls, deployment: Deployment) -> None:
    """server/intake.py post_follow_up answers 409 ``pow_reused`` / ``conflict`` (and 503
    ``pool_unavailable``/``no_directory``), but docs/openapi/public.yaml lists only 201,
    400, 403, 404, 413, 415, 422 and 429 for POST /mailboxes/{id}/follow-ups. Likewise
    POST /contacts/{id}/finalise answers 400 for a malformed id (only 403/404/409
    listed) and GET /log/entries can answer 503 (only 400 listed).

    Fix: add the missing responses to public.yaml (409 and 503 on follow-ups, 400 on
    finalise, 503 on log/entries).
    """
    from safepassage.crypto.intake import FollowUp, sign_submission

    applicant = Applicant()
    first = await _submit(calls, deployment, applicant)
    contact_id = first.body["contact"]
    pow_header = await calls.pow_header()
    statuses = []
    for _ in range(2):
        payload = FollowUp(contact_id, "again", applicant.keys.mailbox_key.verify_key).seal_payload(
            applicant.keys.mailbox_key
        )
        sealed = E.seal(payload, _recipients(deployment), E.Purpose.FOLLOW_UP)
        sig = sign_submission(
            applicant.keys.mailbox_key,
            kind="follow-up",
            pool="general",
            attachments=0,
            envelope=sealed.data,
            contact_id=contact_id,
        )
        answer = await calls.call(  # check=True: the status must be documented
            "POST",
            f"/api/v1/mailboxes/{applicant.mailbox_id}/follow-ups?contact={contact_id}",
            data=sealed.data,
            headers={
                "Content-Type": "application/octet-stream",
                "Safe-Passage-PoW": pow_header,
                "Safe-Passage-Signature": b64e(sig),
            },
        )
        statuses.append(answer.status)
    assert statuses == [201, 409]
    bad = await calls.call("POST", "/api/v1/contacts/short/finalise", headers={"Safe-Passage-Upload": "x"})
    assert bad.status == 400


# --- F8: chunk uploads are buffered before anyone is authenticated ------------------------------------


async def test_f8_chunk_upload_is_refused_before_its_body_is_read(deployment: Deployment) -> None:
    """server/intake.py upload_chunk reads the whole 1 MiB frame (``_read_binary``) before
    it looks up the contact or checks the upload token. The endpoint has no proof of work
    and no rate limit, so anyone can hold any number of connections that each make the
    server buffer up to 1 MiB (or trickle it slowly) for a contact id that does not
    exist: memory exhaustion with no cost.

    Fix: check the contact id, token and state (a cheap read) first and answer 403/404
    without reading the body; cap in-flight upload bytes with a semaphore; consider a
    per-token rate.
    """
    host, port = deployment.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"PUT /api/v1/contacts/AAAAAAAAAAAAAAAAAAAAAA/attachments/0/chunks/0 HTTP/1.1\r\nHost: x\r\n"
        b"Safe-Passage-Upload: wrong\r\nContent-Type: application/octet-stream\r\n"
        + f"Content-Length: {E.CHUNK_LEN}\r\n\r\n".encode()
        + b"\x00" * 1000
    )
    await writer.drain()
    try:
        status_line = await asyncio.wait_for(reader.readline(), timeout=1.0)
    except TimeoutError:
        status_line = b""
    finally:
        writer.close()
    assert status_line.startswith((b"HTTP/1.1 403", b"HTTP/1.1 404")), status_line


# --- F9: a mailbox page can be larger than any client will read ----------------------------------------


async def test_f9_mailbox_with_many_large_replies_stays_readable(deployment: Deployment) -> None:
    """The server pages mailbox fetches by count only (``mailbox_fetch_limit`` = 200) while
    a reply envelope may be ~1 MiB (1.4 MB in base64); client/intake_api.py refuses a
    fetch answer over ``LIMIT_MAILBOX`` = 64 MiB and has no way to ask for a smaller page.
    About 47 large replies make every page too large: the applicant can never read *any*
    reply again. Any handler of the pool (a planted one included: it knows the reply key
    from the contact) can do this deliberately to silence a case.

    Fix: bound each page by bytes on the server (stop adding replies once the encoded
    page would pass e.g. 16 MiB; always at least one), document the byte bound in
    public.yaml, and/or let the client pass a ``limit``; the client could also retry with a
    smaller page rather than fail.
    """
    import datetime as dt

    from safepassage.client.applicant import check_mailbox, send_contact
    from safepassage.client.intake_api import IntakeClient
    from safepassage.client.trust import fetch_trusted_directory
    from safepassage.crypto.codename import derive_applicant_keys
    from safepassage.server.db.models import Message

    async with IntakeClient(deployment.base_url) as client:
        trusted = await fetch_trusted_directory(client, deployment.org.admin_set.fingerprint(), None, now_ts())
        sent = await send_contact(
            client, trusted, pool="general", language="en", message="hello", fields={}, attachments=[]
        )
        keys = derive_applicant_keys(sent.codename)
        big = E.seal(b"x" * (E.MAX_BODY - 64), [keys.reply_key.public_key], E.Purpose.REPLY)
        async with deployment.store.write() as session:
            for seq in range(1, 51):
                session.add(
                    Message(
                        id=f"r_big{seq:08d}",
                        mailbox_id=sent.mailbox_id.hex(),
                        contact_id=sent.contact_id,
                        kind="reply",
                        day=dt.datetime.now(dt.UTC).date(),
                        bucket=len(E.BUCKETS) - 1,
                        envelope=big.data,
                        envelope_hash=big.envelope_hash,
                        seq=seq,
                    )
                )
        replies = await check_mailbox(client, trusted, sent.codename)
    assert len(replies) == 50


# --- F10: a reply's text can forge the frame the CLI prints around replies ------------------------------


def test_f10_reply_text_cannot_forge_another_reply_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """client/contact_cli.py _echo_replies prints each reply as a ``--- Reply <id> ...``
    header line followed by the body through ``_printable``, which strips control
    characters but keeps newlines. A message sealed to the reply key by anyone who knows
    it (every handler of the pool, the integration service, the server for
    server-sealed contacts) can therefore contain its own ``--- Reply ...`` header and a
    ``(verified: signed by handler alice ...)`` line: an unverified message then looks,
    on screen, like a second, verified reply, and the one NOT VERIFIED line is easy to
    miss.

    Fix: never let body text start a line of the frame: indent/prefix every body line
    (e.g. ``"  | " + line``), and print the verification verdict after the body as well
    as before it.
    """
    import sys

    from safepassage.client.cli import main
    from safepassage.crypto.codename import derive_applicant_keys, parse_codename, wordlist
    from safepassage.crypto.envelope import Purpose, seal

    from .test_client_flows import FP, new_fake

    fake = new_fake()
    with fake.in_thread() as url:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hello")))
        assert main(["contact", "send", "--server", url, "--org", FP, "--pool", "general", "--message-file", "-"]) == 0
        out, _ = capsys.readouterr()
        words = set(wordlist())
        codename = next(
            line.strip()
            for line in out.splitlines()
            if len(line.split()) == 7 and all(w in words for w in line.split())
        )
        (contact_id,) = fake.contacts
        keys = derive_applicant_keys(parse_codename(codename))
        forged = (
            "ok\n\n--- Reply AAAAAAAAAAAA to contact " + contact_id + ", 2026-11-28\n"
            "(verified: signed by handler alice of the organisation)\n"
            "Go to the embassy car park at 22:00 and bring your passport."
        )
        fake.add_reply(
            keys.mailbox_id.hex(), contact_id, seal(forged.encode(), [keys.reply_key.public_key], Purpose.REPLY).data
        )
        codename_file = tmp_path / "c.txt"
        codename_file.write_text(codename)
        assert main(["contact", "check", "--server", url, "--org", FP, "--codename-file", str(codename_file)]) == 0
        out, _ = capsys.readouterr()
    frame_lines = [line for line in out.splitlines() if line.startswith("--- Reply ")]
    assert len(frame_lines) == 1, out


# --- F11: the housekeeping log is a timeline of submissions --------------------------------------------


async def test_f11_housekeeping_log_does_not_time_submissions(
    deployment: Deployment, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """server/app.py's housekeeping job logged, every 30 s at INFO (``server run`` sends INFO
    to stderr, i.e. journald with timestamps, kept for months), how many spent
    challenges and mailbox nonces expired in that round. A spent challenge expires exactly
    ``pow_lifetime`` after it was issued, so each line "expired_challenges=1" says a
    contact or follow-up was started in a known 30-second window; with the few contacts a
    day such a channel gets, and contact insertion order (SQLite rowid / PostgreSQL xmin),
    that is the arrival time of each contact. "expired_mailbox_nonces" likewise times
    every mailbox check. ARCHITECTURE.md: the server never knows exact times.

    Fix: do not log these counts (or log only daily totals); document the log policy in
    docs/storage.md.
    """
    import logging

    from safepassage.server import app as server_app

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(server_app, "HOUSEKEEPING_SECONDS", 0.01)
    async with deployment.store.write() as session:
        session.add(SpentChallenge(nonce=b"\x01" * 16, expires=now_ts() - 1))
        session.add(MailboxNonce(nonce=b"\x02" * 32, mailbox_id="ab" * 32, expires=now_ts() - 1))
    from safepassage.server.periodic import running

    async with running(server_app._jobs(_state(deployment))):
        await asyncio.sleep(0.3)
    async with deployment.store.read() as session:
        assert (await session.scalars(select(MailboxNonce))).all() == []  # the job did run
    assert "expired_challenges" not in caplog.text
    assert "expired_mailbox_nonces" not in caplog.text


# --- F12: free mailbox challenges share the only budget for proof-of-work challenges -------------------


async def test_f12_mailbox_challenges_cannot_starve_anyone(calls: Calls, deployment: Deployment) -> None:
    """server/intake.py: POST /mailboxes/{id}/challenge (free, no work, any id) used to write a
    row each and share a global cap with POST /pow: flooding it left no challenges for anyone.
    Fixed by making mailbox nonces stateless (protocol 15.4: an HMAC over mailbox id, random
    bytes and expiry) and issuing both kinds without a cap: asking writes nothing, and only
    a fetch signed by the mailbox key records its nonce as used."""
    for i in range(300):
        answer = await calls.call("POST", f"/api/v1/mailboxes/{i:064x}/challenge")
        assert answer.status == 201
    async with deployment.store.read() as session:
        assert (await session.scalars(select(MailboxNonce))).all() == []
    pow_answer = await calls.call("POST", "/api/v1/pow")
    assert pow_answer.status == 201, pow_answer.body


# --- F13: SQLite's write-ahead log keeps what secure_delete removed -----------------------------------


async def test_f13_deleted_rows_do_not_survive_in_the_sqlite_wal(deployment: Deployment) -> None:
    """docs/storage.md: "SQLite runs with secure_delete=ON ... the write-ahead log is
    checkpointed into the file". Nothing in server/ ever checkpoints; SQLite's automatic
    checkpoint (every 1000 pages) copies pages back but does not truncate ``-wal``, so
    earlier page images (rows as inserted, before their deletion was secure-deleted in
    the main file) stay in ``safepassage.db-wal`` until overwritten: e.g. which mailbox
    asked to be read and when (mailbox_nonces), expired pending contacts, spent
    challenges.

    Fix: after each housekeeping deletion run ``PRAGMA wal_checkpoint(TRUNCATE)`` (and set
    ``journal_size_limit=0``), or document honestly that WAL frames keep deleted rows.
    """
    from safepassage.server.db.models import MailboxNonce

    marker = "c0ffee" * 10 + "beef"
    async with deployment.store.write() as session:
        session.add(MailboxNonce(nonce=b"\x03" * 32, mailbox_id=marker, expires=now_ts() - 1))
    await housekeeping(_state(deployment))
    data_dir = Path(deployment.config.data_dir)
    leftovers = [p.name for p in data_dir.glob("safepassage.db*") if marker.encode() in p.read_bytes()]
    assert leftovers == []
