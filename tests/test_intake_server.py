"""The public intake server end to end, on SQLite and PostgreSQL, over real HTTP.

Happy paths, then every hostile case from the issue: each answers its
documented 4xx and leaves every table exactly as it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select, update

from safepassage.crypto import envelope as E
from safepassage.crypto import pow as W
from safepassage.crypto.directory import Handler, IntakeKey
from safepassage.crypto.encoding import b64d, b64e, canonical_json
from safepassage.crypto.intake import AttachmentInfo, Contact, sign_mailbox_auth
from safepassage.crypto.keys import HybridPrivateKey, HybridPublicKey
from safepassage.crypto.receipt import Receipt
from safepassage.crypto.translog import SignedTreeHead, check_extension, leaf_hash, verify_inclusion
from safepassage.server.app import housekeeping
from safepassage.server.context import INTAKE, Intake
from safepassage.server.db.models import Chunk, Message
from safepassage.server.db.models import Contact as ContactRow
from safepassage.server.security import HEADERS

from .deployment import Deployment, now_ts
from .helpers import DAY
from .intake_calls import CANARY, Answer, Applicant, Calls, seal_for


@pytest.fixture
async def calls(deployment: Deployment) -> AsyncIterator[Calls]:
    async with aiohttp.ClientSession() as session:
        yield Calls(deployment.base_url, session)


def recipients(dep: Deployment, pool: str = "general") -> list[HybridPublicKey]:
    return [key for _, key in dep.directory.recipients(pool, now_ts())]


async def submit(
    calls: Calls,
    dep: Deployment,
    applicant: Applicant,
    *,
    pool: str = "general",
    envelope: bytes | None = None,
    attachments: int = 0,
    headers: dict[str, str] | None = None,
) -> tuple[Answer, bytes]:
    data = envelope if envelope is not None else seal_for(recipients(dep, pool), applicant.contact(pool)).data
    hdrs = applicant.submission_headers(data, pool, attachments, await calls.pow_header())
    hdrs.update(headers or {})
    answer = await calls.call(
        "POST", f"/api/v1/contacts?pool={pool}&attachments={attachments}", data=data, headers=hdrs
    )
    return answer, data


# --- happy paths ---------------------------------------------------------------------------


async def test_contact_is_stored_sealed_and_receipted(calls: Calls, deployment: Deployment) -> None:
    applicant = Applicant()
    answer, data = await submit(calls, deployment, applicant)
    assert answer.status == 201, answer.body
    assert answer.body["status"] == "complete"
    receipt = Receipt(
        answer.body["receipt"]["contact"],
        b64d(answer.body["receipt"]["envelope"]),
        answer.body["receipt"]["day"],
        b64d(answer.body["receipt"]["sig"]),
    )
    receipt.verify(deployment.directory.receipt_key, envelope_hash=hashlib.sha256(data).digest())
    assert receipt.day == dt.datetime.now(dt.UTC).date().isoformat()
    async with deployment.store.read() as session:
        row = await session.get(ContactRow, answer.body["contact"])
    assert row is not None
    assert row.envelope == data
    assert row.pool == "general"
    assert row.owner in {"alice", "bob", "carol"}
    assert row.mailbox_id == applicant.mailbox_id
    assert row.day.isoformat() == receipt.day
    # The owner's own key opens it and finds the applicant's words, signed.
    owner_key = deployment.org.intake[row.owner]
    opened = E.open_envelope(row.envelope, [owner_key], expected_purpose=E.Purpose.CONTACT)
    contact = Contact.open_payload(opened.plaintext)
    assert contact.message == CANARY
    assert contact.mailbox_key == applicant.keys.mailbox_key.verify_key


async def test_every_response_carries_security_headers(calls: Calls) -> None:
    for method, path in (("GET", "/api/v1/directory"), ("GET", "/nope"), ("POST", "/api/v1/contacts?pool=general")):
        answer = await calls.call(method, path, check=path.startswith("/api/v1/directory"))
        for name, value in HEADERS.items():
            assert answer.headers.get(name) == value, (path, name)
        assert answer.headers.get("Server") == "safepassage"


async def test_directory_serves_proofs(calls: Calls, deployment: Deployment) -> None:
    answer = await calls.call("GET", "/api/v1/directory")
    assert answer.status == 200
    assert answer.body["index"] == 0
    assert answer.body["consistency"] == []
    first_head = SignedTreeHead.from_json(answer.body["tree_head"]).head
    await deployment.publish(deployment.org.directory(2, handlers=deployment.directory.handlers))
    # A running front end picks a publication up on its next refresh.
    await deployment.app[INTAKE].refresh()
    answer = await calls.call("GET", "/api/v1/directory?known_size=1")
    assert answer.body["index"] == 1
    head = SignedTreeHead.from_json(answer.body["tree_head"])
    head.verify(deployment.directory.admins)
    check_extension(first_head, head.head, [bytes.fromhex(h) for h in answer.body["consistency"]])
    verify_inclusion(
        leaf_hash(canonical_json(answer.body["directory"])),
        1,
        head.head.size,
        [bytes.fromhex(h) for h in answer.body["inclusion"]],
        head.head.root,
    )
    entries = await calls.call("GET", "/api/v1/log/entries?start=0&end=1")
    assert entries.status == 200
    assert len(entries.body["entries"]) == 1
    bad = await calls.call("GET", "/api/v1/log/entries?start=1&end=0")
    assert bad.status == 400


async def test_attachments_upload_finalise_and_open(calls: Calls, deployment: Deployment) -> None:
    applicant = Applicant()
    blob = bytes(range(256)) * 5000  # 1.28 MB: two chunks
    info = AttachmentInfo("notes.bin", "application/octet-stream", len(blob), 2)
    sealed = seal_for(recipients(deployment), applicant.contact(attachments=(info,)))
    answer, _ = await submit(calls, deployment, applicant, envelope=sealed.data, attachments=1)
    assert answer.status == 201, answer.body
    assert answer.body["status"] == "pending"
    assert "receipt" not in answer.body
    contact_id, token = answer.body["contact"], answer.body["upload_token"]
    frames = list(sealed.attachment_sealer(0).seal_stream(io.BytesIO(blob)))
    early = await calls.call("POST", f"/api/v1/contacts/{contact_id}/finalise", headers={"Safe-Passage-Upload": token})
    assert early.status == 409
    for i, frame in enumerate(frames):
        up = await calls.call(
            "PUT",
            f"/api/v1/contacts/{contact_id}/attachments/0/chunks/{i}",
            data=frame,
            headers={"Safe-Passage-Upload": token, "Content-Type": "application/octet-stream"},
        )
        assert up.status == 201, up.body
    done = await calls.call("POST", f"/api/v1/contacts/{contact_id}/finalise", headers={"Safe-Passage-Upload": token})
    assert done.status == 200
    again = await calls.call("POST", f"/api/v1/contacts/{contact_id}/finalise", headers={"Safe-Passage-Upload": token})
    assert again.body["receipt"] == done.body["receipt"]
    async with deployment.store.read() as session:
        row = await session.get(ContactRow, contact_id)
        chunks = (
            await session.scalars(select(Chunk).where(Chunk.contact_id == contact_id).order_by(Chunk.index))
        ).all()
    assert row is not None
    assert row.state == "complete"
    assert row.upload_expires is None
    opened = E.open_envelope(row.envelope, [deployment.org.intake[row.owner]], expected_purpose=E.Purpose.CONTACT)
    opener = opened.attachment_opener(0)
    assert b"".join(opener.open_chunk(c.frame) for c in chunks) == blob
    assert opener.finish() == 2


async def test_expired_pending_upload_is_deleted_with_its_chunks(calls: Calls, deployment: Deployment) -> None:
    applicant = Applicant()
    info = AttachmentInfo("a.txt", "text/plain", 3, 1)
    sealed = seal_for(recipients(deployment), applicant.contact(attachments=(info,)))
    answer, _ = await submit(calls, deployment, applicant, envelope=sealed.data, attachments=1)
    contact_id, token = answer.body["contact"], answer.body["upload_token"]
    frame = next(iter(sealed.attachment_sealer(0).seal_stream(io.BytesIO(b"abc"))))
    up = await calls.call(
        "PUT",
        f"/api/v1/contacts/{contact_id}/attachments/0/chunks/0",
        data=frame,
        headers={"Safe-Passage-Upload": token, "Content-Type": "application/octet-stream"},
    )
    assert up.status == 201
    async with deployment.store.write() as session:
        await session.execute(update(ContactRow).where(ContactRow.id == contact_id).values(upload_expires=now_ts() - 1))
    late = await calls.call("POST", f"/api/v1/contacts/{contact_id}/finalise", headers={"Safe-Passage-Upload": token})
    assert late.status == 409
    assert late.body["error"]["code"] == "upload_expired"
    app_state = _intake_state(deployment)
    counts = await housekeeping(app_state)
    assert counts["expired_pending_contacts"] == 1
    async with deployment.store.read() as session:
        assert await session.get(ContactRow, contact_id) is None
        assert (await session.scalars(select(Chunk).where(Chunk.contact_id == contact_id))).all() == []


def _intake_state(dep: Deployment) -> Intake:
    return dep.app[INTAKE]


async def test_mailbox_fetch_and_follow_up(calls: Calls, deployment: Deployment) -> None:
    applicant = Applicant()
    answer, _ = await submit(calls, deployment, applicant)
    contact_id = answer.body["contact"]
    # A handler's reply (the staff API is its own issue): sealed to the applicant's reply key.
    reply = E.seal(b"We read you. Reply with a time.", [applicant.keys.reply_key.public_key], E.Purpose.REPLY)
    async with deployment.store.write() as session:
        session.add(
            Message(
                id="r_0123456789ab",
                mailbox_id=applicant.mailbox_id,
                contact_id=contact_id,
                kind="reply",
                day=dt.datetime.now(dt.UTC).date(),
                bucket=0,
                envelope=reply.data,
                envelope_hash=reply.envelope_hash,
                seq=1,
            )
        )
    messages = await fetch_mailbox(calls, applicant)
    assert messages.status == 200, messages.body
    [message] = messages.body["messages"]
    opened = E.open_envelope(b64d(message["envelope"]), [applicant.keys.reply_key], expected_purpose=E.Purpose.REPLY)
    assert opened.plaintext == b"We read you. Reply with a time."
    # A follow-up goes to the same pool's handlers, signed by the same mailbox key.
    from safepassage.crypto.intake import FollowUp, sign_submission

    payload = FollowUp(contact_id, "Thursday, 10:00.", applicant.keys.mailbox_key.verify_key).seal_payload(
        applicant.keys.mailbox_key
    )
    sealed = E.seal(payload, recipients(deployment), E.Purpose.FOLLOW_UP)
    sig = sign_submission(
        applicant.keys.mailbox_key,
        kind="follow-up",
        pool="general",
        attachments=0,
        envelope=sealed.data,
        contact_id=contact_id,
    )
    posted = await calls.call(
        "POST",
        f"/api/v1/mailboxes/{applicant.mailbox_id}/follow-ups?contact={contact_id}",
        data=sealed.data,
        headers={
            "Content-Type": "application/octet-stream",
            "Safe-Passage-PoW": await calls.pow_header(),
            "Safe-Passage-Signature": b64e(sig),
        },
    )
    assert posted.status == 201, posted.body
    Receipt(
        posted.body["receipt"]["contact"],
        b64d(posted.body["receipt"]["envelope"]),
        posted.body["receipt"]["day"],
        b64d(posted.body["receipt"]["sig"]),
    ).verify(deployment.directory.receipt_key, envelope_hash=sealed.envelope_hash)


async def fetch_mailbox(calls: Calls, applicant: Applicant, *, mailbox_id: str | None = None) -> Answer:
    target = mailbox_id or applicant.mailbox_id
    challenge = await calls.call("POST", f"/api/v1/mailboxes/{target}/challenge")
    assert challenge.status == 201
    nonce = b64d(challenge.body["nonce"])
    signature = sign_mailbox_auth(applicant.keys.mailbox_key, nonce)
    return await calls.call(
        "POST",
        f"/api/v1/mailboxes/{target}/fetch",
        json={"nonce": b64e(nonce), "signature": b64e(signature)},
    )


async def test_hundred_concurrent_submissions(deployment: Deployment) -> None:
    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(connector=connector) as session:
        c = Calls(deployment.base_url, session)
        applicants = [Applicant() for _ in range(100)]
        results = await asyncio.gather(*(submit(c, deployment, a) for a in applicants))
    assert [r[0].status for r in results] == [201] * 100
    ids = {r[0].body["contact"] for r in results}
    async with deployment.store.read() as session:
        stored = (await session.scalars(select(ContactRow.id))).all()
    assert ids <= set(stored)
    assert len(ids) == 100


# --- hostile input: documented 4xx, nothing changed -------------------------------------------------


async def refused(dep: Deployment, status: int, code: str, answer_coro: object) -> Answer:
    before = await dep.snapshot()
    result = await answer_coro  # type: ignore[misc]
    answer: Answer = result[0] if isinstance(result, tuple) else result
    assert answer.status == status, answer.body
    assert answer.body["error"]["code"] == code, answer.body
    assert await dep.snapshot() == before
    return answer


async def test_wrong_content_type(calls: Calls, deployment: Deployment) -> None:
    await refused(
        deployment,
        415,
        "unsupported_media_type",
        submit(calls, deployment, Applicant(), headers={"Content-Type": "text/plain"}),
    )


async def test_malformed_json_body(calls: Calls, deployment: Deployment) -> None:
    applicant = Applicant()
    await refused(
        deployment,
        400,
        "malformed_request",
        calls.call(
            "POST",
            f"/api/v1/mailboxes/{applicant.mailbox_id}/fetch",
            data=b"{not json",
            headers={"Content-Type": "application/json"},
        ),
    )


async def test_bad_envelope_framing(calls: Calls, deployment: Deployment) -> None:
    applicant = Applicant()
    good = seal_for(recipients(deployment), applicant.contact()).data
    await refused(deployment, 400, "malformed_envelope", submit(calls, deployment, applicant, envelope=good[:-1]))
    await refused(deployment, 400, "malformed_envelope", submit(calls, deployment, applicant, envelope=b"garbage"))


async def test_an_envelope_sealed_to_an_expired_intake_key_is_refused(calls: Calls, deployment: Deployment) -> None:
    """After a rotation the old keys stay listed (readers may still hold them) but their window
    is over: a contact sealed to them is refused and nothing is stored; one sealed to the next keys
    is accepted."""
    org, now = deployment.org, now_ts()
    fresh = {hid: HybridPrivateKey.generate() for hid in org.handler_ids}

    def rotated(handler: Handler) -> Handler:
        hid, identity = handler.handler_id, org.identities[handler.handler_id]
        old = IntakeKey.create(hid, identity, org.intake[hid].public_key, not_before=now - 7 * DAY, not_after=now - 60)
        new = IntakeKey.create(hid, identity, fresh[hid].public_key, not_before=now - 60, not_after=now - 60 + 7 * DAY)
        return dataclasses.replace(handler, intake_keys=(old, new))

    current = deployment.directory
    await deployment.publish(
        dataclasses.replace(current, version=current.version + 1, handlers=tuple(map(rotated, current.handlers)))
    )
    await deployment.app[INTAKE].refresh()
    applicant = Applicant()
    expired = [org.intake[h.handler_id].public_key for h in current.pool_handlers("general")]
    stale = seal_for(expired, applicant.contact()).data
    await refused(deployment, 422, "recipients_mismatch", submit(calls, deployment, applicant, envelope=stale))
    listed = [fresh[h.handler_id].public_key for h in current.pool_handlers("general")]
    answer, _ = await submit(calls, deployment, applicant, envelope=seal_for(listed, applicant.contact()).data)
    assert answer.status == 201, answer.body


async def test_wrong_purpose(calls: Calls, deployment: Deployment) -> None:
    applicant = Applicant()
    data = seal_for(recipients(deployment), applicant.contact(), E.Purpose.FOLLOW_UP).data
    await refused(deployment, 400, "wrong_purpose", submit(calls, deployment, applicant, envelope=data))


async def test_recipients_must_be_exactly_the_pool(calls: Calls, deployment: Deployment) -> None:
    applicant = Applicant()
    subset = seal_for(recipients(deployment)[:2], applicant.contact()).data
    await refused(deployment, 422, "recipients_mismatch", submit(calls, deployment, applicant, envelope=subset))
    science = seal_for(recipients(deployment, "science"), applicant.contact()).data
    await refused(deployment, 422, "recipients_mismatch", submit(calls, deployment, applicant, envelope=science))


async def test_unknown_pool(calls: Calls, deployment: Deployment) -> None:
    applicant = Applicant()
    data = seal_for(recipients(deployment), applicant.contact()).data
    await refused(deployment, 404, "unknown_pool", submit(calls, deployment, applicant, envelope=data, pool="navy"))


async def test_proof_of_work_missing_wrong_reused_expired(calls: Calls, deployment: Deployment) -> None:
    applicant = Applicant()
    data = seal_for(recipients(deployment), applicant.contact()).data
    headers = applicant.submission_headers(data, "general", 0, "x")
    del headers["Safe-Passage-PoW"]
    await refused(
        deployment, 403, "pow_required", calls.call("POST", "/api/v1/contacts?pool=general", data=data, headers=headers)
    )
    challenge = await calls.challenge()
    wrong = next(c for c in range(10_000) if not _solves(deployment, challenge, c))
    await refused(
        deployment,
        403,
        "pow_invalid",
        submit(
            calls, deployment, applicant, envelope=data, headers={"Safe-Passage-PoW": f"{challenge.to_text()}.{wrong}"}
        ),
    )
    forged = W.Challenge(
        challenge.nonce, challenge.expires, 0, challenge.memlimit_kib, challenge.opslimit, challenge.mac
    )
    await refused(
        deployment,
        403,
        "pow_invalid",
        submit(calls, deployment, applicant, envelope=data, headers={"Safe-Passage-PoW": f"{forged.to_text()}.0"}),
    )
    expired = W.issue_challenge(deployment.keys.pow, difficulty=1, now=now_ts() - 4000, lifetime=600, memlimit_kib=1024)
    await refused(
        deployment,
        403,
        "pow_invalid",
        submit(
            calls,
            deployment,
            applicant,
            envelope=data,
            headers={"Safe-Passage-PoW": f"{expired.to_text()}.{W.solve(expired)}"},
        ),
    )
    # The wrong counter spent that challenge (section 12.5): even the right one is refused now.
    await refused(
        deployment,
        409,
        "pow_reused",
        submit(
            calls,
            deployment,
            applicant,
            envelope=data,
            headers={"Safe-Passage-PoW": f"{challenge.to_text()}.{W.solve(challenge)}"},
        ),
    )
    fresh = await calls.challenge()
    good = f"{fresh.to_text()}.{W.solve(fresh)}"
    first, _ = await submit(calls, deployment, applicant, envelope=data, headers={"Safe-Passage-PoW": good})
    assert first.status == 201
    other = seal_for(recipients(deployment), applicant.contact()).data
    await refused(
        deployment,
        409,
        "pow_reused",
        submit(calls, deployment, applicant, envelope=other, headers={"Safe-Passage-PoW": good}),
    )


def _solves(dep: Deployment, challenge: W.Challenge, counter: int) -> bool:
    try:
        W.verify_solution(dep.keys.pow, challenge.to_text(), counter, now=now_ts())
    except W.PowRejected:
        return False
    return True


async def test_bad_submission_signature(calls: Calls, deployment: Deployment) -> None:
    applicant, other = Applicant(), Applicant()
    data = seal_for(recipients(deployment), applicant.contact()).data
    wrong_key = b64e(other.keys.mailbox_key.verify_key.public_bytes_raw())
    await refused(
        deployment,
        403,
        "bad_signature",
        submit(calls, deployment, applicant, envelope=data, headers={"Safe-Passage-Mailbox-Key": wrong_key}),
    )
    # The signature binds the attachment count.
    await refused(
        deployment,
        403,
        "bad_signature",
        calls.call(
            "POST",
            "/api/v1/contacts?pool=general&attachments=1",
            data=data,
            headers=applicant.submission_headers(data, "general", 0, await calls.pow_header()),
        ),
    )


async def test_oversized_body(calls: Calls, deployment: Deployment) -> None:
    applicant = Applicant()
    huge = b"\x00" * (E.envelope_length(4, 64) + 10)
    await refused(deployment, 413, "payload_too_large", submit(calls, deployment, applicant, envelope=huge))


async def test_chunk_order_size_and_token(calls: Calls, deployment: Deployment) -> None:
    applicant = Applicant()
    size = 4 * E.CHUNK_DATA_MAX  # four chunks: more than this deployment allows (three)
    info = AttachmentInfo("big.bin", "application/octet-stream", size, 4)
    sealed = seal_for(recipients(deployment), applicant.contact(attachments=(info,)))
    answer, _ = await submit(calls, deployment, applicant, envelope=sealed.data, attachments=1)
    contact_id, token = answer.body["contact"], answer.body["upload_token"]
    sealer = sealed.attachment_sealer(0)
    frames = [sealer.seal_chunk(b"\x01" * E.CHUNK_DATA_MAX, final=(i == 3)) for i in range(4)]

    def put(i: int, frame: bytes, tok: str = token, attachment: int = 0) -> object:
        return calls.call(
            "PUT",
            f"/api/v1/contacts/{contact_id}/attachments/{attachment}/chunks/{i}",
            data=frame,
            headers={"Safe-Passage-Upload": tok, "Content-Type": "application/octet-stream"},
        )

    await refused(deployment, 409, "chunk_out_of_order", put(1, frames[1]))
    await refused(deployment, 403, "bad_upload_token", put(0, frames[0], tok="x" * 43))
    await refused(deployment, 400, "malformed_chunk", put(0, frames[0][:-1]))
    await refused(deployment, 400, "malformed_chunk", put(1, frames[0]))  # frame says 0, URL says 1
    await refused(deployment, 400, "attachment_out_of_range", put(0, _renumber(frames[0], 1), attachment=1))
    for i in range(3):
        assert (await put(i, frames[i])).status == 201  # type: ignore[attr-defined]
    await refused(deployment, 413, "contact_too_large", put(3, frames[3]))


def _renumber(frame: bytes, attachment: int) -> bytes:
    return frame[:4] + attachment.to_bytes(2, "big") + frame[6:]


async def test_forged_and_foreign_mailbox_access(calls: Calls, deployment: Deployment) -> None:
    owner, intruder = Applicant(), Applicant()
    await submit(calls, deployment, owner)
    await submit(calls, deployment, intruder)
    # The intruder signs the owner's nonce with its own key: refused.
    challenge = await calls.call("POST", f"/api/v1/mailboxes/{owner.mailbox_id}/challenge")
    nonce = b64d(challenge.body["nonce"])
    before = await deployment.snapshot()
    forged = await calls.call(
        "POST",
        f"/api/v1/mailboxes/{owner.mailbox_id}/fetch",
        json={"nonce": b64e(nonce), "signature": b64e(sign_mailbox_auth(intruder.keys.mailbox_key, nonce))},
    )
    assert forged.status == 403
    assert forged.body["error"]["code"] == "mailbox_auth_failed"
    assert await deployment.snapshot() == before
    # A nonce issued for the intruder's mailbox does not open the owner's.
    mine = await calls.call("POST", f"/api/v1/mailboxes/{intruder.mailbox_id}/challenge")
    theirs = await calls.call(
        "POST",
        f"/api/v1/mailboxes/{owner.mailbox_id}/fetch",
        json={
            "nonce": mine.body["nonce"],
            "signature": b64e(sign_mailbox_auth(intruder.keys.mailbox_key, b64d(mine.body["nonce"]))),
        },
    )
    assert theirs.status == 403
    # A used nonce cannot be replayed.
    ok = await calls.call(
        "POST",
        f"/api/v1/mailboxes/{owner.mailbox_id}/fetch",
        json={"nonce": b64e(nonce), "signature": b64e(sign_mailbox_auth(owner.keys.mailbox_key, nonce))},
    )
    assert ok.status == 200
    replay = await calls.call(
        "POST",
        f"/api/v1/mailboxes/{owner.mailbox_id}/fetch",
        json={"nonce": b64e(nonce), "signature": b64e(sign_mailbox_auth(owner.keys.mailbox_key, nonce))},
    )
    assert replay.status == 403


async def test_a_mailbox_page_lists_its_own_contacts_and_their_pools(calls: Calls, deployment: Deployment) -> None:
    """What a browser needs to continue a contact (protocol 15.4): the owner's complete
    contacts with their pools, never another mailbox's."""
    owner, other = Applicant(), Applicant()
    first, _ = await submit(calls, deployment, owner)
    second, _ = await submit(calls, deployment, owner)
    await submit(calls, deployment, other)
    challenge = await calls.call("POST", f"/api/v1/mailboxes/{owner.mailbox_id}/challenge")
    nonce = b64d(challenge.body["nonce"])
    page = await calls.call(
        "POST",
        f"/api/v1/mailboxes/{owner.mailbox_id}/fetch",
        json={"nonce": b64e(nonce), "signature": b64e(sign_mailbox_auth(owner.keys.mailbox_key, nonce))},
    )
    assert page.status == 200
    ids = sorted([first.body["contact"], second.body["contact"]])  # one day: ordered by id
    assert page.body["contacts"] == [{"id": cid, "pool": "general"} for cid in ids]
    assert page.body["messages"] == []


async def test_a_mailbox_page_lists_at_most_its_newest_contacts(calls: Calls, deployment: Deployment) -> None:
    """A mailbox with more contacts than a page lists (50) shows the newest, oldest of them first."""
    owner = Applicant()
    first, _ = await submit(calls, deployment, owner)
    template = await _contact_row(deployment, first.body["contact"])
    today = dt.date.today()
    async with deployment.store.write() as session:
        for i in range(54):  # 55 in all, one a day back from yesterday
            session.add(
                ContactRow(
                    id=f"older-contact-{i:02d}",
                    mailbox_id=template.mailbox_id,
                    pool="general",
                    owner=template.owner,
                    day=today - dt.timedelta(days=i + 1),
                    bucket=template.bucket,
                    state="complete",
                    status="new",
                    attachments=0,
                    server_sealed=False,
                    envelope=template.envelope,
                    envelope_hash=hashlib.sha256(f"{i}".encode()).digest(),
                )
            )
    challenge = await calls.call("POST", f"/api/v1/mailboxes/{owner.mailbox_id}/challenge")
    nonce = b64d(challenge.body["nonce"])
    page = await calls.call(
        "POST",
        f"/api/v1/mailboxes/{owner.mailbox_id}/fetch",
        json={"nonce": b64e(nonce), "signature": b64e(sign_mailbox_auth(owner.keys.mailbox_key, nonce))},
    )
    assert page.status == 200
    listed = [c["id"] for c in page.body["contacts"]]
    newest_older = [f"older-contact-{i:02d}" for i in range(48, -1, -1)]  # 49 days back .. 1 day back
    assert listed == [*newest_older, first.body["contact"]]


async def _contact_row(deployment: Deployment, contact_id: str) -> ContactRow:
    async with deployment.store.read() as session:
        row = await session.get(ContactRow, contact_id)
    assert row is not None
    return row


async def test_mailbox_quota(calls: Calls, deployment: Deployment) -> None:
    applicant = Applicant()
    for _ in range(deployment.config.mailbox_daily_quota):
        answer, _ = await submit(calls, deployment, applicant)
        assert answer.status == 201
    await refused(deployment, 429, "quota_exceeded", submit(calls, deployment, applicant))


# --- nothing secret is kept ------------------------------------------------------------------------------


async def test_canary_never_reaches_storage_or_logs(
    calls: Calls,
    deployment: Deployment,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    applicant = Applicant()
    for _ in range(3):
        answer, _ = await submit(calls, deployment, applicant)
        assert answer.status == 201
    await fetch_mailbox(calls, applicant)
    needles = [CANARY.encode(), CANARY.split()[0].encode(), "документы".encode()]
    for path in Path(deployment.config.data_dir).rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not any(n in blob for n in needles), path
    snapshot = await deployment.snapshot()
    flat = repr(snapshot).encode()
    assert not any(n in flat for n in needles)
    assert not any(n.decode() in caplog.text for n in needles)


async def test_no_directory_yet_is_503(tmp_path: Path) -> None:
    from dataclasses import replace

    from aiohttp import web

    from safepassage.server.app import create_app
    from safepassage.server.config import ServerConfig
    from safepassage.server.db import migrate
    from safepassage.server.keys import create_keys

    config = replace(ServerConfig(data_dir=tmp_path), org_fingerprint="12345 " * 9 + "12345").validate()
    create_keys(config.keys_dir)
    await asyncio.to_thread(migrate.upgrade, config.url)
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as session:
            c = Calls(f"http://{host}:{port}", session)
            answer = await c.call("GET", "/api/v1/directory")
            assert answer.status == 503
            assert answer.body["error"]["code"] == "no_directory"
    finally:
        await runner.cleanup()


async def test_mailbox_nonces_are_stateless_and_reads_are_limited_per_mailbox(
    calls: Calls, deployment: Deployment
) -> None:
    from safepassage.server.context import INTAKE, MAILBOX_READS_PER_MINUTE
    from safepassage.server.limits import KeyedRateLimiter

    owner, other = Applicant(), Applicant()
    await submit(calls, deployment, owner)
    await submit(calls, deployment, other)
    before = await deployment.snapshot()
    # Asking writes nothing; 32 bytes the server never issued are refused like a forgery.
    await calls.call("POST", f"/api/v1/mailboxes/{owner.mailbox_id}/challenge")
    assert await deployment.snapshot() == before
    made_up = bytes(32)
    refused = await calls.call(
        "POST",
        f"/api/v1/mailboxes/{owner.mailbox_id}/fetch",
        json={"nonce": b64e(made_up), "signature": b64e(sign_mailbox_auth(owner.keys.mailbox_key, made_up))},
    )
    assert (refused.status, refused.body["error"]["code"]) == (403, "mailbox_auth_failed")
    assert await deployment.snapshot() == before
    # Reads are limited per mailbox, after the key proved it is the owner's: the owner's
    # reads use up the owner's budget, never another mailbox's.
    deployment.app[INTAKE].mailbox_fetch_limit = KeyedRateLimiter(3, "reads of this mailbox")
    for _ in range(3):
        assert (await fetch_mailbox(calls, owner)).status == 200
    limited = await fetch_mailbox(calls, owner)
    assert (limited.status, limited.body["error"]["code"]) == (429, "rate_limited")
    assert (await fetch_mailbox(calls, other)).status == 200
    assert MAILBOX_READS_PER_MINUTE >= 10
