"""The published directory and its transparency log, as the server keeps them.

The server never signs a directory or a tree head: admins do (M of N). What the
server does is refuse to publish anything a client would refuse — a directory
that is not a valid successor, a head that does not commit to the log with the
new entry appended, a head not signed by the new directory's admins, or a
directory that does not name this server's receipt key — so a mistake shows up
at publication, not as every applicant's client failing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from safepassage.crypto.directory import Directory, SignedDirectory, verify_genesis, verify_successor
from safepassage.crypto.encoding import as_obj, canonical_json, parse_canonical_json
from safepassage.crypto.errors import SafePassageError
from safepassage.crypto.keys import VerifyKey
from safepassage.crypto.translog import MerkleLog, SignedTreeHead, leaf_hash

from .db.engine import Store
from .db.models import LogEntry, TreeHeadRecord
from .retention_policy import InvalidRetentionPolicy, retention_policy

MAX_HEAD_BYTES = 64 * 1024


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


def parse_signed_head(data: bytes) -> SignedTreeHead:
    return SignedTreeHead.from_json(as_obj(parse_canonical_json(data, max_len=MAX_HEAD_BYTES), "tree head"))


async def _load(session: AsyncSession, *, for_update: bool = False) -> Published | None:
    query = select(LogEntry).order_by(LogEntry.index)
    if for_update:
        # Two publications must not both extend the same log (PostgreSQL; SQLite
        # writes are serialised by the store's lock).
        query = query.with_for_update()
    entries = (await session.scalars(query)).all()
    head_row = await session.scalar(select(TreeHeadRecord).order_by(TreeHeadRecord.size.desc()).limit(1))
    if not entries or head_row is None:
        return None
    last = entries[-1]
    log = MerkleLog([e.leaf_hash for e in entries])
    signed = SignedDirectory.from_bytes(last.entry)
    return Published(signed, last.entry, last.index, log, parse_signed_head(head_row.signed_head))


async def load_published(store: Store) -> Published | None:
    async with store.read() as session:
        return await _load(session)


def check_publication(
    current: Published | None,
    signed: SignedDirectory,
    head: SignedTreeHead,
    *,
    org_fingerprint: str,
    receipt_key: VerifyKey,
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
    if directory.receipt_key != receipt_key:
        raise PublishRefused("the directory does not name this server's receipt key")
    try:
        retention_policy(directory)
    except InvalidRetentionPolicy as exc:
        # Refused here so the admins learn now, not from a retention job that quietly deletes nothing.
        raise PublishRefused(exc.detail) from None
    if current is not None and head.head.timestamp < current.head.head.timestamp:
        raise PublishRefused("the tree head is older than the one being served")
    return directory, entry


async def publish(
    store: Store, signed: SignedDirectory, head: SignedTreeHead, *, org_fingerprint: str, receipt_key: VerifyKey
) -> Published:
    """Append ``signed`` to the log and serve ``head``; all or nothing."""
    async with store.write() as session:
        current = await _load(session, for_update=True)
        directory, entry = check_publication(
            current, signed, head, org_fingerprint=org_fingerprint, receipt_key=receipt_key
        )
        index = current.log.size if current else 0
        session.add(LogEntry(index=index, version=directory.version, entry=entry, leaf_hash=leaf_hash(entry)))
        session.add(TreeHeadRecord(size=head.head.size, signed_head=canonical_json(head.to_json())))
    published = await load_published(store)
    if published is None:
        raise PublishRefused("the publication could not be read back")
    return published
