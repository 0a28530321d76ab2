"""The integration service's own database schema: sealed packages and their chunks.

A separate metadata (its own ``DeclarativeBase``), migrated by its own Alembic
scripts (``migrations_integration/``) into its own database: the intake's
schema and this one never share a table, a version table or a revision id.
Every column is listed with what it reveals in docs/integration.md, and a test
keeps that list and these models in step.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, Date, ForeignKey, Integer, LargeBinary, MetaData, SmallInteger, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from safepassage.server.db.models import NAMING

#: Alembic's version table for this schema; distinct from the intake's, so that
#: pointing both at one database by mistake fails loudly instead of one schema
#: taking the other's revision for its own.
VERSION_TABLE = "integration_alembic_version"


class IntegrationBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Package(IntegrationBase):
    """A sealed escalation package, as one handler delivered it."""

    __tablename__ = "packages"

    #: The package id the handler chose (and signed in the delivery); unique, so a replay is refused.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The delivering handler's id, checked against the verified directory on arrival.
    handler: Mapped[str] = mapped_column(String(64))
    day: Mapped[dt.date] = mapped_column(Date)
    #: "pending" while attachments upload, then "complete" (receipted, shown to the officer).
    state: Mapped[str] = mapped_column(String(16))
    attachments: Mapped[int] = mapped_column(SmallInteger)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    envelope_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    #: SHA-256 of the upload token; NULL for a package delivered without attachments.
    upload_token_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    #: Unix time, rounded up to the hour, after which a pending upload is deleted; NULL once complete.
    upload_expires: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class PackageChunk(IntegrationBase):
    """One sealed attachment chunk frame of a package (docs/protocol.md, section 5)."""

    __tablename__ = "package_chunks"

    package_id: Mapped[str] = mapped_column(ForeignKey("packages.id", ondelete="CASCADE"), primary_key=True)
    attachment: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    final: Mapped[bool] = mapped_column(Boolean)
    frame: Mapped[bytes] = mapped_column(LargeBinary)
