"""The database schema: what the server stores, and nothing more.

Every column is listed with what it reveals in docs/storage.md; a test keeps
that list and these models in step. Applicant content exists here only as
sealed envelopes and chunk frames. Times are arrival *days*; the only finer
times are expiries of short-lived tokens (challenges, pending uploads), kept
to the hour where they touch a contact and deleted when they are spent.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

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
    false,
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


def _arrival_day(context: Any) -> Any:
    # A new contact's status dates from its arrival, whoever inserts it.
    return context.get_current_parameters()["day"]


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
    #: UTC day of the last status change (the arrival day until then); retention counts from it.
    status_day: Mapped[dt.date] = mapped_column(Date, default=_arrival_day)
    attachments: Mapped[int] = mapped_column(SmallInteger)
    server_sealed: Mapped[bool] = mapped_column(Boolean, default=False)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    envelope_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    #: SHA-256 of the upload token; NULL once complete.
    upload_token_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    #: Unix time, rounded up to the hour, after which a pending upload is deleted; NULL once complete.
    upload_expires: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (
        Index("ix_contacts_pool_owner_state", "pool", "owner", "state"),
        # A handler's inbox in its listing order: the first page is a range scan of one page.
        Index("ix_contacts_owner_state_day_id", "owner", "state", "day", "id"),
    )


class OpenCaseCount(Base):
    """How many open cases (complete, status new/reviewing/replied) each handler holds in a pool.

    Routing reads these few rows instead of counting the contacts table. Database
    triggers on ``contacts`` (migration 0006) keep them equal to that count in the
    same transaction as every insert, update and delete, including the deletes a
    mailbox's ``ON DELETE CASCADE`` makes, so no code path can forget one. The
    server never writes this table itself.
    """

    __tablename__ = "open_cases"

    pool: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    cases: Mapped[int] = mapped_column(BigInteger)


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
    #: True for a follow-up the no-JavaScript web path sealed (the server saw it for one request).
    server_sealed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


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


# --- staff (docs/protocol.md, section 18; the staff API) ------------------------------------------


class StaffUser(Base):
    """A handler or admin account. The username of a handler is its id in the directory."""

    __tablename__ = "staff_users"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: "handler" or "admin".
    role: Mapped[str] = mapped_column(String(16))
    #: libsodium's Argon2id string (parameters, salt, hash); never the password.
    password_hash: Mapped[str] = mapped_column(String(128))
    #: The TOTP secret sealed under keys/totp.key, bound to the username.
    totp_secret: Mapped[bytes] = mapped_column(LargeBinary)
    #: The last TOTP step accepted; a code for this step or an earlier one is refused.
    totp_last_counter: Mapped[int] = mapped_column(BigInteger)
    #: Failed logins since the last successful one.
    failed_logins: Mapped[int] = mapped_column(Integer)
    #: Unix time until which every login is refused; 0 when not locked.
    locked_until: Mapped[int] = mapped_column(BigInteger)
    #: "pending" (enrolled, first code not yet confirmed), "active" or "revoked".
    state: Mapped[str] = mapped_column(String(16))
    created_day: Mapped[dt.date] = mapped_column(Date)


class StaffSession(Base):
    """A logged-in session; the bearer token itself is never stored."""

    __tablename__ = "staff_sessions"

    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    username: Mapped[str] = mapped_column(ForeignKey("staff_users.username", ondelete="CASCADE"), index=True)
    created: Mapped[int] = mapped_column(BigInteger)
    #: Refreshed by requests (at most once a minute); the idle expiry counts from it.
    last_seen: Mapped[int] = mapped_column(BigInteger)
    absolute_expires: Mapped[int] = mapped_column(BigInteger, index=True)


class StaffInvitation(Base):
    """A one-time enrolment code for a named account; only its hash is stored."""

    __tablename__ = "staff_invitations"

    code_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    expires: Mapped[int] = mapped_column(BigInteger)
    used: Mapped[bool] = mapped_column(Boolean)


class AuditLogEntry(Base):
    """One entry of the hash-chained, signed audit log (docs/protocol.md, section 20).

    Who did what to which case, on which day. Never content, never secrets.
    Rows are only ever appended; retention never touches them.
    """

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    entry_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    day: Mapped[dt.date] = mapped_column(Date)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    #: The case concerned, or "" for none (the signed body has no null).
    case_id: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(String(200))
    #: Key id (hex) of the receipt key that signed the entry, so rotation keeps old entries checkable.
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[bytes] = mapped_column(LargeBinary(64))


class AuditHead(Base):
    """The newest audit entry's number and hash: one row, locked by every append to serialise them."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    entry_hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class EscalationRecord(Base):
    """That a case was escalated: the integration service's signed receipt, never the package."""

    __tablename__ = "escalations"

    package_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    contact_id: Mapped[str] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), index=True)
    handler: Mapped[str] = mapped_column(String(64))
    day: Mapped[dt.date] = mapped_column(Date)
    #: The receipt as canonical JSON (docs/protocol.md, 17.3).
    receipt: Mapped[bytes] = mapped_column(LargeBinary)


# --- administration (docs/protocol.md, section 19) ------------------------------------------------


class DirectoryProposal(Base):
    """A directory change the admins are co-signing; public material only (what the log will publish)."""

    __tablename__ = "directory_proposals"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: The version it succeeds; the proposed directory has ``base_version + 1``.
    base_version: Mapped[int] = mapped_column(Integer)
    #: "signing" (collecting directory signatures), "head" (collecting tree-head signatures),
    #: "published" or "stale" (another version was published first).
    state: Mapped[str] = mapped_column(String(16), index=True)
    proposer: Mapped[str] = mapped_column(String(64))
    created_day: Mapped[dt.date] = mapped_column(Date)
    #: Canonical JSON of the proposed directory (7.1), unsigned.
    directory: Mapped[bytes] = mapped_column(LargeBinary)
    #: Canonical JSON array of admin signatures (6.2) over it.
    signatures: Mapped[bytes] = mapped_column(LargeBinary)
    #: Once enough signatures: the signed directory exactly as the log will hold it.
    entry: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    #: Once enough signatures: the tree head (8.6) of the log with ``entry`` appended.
    head: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    #: Canonical JSON array of admin signatures over ``head``.
    head_signatures: Mapped[bytes] = mapped_column(LargeBinary)
