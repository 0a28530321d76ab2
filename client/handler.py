"""The handler's flows: enrol, log in, triage, read, reply, escalate (ARCHITECTURE "Flows" 2 and 4).

Every flow decrypts and verifies on the handler's machine; the staff server
only routes sealed blobs, and whatever it says about a case is checked against
what the applicant signed (protocol 15.1):

* a case envelope opens only with one of the vault's intake keys
  (:class:`NotARecipient` otherwise);
* the contact's mailbox signature verifies, and the key id of its mailbox key
  equals the mailbox id the server shows for the case (:class:`CaseMismatch`),
  as do its pool and attachment count;
* every attachment chunk is authenticated, in order, and the attachment has
  exactly the declared size and chunk count; files reach the output folder only
  after *everything* verified, so a hostile case leaves nothing there;
* replies are signed by the identity key and sealed to the contact's reply key
  alone (16.1); escalation packages are signed, sealed to the verified
  directory's integration keys, delivered with a delivery signature, and the
  integration service's receipt is verified against the directory before the
  staff server is told (17).

The directory comes from the public intake through
:func:`~safepassage.client.trust.fetch_trusted_directory`, pinned to the
organisation fingerprint kept in the vault, with the log head remembered in
``V.state``. Nothing here logs; no result's ``repr`` shows plaintext.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from yarl import URL

from safepassage.crypto.directory import Directory, IntakeKey
from safepassage.crypto.encoding import canonical_json
from safepassage.crypto.envelope import OpenedEnvelope, Purpose, open_envelope, parse_chunk_frame, seal
from safepassage.crypto.errors import (
    BadSignature,
    CryptoError,
    MalformedInput,
    SafePassageError,
    VaultExists,
)
from safepassage.crypto.intake import AttachmentInfo, Contact, FollowUp
from safepassage.crypto.keys import HybridPrivateKey, SigningKey
from safepassage.crypto.privatefile import write_private
from safepassage.crypto.staffmsg import MAX_TEXT, Escalation, IntegrationReceipt, Reply, sign_delivery
from safepassage.crypto.threshold import KeySet
from safepassage.crypto.vault import (
    DEFAULT_MEMLIMIT,
    DEFAULT_OPSLIMIT,
    Passphrase,
    check_passphrase_strength,
    create_vault,
)

from .case_files import OutputFolderError, SavedAttachment, Staging
from .errors import ClientError, ProtocolViolation, ServerRefused, UsageError
from .handler_archive import CaseSource, source_for
from .handler_schedule import rotation_notices
from .handler_vault import (
    HandlerKeys,
    HandlerPaths,
    HeldIntakeKey,
    NotLoggedIn,
    Profile,
    ProfileError,
    SavedSession,
    archive_reply,
    enrolment_document,
    forget_session,
    new_vault_contents,
    open_handler_vault,
    read_enrolment_document,
    vault_lock,
)
from .intake_api import IntakeClient
from .integration_api import IntegrationClient
from .onion import check_onion
from .staff_api import CaseDetail, CaseSummary, StaffClient, StaffEnrolment
from .trust import HeadState, TrustedDirectory, fetch_trusted_directory, normalise_fingerprint

DAY: Final = 86400
DEFAULT_INTAKE_DAYS: Final = 7
MAX_INTAKE_DAYS: Final = 90
MAX_CASE_PAGES: Final = 500
ENROL_ATTEMPTS: Final = 3


class CaseMismatch(CryptoError):
    """The staff server's description of the case disagrees with what the applicant signed."""

    hint = "Do not trust this case's routing data. Report it to the organisation's administrators."


class AttachmentMismatch(CryptoError):
    """An attachment does not have the size or chunk count the applicant declared."""

    hint = "The attachment was truncated, padded or replaced. Nothing was written; do not trust it."


class NotListed(ClientError):
    """The verified directory does not list this handler with this vault's identity key."""

    hint = (
        "Admins must add the keys from intake-key.json to the directory (and compare the fingerprints out of band) "
        "before applicants and the integration service can verify what you sign."
    )
    exit_code = 3


# --- results -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class Enrolled:
    """A finished enrolment: what admins must compare out of band, and where the files are."""

    handler_id: str
    role: str
    identity_fingerprint: str
    intake_fingerprint: str
    intake_key: IntakeKey
    paths: HandlerPaths

    def __repr__(self) -> str:
        return f"Enrolled({self.handler_id})"


@dataclass(frozen=True, slots=True, repr=False)
class FollowUpView:
    """An applicant follow-up: its text if it verified, else why not."""

    message_id: str
    day: str
    text: str | None
    payload: bytes | None
    problem: str | None
    #: The server sealed it (web page without JavaScript): it saw the text for one request.
    server_sealed: bool = False

    def __repr__(self) -> str:
        return f"FollowUpView({self.message_id}, {'verified' if self.problem is None else 'unverified'})"


@dataclass(frozen=True, slots=True, repr=False)
class ReplyView:
    """A reply in the case: readable only if this vault sent it (replies are sealed to the applicant alone)."""

    message_id: str
    day: str
    handler_id: str | None
    text: str | None
    payload: bytes | None
    problem: str | None

    def __repr__(self) -> str:
        return f"ReplyView({self.message_id}, {'verified' if self.problem is None else 'not readable here'})"


@dataclass(frozen=True, slots=True, repr=False)
class CaseReading:
    """A case opened and verified locally."""

    case: CaseSummary
    contact: Contact
    payload: bytes
    attachments: tuple[SavedAttachment, ...]
    follow_ups: tuple[FollowUpView, ...]
    replies: tuple[ReplyView, ...]
    escalations: tuple[str, ...]
    verified: tuple[str, ...]
    warnings: tuple[str, ...]
    #: About this handler's intake keys, not the case (client/handler_schedule.py).
    key_notices: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"CaseReading({self.case.case_id}, {len(self.attachments)} attachment(s))"


@dataclass(frozen=True, slots=True)
class SentReply:
    case_id: str
    message_id: str
    seq: int
    envelope_hash: bytes


@dataclass(frozen=True, slots=True)
class Escalated:
    case_id: str
    package_id: str
    receipt: IntegrationReceipt
    attachments: int
    follow_ups: int
    replies: int
    replies_left_out: int


# --- shared steps ------------------------------------------------------------------------------------------


def _now(now: int | None) -> int:
    return int(time.time()) if now is None else now


def _intake_url(paths: HandlerPaths, intake: str | None) -> str:
    if intake is not None:
        return intake
    profile = Profile.load(paths)
    if profile is None:
        raise ProfileError("no profile beside the vault; pass --intake")
    return profile.intake


async def _trusted(
    paths: HandlerPaths,
    org: str,
    intake: str | None,
    socks: str | None,
    now: int,
    witnesses: KeySet | None = None,
) -> TrustedDirectory:
    state = HeadState.load(paths.state)
    async with IntakeClient(_intake_url(paths, intake), socks=socks) as client:
        trusted = await fetch_trusted_directory(client, org, state, now, witnesses=witnesses)
    # 8.7 step 4: remember the head only after every check passed.
    trusted.state.save(paths.state)
    return trusted


async def check_staff_address(
    paths: HandlerPaths, staff: str, *, intake: str, org: str, socks: str | None, now: int
) -> None:
    """Before a password or TOTP code goes to an onion address, check it is the staff onion of the
    directory verified from the pinned organisation (a phishing copy of the staff onion would
    otherwise collect both). Before the first directory is published there is nothing to check
    against (the first admins enrol then); loopback addresses are not checked (tests, the demo)."""
    if not (URL(staff).host or "").endswith(".onion"):
        return
    state = HeadState.load(paths.state)
    async with IntakeClient(intake, socks=socks) as client:
        try:
            trusted = await fetch_trusted_directory(client, org, state, now)
        except ServerRefused as exc:
            if exc.status == 503 and exc.code == "no_directory" and state is None:
                return
            raise
    check_onion(staff, trusted.directory, "staff")
    trusted.state.save(paths.state)


def _check_listed(directory: Directory, keys: HandlerKeys) -> HandlerKeys:
    """The keys to act with under ``directory``: after an identity rotation is published, the new identity."""
    try:
        listed = directory.handler(keys.handler_id)
    except MalformedInput:
        raise NotListed(f"no handler {keys.handler_id} in directory version {directory.version}") from None
    if listed.identity_key == keys.identity.verify_key:
        return keys
    if keys.identity_next is not None and listed.identity_key == keys.identity_next.verify_key:
        return dataclasses.replace(keys, identity=keys.identity_next, identity_next=None)
    raise NotListed(f"handler {keys.handler_id} is listed with another identity key")


def _check_staff_onion(paths: HandlerPaths, directory: Directory, now: int) -> None:
    """The staff server of the saved session must be the directory's staff onion (if it is an onion)."""
    check_onion(SavedSession.load(paths, now=now).staff, directory, "staff")


C = TypeVar("C", bound=StaffClient)


@contextlib.asynccontextmanager
async def staff_session(
    paths: HandlerPaths, socks: str | None, now: int | None, client_type: type[C], role: str
) -> AsyncIterator[C]:
    """The staff API with the vault's saved session (of ``role``); a session the server ended is forgotten."""
    session = SavedSession.load(paths, now=now)
    if session.role != role:
        raise UsageError(f"the saved session is not a {role}'s")
    try:
        client = client_type(session.staff, socks=socks, token=session.token)
        async with client:
            yield client
    except ServerRefused as exc:
        if exc.status == 401:
            forget_session(paths)
            raise NotLoggedIn("the staff server ended the session") from None
        raise


def _staff(paths: HandlerPaths, socks: str | None, now: int | None = None) -> AbstractAsyncContextManager[StaffClient]:
    return staff_session(paths, socks, now, StaffClient, "handler")


@dataclass(frozen=True, slots=True, repr=False)
class _OpenedCase:
    detail: CaseDetail
    opened: OpenedEnvelope
    contact: Contact
    verified: tuple[str, ...]
    warnings: tuple[str, ...]


def _intake_key_label(keys: HandlerKeys, opened: OpenedEnvelope) -> str:
    held = next((k for k in keys.intake if k.private.key_id == opened.opened_with), None)
    if held is None:
        return "local archive key (the intake key it came under has been destroyed)"
    return f"intake key {held.private.key_id.short()} (fingerprint {held.entry.key.fingerprint()})"


def _verify_contact(
    keys: HandlerKeys, case: CaseSummary, envelope: bytes
) -> tuple[OpenedEnvelope, Contact, tuple[str, ...], tuple[str, ...]]:
    """Open a contact envelope and check it against what the server says of the case (15.1).

    The one place a contact is opened and verified: ``read``, ``reply``,
    ``escalate`` and ``read-all`` all come here. Returns the opened envelope,
    the contact, and what was verified and what to warn about, for people.
    """
    opened = open_envelope(envelope, keys.opening_keys, expected_purpose=Purpose.CONTACT)
    contact = Contact.open_payload(opened.plaintext)
    if contact.mailbox_key.key_id.hex() != case.mailbox:
        raise CaseMismatch("the contact's mailbox key is not the case's mailbox")
    if contact.pool != case.pool:
        raise CaseMismatch("the applicant chose another pool")
    if len(contact.attachments) != case.attachments:
        raise CaseMismatch("the applicant declared another number of attachments")
    verified = [
        f"the envelope opened with your {_intake_key_label(keys, opened)}; its header commits every recipient "
        "to the same content",
        "the applicant's mailbox signature over the whole contact verifies",
        f"the mailbox key's id equals the case's mailbox id ({case.mailbox[:12]}...)",
        f"the pool ({case.pool}) and the number of attachments ({case.attachments}) match what the applicant signed",
    ]
    warnings = []
    if case.server_sealed or contact.origin == "server-sealed":
        warnings.append(
            "This contact was sealed by the server (a browser without JavaScript): the server saw its plaintext "
            "for one request, and chose the mailbox key the signature is checked against."
        )
    return opened, contact, tuple(verified), tuple(warnings)


async def _open_case(staff: StaffClient, source: CaseSource, keys: HandlerKeys, case_id: str) -> _OpenedCase:
    """Fetch the case and its envelope (from the archive once archived); open and verify the contact (15.1)."""
    detail = await staff.get_case(case_id)
    envelope = await source.case_envelope(case_id)
    opened, contact, verified, warnings = _verify_contact(keys, detail.case, envelope)
    return _OpenedCase(detail, opened, contact, verified, warnings)


async def _attachment_data(
    staff: CaseSource, case_id: str, opened: OpenedEnvelope, number: int, info: AttachmentInfo
) -> AsyncIterator[tuple[int, bytes]]:
    """Chunk index and data of one attachment, each authenticated, checked against the declared shape."""
    opener = opened.attachment_opener(number)
    size = 0
    last = info.chunks - 1
    for index in range(info.chunks):
        frame = await staff.attachment_chunk(case_id, number, index)
        data = opener.open_chunk(frame)
        if parse_chunk_frame(frame).final != (index == last):
            raise AttachmentMismatch(f"attachment {number + 1} has another number of chunks than declared")
        size += len(data)
        yield index, data
    opener.finish()
    if size != info.size:
        raise AttachmentMismatch(f"attachment {number + 1} has another size than declared")


async def _follow_ups(
    staff: CaseSource, keys: HandlerKeys, case: _OpenedCase, case_id: str
) -> tuple[FollowUpView, ...]:
    out = []
    for m in case.detail.messages:
        if m.kind != "follow-up":
            continue
        try:
            envelope = await staff.message_envelope(case_id, m.message_id)
            opened = open_envelope(envelope, keys.opening_keys, expected_purpose=Purpose.FOLLOW_UP)
            follow_up = FollowUp.open_payload(opened.plaintext)
            if follow_up.mailbox_key != case.contact.mailbox_key:
                raise BadSignature("signed by another mailbox than the contact")
            if follow_up.contact_id != case_id:
                raise CaseMismatch("it continues another contact")
        except CryptoError as exc:
            # One forged or damaged follow-up is shown as such; it does not hide the case.
            out.append(FollowUpView(m.message_id, m.day, None, None, exc.message, m.server_sealed))
            continue
        out.append(FollowUpView(m.message_id, m.day, follow_up.message, opened.plaintext, None, m.server_sealed))
    return tuple(out)


def _replies(keys: HandlerKeys, detail: CaseDetail, directory: Directory, case_id: str) -> tuple[ReplyView, ...]:
    out = []
    for m in detail.messages:
        if m.kind != "reply":
            continue
        archived = keys.replies.get(m.message_id)
        if archived is None or archived[0] != case_id:
            problem = "sealed to the applicant alone, and not sent from this vault"
            out.append(ReplyView(m.message_id, m.day, None, None, None, problem))
            continue
        try:
            reply = Reply.open_payload(archived[1], directory)
            if reply.contact_id != case_id:
                raise BadSignature("the archived reply answers another contact")
        except SafePassageError as exc:
            out.append(ReplyView(m.message_id, m.day, None, None, None, exc.message))
            continue
        out.append(ReplyView(m.message_id, m.day, reply.handler_id, reply.message, archived[1], None))
    return tuple(out)


async def _save_attachments(
    staff: CaseSource, case_id: str, case: _OpenedCase, out_dir: Path
) -> tuple[tuple[SavedAttachment, ...], list[str]]:
    if not case.contact.attachments:
        return (), []
    staging = Staging(out_dir)
    ok = False
    try:
        written: list[tuple[int, AttachmentInfo, Path]] = []
        notes = []
        for number, info in enumerate(case.contact.attachments):
            path, fd = staging.open(number)
            with os.fdopen(fd, "wb") as f:
                async for _, data in _attachment_data(staff, case_id, case.opened, number, info):
                    f.write(data)
                f.flush()
                os.fsync(f.fileno())
            written.append((number, info, path))
            notes.append(
                f"attachment {number + 1}: every chunk authenticated in order; {info.chunks} chunk(s) and "
                f"{info.size} bytes, as the applicant declared"
            )
        saved = staging.publish(written)
        ok = True
        return saved, notes
    finally:
        staging.discard(everything=not ok)


# --- flows ---------------------------------------------------------------------------------------------------


async def enroll(
    *,
    staff: str,
    invitation: str,
    password: str,
    vault: Path,
    passphrase: Passphrase,
    intake: str,
    org: str,
    totp_code: Callable[[StaffEnrolment], str],
    socks: str | None = None,
    validity_days: int = DEFAULT_INTAKE_DAYS,
    now: int | None = None,
    opslimit: int = DEFAULT_OPSLIMIT,
    memlimit: int = DEFAULT_MEMLIMIT,
    witnesses: KeySet | None = None,
) -> Enrolled:
    """Register with the staff server and create the handler's vault and ``intake-key.json``.

    ``totp_code`` is called with the server's answer (to show the otpauth URI
    to the person) and returns the first code from the authenticator; it is
    called again, up to three times in all, if the server refuses a code. The
    vault is written only once the server confirmed the enrolment, so a
    failure leaves no key on disk. ``witnesses``, if given, are pinned in the
    vault: every later directory must come with a head K of them cosigned (8.6).
    """
    now = _now(now)
    paths = HandlerPaths(Path(vault))
    org = normalise_fingerprint(org)
    if not 1 <= validity_days <= MAX_INTAKE_DAYS:
        raise UsageError(f"an intake key is valid for 1 to {MAX_INTAKE_DAYS} days")
    check_passphrase_strength(passphrase)
    for existing in (paths.vault, paths.intake_key):
        if existing.exists() or existing.is_symlink():
            raise VaultExists(f"{existing.name} already exists")
    if not paths.vault.parent.is_dir():
        raise UsageError("the vault's folder does not exist")

    # The organisation must be the one pinned: a mistyped fingerprint stops here, before the server.
    state = HeadState.load(paths.state)
    async with IntakeClient(intake, socks=socks) as client:
        trusted = await fetch_trusted_directory(client, org, state, now, witnesses=witnesses)
    check_onion(staff, trusted.directory, "staff")  # before the password and TOTP secret are exchanged

    identity = SigningKey.generate()
    intake_private = HybridPrivateKey.generate()
    async with StaffClient(staff, socks=socks) as client:
        answer = await client.enroll(invitation, password)
        if answer.role != "handler":
            raise UsageError(f"this invitation is for the role {answer.role!r}; use that role's client")
        handler_id = answer.username
        confirmed = await _confirm(client, invitation, answer, totp_code)
        if confirmed != handler_id:
            raise ProtocolViolation("the server confirmed another account")

    entry = IntakeKey.create(
        handler_id, identity, intake_private.public_key, not_before=now, not_after=now + validity_days * DAY
    )
    held = HeldIntakeKey(intake_private, entry)
    create_vault(
        paths.vault,
        passphrase,
        new_vault_contents(handler_id, org, identity, held, witnesses),
        opslimit=opslimit,
        memlimit=memlimit,
    )
    write_private(paths.intake_key, canonical_json(enrolment_document(handler_id, identity, entry)), replace=False)
    Profile(handler_id, staff, intake, org).save(paths)
    trusted.state.save(paths.state)
    return Enrolled(
        handler_id,
        answer.role,
        identity.verify_key.fingerprint(),
        entry.key.fingerprint(),
        entry,
        paths,
    )


async def _confirm(
    client: StaffClient, invitation: str, answer: StaffEnrolment, totp_code: Callable[[StaffEnrolment], str]
) -> str:
    """Send the first TOTP code; ask again (up to three times in all) when the server refuses one."""
    for attempt in range(1, ENROL_ATTEMPTS + 1):
        try:
            return await client.confirm_enrolment(invitation, totp_code(answer).strip())
        except ServerRefused as exc:
            if exc.status >= 500 or exc.status == 429 or attempt == ENROL_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def login(
    paths: HandlerPaths,
    *,
    password: str,
    code: str,
    username: str | None = None,
    staff: str | None = None,
    socks: str | None = None,
) -> SavedSession:
    """Log in and keep the session token in ``V.session`` (0600)."""
    profile = Profile.load(paths)
    if username is None or staff is None:
        if profile is None:
            raise ProfileError("no profile beside the vault; pass the user name and the staff server")
        username = username or profile.handler_id
        staff = staff or profile.staff
    if profile is None and (URL(staff).host or "").endswith(".onion"):
        raise ProfileError("an onion staff address is checked against the directory, which needs the profile")
    if profile is not None:
        await check_staff_address(paths, staff, intake=profile.intake, org=profile.org, socks=socks, now=_now(None))
    async with StaffClient(staff, socks=socks) as client:
        session = await client.login(username, password, code.strip())
    saved = SavedSession(staff, username, session.token, session.role, session.absolute_expires)
    saved.save(paths)
    return saved


async def logout(paths: HandlerPaths, *, socks: str | None = None) -> None:
    """End the session on the server; the local token is deleted whatever the server answers."""
    try:
        async with _staff(paths, socks) as client:
            await client.logout()
    finally:
        forget_session(paths)


async def inbox(
    paths: HandlerPaths, *, status: str | None = None, pool: str | None = None, socks: str | None = None
) -> list[CaseSummary]:
    """Every case the staff server shows this handler, page by page."""
    cases: list[CaseSummary] = []
    seen: set[str] = set()
    after: str | None = None
    async with _staff(paths, socks) as client:
        for _ in range(MAX_CASE_PAGES):
            page = await client.list_cases(status=status, pool=pool, after=after)
            cases.extend(page.cases)
            if page.next is None:
                break
            if page.next in seen or not page.cases:
                raise ProtocolViolation("the case list does not move forward")
            seen.add(page.next)
            after = page.next
    return cases


async def read_case(
    paths: HandlerPaths,
    passphrase: Passphrase,
    case_id: str,
    out_dir: Path,
    *,
    intake: str | None = None,
    socks: str | None = None,
    now: int | None = None,
) -> CaseReading:
    """Download, decrypt and verify a case; write its attachments to ``out_dir`` only if all of it verifies."""
    now = _now(now)
    with vault_lock(paths):
        _, keys = open_handler_vault(paths, passphrase)
        SavedSession.load(paths, now=now)
        trusted = await _trusted(paths, keys.org, intake, socks, now, keys.witnesses)
        _check_staff_onion(paths, trusted.directory, now)
        async with _staff(paths, socks, now) as staff:
            source = source_for(paths, staff, case_id)
            case = await _open_case(staff, source, keys, case_id)
            reading = await _complete_reading(source, keys, trusted.directory, case, Path(out_dir))
    notices = rotation_notices(
        trusted.directory,
        keys.handler_id,
        now,
        held=[k.entry for k in keys.intake],
        next_key_made=_next_key_waiting(paths, trusted.directory, now),
    )
    return dataclasses.replace(reading, key_notices=notices)


def _next_key_waiting(paths: HandlerPaths, directory: Directory, now: int) -> bool:
    """Whether ``handler rotate`` made a next key the admins have not listed yet."""
    try:
        _, _, entry = read_enrolment_document(paths.next_intake_key)
    except (OSError, SafePassageError):
        return False
    listed = {k.key.key_id for h in directory.handlers for k in h.intake_keys}
    return entry.key.key_id not in listed and entry.not_after > now


async def key_schedule(
    paths: HandlerPaths, *, intake: str | None = None, socks: str | None = None, now: int | None = None
) -> tuple[str, ...]:
    """What the handler must do about intake keys, from the verified directory (no vault needed)."""
    now = _now(now)
    profile = Profile.load(paths)
    if profile is None:
        return ()
    trusted = await _trusted(paths, profile.org, intake, socks, now)
    waiting = _next_key_waiting(paths, trusted.directory, now)
    return rotation_notices(trusted.directory, profile.handler_id, now, next_key_made=waiting)


async def _complete_reading(
    source: CaseSource, keys: HandlerKeys, directory: Directory, case: _OpenedCase, out_dir: Path
) -> CaseReading:
    """The rest of a read once the contact verified: follow-ups, replies, attachments (into ``out_dir``)."""
    case_id = case.detail.case.case_id
    follow_ups = await _follow_ups(source, keys, case, case_id)
    saved, notes = await _save_attachments(source, case_id, case, out_dir)
    return _assemble_reading(keys, directory, case, follow_ups, saved, notes)


def _assemble_reading(
    keys: HandlerKeys,
    directory: Directory,
    case: _OpenedCase,
    follow_ups: tuple[FollowUpView, ...] = (),
    saved: tuple[SavedAttachment, ...] = (),
    notes: Sequence[str] = (),
) -> CaseReading:
    """The reading of a verified case: with what was fetched for it, and its replies from this vault's archive."""
    replies = _replies(keys, case.detail, directory, case.detail.case.case_id)
    verified = [*case.verified, *notes]
    good = [f for f in follow_ups if f.problem is None]
    if good:
        verified.append(f"{len(good)} follow-up(s) signed by the same mailbox key, for this contact")
    mine = [r for r in replies if r.problem is None]
    if mine:
        verified.append(f"{len(mine)} reply(ies) from this vault signed by a handler listed in the directory")
    return CaseReading(
        case=case.detail.case,
        contact=case.contact,
        payload=case.opened.plaintext,
        attachments=saved,
        follow_ups=follow_ups,
        replies=replies,
        escalations=tuple(e.package_id for e in case.detail.escalations),
        verified=tuple(verified),
        warnings=case.warnings,
    )


async def reply(
    paths: HandlerPaths,
    passphrase: Passphrase,
    case_id: str,
    message: str,
    *,
    intake: str | None = None,
    socks: str | None = None,
    now: int | None = None,
) -> SentReply:
    """Sign a reply with the identity key, seal it to the contact's reply key alone, post it, keep a copy."""
    now = _now(now)
    if not isinstance(message, str) or not message.strip() or len(message) > MAX_TEXT:
        raise UsageError(f"a reply has 1 to {MAX_TEXT} characters")
    with vault_lock(paths):
        contents, keys = open_handler_vault(paths, passphrase)
        SavedSession.load(paths, now=now)
        trusted = await _trusted(paths, keys.org, intake, socks, now, keys.witnesses)
        # Applicants verify replies against the directory: refuse to send one they would show as forged.
        keys = _check_listed(trusted.directory, keys)
        _check_staff_onion(paths, trusted.directory, now)
        async with _staff(paths, socks, now) as staff:
            case = await _open_case(staff, source_for(paths, staff, case_id), keys, case_id)
            payload = Reply(case_id, keys.handler_id, message).seal_payload(keys.identity)
            sealed = seal(payload, [case.contact.reply_key], Purpose.REPLY)
            posted = await staff.post_reply(case_id, sealed.data)
        archive_reply(paths, passphrase, contents, case_id=case_id, message_id=posted.message_id, payload=payload)
    return SentReply(case_id, posted.message_id, posted.seq, sealed.envelope_hash)


async def set_status(paths: HandlerPaths, case_id: str, status: str, *, socks: str | None = None) -> None:
    async with _staff(paths, socks) as client:
        await client.set_status(case_id, status)


async def handover(paths: HandlerPaths, case_id: str, handler_id: str, *, socks: str | None = None) -> None:
    async with _staff(paths, socks) as client:
        await client.handover(case_id, handler_id)


def _package_id() -> str:
    return "p_" + secrets.token_urlsafe(18)


async def escalate(
    paths: HandlerPaths,
    passphrase: Passphrase,
    case_id: str,
    note: str,
    *,
    integration: str,
    intake: str | None = None,
    socks: str | None = None,
    now: int | None = None,
) -> Escalated:
    """Hand the case to the integration service and record its verified receipt with the staff server."""
    now = _now(now)
    if not isinstance(note, str) or not note.strip() or len(note) > MAX_TEXT:
        raise UsageError(f"the assessment has 1 to {MAX_TEXT} characters")
    with vault_lock(paths):
        _, keys = open_handler_vault(paths, passphrase)
        SavedSession.load(paths, now=now)
        trusted = await _trusted(paths, keys.org, intake, socks, now, keys.witnesses)
        directory = trusted.directory
        # The integration service checks our delivery signature against the directory.
        keys = _check_listed(directory, keys)
        _check_staff_onion(paths, directory, now)
        check_onion(integration, directory, "integration")
        async with _staff(paths, socks, now) as staff:
            source = source_for(paths, staff, case_id)
            case = await _open_case(staff, source, keys, case_id)
            follow_ups = await _follow_ups(source, keys, case, case_id)
            replies = _replies(keys, case.detail, directory, case_id)
            summary = case.detail.case
            package_id = _package_id()
            package = Escalation(
                package_id=package_id,
                contact_id=case_id,
                handler_id=keys.handler_id,
                pool=summary.pool,
                day=summary.day,
                contact=case.opened.plaintext,
                follow_ups=tuple(f.payload for f in follow_ups if f.payload is not None),
                replies=tuple(r.payload for r in replies if r.payload is not None),
                assessment=note,
            )
            payload = package.seal_payload(keys.identity)
            sealed = seal(payload, directory.integration.encryption_keys, Purpose.ESCALATION)
            count = len(case.contact.attachments)
            signature = sign_delivery(
                keys.identity,
                handler_id=keys.handler_id,
                package_id=package_id,
                envelope=sealed.data,
                attachments=count,
            )
            async with IntegrationClient(integration, socks=socks) as service:
                answer = await service.deliver(
                    handler_id=keys.handler_id,
                    package_id=package_id,
                    signature=signature,
                    envelope=sealed.data,
                    attachments=count,
                )
                if answer.upload_token is not None:
                    for number, info in enumerate(case.contact.attachments):
                        # Re-sealed chunk by chunk: one chunk in memory, each authenticated before it moves on.
                        sealer = sealed.attachment_sealer(number)
                        async for index, data in _attachment_data(source, case_id, case.opened, number, info):
                            frame = sealer.seal_chunk(data, final=index == info.chunks - 1)
                            await service.upload_chunk(package_id, number, index, frame, answer.upload_token)
                    answer = await service.finalise(package_id, answer.upload_token)
            if answer.receipt is None:
                raise ProtocolViolation("the integration service did not answer with a receipt")
            receipt = answer.receipt
            receipt.verify(directory, envelope_hash=sealed.envelope_hash)
            if receipt.package_id != package_id:
                raise BadSignature("the receipt is for another package")
            await staff.record_escalation(case_id, receipt)
    return Escalated(
        case_id,
        package_id,
        receipt,
        attachments=count,
        follow_ups=len(package.follow_ups),
        replies=len(package.replies),
        replies_left_out=sum(1 for r in replies if r.payload is None),
    )


__all__ = [
    "AttachmentMismatch",
    "CaseMismatch",
    "CaseReading",
    "Enrolled",
    "Escalated",
    "FollowUpView",
    "NotListed",
    "OutputFolderError",
    "ReplyView",
    "SavedAttachment",
    "SentReply",
    "enroll",
    "escalate",
    "handover",
    "inbox",
    "login",
    "logout",
    "read_case",
    "reply",
    "set_status",
]
