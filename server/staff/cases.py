"""A handler's cases: routing metadata and sealed blobs, never plaintext.

Only handlers listed in the current directory get here (:func:`.auth.handler_caller`),
and each sees only the complete contacts it owns: any other case id, whether
it exists or not, is the same 404, so probing ids tells a handler nothing
about colleagues' cases. Ownership is checked before the body is read, and
every write re-checks it in its own statement, so a case handed over in
between is not changed by its former owner.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from typing import Any, Final

from aiohttp import web
from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from safepassage.crypto import envelope as E
from safepassage.crypto.encoding import canonical_json
from safepassage.crypto.errors import BadSignature, SafePassageError
from safepassage.crypto.staffmsg import IntegrationReceipt

from ..db.models import Chunk, Contact, EscalationRecord, Mailbox, Message, StaffUser
from ..errors import ApiError, bad_request, from_crypto
from ..inputs import path_int, query_int, read_binary
from ..routing import key_owners, log_entries, readers_of
from .accounts import PREFIX
from .auth import Caller, handler_caller
from .body import path_id, read_json, string, username
from .context import staff_of

routes = web.RouteTableDef()

STATUSES: Final = ("new", "reviewing", "replied", "escalated", "rejected", "closed")
#: A reply moves a case to "replied" only from these; a closed or escalated case keeps its status.
REPLY_MOVES: Final = ("new", "reviewing")
DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 200
#: A reply is sealed to the applicant's reply key alone: one recipient, any bucket.
MAX_REPLY: Final = E.envelope_length(len(E.BUCKETS) - 1, 1)
OCTET: Final = "application/octet-stream"
_POOL = re.compile(r"[a-z][a-z0-9-]{0,31}")
_CURSOR = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})\.([A-Za-z0-9_-]{8,64})")
_LIST_PARAMS: Final = frozenset({"status", "pool", "after", "limit"})

_CASE_COLUMNS: Final = (
    Contact.id,
    Contact.pool,
    Contact.day,
    Contact.bucket,
    Contact.status,
    Contact.attachments,
    Contact.server_sealed,
    Contact.mailbox_id,
)


def _not_found(what: str = "case") -> ApiError:
    return ApiError(404, "not_found", f"No such {what}.")


def _owned(case_id: str, caller: Caller) -> ColumnElement[bool]:
    """The SQL condition "this case exists, is complete, and belongs to the caller"."""
    return and_(Contact.id == case_id, Contact.owner == caller.username, Contact.state == "complete")


def _case_json(row: Any, follow_ups: int) -> dict[str, Any]:
    """``row`` has the ``_CASE_COLUMNS`` (a SQLAlchemy Row of them, or more)."""
    return {
        "id": row.id,
        "pool": row.pool,
        "day": row.day.isoformat(),
        "bucket": row.bucket,
        "status": row.status,
        "attachments": row.attachments,
        "server_sealed": row.server_sealed,
        "mailbox": row.mailbox_id,
        "follow_ups": follow_ups,
    }


async def _case(session: AsyncSession, case_id: str, caller: Caller) -> dict[str, Any]:
    row = (await session.execute(select(*_CASE_COLUMNS).where(_owned(case_id, caller)))).one_or_none()
    if row is None:
        raise _not_found()
    follow_ups = await session.scalar(
        select(func.count()).select_from(Message).where(Message.contact_id == case_id, Message.kind == "follow-up")
    )
    return _case_json(row, follow_ups or 0)


async def _owned_case(request: web.Request) -> tuple[Caller, str, dict[str, Any]]:
    """The calling handler, the case id from the path, and the case; 404 unless the caller owns it."""
    caller = await handler_caller(request)
    case_id = path_id(request, "case_id")
    async with staff_of(request).store.read() as session:
        case = await _case(session, case_id, caller)
    return caller, case_id, case


def _binary(data: bytes) -> web.Response:
    return web.Response(body=data, content_type=OCTET)


async def _flush_or_conflict(session: AsyncSession) -> None:
    try:
        await session.flush()
    except IntegrityError:
        raise ApiError(409, "conflict", "A concurrent request changed this case; nothing was stored.") from None


# --- reading ----------------------------------------------------------------------------------------


@routes.get(PREFIX + "/cases", name="staff_cases")
async def list_cases(request: web.Request) -> web.Response:
    caller = await handler_caller(request)
    if not set(request.query) <= _LIST_PARAMS or len(request.query) != len(set(request.query)):
        raise bad_request("Unknown or repeated query parameter; use status, pool, after and limit.")
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise bad_request("'status' must be one of " + ", ".join(STATUSES) + ".")
    pool = request.query.get("pool")
    if pool is not None and not _POOL.fullmatch(pool):
        raise bad_request("Malformed pool name.")
    limit = query_int(request, "limit", default=DEFAULT_PAGE, maximum=MAX_PAGE)
    if limit < 1:
        raise bad_request(f"'limit' must be 1 to {MAX_PAGE}.")
    query = select(*_CASE_COLUMNS).where(Contact.owner == caller.username, Contact.state == "complete")
    if status is not None:
        query = query.where(Contact.status == status)
    if pool is not None:
        query = query.where(Contact.pool == pool)
    after = request.query.get("after")
    if after is not None:
        match = _CURSOR.fullmatch(after)
        try:
            day = dt.date.fromisoformat(match.group(1)) if match else None
        except ValueError:
            day = None
        if match is None or day is None:
            raise bad_request("Malformed 'after' cursor; pass back the 'next' value of the previous page.")
        query = query.where(or_(Contact.day > day, and_(Contact.day == day, Contact.id > match.group(2))))
    # Oldest first, by day then id: a stable order the cursor can resume from, and the order of
    # ix_contacts_owner_state_day_id, so a page is a range scan however many cases the handler has.
    query = query.order_by(Contact.day, Contact.id).limit(limit + 1)
    async with staff_of(request).store.read() as session:
        rows = (await session.execute(query)).all()
        page = rows[:limit]
        follow_ups = await _follow_ups(session, [r.id for r in page])
    cursor = f"{page[-1].day.isoformat()}.{page[-1].id}" if len(rows) > limit else None
    return web.json_response({"cases": [_case_json(r, follow_ups.get(r.id, 0)) for r in page], "next": cursor})


async def _follow_ups(session: AsyncSession, case_ids: list[str]) -> dict[str, int]:
    """Follow-ups per case, for these cases only (one page, at most ``MAX_PAGE`` ids): an index
    lookup per case, where grouping every follow-up in the database grew with the table."""
    if not case_ids:
        return {}
    rows = await session.execute(
        select(Message.contact_id, func.count())
        .where(Message.contact_id.in_(case_ids), Message.kind == "follow-up")
        .group_by(Message.contact_id)
    )
    return {contact_id: int(n) for contact_id, n in rows.all()}


@routes.get(PREFIX + "/cases/{case_id}", name="staff_case")
async def get_case(request: web.Request) -> web.Response:
    caller = await handler_caller(request)
    case_id = path_id(request, "case_id")
    async with staff_of(request).store.read() as session:
        case = await _case(session, case_id, caller)
        messages = (
            await session.execute(
                select(Message.id, Message.kind, Message.day, Message.seq, Message.server_sealed)
                .where(Message.contact_id == case_id)
                .order_by(Message.seq)
            )
        ).all()
        escalations = (
            await session.execute(
                select(EscalationRecord.package_id, EscalationRecord.day)
                .where(EscalationRecord.contact_id == case_id)
                .order_by(EscalationRecord.day, EscalationRecord.package_id)
            )
        ).all()
    case["messages"] = [message_ref(m.id, m.kind, m.day, m.seq, m.server_sealed) for m in messages]
    case["escalations"] = [{"package": e.package_id, "day": e.day.isoformat()} for e in escalations]
    return web.json_response(case)


def message_ref(message_id: str, kind: str, day: dt.date, seq: int, server_sealed: bool) -> dict[str, Any]:
    """A message as the case views list it: sealed by the server (a follow-up from the web page
    without JavaScript), the handler is told so."""
    return {"id": message_id, "kind": kind, "day": day.isoformat(), "seq": seq, "server_sealed": server_sealed}


@routes.get(PREFIX + "/cases/{case_id}/envelope", name="staff_case_envelope")
async def case_envelope(request: web.Request) -> web.Response:
    caller = await handler_caller(request)
    case_id = path_id(request, "case_id")
    async with staff_of(request).store.read() as session:
        data = await session.scalar(select(Contact.envelope).where(_owned(case_id, caller)))
    if data is None:
        raise _not_found()
    return _binary(data)


@routes.get(PREFIX + "/cases/{case_id}/attachments/{attachment}/chunks/{index}", name="staff_case_chunk")
async def case_chunk(request: web.Request) -> web.Response:
    _, case_id, _ = await _owned_case(request)
    attachment = path_int(request, "attachment", E.MAX_ATTACHMENTS - 1)
    index = path_int(request, "index", E.MAX_CHUNKS - 1)
    async with staff_of(request).store.read() as session:
        frame = await session.scalar(
            select(Chunk.frame).where(Chunk.contact_id == case_id, Chunk.attachment == attachment, Chunk.index == index)
        )
    if frame is None:
        raise _not_found("chunk")
    return _binary(frame)


@routes.get(PREFIX + "/cases/{case_id}/messages/{message_id}/envelope", name="staff_message_envelope")
async def message_envelope(request: web.Request) -> web.Response:
    _, case_id, _ = await _owned_case(request)
    message_id = path_id(request, "message_id")
    async with staff_of(request).store.read() as session:
        data = await session.scalar(
            select(Message.envelope).where(Message.id == message_id, Message.contact_id == case_id)
        )
    if data is None:
        raise _not_found("message")
    return _binary(data)


# --- changing -----------------------------------------------------------------------------------------


@routes.post(PREFIX + "/cases/{case_id}/status", name="staff_case_status")
async def set_status(request: web.Request) -> web.Response:
    caller, case_id, _ = await _owned_case(request)
    body = await read_json(request, ("status",))
    status = string(body, "status", max_len=16)
    if status not in STATUSES:
        raise bad_request("'status' must be one of " + ", ".join(STATUSES) + ".")
    staff = staff_of(request)
    async with staff.store.write() as session:
        changed = await session.execute(
            update(Contact).where(_owned(case_id, caller)).values(status=status, status_day=staff.today())
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            raise _not_found()
        await staff.audit(session, caller.username, "status", case_id=case_id, detail=status)
        case = await _case(session, case_id, caller)
    return web.json_response(case)


@routes.post(PREFIX + "/cases/{case_id}/replies", name="staff_case_reply")
async def post_reply(request: web.Request) -> web.Response:
    """Store a reply envelope for the applicant's mailbox (docs/protocol.md, 16.1).

    The server checks form only: an envelope of purpose reply with exactly one
    recipient. It cannot check that the recipient is the applicant's reply key
    (that key is inside the sealed contact); the applicant's client checks the
    handler's signature inside.
    """
    caller, case_id, case = await _owned_case(request)
    data = await read_binary(request, MAX_REPLY)
    try:
        header = E.parse_header(data)
    except SafePassageError as exc:
        raise from_crypto(exc, 400, "malformed_envelope") from None
    if header.purpose != E.Purpose.REPLY:
        raise bad_request("Expected an envelope of purpose reply.", "wrong_purpose")
    if len(header.recipient_ids) != 1:
        raise ApiError(422, "recipients_mismatch", "A reply is sealed to the applicant's reply key alone.")
    staff = staff_of(request)
    message_id = secrets.token_urlsafe(16)
    async with staff.store.write() as session:
        # Lock the mailbox row (PostgreSQL; SQLite writes are serialised) so two
        # replies to one mailbox cannot take the same sequence number.
        await session.execute(select(Mailbox.id).where(Mailbox.id == case["mailbox"]).with_for_update())
        status = await session.scalar(select(Contact.status).where(_owned(case_id, caller)))
        if status is None:
            raise _not_found()
        seq = (
            await session.scalar(
                select(func.coalesce(func.max(Message.seq), 0)).where(Message.mailbox_id == case["mailbox"])
            )
            or 0
        ) + 1
        session.add(
            Message(
                id=message_id,
                mailbox_id=case["mailbox"],
                contact_id=case_id,
                kind="reply",
                day=staff.today(),
                bucket=header.bucket,
                envelope=data,
                envelope_hash=hashlib.sha256(data).digest(),
                seq=seq,
            )
        )
        if status in REPLY_MOVES:
            await session.execute(
                update(Contact).where(_owned(case_id, caller)).values(status="replied", status_day=staff.today())
            )
        await staff.audit(session, caller.username, "reply", case_id=case_id, detail=f"message {message_id}")
        await _flush_or_conflict(session)
    return web.json_response({"message": message_id, "seq": seq}, status=201)


@routes.post(PREFIX + "/cases/{case_id}/handover", name="staff_case_handover")
async def handover(request: web.Request) -> web.Response:
    """Give the case to another handler of its pool: listed in the current directory and active here."""
    caller, case_id, case = await _owned_case(request)
    body = await read_json(request, ("handler",))
    target = username(string(body, "handler", max_len=64), "handler id")
    staff = staff_of(request)
    directory = staff.published().directory
    in_pool = {h.handler_id for h in directory.handlers if case["pool"] in h.pools}
    async with staff.store.read() as session:
        account = await session.get(StaffUser, target)
        envelope = await session.scalar(select(Contact.envelope).where(Contact.id == case_id))
        readers = readers_of(envelope or b"", key_owners(await log_entries(session)), staff.now())
    if (
        target == caller.username
        or target not in in_pool
        or account is None
        or account.role != "handler"
        or account.state != "active"
    ):
        raise ApiError(
            422,
            "invalid_handover_target",
            "Hand over only to another active handler listed in the current directory for this case's pool.",
        )
    if target not in readers:
        # The contact is sealed to the pool's intake keys of the day it arrived:
        # a handler who was not among them could not open it.
        raise ApiError(
            422, "target_cannot_read", "That handler was not a recipient of this contact and could not open it."
        )
    async with staff.store.write() as session:
        changed = await session.execute(update(Contact).where(_owned(case_id, caller)).values(owner=target))
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            raise _not_found()
        await staff.audit(session, caller.username, "handover", case_id=case_id, detail=f"to {target}")
    return web.json_response({"id": case_id, "handler": target})


@routes.post(PREFIX + "/cases/{case_id}/escalations", name="staff_case_escalation")
async def record_escalation(request: web.Request) -> web.Response:
    """Record that the integration service stored a package for this case (docs/protocol.md, 17.3).

    The receipt must verify against the current directory's integration
    signing key. The server keeps the receipt, never the package.
    """
    caller, case_id, _ = await _owned_case(request)
    body = await read_json(request, ("receipt",))
    try:
        receipt = IntegrationReceipt.from_json(body["receipt"])
    except SafePassageError as exc:
        raise from_crypto(exc, 400, "malformed_receipt") from None
    staff = staff_of(request)
    try:
        receipt.verify(staff.published().directory, envelope_hash=receipt.envelope_hash)
    except BadSignature:
        raise ApiError(
            422, "receipt_invalid", "The receipt is not signed by the integration service of the current directory."
        ) from None
    today = staff.today()
    async with staff.store.write() as session:
        if await session.get(EscalationRecord, receipt.package_id) is not None:
            raise ApiError(409, "already_recorded", "This package is already recorded.")
        changed = await session.execute(
            update(Contact).where(_owned(case_id, caller)).values(status="escalated", status_day=today)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            raise _not_found()
        session.add(
            EscalationRecord(
                package_id=receipt.package_id,
                contact_id=case_id,
                handler=caller.username,
                day=today,
                receipt=canonical_json(receipt.to_json()),
            )
        )
        await staff.audit(
            session, caller.username, "escalation", case_id=case_id, detail=f"package {receipt.package_id}"
        )
        await _flush_or_conflict(session)
    return web.json_response({"package": receipt.package_id, "day": today.isoformat()}, status=201)
