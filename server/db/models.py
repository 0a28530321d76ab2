"""The database schema: what the server stores, and nothing more.

Every column is listed with what it reveals in docs/storage.md; a test keeps
that list and these models in step. Applicant content exists here only as
sealed envelopes and chunk frames. Times are arrival *days*; the only finer
times are expiries of short-lived tokens (challenges, pending uploads), kept
to the hour where they touch a contact and deleted when they are spent.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints, so migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Mailbox(Base):
    """An applicant's mailbox: its public key only (the codename never reaches the server)."""

    __tablename__ = "mailboxes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_day: Mapped[dt.date] = mapped_column(Date)


class Contact(Base):
    """A sealed first contact and its routing metadata."""

    __tablename__ = "contacts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    mailbox_id: Mapped[str] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"), index=True)
    pool: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(64))
    day: Mapped[dt.date] = mapped_column(Date)
    bucket: Mapped[int] = mapped_column(SmallInteger)
    #: "pending" while attachments upload, then "complete"; only complete contacts are routed.
    state: Mapped[str] = mapped_column(String(16))
    #: Case status for handlers: new, reviewing, replied, escalated, rejected, closed.
    status: Mapped[str] = mapped_column(String(16), default="new")
    attachments: Mapped[int] = mapped_column(SmallInteger)
    server_sealed: Mapped[bool] = mapped_column(Boolean, default=False)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    envelope_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    #: SHA-256 of the upload token; NULL once complete.
    upload_token_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    #: Unix time, rounded up to the hour, after which a pending upload is deleted; NULL once complete.
    upload_expires: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (Index("ix_contacts_pool_owner_state", "pool", "owner", "state"),)


class Chunk(Base):
    """One sealed attachment chunk frame (docs/protocol.md, section 5)."""

    __tablename__ = "chunks"

    contact_id: Mapped[str] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    attachment: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    final: Mapped[bool] = mapped_column(Boolean)
    frame: Mapped[bytes] = mapped_column(LargeBinary)


class Message(Base):
    """A sealed reply (to the applicant) or follow-up (from the applicant)."""

    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    mailbox_id: Mapped[str] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"), index=True)
    contact_id: Mapped[str] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), index=True)
    #: "reply" (handler to applicant) or "follow-up" (applicant to handlers).
    kind: Mapped[str] = mapped_column(String(16))
    day: Mapped[dt.date] = mapped_column(Date)
    bucket: Mapped[int] = mapped_column(SmallInteger)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    envelope_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    #: Sequence number within the mailbox, so replies come back in order without timestamps.
    seq: Mapped[int] = mapped_column(BigInteger)


class SpentChallenge(Base):
    """A proof-of-work nonce already used, kept until its challenge expires."""

    __tablename__ = "spent_challenges"

    nonce: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    expires: Mapped[int] = mapped_column(BigInteger, index=True)


class MailboxNonce(Base):
    """An issued mailbox-authentication nonce; deleted when used or expired."""

    __tablename__ = "mailbox_nonces"

    nonce: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    mailbox_id: Mapped[str] = mapped_column(String(64))
    expires: Mapped[int] = mapped_column(BigInteger, index=True)


class LogEntry(Base):
    """One transparency-log entry: the canonical bytes of a signed directory."""

    __tablename__ = "log_entries"

    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    entry: Mapped[bytes] = mapped_column(LargeBinary)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class TreeHeadRecord(Base):
    """A signed tree head, as canonical JSON; the newest is served."""

    __tablename__ = "tree_heads"

    size: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    signed_head: Mapped[bytes] = mapped_column(LargeBinary)
