"""The no-JavaScript path: the server seals for the applicant, in memory, for one request.

Every envelope is built with the same calls the command-line client makes
(:mod:`safepassage.client.applicant`): the contact or follow-up payload signed
with the codename's mailbox key, sealed with :func:`~safepassage.crypto.envelope.seal`
to exactly the pool's current intake keys from the published directory, the
submission signed with :func:`~safepassage.crypto.intake.sign_submission`. Then
the same checks the API runs on a client's upload run on it (form, recipients,
signature) before one transaction stores it, marked ``server_sealed`` so the
handler knows the server saw the plaintext.

What replaces the proof of work: the form carries a server-issued challenge
(the same MAC'd, expiring kind as ``/api/v1/pow``), spent on submission so a
form is used once; each submission counts against the global submission limit
and the load that sets the difficulty; and the codename derivations (Argon2id,
64 MiB each) this path costs the server are capped per minute and run at most
two at a time. A browser cannot do Argon2id work without JavaScript, so this
path is cheaper to flood than the API; the operator can switch it off.

Nothing here is logged or written outside the one database transaction, and
nothing here keeps a codename, a key or a plaintext after the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from safepassage.crypto import pow as W
from safepassage.crypto.codename import ApplicantKeys, Codename, derive_applicant_keys, generate_codename
from safepassage.crypto.directory import Handler
from safepassage.crypto.encoding import canonical_json
from safepassage.crypto.envelope import CHUNK_LEN, MAX_BODY, Purpose, SealedEnvelope, open_envelope, seal
from safepassage.crypto.errors import BadSignature, ExpiredKey, MalformedInput, PowRejected, SafePassageError
from safepassage.crypto.intake import (
    AttachmentInfo,
    Contact,
    FollowUp,
    Kind,
    attachment_chunk_count,
    sign_submission,
    verify_submission,
)
from safepassage.crypto.keys import HybridPublicKey
from safepassage.crypto.staffmsg import Reply as HandlerReply

from .. import intake as api
from ..context import Intake
from ..db.models import Chunk, Mailbox, Message, SpentChallenge
from ..db.models import Contact as ContactRow
from ..directory_store import Published, hold_current_directory_sync
from ..errors import ApiError, bad_request
from ..inputs import round_up_hour
from ..limits import RateLimiter
from ..routing import choose_owner
from .forms import ContactForm

#: Argon2id derivations at once: each holds 64 MiB and a core.
MAX_PARALLEL_DERIVATIONS: Final = 2
#: Contact forms read at once: each may hold its attachments twice (plain, then sealed).
MAX_PARALLEL_UPLOADS: Final = 4
#: What the signed wrapper adds to a payload's body, as in the client (rounded up).
_SIGNED_OVERHEAD: Final = 128


class WebSealer:
    """Per-process state of the no-JavaScript path: its limit and its derivation slots."""

    def __init__(self, per_minute: int) -> None:
        self.limit = RateLimiter(per_minute, "messages sealed by this server")
        self._slots = asyncio.Semaphore(MAX_PARALLEL_DERIVATIONS)
        self._uploads = asyncio.Semaphore(MAX_PARALLEL_UPLOADS)

    @contextlib.asynccontextmanager
    async def upload_slot(self) -> AsyncIterator[None]:
        """Refuse at once (rather than queue) when the upload slots are taken: memory is the bound."""
        if self._uploads.locked():
            raise ApiError(429, "rate_limited", "Too many messages are being sealed right now; try again in a minute.")
        async with self._uploads:
            yield

    async def derive(self, codename: Codename) -> ApplicantKeys:
        self.limit.hit()
        async with self._slots:
            return await asyncio.to_thread(derive_applicant_keys, codename)


def _now() -> int:
    return int(time.time())


# --- the form token ------------------------------------------------------------------------------------


def issue_form_token(app: Intake) -> str:
    """A challenge of the API's kind, valid an hour: time to write without losing the text."""
    challenge = W.issue_challenge(
        app.keys.pow,
        # The current API difficulty: using this token on the API instead
        # still needs the full work, so a form is no way around it.
        difficulty=app.difficulty.current(),
        now=_now(),
        lifetime=W.MAX_LIFETIME,
        memlimit_kib=app.config.pow_memlimit_kib,
    )
    return challenge.to_text()


async def spend_form_token(app: Intake, token: str, *, submission: bool) -> None:
    """Spend the form's challenge once; a submission also counts as load (a read does not)."""
    try:
        checked = W.check_challenge(app.keys.pow, token, now=_now())
    except MalformedInput:
        raise bad_request("The form is damaged; open the page again.", "bad_form") from None
    except PowRejected:
        raise ApiError(403, "form_expired", "This form has expired; send it again.") from None
    nonce = checked.challenge.nonce
    async with api._writing(app) as session:
        if await session.get(SpentChallenge, nonce) is not None:
            raise ApiError(409, "form_reused", "This form was already sent.")
        session.add(SpentChallenge(nonce=nonce, expires=round_up_hour(checked.challenge.expires)))
    if submission:
        app.submission_limit.hit()
        app.difficulty.record_submission()


# --- shared steps ----------------------------------------------------------------------------------------


def _recipients(app: Intake, pool: str, now: int) -> list[tuple[Handler, HybridPublicKey]]:
    directory = app.published().directory
    if pool not in {p.name for p in directory.pools}:
        raise bad_request("Choose one of the listed pools.", "unknown_pool")
    try:
        return list(directory.recipients(pool, now))
    except ExpiredKey:
        raise ApiError(503, "pool_unavailable", "Nobody in this pool can receive messages right now.") from None


@contextlib.asynccontextmanager
async def _routing_by(app: Intake, routed_by: Published) -> AsyncIterator[AsyncSession]:
    """A write transaction that stores a new case routed by ``routed_by``: refused with 409
    ``directory_changed`` if a newer directory was published meanwhile (which is then loaded)."""
    try:
        async with api._writing(app) as session:
            await session.run_sync(hold_current_directory_sync, routed_by)
            yield session
    except ApiError as exc:
        if exc.code == "directory_changed":
            await app.refresh()
        raise


def _fits(body: dict[str, object]) -> None:
    if len(canonical_json(body)) + _SIGNED_OVERHEAD > MAX_BODY:  # type: ignore[arg-type]
        raise ApiError(413, "message_too_long", "The message is too long for one envelope.")


def _checked_as_api(
    app: Intake,
    sealed: SealedEnvelope,
    purpose: Purpose,
    pool: str,
    now: int,
    signature: bytes,
    keys: ApplicantKeys,
    *,
    attachments: int,
    contact_id: str,
) -> None:
    """The checks ``/api/v1`` runs on a client's upload, on ours: what we store is what a client would post."""
    api._check_envelope(app, sealed.data, purpose, pool, now)
    kind: Kind = "contact" if purpose == Purpose.CONTACT else "follow-up"
    try:
        verify_submission(
            keys.mailbox_key.verify_key,
            signature,
            kind=kind,
            pool=pool,
            attachments=attachments,
            envelope=sealed.data,
            contact_id=contact_id,
        )
    except BadSignature:  # pragma: no cover - we just signed it; a failure here is a bug, not input
        raise ApiError(500, "internal_error", "Internal error.") from None


# --- contact ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class WebContact:
    codename: Codename
    contact_id: str
    day: str

    def __repr__(self) -> str:
        return f"WebContact({self.contact_id})"


def _seal_attachments(sealed: SealedEnvelope, form: ContactForm) -> list[tuple[int, int, bool, bytes]]:
    rows = []
    for number, upload in enumerate(form.files):
        sealer = sealed.attachment_sealer(number)
        for index, frame in enumerate(sealer.seal_stream(io.BytesIO(upload.data))):
            rows.append((number, index, index == attachment_chunk_count(len(upload.data)) - 1, frame))
        upload.wipe()
    return rows


async def seal_contact(app: Intake, sealer: WebSealer, form: ContactForm, *, language: str) -> WebContact:
    """Seal and store one contact from the form; return the codename to show once."""
    cfg = app.config
    now, today = _now(), api._today()
    pool = form.get("pool")
    routed_by = app.published()
    recipients = _recipients(app, pool, now)
    if len(form.files) > cfg.max_attachments:
        raise ApiError(413, "too_many_attachments", "Too many attached files.")
    if sum(attachment_chunk_count(len(f.data)) for f in form.files) * CHUNK_LEN > cfg.max_contact_bytes:
        raise ApiError(413, "contact_too_large", "The attachments exceed the size limit for one contact.")
    codename = generate_codename()
    keys = await sealer.derive(codename)
    try:
        contact = Contact(
            pool=pool,
            language=language,
            message=form.get("message"),
            fields=form.fields(),
            attachments=tuple(
                AttachmentInfo(f.name, f.media_type, len(f.data), attachment_chunk_count(len(f.data)))
                for f in form.files
            ),
            reply_key=keys.reply_key.public_key,
            mailbox_key=keys.mailbox_key.verify_key,
            origin="server-sealed",
        )
        _fits(contact.to_json())  # type: ignore[arg-type]
        payload = contact.seal_payload(keys.mailbox_key)
    except MalformedInput:
        raise bad_request("Some of the fields are too long or malformed.", "bad_contact") from None
    sealed = seal(payload, [key for _, key in recipients], Purpose.CONTACT)
    del payload, contact
    attachments = len(form.files)
    signature = sign_submission(
        keys.mailbox_key, kind="contact", pool=pool, attachments=attachments, envelope=sealed.data
    )
    _checked_as_api(app, sealed, Purpose.CONTACT, pool, now, signature, keys, attachments=attachments, contact_id="")
    frames = await asyncio.to_thread(_seal_attachments, sealed, form)
    mailbox_id = keys.mailbox_id.hex()
    contact_id = api._new_id()
    candidates = [h.handler_id for h, _ in recipients]
    async with _routing_by(app, routed_by) as session:
        # A fresh codename: this mailbox is new (a collision of 2^-128 would be refused here).
        session.add(
            Mailbox(id=mailbox_id, public_key=keys.mailbox_key.verify_key.public_bytes_raw(), created_day=today)
        )
        owner = await choose_owner(session, pool, candidates)
        session.add(
            ContactRow(
                id=contact_id,
                mailbox_id=mailbox_id,
                pool=pool,
                owner=owner,
                day=today,
                bucket=sealed.header.bucket,
                state="complete",
                status="new",
                attachments=attachments,
                server_sealed=True,
                envelope=sealed.data,
                envelope_hash=hashlib.sha256(sealed.data).digest(),
                upload_token_hash=None,
                upload_expires=None,
            )
        )
        await api._flush_or_conflict(session)
        for number, index, final, frame in frames:
            session.add(Chunk(contact_id=contact_id, attachment=number, index=index, final=final, frame=frame))
        await api._flush_or_conflict(session)
    return WebContact(codename, contact_id, today.isoformat())


# --- return: read replies, send a follow-up -------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class ShownReply:
    """A reply as the page shows it: verified text, or the reason it is not."""

    contact_id: str
    day: str
    handler_name: str | None
    text: str | None
    problem: str | None

    def __repr__(self) -> str:
        return f"ShownReply({self.contact_id}, {self.day})"


@dataclass(frozen=True, slots=True, repr=False)
class Mailroom:
    """What one codename may see: its contacts (to continue) and its replies."""

    contact_ids: tuple[str, ...]
    replies: tuple[ShownReply, ...]

    def __repr__(self) -> str:
        return f"Mailroom({len(self.contact_ids)} contact(s), {len(self.replies)} repl(ies))"


def _open_reply(app: Intake, keys: ApplicantKeys, message: Message) -> ShownReply:
    # The same verification as the client (protocol 16.1): a reply counts as
    # from the organisation only if a listed handler signed it for this contact.
    directory = app.published().directory
    base = (message.contact_id, message.day.isoformat())
    try:
        opened = open_envelope(message.envelope, [keys.reply_key], expected_purpose=Purpose.REPLY)
        signed = HandlerReply.open_payload(opened.plaintext, directory)
    except SafePassageError:
        return ShownReply(*base, None, None, "unverified")
    if signed.contact_id != message.contact_id:
        return ShownReply(*base, None, None, "unverified")
    return ShownReply(*base, directory.handler(signed.handler_id).name, signed.message, None)


async def read_mailbox(app: Intake, keys: ApplicantKeys) -> Mailroom:
    mailbox_id = keys.mailbox_id.hex()
    async with app.store.read() as session:
        contacts = (
            await session.scalars(
                select(ContactRow.id)
                .where(ContactRow.mailbox_id == mailbox_id, ContactRow.state == "complete")
                .order_by(ContactRow.day, ContactRow.id)
            )
        ).all()
        messages = (
            await session.scalars(
                select(Message)
                .where(Message.mailbox_id == mailbox_id, Message.kind == "reply")
                .order_by(Message.seq)
                .limit(app.config.mailbox_fetch_limit)
            )
        ).all()
    replies = await asyncio.to_thread(lambda: tuple(_open_reply(app, keys, m) for m in messages))
    return Mailroom(tuple(contacts), replies)


async def seal_follow_up(app: Intake, keys: ApplicantKeys, contact_id: str, message: str) -> str:
    """Seal and store a follow-up to one of this mailbox's contacts; return its message id."""
    now, today = _now(), api._today()
    mailbox_id = keys.mailbox_id.hex()
    async with app.store.read() as session:
        row = await session.get(ContactRow, contact_id) if api._ID.fullmatch(contact_id) else None
    if row is None or row.mailbox_id != mailbox_id or row.state != "complete":
        raise ApiError(404, "not_found", "No such contact for this codename.")
    pool = row.pool
    recipients = _recipients(app, pool, now)
    try:
        follow_up = FollowUp(contact_id, message, keys.mailbox_key.verify_key)
        _fits(follow_up.to_json())  # type: ignore[arg-type]
        payload = follow_up.seal_payload(keys.mailbox_key)
    except MalformedInput:
        raise bad_request("The message is too long or malformed.", "bad_follow_up") from None
    sealed = seal(payload, [key for _, key in recipients], Purpose.FOLLOW_UP)
    del payload, follow_up
    signature = sign_submission(
        keys.mailbox_key, kind="follow-up", pool=pool, attachments=0, envelope=sealed.data, contact_id=contact_id
    )
    _checked_as_api(app, sealed, Purpose.FOLLOW_UP, pool, now, signature, keys, attachments=0, contact_id=contact_id)
    message_id = api._new_id()
    async with api._writing(app) as session:
        await api._check_quota(session, app, mailbox_id, today)
        seq = await session.scalar(
            select(func.coalesce(func.max(Message.seq), 0)).where(Message.mailbox_id == mailbox_id)
        )
        session.add(
            Message(
                id=message_id,
                mailbox_id=mailbox_id,
                contact_id=contact_id,
                kind="follow-up",
                day=today,
                bucket=sealed.header.bucket,
                envelope=sealed.data,
                envelope_hash=hashlib.sha256(sealed.data).digest(),
                seq=(seq or 0) + 1,
                server_sealed=True,
            )
        )
        await api._flush_or_conflict(session)
    return message_id
