"""Many sealed contacts per request: ``GET /staff/v1/case-envelopes`` (docs/protocol.md, 18.5).

A handler opening thousands of cases would otherwise pay one round trip (over
Tor: seconds) per envelope. This endpoint returns a page of the caller's own
complete cases, each with its routing metadata and its sealed contact
envelope, in the inbox order (day, then id) with the inbox's cursor form.

Same gate as the single read (:func:`.auth.handler_caller`: a session, a
handler the current directory lists) and the same ownership rule (only
complete contacts the caller owns). Like ``GET /cases/{id}/envelope`` it is a
read: no status changes and no audit entry (the audit log records changes to
cases, not downloads; docs/protocol.md, 20). Each case comes as ``GET /cases/{id}``
describes it (with its message and escalation references) plus its envelope,
so the client needs no other request for a case without follow-ups or
attachments. A page is bounded twice: by ``limit`` and by :data:`PAGE_BYTES`
of envelopes and references, measured in the database before any envelope is
loaded, so one request never holds more than that (plus one case, since a
page always carries at least one).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Final

from aiohttp import web
from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from safepassage.crypto.encoding import b64e

from ..db.models import Contact, EscalationRecord, Message
from ..errors import bad_request
from ..inputs import query_int
from .accounts import PREFIX
from .auth import handler_caller
from .cases import _CASE_COLUMNS, _case_json, message_ref
from .context import staff_of

routes = web.RouteTableDef()

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 100
#: Envelope bytes one page carries at most (before base64), unless its first envelope alone is larger.
PAGE_BYTES: Final = 4 * 1024 * 1024
#: What one message or escalation reference costs in the page budget (its JSON is under 128 bytes).
REF_BYTES: Final = 128
_PARAMS: Final = frozenset({"after", "limit"})
_CURSOR = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})\.([A-Za-z0-9_-]{8,64})")


def _cursor(raw: str) -> tuple[dt.date, str]:
    match = _CURSOR.fullmatch(raw)
    try:
        day = dt.date.fromisoformat(match.group(1)) if match else None
    except ValueError:
        day = None
    if match is None or day is None:
        raise bad_request("Malformed 'after' cursor; pass back the 'next' value of the previous page.")
    return day, match.group(2)


async def _sizes(session: AsyncSession, ids: list[str]) -> dict[str, int]:
    """What each case adds to a page: its envelope's length and :data:`REF_BYTES` per reference."""
    lengths = await session.execute(select(Contact.id, func.length(Contact.envelope)).where(Contact.id.in_(ids)))
    sizes = {str(case_id): int(n) for case_id, n in lengths}
    for column in (Message.contact_id, EscalationRecord.contact_id):
        counted = select(column, func.count()).where(column.in_(ids)).group_by(column)
        for case_id, n in await session.execute(counted):
            sizes[str(case_id)] = sizes.get(str(case_id), 0) + REF_BYTES * int(n)
    return sizes


@routes.get(PREFIX + "/case-envelopes", name="staff_case_envelopes")
async def case_envelopes(request: web.Request) -> web.Response:
    caller = await handler_caller(request)
    if not set(request.query) <= _PARAMS or len(request.query) != len(set(request.query)):
        raise bad_request("Unknown or repeated query parameter; use after and limit.")
    limit = query_int(request, "limit", default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
    if limit < 1:
        raise bad_request(f"'limit' must be 1 to {MAX_LIMIT}.")
    after = request.query.get("after")
    mine = and_(Contact.owner == caller.username, Contact.state == "complete")
    # The candidates first (ids only, in the inbox order), then their sizes: nothing is
    # measured or loaded for cases beyond this page.
    page_ids = select(Contact.day, Contact.id).where(mine)
    if after is not None:
        day, case_id = _cursor(after)
        page_ids = page_ids.where(or_(Contact.day > day, and_(Contact.day == day, Contact.id > case_id)))
    page_ids = page_ids.order_by(Contact.day, Contact.id).limit(limit + 1)
    async with staff_of(request).store.read() as session:
        candidates = (await session.execute(page_ids)).all()
        sizes = await _sizes(session, [c.id for c in candidates[:limit]]) if candidates else {}
        # The page: as many as fit in PAGE_BYTES, at least one; known before any envelope is read.
        chosen: list[str] = []
        page_bytes = 0
        for candidate in candidates[:limit]:
            size = sizes.get(candidate.id, 0)
            if chosen and page_bytes + size > PAGE_BYTES:
                break
            chosen.append(candidate.id)
            page_bytes += size
        by_id: dict[str, Any] = {}
        messages: dict[str, list[dict[str, Any]]] = {case_id: [] for case_id in chosen}
        escalations: dict[str, list[dict[str, Any]]] = {case_id: [] for case_id in chosen}
        if chosen:
            query = select(*_CASE_COLUMNS, Contact.envelope).where(mine, Contact.id.in_(chosen))
            by_id = {r.id: r for r in (await session.execute(query)).all()}
            for m in await session.execute(
                select(Message.contact_id, Message.id, Message.kind, Message.day, Message.seq, Message.server_sealed)
                .where(Message.contact_id.in_(chosen))
                .order_by(Message.seq)
            ):
                messages[m.contact_id].append(message_ref(m.id, m.kind, m.day, m.seq, m.server_sealed))
            for e in await session.execute(
                select(EscalationRecord.contact_id, EscalationRecord.package_id, EscalationRecord.day)
                .where(EscalationRecord.contact_id.in_(chosen))
                .order_by(EscalationRecord.day, EscalationRecord.package_id)
            ):
                escalations[e.contact_id].append({"package": e.package_id, "day": e.day.isoformat()})
        total = None
        if after is None:
            total = await session.scalar(select(func.count()).select_from(Contact).where(mine))
    cases = []
    for case_id in chosen:
        row = by_id.get(case_id)
        if row is None:  # handed over or deleted between the two statements: simply not on this page
            continue
        follow_ups = sum(1 for m in messages[case_id] if m["kind"] == "follow-up")
        item = _case_json(row, follow_ups)
        item["messages"] = messages[case_id]
        item["escalations"] = escalations[case_id]
        item["envelope"] = b64e(row.envelope)
        cases.append(item)
    last = candidates[len(chosen) - 1] if chosen else None
    more = len(candidates) > len(chosen)
    cursor = f"{last.day.isoformat()}.{last.id}" if more and last is not None else None
    return web.json_response({"cases": cases, "next": cursor, "total": total})
