"""Deleting what the retention policy says, and nothing else (docs/server.md, "Retention").

One run, in one transaction:

1. **Cases.** A case of pool ``p`` with window ``N = policy.case_window(p)``
   is deleted when it is closed, rejected or escalated, its ``status_day`` is
   more than N days before today, and no message of it (reply or follow-up) is
   that recent. Its chunks, messages and escalation records go with it (the
   foreign keys cascade). Open cases (new, reviewing, replied) are never
   deleted by this rule.
2. **Mailboxes.** A mailbox is deleted, with everything in it, when it has no
   open case and no pending upload, and its last activity (its creation, any
   of its contacts' arrival or status change, any message) is more than M days
   before today, where M is the *longest* mailbox window of the pools its cases
   are in (any pool without a window keeps it). A mailbox whose cases step 1
   removed has nothing left in it and goes too.

Mailbox checks by the applicant leave no trace in the database (recording them
would date the applicant's visits), so reading replies does not count as
activity; writing a follow-up does.

The job logs and audits counts only, never ids or content. Each condition is
re-checked by the ``DELETE`` itself, so a case reopened while the job ran is
not deleted. On SQLite the deleted bytes are overwritten (``secure_delete``)
and the write-ahead log is truncated afterwards.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from safepassage.crypto.directory import Directory
from safepassage.crypto.keys import SigningKey

from .audit import append_audit
from .db.engine import Store
from .db.models import Chunk, Contact, EscalationRecord, Mailbox, MailboxNonce, Message
from .retention_policy import InvalidRetentionPolicy, RetentionPolicy, retention_policy

log = logging.getLogger("safepassage.server.retention")

#: Statuses after which a case may be deleted; every other status is open.
CLOSED_STATUSES: Final = ("closed", "rejected", "escalated")
#: The audit actor for what the server does by itself.
ACTOR: Final = "server"
#: How often the intake's housekeeping runs retention (the windows are whole days).
RETENTION_SECONDS: Final = 3600.0
#: Only one front end at a time runs retention on a shared PostgreSQL (an arbitrary constant key).
PG_LOCK_KEY: Final = 0x5AFE_0005
_BATCH: Final = 500


@dataclass(frozen=True, slots=True)
class RetentionCounts:
    cases: int = 0
    mailboxes: int = 0
    messages: int = 0
    chunks: int = 0
    escalations: int = 0

    def __add__(self, other: RetentionCounts) -> RetentionCounts:
        return RetentionCounts(
            self.cases + other.cases,
            self.mailboxes + other.mailboxes,
            self.messages + other.messages,
            self.chunks + other.chunks,
            self.escalations + other.escalations,
        )

    @property
    def total(self) -> int:
        return self.cases + self.mailboxes + self.messages + self.chunks + self.escalations

    def describe(self) -> str:
        return (
            f"{self.cases} cases, {self.mailboxes} mailboxes, {self.messages} messages, "
            f"{self.chunks} attachment chunks, {self.escalations} escalation records"
        )


class _DryRun(Exception):
    """Raised inside the transaction to roll a dry run back after counting."""

    def __init__(self, counts: RetentionCounts) -> None:
        super().__init__("dry run")
        self.counts = counts


def _chunks(ids: Sequence[str]) -> list[list[str]]:
    return [list(ids[i : i + _BATCH]) for i in range(0, len(ids), _BATCH)]


async def _children(session: AsyncSession, contact_ids: Sequence[str]) -> RetentionCounts:
    """What the cascade will remove with these contacts, counted before it does."""
    out = RetentionCounts()
    for batch in _chunks(contact_ids):
        messages = await session.scalar(select(func.count()).select_from(Message).where(Message.contact_id.in_(batch)))
        chunks = await session.scalar(select(func.count()).select_from(Chunk).where(Chunk.contact_id.in_(batch)))
        escalations = await session.scalar(
            select(func.count()).select_from(EscalationRecord).where(EscalationRecord.contact_id.in_(batch))
        )
        out = out + RetentionCounts(messages=messages or 0, chunks=chunks or 0, escalations=escalations or 0)
    return out


def _case_condition(pool: str, cutoff: dt.date) -> ColumnElement[bool]:
    recent_message = exists().where(Message.contact_id == Contact.id, Message.day >= cutoff)
    return and_(
        Contact.pool == pool,
        Contact.state == "complete",
        Contact.status.in_(CLOSED_STATUSES),
        Contact.status_day < cutoff,
        ~recent_message,
    )


async def _delete_cases(session: AsyncSession, policy: RetentionPolicy, today: dt.date) -> RetentionCounts:
    pools = (await session.scalars(select(Contact.pool).distinct())).all()
    total = RetentionCounts()
    for pool in sorted(pools):
        window = policy.case_window(pool)
        if window is None:
            continue
        condition = _case_condition(pool, today - dt.timedelta(days=window))
        # FOR UPDATE (PostgreSQL): a handler changing one of these cases waits for us, and
        # then finds it gone, rather than reopening a case we are deleting.
        ids = list((await session.scalars(select(Contact.id).where(condition).with_for_update())).all())
        if not ids:
            continue
        children = await _children(session, ids)
        deleted: list[str] = []
        for batch in _chunks(ids):
            result = await session.execute(
                delete(Contact).where(Contact.id.in_(batch), condition).returning(Contact.id)
            )
            deleted += [row[0] for row in result]
        if len(deleted) != len(ids):
            children = await _children(session, deleted)  # pragma: no cover - only under a concurrent change
        total = total + children + RetentionCounts(cases=len(deleted))
    return total


def _activity(cutoff: dt.date) -> ColumnElement[bool]:
    """True when the mailbox has an open case, a pending upload, or anything on or after ``cutoff``."""
    busy_contact = exists().where(
        Contact.mailbox_id == Mailbox.id,
        or_(
            Contact.state != "complete",
            ~Contact.status.in_(CLOSED_STATUSES),
            Contact.day >= cutoff,
            Contact.status_day >= cutoff,
        ),
    )
    recent_message = exists().where(Message.mailbox_id == Mailbox.id, Message.day >= cutoff)
    return or_(busy_contact, recent_message)


async def _mailbox_windows(session: AsyncSession, policy: RetentionPolicy) -> dict[str, int]:
    """Each mailbox that has contacts and whose every pool has a mailbox window: the longest of them."""
    windows: dict[str, int] = {}
    kept: set[str] = set()
    rows = (await session.execute(select(Contact.mailbox_id, Contact.pool).distinct())).all()
    for mailbox_id, pool in rows:
        window = policy.mailbox_window(pool)
        if window is None:
            kept.add(mailbox_id)
        else:
            windows[mailbox_id] = max(window, windows.get(mailbox_id, 0))
    return {m: w for m, w in windows.items() if m not in kept}


async def _delete_mailboxes(
    session: AsyncSession, policy: RetentionPolicy, today: dt.date, *, emptied_only: bool
) -> RetentionCounts:
    total = RetentionCounts()
    if emptied_only:
        # Mailboxes whose last case step 1 just deleted: nothing is left in them to keep.
        by_window: dict[int | None, list[str]] = {
            None: list(
                (
                    await session.scalars(
                        select(Mailbox.id).where(~exists().where(Contact.mailbox_id == Mailbox.id)).with_for_update()
                    )
                ).all()
            )
        }
    else:
        by_window = {}
        for mailbox_id, days in (await _mailbox_windows(session, policy)).items():
            by_window.setdefault(days, []).append(mailbox_id)
    for window, candidates in sorted(by_window.items(), key=lambda kv: kv[0] or 0):
        for batch in _chunks(sorted(candidates)):
            if window is None:
                condition = and_(Mailbox.id.in_(batch), ~exists().where(Contact.mailbox_id == Mailbox.id))
            else:
                cutoff = today - dt.timedelta(days=window)
                condition = and_(Mailbox.id.in_(batch), Mailbox.created_day < cutoff, ~_activity(cutoff))
            ids = list((await session.scalars(select(Mailbox.id).where(condition).with_for_update())).all())
            if not ids:
                continue
            contact_ids = list((await session.scalars(select(Contact.id).where(Contact.mailbox_id.in_(ids)))).all())
            children = await _children(session, contact_ids)
            result = await session.execute(delete(Mailbox).where(condition).returning(Mailbox.id))
            deleted = [row[0] for row in result]
            await session.execute(delete(MailboxNonce).where(MailboxNonce.mailbox_id.in_(deleted)))
            total = total + children + RetentionCounts(cases=len(contact_ids), mailboxes=len(deleted))
    return total


async def _exclusive(store: Store, session: AsyncSession) -> bool:
    """On PostgreSQL, whether this transaction may run retention (another front end may be at it)."""
    if store.is_sqlite:
        return True  # SQLite: the store's write lock and SQLite's own writer lock serialise runs
    got = await session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
    return bool(got)


async def apply_retention(
    store: Store,
    policy: RetentionPolicy,
    *,
    today: dt.date,
    audit_key: SigningKey,
    dry_run: bool = False,
) -> RetentionCounts:
    """Delete what ``policy`` says as of ``today`` (UTC day); return the counts.

    With ``dry_run`` the same statements run and are rolled back, so the counts
    are exactly what a real run would delete now.
    """
    if not policy.deletes_anything:
        return RetentionCounts()
    try:
        async with store.write() as session:
            if not await _exclusive(store, session):
                return RetentionCounts()
            counts = await _delete_cases(session, policy, today)
            if counts.cases:
                counts = counts + await _delete_mailboxes(session, policy, today, emptied_only=True)
            counts = counts + await _delete_mailboxes(session, policy, today, emptied_only=False)
            if dry_run:
                raise _DryRun(counts)
            if counts.total:
                await append_audit(
                    session,
                    audit_key,
                    day=today,
                    actor=ACTOR,
                    action="retention",
                    detail="deleted " + counts.describe(),
                )
    except _DryRun as rolled_back:
        return rolled_back.counts
    if counts.total:
        await store.checkpoint()
    return counts


async def run_retention(
    store: Store, directory: Directory, *, today: dt.date, audit_key: SigningKey, dry_run: bool = False
) -> RetentionCounts:
    """Parse the policy of ``directory`` (raising :class:`InvalidRetentionPolicy`) and apply it."""
    return await apply_retention(store, retention_policy(directory), today=today, audit_key=audit_key, dry_run=dry_run)


#: The tables retention deletes from, which :func:`reclaim_space` rewrites on PostgreSQL.
CONTENT_TABLES: Final = ("contacts", "chunks", "messages", "escalations", "mailboxes", "mailbox_nonces")


async def reclaim_space(store: Store) -> None:
    """Make deleted bytes leave the table files (docs/operating-retention.md, step 1).

    SQLite: nothing more to do (``secure_delete`` and the checkpoint already
    did it). PostgreSQL: ``VACUUM FULL`` rewrites each table and its TOAST table
    into new files; a plain (auto)vacuum leaves dead rows' bytes in the pages.
    It takes an exclusive lock per table while it copies it, so it is run on
    demand (``server retention --vacuum-full``), not from the hourly job.
    """
    if store.is_sqlite:
        await store.checkpoint()
        return
    # VACUUM cannot run inside a transaction block.
    async with store.engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.exec_driver_sql("VACUUM (FULL, ANALYZE) " + ", ".join(CONTENT_TABLES))
        await auto.exec_driver_sql("CHECKPOINT")


class RetentionSchedule:
    """Runs retention from the intake's housekeeping loop at most every :data:`RETENTION_SECONDS`."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._warned_version: int | None = None

    async def tick(self, store: Store, directory: Directory | None, audit_key: SigningKey, now: float) -> None:
        if directory is None or (self._last is not None and now - self._last < RETENTION_SECONDS):
            return
        self._last = now
        today = dt.datetime.fromtimestamp(now, dt.UTC).date()
        try:
            counts = await run_retention(store, directory, today=today, audit_key=audit_key)
        except InvalidRetentionPolicy as exc:
            if self._warned_version != directory.version:
                # The message names a policy key, never data.
                log.warning("retention skipped, directory version %d: %s", directory.version, exc.message)
                self._warned_version = directory.version
            return
        if counts.total:
            log.info("retention deleted %s", counts.describe())
