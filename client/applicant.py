"""The applicant's flows: first contact, reading replies, follow-ups (docs/protocol.md, 9, 10, 12, 15).

Each flow takes a directory that :func:`~safepassage.client.trust.fetch_trusted_directory`
verified and an open :class:`~safepassage.client.intake_api.IntakeClient`, and
returns typed results. Nothing here writes to disk or logs, and no result's
``repr`` shows a codename, a message or a reply.

Everything that can be checked locally (pool, sizes, attachments) is checked
before the proof of work, so a mistake never costs the applicant that wait.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import re
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, TypeVar

from safepassage.crypto.codename import ApplicantKeys, Codename, derive_applicant_keys, generate_codename
from safepassage.crypto.encoding import JsonObject, canonical_json
from safepassage.crypto.envelope import MAX_BODY, Purpose, SealedEnvelope, open_envelope, parse_chunk_frame, seal
from safepassage.crypto.errors import SafePassageError
from safepassage.crypto.intake import (
    FIELD_NAMES,
    MAX_ATTACHMENTS,
    MAX_FIELD_CHARS,
    MAX_MESSAGE_CHARS,
    AttachmentInfo,
    Contact,
    FollowUp,
    Origin,
    attachment_chunk_count,
    sign_mailbox_auth,
    sign_submission,
)
from safepassage.crypto.keys import KeyId
from safepassage.crypto.pow import solve
from safepassage.crypto.receipt import Receipt
from safepassage.crypto.staffmsg import Reply as HandlerReply

from .errors import (
    AttachmentChanged,
    AttachmentError,
    DeliveryUncertain,
    MessageTooLong,
    ProtocolViolation,
    ServerRefused,
    ServerUnreachable,
    UsageError,
)
from .intake_api import IntakeClient, PowChallenge, UploadToken
from .trust import TrustedDirectory
from .wire import MailboxMessage

MAX_NAME_CHARS: Final = 255
_CONTACT_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
MAX_MEDIA_TYPE_CHARS: Final = 127
DEFAULT_MEDIA_TYPE: Final = "application/octet-stream"


class Progress:
    """Callbacks for a person watching; the default does nothing. Called from worker threads too."""

    def pow_started(self, difficulty: int) -> None:
        """Proof of work begins; about ``2**difficulty`` attempts are expected (it is not a countdown)."""

    def pow_attempt(self, attempts: int) -> None:
        """Called after every attempt, from the solving thread."""

    def pow_done(self) -> None:
        """Proof of work found."""

    def upload_started(self, chunks: int) -> None:
        """Attachment upload begins: ``chunks`` chunks of about 1 MiB in all."""

    def chunk_sent(self) -> None:
        """One more chunk is stored on the server."""

    def upload_done(self) -> None:
        """Every chunk is stored."""


@dataclass(frozen=True, slots=True, repr=False)
class SentContact:
    """A delivered first contact: what the applicant must keep (the codename) and what proves delivery."""

    codename: Codename
    contact_id: str
    receipt: Receipt
    mailbox_id: KeyId
    pool: str

    def __repr__(self) -> str:
        return f"SentContact({self.contact_id}, pool={self.pool}, day={self.receipt.day})"


@dataclass(frozen=True, slots=True)
class SentFollowUp:
    message_id: str
    contact_id: str
    receipt: Receipt


@dataclass(frozen=True, slots=True, repr=False)
class Reply:
    """One message from the mailbox: a verified handler reply, an unverified one, or an unreadable one.

    ``handler_id`` is set only when the payload is a reply (protocol 16.1)
    signed by that handler's identity key as listed in the verified
    directory, for this very contact: then ``text`` is what the handler
    wrote. Anyone holding the applicant's public reply key (the server stores
    it) can seal a message to it, so a reply that opens but fails that check
    keeps ``handler_id=None``, its raw ``plaintext`` and the reason in
    ``problem``: it must be shown as unverified, never as from the
    organisation. An envelope that cannot be opened has neither.
    """

    message_id: str
    contact_id: str
    day: str
    envelope_hash: bytes
    plaintext: bytes | None
    problem: str | None = None
    handler_id: str | None = None
    text: str | None = None

    @property
    def readable(self) -> bool:
        return self.plaintext is not None

    @property
    def verified(self) -> bool:
        return self.handler_id is not None

    def __repr__(self) -> str:
        if self.verified:
            state = f"verified, handler={self.handler_id}"
        else:
            state = "unverified" if self.plaintext is not None else "unreadable"
        return f"Reply({self.message_id}, contact={self.contact_id}, day={self.day}, {state})"


def _open_reply(message: MailboxMessage, keys: ApplicantKeys, directory: TrustedDirectory) -> Reply:
    envelope_hash = hashlib.sha256(message.envelope).digest()
    base = (message.message_id, message.contact_id, message.day, envelope_hash)
    try:
        opened = open_envelope(message.envelope, [keys.reply_key], expected_purpose=Purpose.REPLY)
    except SafePassageError as exc:
        return Reply(*base, None, exc.message)
    try:
        signed = HandlerReply.open_payload(opened.plaintext, directory.directory)
    except SafePassageError as exc:
        return Reply(*base, opened.plaintext, f"not signed by a handler of the organisation ({exc.message})")
    if signed.contact_id != message.contact_id:
        # A genuine reply to another contact, replayed here by the server.
        return Reply(*base, opened.plaintext, "signed by a handler, but for another contact")
    return Reply(*base, opened.plaintext, None, signed.handler_id, signed.message)


# --- local checks --------------------------------------------------------------------------------


def _check_pool(directory: TrustedDirectory, pool: str) -> None:
    names = [p.name for p in directory.directory.pools]
    if pool not in names:
        raise UsageError(f"there is no pool {pool!r}; this directory has: {', '.join(names)}")


def _check_message(message: str) -> None:
    if not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
        raise MessageTooLong(f"at most {MAX_MESSAGE_CHARS} characters")


def _check_fields(fields: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for name, value in fields.items():
        if name not in FIELD_NAMES:
            raise UsageError(f"unknown field {name!r}; known fields: {', '.join(FIELD_NAMES)}")
        if len(value) > MAX_FIELD_CHARS:
            raise UsageError(f"field {name!r} may have at most {MAX_FIELD_CHARS} characters")
        out[name] = value
    return out


#: What the signed wrapper ``{"contact": ..., "sig": ...}`` adds to the body (107 bytes), rounded up.
_SIGNED_OVERHEAD: Final = 128


def _check_size(body: JsonObject) -> None:
    # The signed payload (message, fields, keys, attachment list) must fit the
    # largest envelope bucket; characters outside ASCII take more than a byte.
    # Checked here, before signing, to give the applicant a clear message.
    size = len(canonical_json(body)) + _SIGNED_OVERHEAD
    if size > MAX_BODY:
        raise MessageTooLong(f"about {size} bytes once encoded; at most {MAX_BODY} fit in one envelope")


@dataclass(frozen=True, slots=True, repr=False)
class _Attachment:
    number: int
    file: BinaryIO
    info: AttachmentInfo


def _open_attachments(paths: Sequence[Path], stack: ExitStack) -> list[_Attachment]:
    if len(paths) > MAX_ATTACHMENTS:
        raise AttachmentError(f"at most {MAX_ATTACHMENTS} attachments")
    out = []
    for i, path in enumerate(paths):
        # Errors name the attachment's position, never its name: a file name
        # can say as much as the file.
        what = f"attachment {i + 1}"
        name = Path(path).name
        if not name or len(name) > MAX_NAME_CHARS:
            raise AttachmentError(f"{what}: the file name must have 1 to {MAX_NAME_CHARS} characters")
        try:
            # O_NONBLOCK so that a FIFO cannot hang us before fstat refuses it.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise AttachmentError(f"{what} cannot be opened: {exc.strerror or 'error'}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise AttachmentError(f"{what} is not a regular file")
            file = stack.enter_context(os.fdopen(fd, "rb"))
        except BaseException:
            os.close(fd)
            raise
        media_type = mimetypes.guess_type(name, strict=False)[0] or DEFAULT_MEDIA_TYPE
        if len(media_type) > MAX_MEDIA_TYPE_CHARS:
            media_type = DEFAULT_MEDIA_TYPE
        info = AttachmentInfo(name, media_type, st.st_size, attachment_chunk_count(st.st_size))
        out.append(_Attachment(i, file, info))
    return out


# --- shared steps --------------------------------------------------------------------------------


class _SolveCancelled(Exception):
    pass


T = TypeVar("T")
#: A server whose proof-of-work checks are all taken answers 503 ``busy`` before it spends
#: the challenge (docs/protocol.md 12.7): the same request goes again, a few times.
BUSY_ATTEMPTS: Final = 5
BUSY_PAUSE: Final = 3.0


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, ServerRefused) and exc.status == 503 and exc.code == "busy"


async def _while_busy(send: Callable[[], Awaitable[T]]) -> T:
    attempt = 1
    while True:
        try:
            return await send()
        except ServerRefused as exc:
            if not _is_busy(exc) or attempt >= BUSY_ATTEMPTS:
                raise
        attempt += 1
        await asyncio.sleep(BUSY_PAUSE)


async def _proof_of_work(client: IntakeClient, progress: Progress) -> str:
    """Ask for a challenge, solve it in a worker thread, return the PoW header value."""
    answer: PowChallenge = await client.new_challenge()
    cancel = threading.Event()

    def tick(attempts: int) -> None:
        # Raising here is how a cancelled wait stops the thread: solve() calls
        # this after every attempt.
        if cancel.is_set():
            raise _SolveCancelled()
        progress.pow_attempt(attempts)

    progress.pow_started(answer.challenge.difficulty)
    try:
        counter = await asyncio.to_thread(solve, answer.challenge, progress=tick)
    except asyncio.CancelledError:
        cancel.set()
        raise
    progress.pow_done()
    return f"{answer.text}.{counter}"


async def _derive(codename: Codename) -> ApplicantKeys:
    # Argon2id with 64 MiB: off the event loop, like the proof of work.
    return await asyncio.to_thread(derive_applicant_keys, codename)


def _check_receipt(directory: TrustedDirectory, receipt: Receipt, sealed: SealedEnvelope, expected_id: str) -> None:
    """The server's signature over exactly what was sent (protocol 10)."""
    receipt.verify(directory.receipt_key, envelope_hash=sealed.envelope_hash)
    if receipt.contact_id != expected_id:
        raise ProtocolViolation("the receipt names another message")


# --- flows ---------------------------------------------------------------------------------------


async def send_contact(
    client: IntakeClient,
    directory: TrustedDirectory,
    *,
    pool: str,
    language: str,
    message: str,
    fields: Mapping[str, str],
    attachments: Sequence[Path],
    origin: Origin = "cli",
    progress: Progress | None = None,
    now: int | None = None,
) -> SentContact:
    """Send a first contact with a fresh codename; return it with the verified receipt.

    The codename is generated here and exists nowhere else: the caller must
    show it to the applicant once and keep it out of every file and log.
    """
    progress = progress or Progress()
    now = int(time.time()) if now is None else now
    _check_pool(directory, pool)
    _check_message(message)
    checked_fields = _check_fields(fields)
    recipients = directory.recipients(pool, now)
    with ExitStack() as stack:
        files = _open_attachments(attachments, stack)
        codename = generate_codename()
        keys = await _derive(codename)
        contact = Contact(
            pool=pool,
            language=language,
            message=message,
            fields=checked_fields,
            attachments=tuple(a.info for a in files),
            reply_key=keys.reply_key.public_key,
            mailbox_key=keys.mailbox_key.verify_key,
            origin=origin,
        )
        _check_size(contact.to_json())
        payload = contact.seal_payload(keys.mailbox_key)
        sealed = seal(payload, recipients, Purpose.CONTACT)
        signature = sign_submission(
            keys.mailbox_key, kind="contact", pool=pool, attachments=len(files), envelope=sealed.data
        )
        pow_header = await _proof_of_work(client, progress)
        try:
            answer = await _while_busy(
                lambda: client.submit_contact(
                    sealed.data, pool, len(files), pow_header, keys.mailbox_key.verify_key, signature
                )
            )
        except (ServerUnreachable, ServerRefused) as exc:
            # A 5xx or a dropped connection after the request went out: the
            # server may have stored the contact. The codename must not be lost.
            # (``busy`` is the exception: it is answered before anything is stored.)
            if isinstance(exc, ServerRefused) and (exc.status < 500 or _is_busy(exc)):
                raise
            raise DeliveryUncertain(codename) from exc
        if files:
            if answer.status != "pending" or answer.upload_token is None:
                raise ProtocolViolation("a contact with attachments must stay pending until finalised")
            # Until finalised, a pending contact is invisible and is deleted
            # when its upload window closes: a failed upload loses nothing.
            await _upload(client, answer.contact_id, answer.upload_token, sealed, files, progress)
            try:
                answer = await client.finalise(answer.contact_id, answer.upload_token)
            except (ServerUnreachable, ServerRefused) as exc:
                if isinstance(exc, ServerRefused) and exc.status < 500:
                    raise
                raise DeliveryUncertain(codename) from exc
        try:
            if answer.status != "complete" or answer.receipt is None:
                raise ProtocolViolation("the server did not confirm the contact with a receipt")
            _check_receipt(directory, answer.receipt, sealed, answer.contact_id)
        except SafePassageError as exc:
            # The server said it stored the contact but its receipt is wrong.
            raise DeliveryUncertain(codename) from exc
    return SentContact(codename, answer.contact_id, answer.receipt, keys.mailbox_id, pool)


async def _upload(
    client: IntakeClient,
    contact_id: str,
    token: UploadToken,
    sealed: SealedEnvelope,
    files: Sequence[_Attachment],
    progress: Progress,
) -> None:
    progress.upload_started(sum(a.info.chunks for a in files))
    for attachment in files:
        sealer = sealed.attachment_sealer(attachment.number)
        # One chunk in memory at a time: read, seal, send, forget.
        for frame in sealer.seal_stream(attachment.file):
            fields = parse_chunk_frame(frame)
            last = attachment.info.chunks - 1
            if fields.index > last or fields.final != (fields.index == last):
                raise AttachmentChanged(f"attachment {attachment.number + 1}")
            await client.upload_chunk(contact_id, attachment.number, fields.index, frame, token)
            progress.chunk_sent()
        if attachment.file.tell() != attachment.info.size:
            raise AttachmentChanged(f"attachment {attachment.number + 1}")
    progress.upload_done()


#: At most this many pages of replies are fetched in one check.
MAX_MAILBOX_PAGES: Final = 50


async def check_mailbox(client: IntakeClient, directory: TrustedDirectory, codename: Codename) -> list[Reply]:
    """Prove ownership of the mailbox, fetch its sealed replies, open and verify each one.

    Each reply's handler signature is checked against ``directory`` (protocol
    16.1). A reply that cannot be opened or verified is returned as such (see
    :class:`Reply`), so one damaged or forged message never hides the others.
    """
    keys = await _derive(codename)
    messages: list[MailboxMessage] = []
    # The server answers a page at a time; each page needs a fresh nonce
    # (nonces are single-use). Stop at an empty page, or one that does not
    # move forward (a server must not keep us looping).
    for _ in range(MAX_MAILBOX_PAGES):
        nonce = await client.mailbox_challenge(keys.mailbox_id)
        signature = sign_mailbox_auth(keys.mailbox_key, nonce.nonce)
        after = messages[-1].seq if messages else 0
        page = await client.mailbox_fetch(keys.mailbox_id, nonce.nonce, signature, after=after)
        if not page or any(m.seq <= after for m in page):
            break
        messages.extend(page)
    return [_open_reply(m, keys, directory) for m in messages]


async def send_follow_up(
    client: IntakeClient,
    directory: TrustedDirectory,
    codename: Codename,
    contact_id: str,
    message: str,
    *,
    pool: str,
    progress: Progress | None = None,
    now: int | None = None,
) -> SentFollowUp:
    """Send a follow-up to an earlier contact of this codename's mailbox, sealed to the pool's handlers."""
    progress = progress or Progress()
    now = int(time.time()) if now is None else now
    _check_pool(directory, pool)
    _check_message(message)
    recipients = directory.recipients(pool, now)
    keys = await _derive(codename)
    if not _CONTACT_ID.fullmatch(contact_id):
        raise UsageError("the contact id must be 8 to 64 letters, digits, '-' or '_'")
    follow_up = FollowUp(contact_id, message, keys.mailbox_key.verify_key)
    _check_size(follow_up.to_json())
    payload = follow_up.seal_payload(keys.mailbox_key)
    sealed = seal(payload, recipients, Purpose.FOLLOW_UP)
    signature = sign_submission(
        keys.mailbox_key, kind="follow-up", pool=pool, attachments=0, envelope=sealed.data, contact_id=contact_id
    )
    pow_header = await _proof_of_work(client, progress)
    answer = await _while_busy(
        lambda: client.post_follow_up(keys.mailbox_id, contact_id, sealed.data, pow_header, signature)
    )
    _check_receipt(directory, answer.receipt, sealed, answer.message_id)
    return SentFollowUp(answer.message_id, contact_id, answer.receipt)


__all__ = [
    "Progress",
    "Reply",
    "SentContact",
    "SentFollowUp",
    "check_mailbox",
    "send_contact",
    "send_follow_up",
]
