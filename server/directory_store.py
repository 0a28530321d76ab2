"""The published directory and its transparency log, as the server keeps them.

The server never signs a directory or a tree head: admins do (M of N). What the
server does is refuse to publish anything a client would refuse — a directory
that is not a valid successor, a head that does not commit to the log with the
new entry appended, a head not signed by the new directory's admins, or a
directory that does not name this server's receipt key — so a mistake shows up
at publication, not as every applicant's client failing.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from safepassage.crypto.directory import (
    INTAKE_KEY_DAYS_POLICY,
    Directory,
    SignedDirectory,
    intake_key_days,
    verify_genesis,
    verify_successor,
)
from safepassage.crypto.encoding import as_obj, canonical_json, parse_canonical_json
from safepassage.crypto.errors import SafePassageError
from safepassage.crypto.keys import SigningKey, VerifyKey
from safepassage.crypto.translog import MerkleLog, SignedTreeHead, leaf_hash

from .audit import append_audit
from .db.engine import Store
from .db.models import DirectoryProposal, LogEntry, StaffSession, TreeHeadRecord
from .errors import ApiError
from .retention_policy import InvalidRetentionPolicy, retention_policy
from .routing import log_entries, reassign_orphaned_cases

MAX_HEAD_BYTES = 64 * 1024
#: PostgreSQL advisory lock taken by everything that extends the log (any constant unique to this use).
PUBLICATION_LOCK = 0x5AFE_D1_0001


class PublishRefused(SafePassageError):
    """The server refused to publish this directory."""

    hint = "Check that M admins signed both the directory and the tree head for the log with it appended."
    exit_code = 2


@dataclass(frozen=True, slots=True)
class Published:
    """What the intake serves: the newest directory, its log, and the signed head."""

    signed: SignedDirectory
    entry: bytes
    index: int
    log: MerkleLog
    head: SignedTreeHead

    @property
    def directory(self) -> Directory:
        return self.signed.directory


def hold_current_directory_sync(session: Session, routed_by: Published) -> None:
    """In a transaction that routes a new case by the directory ``routed_by``: refuse if a newer one
    was published meanwhile (409 ``directory_changed``), so that no case goes to a handler a
    publication just revoked.

    A publication moves the open cases of handlers it removes in its own transaction
    (:func:`reassign_orphaned_cases`); a case stored after that commit by a front end that has
    not yet noticed the publication would stay with the revoked handler. On PostgreSQL the
    shared lock makes a publication (which takes the same lock exclusively) wait for the
    submissions in flight, and a submission wait for a publication in flight, so one of the
    two always sees the other. SQLite writes are serialised by the store's lock.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": PUBLICATION_LOCK})
    if session.scalar(select(func.max(LogEntry.index))) != routed_by.index:
        raise ApiError(
            409, "directory_changed", "A new directory was published while this was sent; fetch it and send again."
        )


def parse_signed_head(data: bytes) -> SignedTreeHead:
    return SignedTreeHead.from_json(as_obj(parse_canonical_json(data, max_len=MAX_HEAD_BYTES), "tree head"))


async def load_in(session: AsyncSession, *, for_update: bool = False) -> Published | None:
    if for_update and session.get_bind().dialect.name == "postgresql":
        # Two publications (or a publication and a proposal freezing its head)
        # must not both work from the same log: a row lock cannot do it (an empty
        # log has no row; inserts are not blocked), a transaction lock can.
        # SQLite writes are serialised by the store's lock.
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PUBLICATION_LOCK})
    entries = (await session.scalars(select(LogEntry).order_by(LogEntry.index))).all()
    head_row = await session.scalar(select(TreeHeadRecord).order_by(TreeHeadRecord.size.desc()).limit(1))
    if not entries or head_row is None:
        return None
    last = entries[-1]
    log = MerkleLog([e.leaf_hash for e in entries])
    signed = SignedDirectory.from_bytes(last.entry)
    return Published(signed, last.entry, last.index, log, parse_signed_head(head_row.signed_head))


async def published_marker(store: Store) -> tuple[int, bytes]:
    """The newest head's size and bytes: a cheap way to notice another process published or a witness cosigned."""
    async with store.read() as session:
        row = (
            await session.execute(
                select(TreeHeadRecord.size, TreeHeadRecord.signed_head).order_by(TreeHeadRecord.size.desc()).limit(1)
            )
        ).first()
    return (row.size, row.signed_head) if row is not None else (0, b"")


async def load_published(store: Store) -> Published | None:
    async with store.read() as session:
        return await load_in(session)


def check_publication(
    current: Published | None,
    signed: SignedDirectory,
    head: SignedTreeHead,
    *,
    org_fingerprint: str,
    receipt_key: VerifyKey,
    next_receipt_key: VerifyKey | None = None,
) -> tuple[Directory, bytes]:
    """Everything a client will check, checked before anything is stored."""
    try:
        if current is None:
            if not org_fingerprint:
                raise PublishRefused("the server has no organisation fingerprint configured")
            directory = verify_genesis(signed, org_fingerprint)
        else:
            directory = verify_successor(current.directory, signed)
        entry = signed.to_bytes()
        log = MerkleLog(current.log.leaf_hashes() if current else ())
        log.append(entry)
        if head.head.size != log.size or head.head.root != log.root():
            raise PublishRefused("the tree head does not commit to the log with this directory appended")
        head.verify(directory.admins)
    except PublishRefused:
        raise
    except SafePassageError as exc:
        raise PublishRefused(exc.message) from exc
    if directory.receipt_key not in (receipt_key, next_receipt_key):
        raise PublishRefused("the directory does not name this server's receipt key (current or next)")
    try:
        retention_policy(directory)
    except InvalidRetentionPolicy as exc:
        # Refused here so the admins learn now, not from a retention job that quietly deletes nothing.
        raise PublishRefused(exc.detail) from None
    if current is not None and head.head.timestamp < current.head.head.timestamp:
        raise PublishRefused("the tree head is older than the one being served")
    _check_new_key_windows(current.directory if current else None, directory)
    return directory, entry


def _check_new_key_windows(before: Directory | None, directory: Directory) -> None:
    """A newly listed intake key may not outlive the admins' rotation period (protocol 7.5):
    a longer window would keep contacts readable with one key for longer than they agreed."""
    try:
        days = intake_key_days(directory)
    except SafePassageError as exc:
        raise PublishRefused(exc.message) from None
    listed = {k.key.key_id for h in before.handlers for k in h.intake_keys} if before else set()
    for handler in directory.handlers:
        for key in handler.intake_keys:
            if key.key.key_id not in listed and key.not_after - key.not_before > days * 86400:
                raise PublishRefused(
                    f"handler {handler.handler_id}'s new intake key is valid for longer than the policy's"
                    f" {days} day(s) ({INTAKE_KEY_DAYS_POLICY}); make it again with that window"
                )


@dataclass(frozen=True, slots=True)
class Effects:
    """What publishing a directory changed besides the log (counts only)."""

    #: Handlers listed before and not now: their staff sessions ended.
    removed_handlers: tuple[str, ...]
    ended_sessions: int
    moved_cases: int
    stranded_cases: int

    def summary(self, version: int) -> str:
        """The audit entry's detail: counts only."""
        return (
            f"directory version {version}; removed {len(self.removed_handlers)} handler(s),"
            f" moved {self.moved_cases} case(s), stranded {self.stranded_cases}"
        )


async def publish_in(
    session: AsyncSession,
    signed: SignedDirectory,
    head: SignedTreeHead,
    *,
    org_fingerprint: str,
    receipt_key: VerifyKey,
    next_receipt_key: VerifyKey | None = None,
    now: int | None = None,
) -> Effects:
    """Append ``signed`` to the log and serve ``head`` within ``session``'s transaction.

    A handler the new directory no longer lists is revoked at once: its staff
    sessions end and its open cases move to a handler of the pool who can read
    them, in the same transaction as the publication.
    """
    current = await load_in(session, for_update=True)
    directory, entry = check_publication(
        current,
        signed,
        head,
        org_fingerprint=org_fingerprint,
        receipt_key=receipt_key,
        next_receipt_key=next_receipt_key,
    )
    index = current.log.size if current else 0
    session.add(LogEntry(index=index, version=directory.version, entry=entry, leaf_hash=leaf_hash(entry)))
    session.add(TreeHeadRecord(size=head.head.size, signed_head=canonical_json(head.to_json())))
    await session.flush()
    before = {h.handler_id for h in current.directory.handlers} if current else set()
    removed = tuple(sorted(before - {h.handler_id for h in directory.handlers}))
    ended = 0
    if removed:
        result = await session.execute(delete(StaffSession).where(StaffSession.username.in_(removed)))
        ended = result.rowcount  # type: ignore[attr-defined]
    when = int(time.time()) if now is None else now
    moved = await reassign_orphaned_cases(session, directory, await log_entries(session), when)
    # Every proposal built on an older version can never be published now.
    await session.execute(
        update(DirectoryProposal)
        .where(DirectoryProposal.state.in_(("signing", "head")), DirectoryProposal.base_version < directory.version)
        .values(state="stale")
        .execution_options(synchronize_session=False)
    )
    return Effects(removed, ended, moved.moved, moved.stranded)


async def publish(
    store: Store,
    signed: SignedDirectory,
    head: SignedTreeHead,
    *,
    org_fingerprint: str,
    receipt_key: VerifyKey,
    next_receipt_key: VerifyKey | None = None,
    audit_key: SigningKey | None = None,
) -> Published:
    """Append ``signed`` to the log and serve ``head``; all or nothing.

    With ``audit_key`` (``server publish`` passes the receipt key) the publication and what it
    did are appended to the audit log (protocol 20) as the operator's, in the same transaction.
    """
    async with store.write() as session:
        effects = await publish_in(
            session,
            signed,
            head,
            org_fingerprint=org_fingerprint,
            receipt_key=receipt_key,
            next_receipt_key=next_receipt_key,
        )
        if audit_key is not None:
            await append_audit(
                session,
                audit_key,
                day=dt.datetime.now(dt.UTC).date(),
                actor="operator",
                action="publish",
                detail=effects.summary(signed.directory.version),
            )
    published = await load_published(store)
    if published is None:
        raise PublishRefused("the publication could not be read back")
    return published
