"""Who owns a case: the choice at intake, and the moves a new directory forces.

A contact is sealed to the intake keys of the pool's handlers at the time it
arrived (its header lists their key ids, 4.1). Only those handlers can ever
read it, so when a directory removes its owner from the pool (revocation) the
case moves to another handler of the pool who was one of its recipients; a
handler added later could not open it. Which handler held which intake key is
public: every directory ever published is in the transparency log.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from safepassage.crypto.directory import KEY_DESTRUCTION_GRACE, Directory, SignedDirectory
from safepassage.crypto.envelope import parse_header
from safepassage.crypto.errors import SafePassageError

from .db.models import Contact, LogEntry, OpenCaseCount

#: Case statuses that still need a handler's attention; the triggers of migration 0006 count the same.
OPEN_STATUSES = ("new", "reviewing", "replied")


def _open_cases(pool: str) -> Any:  # a Select; its type parameters differ between SQLAlchemy 2.0 and 2.1
    # One row per handler of the pool, kept by triggers in the transaction of every change to
    # a contact (migration 0006): constant time, where counting the contacts grew with the table.
    return select(OpenCaseCount.owner, OpenCaseCount.cases).where(OpenCaseCount.pool == pool)


def _fewest(rows: Iterable[Any], candidates: Sequence[str]) -> str:
    load: dict[str, int] = {row[0]: row[1] for row in rows}
    fewest = min(load.get(c, 0) for c in candidates)
    return secrets.choice([c for c in candidates if load.get(c, 0) == fewest])


async def choose_owner(session: AsyncSession, pool: str, candidates: Sequence[str]) -> str:
    """The candidate with the fewest open cases in the pool; ties broken uniformly at random."""
    return _fewest((await session.execute(_open_cases(pool))).all(), candidates)


def choose_owner_sync(session: Session, pool: str, candidates: Sequence[str]) -> str:
    """:func:`choose_owner` inside a sync transaction (the intake's one-hop SQLite writes)."""
    return _fewest(session.execute(_open_cases(pool)).all(), candidates)


def key_owners(entries: Iterable[bytes]) -> dict[bytes, tuple[str, int]]:
    """Intake key id -> (handler id, end of its window), over every directory in the log."""
    owners: dict[bytes, tuple[str, int]] = {}
    for entry in entries:
        for handler in SignedDirectory.from_bytes(entry).directory.handlers:
            for key in handler.intake_keys:
                owners[key.key.key_id.raw] = (handler.handler_id, key.not_after)
    return owners


def readers_of(envelope: bytes, owners: dict[bytes, tuple[str, int]], now: int) -> frozenset[str]:
    """The handlers an envelope was sealed to (by its header's key ids) that still hold that key.

    A handler client destroys an intake key ``KEY_DESTRUCTION_GRACE`` after its
    window ends (protocol 19.3); only the case's owner keeps a readable copy, in
    its own archive. Past that point nobody else can open the contact.
    """
    try:
        header = parse_header(envelope)
    except SafePassageError:
        return frozenset()
    return frozenset(
        owners[kid.raw][0]
        for kid in header.recipients
        if kid.raw in owners and owners[kid.raw][1] + KEY_DESTRUCTION_GRACE > now
    )


@dataclass(frozen=True, slots=True)
class Reassignment:
    moved: int
    #: Open cases whose owner left and whose other readers left too: nobody listed can open them.
    stranded: int


async def reassign_orphaned_cases(
    session: AsyncSession, directory: Directory, entries: Sequence[bytes], now: int
) -> Reassignment:
    """Move every open case whose owner is no longer a handler of its pool to one who can read it."""
    members = {pool.name: {h.handler_id for h in directory.pool_handlers(pool.name)} for pool in directory.pools}
    # Routing columns first; an envelope (up to 1 MiB) is read only for a case that must move.
    rows = (
        await session.execute(
            select(Contact.id, Contact.pool, Contact.owner).where(
                Contact.state == "complete", Contact.status.in_(OPEN_STATUSES)
            )
        )
    ).all()
    orphaned = [r for r in rows if r.owner not in members.get(r.pool, set())]
    if not orphaned:
        return Reassignment(0, 0)
    owners = key_owners(entries)
    moved = stranded = 0
    for row in orphaned:
        envelope = await session.scalar(select(Contact.envelope).where(Contact.id == row.id))
        candidates = sorted(readers_of(envelope or b"", owners, now) & members.get(row.pool, set()))
        if not candidates:
            stranded += 1
            continue
        owner = await choose_owner(session, row.pool, candidates)
        await session.execute(update(Contact).where(Contact.id == row.id).values(owner=owner))
        moved += 1
    return Reassignment(moved, stranded)


async def log_entries(session: AsyncSession) -> list[bytes]:
    return list((await session.scalars(select(LogEntry.entry).order_by(LogEntry.index))).all())
