"""``GET /staff/v1/admin/audit``: the signed audit log, page by page, for admins to verify.

Rows are served exactly as stored, never recomputed or re-signed here: the
point is that an admin's client checks them (client/audit.py), so a row
someone edited in the database must reach the client as edited.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from safepassage.crypto.encoding import b64e

from ..audit import MAX_PAGE, read_head, read_page
from ..db.models import AuditLogEntry
from ..errors import bad_request
from ..inputs import query_int
from .accounts import PREFIX
from .auth import admin_caller
from .context import staff_of

routes = web.RouteTableDef()

DEFAULT_PAGE: Final = 100
#: Largest sequence number a query may name (the JSON integer bound of docs/protocol.md 2.2).
MAX_SEQ: Final = 2**53 - 1


def wire(row: AuditLogEntry) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "prev": b64e(row.prev_hash),
        "hash": b64e(row.entry_hash),
        "day": row.day.isoformat(),
        "actor": row.actor,
        "action": row.action,
        "case": row.case_id,
        "detail": row.detail,
        "key": row.key_id,
        "sig": b64e(row.signature),
    }


@routes.get(PREFIX + "/admin/audit", name="staff_admin_audit")
async def audit_page(request: web.Request) -> web.Response:
    await admin_caller(request)
    after = query_int(request, "after", default=0, maximum=MAX_SEQ)
    limit = query_int(request, "limit", default=DEFAULT_PAGE, maximum=MAX_PAGE)
    if limit < 1:
        raise bad_request(f"Query parameter 'limit' must be an integer from 1 to {MAX_PAGE}.")
    async with staff_of(request).store.read() as session:
        rows = await read_page(session, after=after, limit=limit)
        head_seq, head_hash = await read_head(session)
    return web.json_response({"entries": [wire(r) for r in rows], "head": {"seq": head_seq, "hash": b64e(head_hash)}})
