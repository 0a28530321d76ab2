"""Appending to and reading the signed audit log (docs/protocol.md, section 20).

An append runs inside the caller's transaction, so an entry commits with the
change it records or not at all. Appends are serialised by the one-row
``audit_head`` table: the first thing an append does is *write* that row.
On PostgreSQL the update takes the row lock, so a concurrent append waits
and then reads the head it left; on SQLite a write is what opens the write
transaction (the driver defers BEGIN to the first write), so a second process
waits on SQLite's lock instead of reading a head that is about to change. Two
appends can therefore never pick the same number, and the primary key on
``seq`` would refuse them if they did.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from safepassage.crypto.audit import GENESIS_PREV, MAX_DETAIL, AuditBody, AuditEntry
from safepassage.crypto.keys import SigningKey

from .db.models import AuditHead, AuditLogEntry

HEAD_ID: Final = 1
#: Most entries one page of the staff API returns.
MAX_PAGE: Final = 500


async def append_audit(
    session: AsyncSession,
    key: SigningKey,
    *,
    day: dt.date,
    actor: str,
    action: str,
    case_id: str | None = None,
    detail: str = "",
) -> AuditEntry:
    """Chain, sign and add one entry in ``session``'s transaction; return it."""
    bumped = await session.execute(
        update(AuditHead).where(AuditHead.id == HEAD_ID).values(seq=AuditHead.seq + 1).returning(AuditHead.seq)
    )
    row = bumped.first()
    if row is None:
        # A database made without the migration's head row: start the chain.
        # Two racing first appends both insert id 1; the primary key refuses one.
        session.add(AuditHead(id=HEAD_ID, seq=1, entry_hash=GENESIS_PREV))
        await session.flush()
        seq, prev = 1, GENESIS_PREV
    else:
        seq = int(row[0])
        stored = await session.scalar(select(AuditHead.entry_hash).where(AuditHead.id == HEAD_ID))
        if stored is None:  # the row was just updated in this very transaction
            raise RuntimeError("audit head vanished inside its own transaction")
        prev = bytes(stored)
    body = AuditBody(
        seq=seq,
        prev=prev,
        day=day.isoformat(),
        actor=actor,
        action=action,
        case=case_id or "",
        detail=detail[:MAX_DETAIL],
        key_id=key.verify_key.key_id,
    )
    entry = AuditEntry.make(key, body)
    session.add(
        AuditLogEntry(
            seq=seq,
            prev_hash=prev,
            entry_hash=entry.hash,
            day=day,
            actor=actor,
            action=action,
            case_id=body.case,
            detail=body.detail,
            key_id=body.key_id.hex(),
            signature=entry.signature,
        )
    )
    await session.execute(update(AuditHead).where(AuditHead.id == HEAD_ID).values(entry_hash=entry.hash))
    return entry


async def read_page(session: AsyncSession, *, after: int, limit: int) -> list[AuditLogEntry]:
    rows = await session.scalars(
        select(AuditLogEntry).where(AuditLogEntry.seq > after).order_by(AuditLogEntry.seq).limit(limit)
    )
    return list(rows.all())


async def read_head(session: AsyncSession) -> tuple[int, bytes]:
    row = (await session.execute(select(AuditHead.seq, AuditHead.entry_hash).where(AuditHead.id == HEAD_ID))).first()
    if row is None:
        return 0, GENESIS_PREV
    return int(row[0]), bytes(row[1])
