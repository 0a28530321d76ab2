"""The public intake API (docs/openapi/public.yaml; docs/protocol.md, section 15).

The server checks form, never content: envelope framing and purpose, the
recipient set against the directory, proof of work, signatures on public data,
sizes and quotas. Every check runs before anything is written, and every write
for one request is one transaction, so a refused request changes nothing and an
acknowledged one is on disk before its receipt is signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from safepassage.crypto import envelope as E
from safepassage.crypto import pow as W
from safepassage.crypto.encoding import b64d, b64e
from safepassage.crypto.errors import BadSignature, MalformedInput, PowRejected, SafePassageError
from safepassage.crypto.intake import (
    MAILBOX_NONCE_LEN,
    Kind,
    verify_mailbox_auth,
    verify_submission,
)
from safepassage.crypto.keys import VerifyKey
from safepassage.crypto.receipt import Receipt
from safepassage.crypto.translog import MAX_PROOF_LEN

from .context import Intake, intake_of
from .db.models import Chunk, Contact, Mailbox, MailboxNonce, Message, SpentChallenge
from .directory_store import hold_current_directory_sync
from .errors import ApiError, bad_request, from_crypto
from .inputs import body_parts, check_chunk_order, read_chunk_frame
from .inputs import header_bytes as _header_bytes
from .inputs import path_int as _path_int
from .inputs import query_int as _query_int
from .inputs import read_binary as _read_binary
from .inputs import round_up_hour as _round_up_hour
from .inputs import token_hash as _token_hash
from .routing import choose_owner_sync

routes = web.RouteTableDef()

POW_HEADER = "Safe-Passage-PoW"
MAILBOX_KEY_HEADER = "Safe-Passage-Mailbox-Key"
SIGNATURE_HEADER = "Safe-Passage-Signature"
UPLOAD_HEADER = "Safe-Passage-Upload"
MAILBOX_NONCE_LIFETIME = 300
#: Sealed bytes per mailbox page (about 11 MiB of JSON once base64-encoded).
MAILBOX_PAGE_BYTES = 8 * 1024 * 1024
#: A mailbox page lists at most this many of the mailbox's newest contacts.
MAILBOX_CONTACTS_MAX = 50
MAX_LOG_PAGE = 64
_POOL = re.compile(r"[a-z][a-z0-9-]{0,31}")
_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_MAILBOX = re.compile(r"[0-9a-f]{64}")
#: Largest envelope the protocol allows: the biggest bucket for the most recipients.
MAX_ENVELOPE = E.envelope_length(len(E.BUCKETS) - 1, E.MAX_RECIPIENTS)


def _now() -> int:
    return int(time.time())


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _new_id() -> str:
    return secrets.token_urlsafe(16)


# --- request parsing -------------------------------------------------------------------------


def _pool(request: web.Request) -> str:
    pool = request.query.get("pool", "")
    if not _POOL.fullmatch(pool):
        raise bad_request("Query parameter 'pool' is missing or malformed.")
    return pool


def _contact_id(raw: str, what: str = "contact id") -> str:
    if not _ID.fullmatch(raw):
        raise bad_request(f"Malformed {what}.")
    return raw


def _mailbox_id(request: web.Request) -> str:
    raw = request.match_info["mailbox_id"]
    if not _MAILBOX.fullmatch(raw):
        raise bad_request("Malformed mailbox id.")
    return raw


def _pow(request: web.Request, app: Intake, now: int) -> W.CheckedChallenge:
    raw = request.headers.get(POW_HEADER)
    if raw is None:
        raise ApiError(403, "pow_required", f"{POW_HEADER} is required: get a challenge from /pow and solve it.")
    challenge_text, sep, counter_text = raw.strip().rpartition(".")
    if (
        not sep
        or not counter_text.isascii()
        or not counter_text.isdigit()
        or len(counter_text) > 20
        or int(counter_text) > W.MAX_COUNTER
    ):
        raise bad_request(f"{POW_HEADER} must be '<challenge>.<counter>' with a counter below 2^64.")
    try:
        checked = W.check_challenge(app.keys.pow, challenge_text, now=now)
    except MalformedInput:
        raise bad_request(f"{POW_HEADER} carries a malformed challenge.") from None
    except PowRejected as exc:
        raise from_crypto(exc, 403, "pow_invalid") from None
    return checked


@dataclass(frozen=True, slots=True)
class _Spent:
    """A challenge whose work was verified, and whether its spent mark still has to be written."""

    nonce: bytes
    expires: int
    held: bool  # True: the mark is held in memory and goes into the submission's own transaction

    def mark(self, session: Session) -> None:
        """After a refusal: record the mark unless something else already did."""
        if session.get(SpentChallenge, self.nonce) is None:
            session.add(SpentChallenge(nonce=self.nonce, expires=self.expires))

    def claim(self, session: Session) -> None:
        """With the submission: the mark must be new (the web form path spends challenges of the
        same key by committing first, so a nonce can be spent there while held here)."""
        if session.get(SpentChallenge, self.nonce) is not None:
            raise ApiError(409, "pow_reused", "This proof of work was already used; get a new challenge.")
        session.add(SpentChallenge(nonce=self.nonce, expires=self.expires))


async def _spend_and_verify(app: Intake, checked: W.CheckedChallenge, counter_header: str) -> _Spent:
    """Admission, then :func:`_spend_then_verify`. A server whose proof-of-work checks are all
    taken and whose backlog is full answers 503 ``busy`` here, before the challenge is spent:
    the applicant's work is not lost, and the same request may be sent again."""
    async with app.pow_gate.slot():
        return await _spend_then_verify(app, checked, counter_header)


async def _spend_then_verify(app: Intake, checked: W.CheckedChallenge, counter_header: str) -> _Spent:
    """Spend the challenge, then check the work; then charge the load counters.

    The nonce is marked spent *before* the Argon2id evaluation (section 12.5),
    so each challenge costs the server at most one evaluation however many
    counters are tried with it, and a replayed challenge is refused with one
    lookup. On PostgreSQL (possibly several front ends) the mark is committed
    first. On SQLite, where one process verifies solutions, the mark is held
    in this process while the work is checked and then committed in the same
    transaction as the submission (or alone, if the work or the submission is
    refused): one commit, one fsync, per accepted submission instead of two.

    Only verified work counts towards the global rate limit and the
    difficulty: a replayed or unsolved challenge can neither use up the
    applicants' budget nor raise their difficulty. The spent row's expiry is
    rounded up to the hour, so it does not date the submission it belongs to.
    """
    nonce = checked.challenge.nonce
    spent = _Spent(nonce, _round_up_hour(checked.challenge.expires), held=app.store.is_sqlite)
    reused = ApiError(409, "pow_reused", "This proof of work was already used; get a new challenge.")

    def spend(session: Session) -> None:
        if session.get(SpentChallenge, nonce) is not None:
            raise reused
        session.add(SpentChallenge(nonce=nonce, expires=spent.expires))
        try:
            session.flush()
        except IntegrityError:
            raise reused from None

    if spent.held:
        # Reserved before the lookup, with no await in between: two requests with one
        # nonce cannot both get past this point.
        if nonce in app.pow_in_flight:
            raise reused
        app.pow_in_flight.add(nonce)
        async with app.store.read() as session:
            if await session.get(SpentChallenge, nonce) is not None:
                app.pow_in_flight.discard(nonce)
                raise reused
    else:
        await app.store.transaction(spend)
    counter = int(counter_header.rpartition(".")[2])
    try:
        # In a worker thread (libsodium releases the GIL), outside any transaction.
        await asyncio.to_thread(W.verify_work, checked, counter)
        app.submission_limit.hit()
    except (PowRejected, MalformedInput) as exc:
        await _release(app, spent, refused=True)
        raise from_crypto(exc, 403, "pow_invalid") from None
    except ApiError:
        await _release(app, spent, refused=True)
        raise
    app.difficulty.record_submission()
    return spent


async def _release(app: Intake, spent: _Spent, *, refused: bool) -> None:
    """After a refusal the challenge is used up all the same: write a held mark alone."""
    if not spent.held:
        return
    try:
        if refused:
            await app.store.transaction(spent.mark)
    finally:
        app.pow_in_flight.discard(spent.nonce)


async def _write_paid(app: Intake, spent: _Spent, work: Callable[[Session], None]) -> None:
    """The submission's transaction, with the held spent mark in it."""

    def both(session: Session) -> None:
        if spent.held:
            spent.claim(session)
        work(session)

    try:
        await _write(app, both)
    except BaseException:
        await _release(app, spent, refused=True)
        raise
    await _release(app, spent, refused=False)


def _receipt_json(receipt: Receipt) -> dict[str, str]:
    return {
        "contact": receipt.contact_id,
        "day": receipt.day,
        "envelope": b64e(receipt.envelope_hash),
        "sig": b64e(receipt.signature),
    }


# --- checks on envelopes -----------------------------------------------------------------------


def _check_envelope(app: Intake, data: bytes, purpose: E.Purpose, pool: str, now: int) -> E.EnvelopeHeader:
    try:
        header = E.parse_header(data)
    except SafePassageError as exc:
        raise from_crypto(exc, 400, "malformed_envelope") from None
    if header.purpose != purpose:
        raise bad_request(f"Expected an envelope of purpose {purpose.name.lower()}.", "wrong_purpose")
    directory = app.published().directory
    if pool not in {p.name for p in directory.pools}:
        raise ApiError(404, "unknown_pool", "No such pool in the current directory.")
    try:
        expected = {key.key_id.raw for _, key in directory.recipients(pool, now)}
    except SafePassageError:
        raise ApiError(503, "pool_unavailable", "Nobody in this pool can receive contacts right now.") from None
    if set(header.recipient_ids) != expected:
        raise ApiError(
            422,
            "recipients_mismatch",
            "The envelope must be sealed to exactly the current intake keys of the pool; fetch the directory again.",
        )
    return header


def _check_submission(
    request: web.Request, data: bytes, *, kind: Kind, pool: str, attachments: int, contact_id: str, key: VerifyKey
) -> None:
    signature = _header_bytes(request, SIGNATURE_HEADER, 64)
    try:
        verify_submission(
            key, signature, kind=kind, pool=pool, attachments=attachments, envelope=data, contact_id=contact_id
        )
    except BadSignature:
        raise ApiError(403, "bad_signature", "The submission signature does not verify.") from None


def _quota_counts(mailbox_id: str, today: dt.date) -> tuple[Any, Any]:  # two count Selects
    contacts = select(func.count()).select_from(Contact).where(Contact.mailbox_id == mailbox_id, Contact.day == today)
    messages = (
        select(func.count())
        .select_from(Message)
        .where(Message.mailbox_id == mailbox_id, Message.day == today, Message.kind == "follow-up")
    )
    return contacts, messages


def _over_quota(app: Intake, contacts: int | None, messages: int | None) -> None:
    if (contacts or 0) + (messages or 0) >= app.config.mailbox_daily_quota:
        raise ApiError(429, "quota_exceeded", "This mailbox has sent as much as it may today; try again tomorrow.")


async def _check_quota(session: AsyncSession, app: Intake, mailbox_id: str, today: dt.date) -> None:
    contacts, messages = _quota_counts(mailbox_id, today)
    _over_quota(app, await session.scalar(contacts), await session.scalar(messages))


def _check_quota_sync(session: Session, app: Intake, mailbox_id: str, today: dt.date) -> None:
    contacts, messages = _quota_counts(mailbox_id, today)
    _over_quota(app, session.scalar(contacts), session.scalar(messages))


# --- directory and log ----------------------------------------------------------------------------


@routes.get("/api/v1/directory", name="directory")
async def get_directory(request: web.Request) -> web.Response:
    app = intake_of(request)
    # Clients fetch the directory before anything else: serve the newest.
    await app.refresh_if_changed()
    published = app.published()
    head = published.head.head
    known = (
        _query_int(request, "known_size", default=None, maximum=2**53 - 1) if "known_size" in request.query else None
    )
    consistency: list[bytes] = []
    if known is not None and 0 < known < head.size:
        consistency = published.log.consistency_proof(known, head.size)
    return web.json_response(
        {
            "directory": published.signed.to_json(),
            "tree_head": published.head.to_json(),
            "index": published.index,
            "inclusion": [h.hex() for h in published.log.inclusion_proof(published.index, head.size)],
            "consistency": [h.hex() for h in consistency[:MAX_PROOF_LEN]],
        }
    )


@routes.get("/api/v1/log/entries", name="log_entries")
async def get_log_entries(request: web.Request) -> web.Response:
    app = intake_of(request)
    size = app.published().log.size
    start = _query_int(request, "start", default=None, maximum=size)
    end = _query_int(request, "end", default=None, maximum=size)
    if not start < end or end - start > MAX_LOG_PAGE:
        raise bad_request(f"Ask for 1 to {MAX_LOG_PAGE} entries with 0 <= start < end <= {size}.", "bad_range")
    entries = await app.log_entries(start, end)
    # The stored entries are canonical JSON already (checked when published):
    # served as they are, with no parsing on an unauthenticated request.
    body = b'{"entries":[' + b",".join(entries) + b"]}"
    return web.Response(body=body, content_type="application/json")


# --- proof of work ----------------------------------------------------------------------------------


@routes.post("/api/v1/pow", name="pow")
async def new_challenge(request: web.Request) -> web.Response:
    app = intake_of(request)
    # No cap here: issuing costs one HMAC; the checks challenges lead to are bounded (WorkGate).
    cfg = app.config
    challenge = W.issue_challenge(
        app.keys.pow,
        difficulty=app.difficulty.current(),
        now=_now(),
        lifetime=cfg.pow_lifetime,
        memlimit_kib=cfg.pow_memlimit_kib,
    )
    return web.json_response(
        {
            "challenge": challenge.to_text(),
            "difficulty": challenge.difficulty,
            "memlimit_kib": challenge.memlimit_kib,
            "opslimit": challenge.opslimit,
            "expires": challenge.expires,
        },
        status=201,
    )


# --- contacts -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Stored:
    contact_id: str
    envelope_hash: bytes
    day: dt.date


def _sign_receipt(app: Intake, stored: _Stored) -> dict[str, str]:
    receipt = Receipt.issue(app.keys.receipt, stored.contact_id, stored.envelope_hash, stored.day.isoformat())
    return _receipt_json(receipt)


@routes.post("/api/v1/contacts", name="submit_contact")
async def submit_contact(request: web.Request) -> web.Response:
    app = intake_of(request)
    cfg = app.config
    now, today = _now(), _today()
    pool = _pool(request)
    attachments = _query_int(request, "attachments", default=0, maximum=cfg.max_attachments)
    mailbox_key = VerifyKey(_header_bytes(request, MAILBOX_KEY_HEADER, 32))
    checked = _pow(request, app, now)
    data = await _read_binary(request, MAX_ENVELOPE)
    header = _check_envelope(app, data, E.Purpose.CONTACT, pool, now)
    _check_submission(request, data, kind="contact", pool=pool, attachments=attachments, contact_id="", key=mailbox_key)
    routed_by = app.published()
    candidates = [h.handler_id for h, key in routed_by.directory.recipients(pool, now)]
    mailbox_id = mailbox_key.key_id.hex()
    contact_id = _new_id()
    token = secrets.token_urlsafe(32) if attachments else None
    envelope_hash = hashlib.sha256(data).digest()
    spent = await _spend_and_verify(app, checked, request.headers[POW_HEADER])

    def store(session: Session) -> None:
        mailbox = session.get(Mailbox, mailbox_id)
        if mailbox is None:
            session.add(Mailbox(id=mailbox_id, public_key=mailbox_key.public_bytes_raw(), created_day=today))
        else:
            _check_quota_sync(session, app, mailbox_id, today)
        hold_current_directory_sync(session, routed_by)
        owner = choose_owner_sync(session, pool, candidates)
        session.add(
            Contact(
                id=contact_id,
                mailbox_id=mailbox_id,
                pool=pool,
                owner=owner,
                day=today,
                bucket=header.bucket,
                state="pending" if attachments else "complete",
                status="new",
                attachments=attachments,
                server_sealed=False,
                envelope=data,
                envelope_hash=envelope_hash,
                upload_token_hash=_token_hash(token) if token else None,
                upload_expires=_round_up_hour(now + 3600 * cfg.upload_window_hours) if token else None,
            )
        )
        _flush_or_conflict_sync(session)

    try:
        await _write_paid(app, spent, store)
    except ApiError as exc:
        if exc.code == "directory_changed":
            await app.refresh()  # the next submission is checked against the new directory
        raise
    stored = _Stored(contact_id, envelope_hash, today)
    if token is not None:
        return web.json_response({"contact": contact_id, "status": "pending", "upload_token": token}, status=201)
    return web.json_response(
        {"contact": contact_id, "status": "complete", "receipt": _sign_receipt(app, stored)}, status=201
    )


async def _write(app: Intake, work: Callable[[Session], None]) -> None:
    """A write transaction in which a lost race (an insert that another request
    made first, seen at any flush or at commit) is a 409 with nothing stored, not a 500."""
    try:
        await app.store.transaction(work)
    except IntegrityError:
        raise ApiError(409, "conflict", "A concurrent request already stored this; nothing was stored.") from None


def _flush_or_conflict_sync(session: Session) -> None:
    try:
        session.flush()
    except IntegrityError:
        # Two requests raced for the same challenge or chunk: the loser changes nothing.
        raise ApiError(409, "conflict", "A concurrent request already used this; nothing was stored.") from None


@contextlib.asynccontextmanager
async def _writing(app: Intake) -> AsyncIterator[AsyncSession]:
    """As :func:`_write`, for callers that write through the async session (the web pages)."""
    try:
        async with app.store.write() as session:
            yield session
    except IntegrityError:
        raise ApiError(409, "conflict", "A concurrent request already stored this; nothing was stored.") from None


async def _flush_or_conflict(session: AsyncSession) -> None:
    try:
        await session.flush()
    except IntegrityError:
        raise ApiError(409, "conflict", "A concurrent request already used this; nothing was stored.") from None


def _check_pending(contact: Contact | None, token: str) -> Contact:
    if contact is None:
        raise ApiError(404, "not_found", "No such contact.")
    if contact.upload_token_hash is None or not secrets.compare_digest(contact.upload_token_hash, _token_hash(token)):
        raise ApiError(403, "bad_upload_token", f"{UPLOAD_HEADER} is missing or wrong.")
    if contact.state == "pending" and (contact.upload_expires or 0) <= _now():
        raise ApiError(409, "upload_expired", "The upload window has closed; send the contact again.")
    return contact


async def _pending_contact(session: AsyncSession, request: web.Request, contact_id: str) -> Contact:
    return _check_pending(await session.get(Contact, contact_id), request.headers.get(UPLOAD_HEADER, ""))


def _pending_contact_sync(session: Session, token: str, contact_id: str) -> Contact:
    return _check_pending(session.get(Contact, contact_id), token)


@routes.put("/api/v1/contacts/{contact_id}/attachments/{attachment}/chunks/{index}", name="upload_chunk")
async def upload_chunk(request: web.Request) -> web.Response:
    app = intake_of(request)
    contact_id = _contact_id(request.match_info["contact_id"])
    attachment = _path_int(request, "attachment", E.MAX_ATTACHMENTS - 1)
    index = _path_int(request, "index", E.MAX_CHUNKS - 1)
    # Token, contact and state first: nobody without an upload token makes the
    # server read (and buffer) a megabyte.
    async with app.store.read() as session:
        contact = await _pending_contact(session, request, contact_id)
        if contact.state != "pending":
            raise ApiError(409, "already_complete", "This contact is already complete.")
    frame, fields = await read_chunk_frame(request, attachment, index)
    token = request.headers.get(UPLOAD_HEADER, "")

    def store(session: Session) -> None:
        contact = _pending_contact_sync(session, token, contact_id)
        if contact.state != "pending":
            raise ApiError(409, "already_complete", "This contact is already complete.")
        if attachment >= contact.attachments:
            raise bad_request("No such attachment for this contact.", "attachment_out_of_range")
        last = session.scalar(
            select(Chunk)
            .where(Chunk.contact_id == contact_id, Chunk.attachment == attachment)
            .order_by(Chunk.index.desc())
            .limit(1)
        )
        check_chunk_order(None if last is None else last.index, last is not None and last.final, index)
        total = session.scalar(select(func.count()).select_from(Chunk).where(Chunk.contact_id == contact_id))
        if ((total or 0) + 1) * E.CHUNK_LEN > app.config.max_contact_bytes:
            raise ApiError(413, "contact_too_large", "The attachments exceed the size limit for one contact.")
        session.add(Chunk(contact_id=contact_id, attachment=attachment, index=index, final=fields.final, frame=frame))
        _flush_or_conflict_sync(session)

    await _write(app, store)
    return web.json_response({"attachment": attachment, "index": index, "final": fields.final}, status=201)


@routes.post("/api/v1/contacts/{contact_id}/finalise", name="finalise_contact")
async def finalise_contact(request: web.Request) -> web.Response:
    app = intake_of(request)
    contact_id = _contact_id(request.match_info["contact_id"])
    async with app.store.write() as session:
        contact = await _pending_contact(session, request, contact_id)
        if contact.state == "pending":
            finals = await session.scalar(
                select(func.count()).select_from(Chunk).where(Chunk.contact_id == contact_id, Chunk.final.is_(True))
            )
            if finals != contact.attachments:
                raise ApiError(409, "attachments_incomplete", "Every attachment needs its final chunk first.")
            contact.state = "complete"
            contact.upload_expires = None
        stored = _Stored(contact.id, contact.envelope_hash, contact.day)
    # Finalising again with the same token returns the same receipt: a client
    # that lost the answer can ask again.
    return web.json_response({"contact": contact_id, "status": "complete", "receipt": _sign_receipt(app, stored)})


# --- mailboxes -----------------------------------------------------------------------------------------


@routes.post("/api/v1/mailboxes/{mailbox_id}/challenge", name="mailbox_challenge")
async def mailbox_challenge(request: web.Request) -> web.Response:
    app = intake_of(request)
    mailbox_id = _mailbox_id(request)
    # The expiry is rounded up to the hour (at least five minutes away), so neither the
    # nonce nor the row written when it is used records when this mailbox was read.
    expires = _round_up_hour(_now() + MAILBOX_NONCE_LIFETIME)
    # Stateless (protocol 15.4): no write and no cap, so a flood of these takes nothing
    # from anyone. Issued whether or not the mailbox exists: the answer must not tell a
    # prober which mailbox ids are in use.
    nonce = app.keys.pow.mailbox_nonce(bytes.fromhex(mailbox_id), expires)
    return web.json_response({"nonce": b64e(nonce), "expires": expires}, status=201)


async def _read_json(request: web.Request, limit: int) -> dict[str, object]:
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"The body may be at most {limit} bytes.")
    # Read to the end (a body may arrive in several pieces over Tor), bounded and paced.
    raw = b"".join([part async for part in body_parts(request, limit, "body")])
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise bad_request("The body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise bad_request("The body must be a JSON object.")
    return value


@routes.post("/api/v1/mailboxes/{mailbox_id}/fetch", name="mailbox_fetch")
async def mailbox_fetch(request: web.Request) -> web.Response:
    app = intake_of(request)
    mailbox_id = _mailbox_id(request)
    body = await _read_json(request, 1024)
    after = body.pop("after", 0)
    if set(body) != {"nonce", "signature"} or not all(isinstance(v, str) for v in body.values()):
        raise bad_request('The body must be {"nonce": ..., "signature": ..., "after": n}.')
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= 2**53 - 1:
        raise bad_request("'after' must be a non-negative integer.")
    try:
        nonce = b64d(str(body["nonce"]), length=MAILBOX_NONCE_LEN)
        signature = b64d(str(body["signature"]), length=64)
    except MalformedInput:
        raise bad_request("Malformed nonce or signature.") from None
    refused = ApiError(403, "mailbox_auth_failed", "Mailbox authentication failed; ask for a new challenge.")
    try:
        expires = app.keys.pow.check_mailbox_nonce(bytes.fromhex(mailbox_id), nonce, _now())
    except (PowRejected, MalformedInput):
        raise refused from None
    async with app.store.read() as session:
        mailbox = await session.get(Mailbox, mailbox_id)
    if mailbox is None:
        raise refused
    try:
        verify_mailbox_auth(VerifyKey(mailbox.public_key), nonce, signature)
    except BadSignature:
        raise refused from None
    # Only the mailbox's owner gets this far: a limit per mailbox is fair, and it bounds
    # the used-nonce rows one mailbox can make.
    app.mailbox_fetch_limit.hit(mailbox_id)
    async with app.store.write() as session:
        # Single use: the nonce is recorded as used, a unique key, until it expires.
        session.add(MailboxNonce(nonce=nonce, mailbox_id=mailbox_id, expires=expires))
        try:
            await session.flush()
        except IntegrityError:
            raise refused from None
        wanted = Message.mailbox_id == mailbox_id, Message.kind == "reply", Message.seq > after
        # A page is bounded by count and by bytes (always at least one reply),
        # so a mailbox of many large replies stays readable page by page and
        # the server never builds an answer of hundreds of megabytes.
        sizes = (
            await session.execute(
                select(Message.seq, func.length(Message.envelope))
                .where(*wanted)
                .order_by(Message.seq)
                .limit(app.config.mailbox_fetch_limit)
            )
        ).all()
        last_seq, total = after, 0
        for seq, size in sizes:
            if total and total + size > MAILBOX_PAGE_BYTES:
                break
            last_seq, total = seq, total + size
        rows = (
            await session.scalars(select(Message).where(*wanted, Message.seq <= last_seq).order_by(Message.seq))
        ).all()
        messages = [
            {"id": m.id, "contact": m.contact_id, "day": m.day.isoformat(), "seq": m.seq, "envelope": b64e(m.envelope)}
            for m in rows
        ]
        # Which contacts a follow-up can continue, and their pools (protocol 15.4): a
        # browser keeps nothing between visits, so it learns them here, as the owner.
        newest = (
            await session.execute(
                select(Contact.id, Contact.pool)
                .where(Contact.mailbox_id == mailbox_id, Contact.state == "complete")
                .order_by(Contact.day.desc(), Contact.id.desc())
                .limit(MAILBOX_CONTACTS_MAX)
            )
        ).all()
        contacts = [{"id": cid, "pool": pool} for cid, pool in reversed(newest)]
    return web.json_response({"messages": messages, "contacts": contacts})


@routes.post("/api/v1/mailboxes/{mailbox_id}/follow-ups", name="follow_up")
async def post_follow_up(request: web.Request) -> web.Response:
    app = intake_of(request)
    mailbox_id = _mailbox_id(request)
    contact_id = _contact_id(request.query.get("contact", ""))
    now, today = _now(), _today()
    checked = _pow(request, app, now)
    data = await _read_binary(request, MAX_ENVELOPE)
    async with app.store.read() as session:
        contact = await session.get(Contact, contact_id)
        mailbox = await session.get(Mailbox, mailbox_id)
    if contact is None or mailbox is None or contact.mailbox_id != mailbox_id or contact.state != "complete":
        raise ApiError(404, "not_found", "No such contact for this mailbox.")
    header = _check_envelope(app, data, E.Purpose.FOLLOW_UP, contact.pool, now)
    _check_submission(
        request,
        data,
        kind="follow-up",
        pool=contact.pool,
        attachments=0,
        contact_id=contact_id,
        key=VerifyKey(mailbox.public_key),
    )
    message_id = _new_id()
    envelope_hash = hashlib.sha256(data).digest()
    spent = await _spend_and_verify(app, checked, request.headers[POW_HEADER])

    def store(session: Session) -> None:
        # Lock the mailbox row (PostgreSQL; SQLite writes are serialised), as a reply does, so a
        # follow-up and a reply to one mailbox never take the same sequence number.
        session.execute(select(Mailbox.id).where(Mailbox.id == mailbox_id).with_for_update())
        _check_quota_sync(session, app, mailbox_id, today)
        seq = session.scalar(select(func.coalesce(func.max(Message.seq), 0)).where(Message.mailbox_id == mailbox_id))
        session.add(
            Message(
                id=message_id,
                mailbox_id=mailbox_id,
                contact_id=contact_id,
                kind="follow-up",
                day=today,
                bucket=header.bucket,
                envelope=data,
                envelope_hash=envelope_hash,
                seq=(seq or 0) + 1,
            )
        )
        _flush_or_conflict_sync(session)

    await _write_paid(app, spent, store)
    receipt = _sign_receipt(app, _Stored(message_id, envelope_hash, today))
    return web.json_response({"message": message_id, "receipt": receipt}, status=201)
