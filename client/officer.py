"""The integration officer's side: list the packages the service stored, open one locally.

Opening a package checks everything it claims before anything is kept
(docs/protocol.md, sections 4, 5, 15 and 17):

1. the envelope opens with a key from the officer's vault, as an escalation;
2. the escalation is signed by the identity key the verified directory lists
   for its handler, and names the package id and handler the service recorded
   for the delivery (a handler cannot pass off another's package as its own);
3. the applicant's contact inside is signed by the applicant's own mailbox
   key, every follow-up by that same key, every reply by a handler of the
   directory, all for this case;
4. every attachment chunk authenticates in order, and each attachment has the
   size and chunk count the applicant declared.

Attachments are decrypted into a staging folder beside the output folder
(mode 0700, files 0600, created exclusively) and the folder is moved into
place only after every check passed, so a refusal leaves nothing behind and
nothing is ever overwritten. Names come from the applicant and are treated as
hostile: only a sanitised form, prefixed with the attachment number, is used.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from safepassage.crypto.directory import Directory
from safepassage.crypto.envelope import BUCKETS, OpenedEnvelope, Purpose, open_envelope
from safepassage.crypto.errors import CryptoError
from safepassage.crypto.intake import AttachmentInfo, Contact, FollowUp
from safepassage.crypto.keys import HybridPrivateKey, KeyId
from safepassage.crypto.staffmsg import Escalation, Reply
from safepassage.server.db.engine import Store
from safepassage.server.integration.models import Package, PackageChunk

from .errors import ClientError, UsageError
from .render import printable

CASE_FILE: Final = "case.txt"
#: Longest attachment file name written, in UTF-8 bytes (most file systems allow 255).
MAX_NAME_BYTES: Final = 200
#: Offset of the bucket byte in an envelope (magic 4, purpose 1; docs/protocol.md 4.1).
_BUCKET_OFFSET: Final = 5
#: What is kept as a file extension when a long name is shortened.
_EXTENSION: Final = re.compile(r"[A-Za-z0-9]{1,16}")


class PackageNotFound(ClientError):
    """There is no such package in this service's database."""

    hint = "Run 'safepassage integration inbox --data DIR' to list the packages."
    exit_code = 2


class PackageIncomplete(ClientError):
    """The package is still uploading its attachments; it has no receipt yet."""

    hint = "Wait for the handler to finish the delivery; unfinished uploads are deleted after the upload window."
    exit_code = 2


class OutputFolderInUse(ClientError):
    """The output folder already exists and is not an empty folder."""

    hint = "Name a new folder: reading a package never overwrites or mixes with existing files."
    exit_code = 2


class PackageInconsistent(CryptoError):
    """The package contradicts itself or the service's record of its delivery."""

    hint = "Do not trust any part of it. Ask the handler, through a channel you trust, to deliver it again."


# --- the inbox ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InboxRow:
    package_id: str
    handler: str
    day: str
    attachments: int
    bucket: int
    chunks: int

    @property
    def size(self) -> str:
        """The envelope's size bucket, plus the attachments in 1 MiB chunks: all the service knows of size."""
        kib = BUCKETS[self.bucket] // 1024
        body = f"{kib // 1024} MiB" if kib >= 1024 else f"{kib} KiB"
        return f"{body} + {self.chunks} MiB" if self.chunks else body


async def list_packages(store: Store) -> tuple[tuple[InboxRow, ...], int]:
    """The complete packages, oldest day first, and how many others are still uploading."""
    async with store.read() as session:
        chunks = dict(
            (
                await session.execute(select(PackageChunk.package_id, func.count()).group_by(PackageChunk.package_id))
            ).all()
        )
        # The bucket is one byte of the envelope: read that, not every envelope (up to 1 MiB each).
        rows = (
            await session.execute(
                select(
                    Package.id,
                    Package.handler,
                    Package.day,
                    Package.attachments,
                    Package.state,
                    func.substr(Package.envelope, _BUCKET_OFFSET + 1, 1),
                ).order_by(Package.day, Package.id)
            )
        ).all()
    complete = tuple(
        InboxRow(pid, handler, day.isoformat(), attachments, min(bytes(b)[0], len(BUCKETS) - 1), chunks.get(pid, 0))
        for pid, handler, day, attachments, state, b in rows
        if state == "complete"
    )
    return complete, len(rows) - len(complete)


# --- reading one package --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class WrittenFile:
    name: str
    size: int


@dataclass(frozen=True, slots=True, repr=False)
class ReadPackage:
    """What was verified and written; its repr shows no content."""

    package_id: str
    handler_id: str
    day: str
    directory_version: int
    opened_with: KeyId
    escalation: Escalation
    contact: Contact
    follow_ups: tuple[FollowUp, ...]
    replies: tuple[Reply, ...]
    files: tuple[WrittenFile, ...]

    def __repr__(self) -> str:
        return f"ReadPackage({self.package_id}, handler={self.handler_id}, {len(self.files)} file(s))"


def safe_file_name(name: str, attachment: int) -> str:
    """A name that is only a name: no path, no control or direction characters, bounded, numbered.

    The attachment number in front makes names unique and keeps them from
    starting with a dot or being ``.`` or ``..``.
    """
    text = unicodedata.normalize("NFC", name)
    # Separators and line breaks become "_"; control, format (bidirectional) and unassigned characters go.
    kept = "".join(
        "_" if ch in "/\\" or (ch.isspace() and ch != " ") else ch
        for ch in text
        if ch.isspace() or unicodedata.category(ch)[0] != "C"
    )
    kept = " ".join(kept.split()).strip(" .") or "attachment"
    stem, dot, suffix = kept.rpartition(".")
    if not dot or not stem or not _EXTENSION.fullmatch(suffix):
        stem, suffix = kept, ""
    budget = MAX_NAME_BYTES - len(suffix.encode()) - (1 if suffix else 0)
    stem = stem.encode()[:budget].decode("utf-8", errors="ignore").rstrip(" .") or "attachment"
    return f"{attachment:02d}-{stem}.{suffix}" if suffix else f"{attachment:02d}-{stem}"


def check_out_folder(out: Path) -> None:
    """Refuse an output folder that exists and is not an empty folder (or is a link), or has nowhere to go."""
    if not out.parent.is_dir():
        raise UsageError("the folder that is to contain --out does not exist")
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise OutputFolderInUse(out.name)


def _create_private(path: Path) -> BinaryIO:
    # O_EXCL: never write through an existing file or a planted link.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


async def complete_package(store: Store, package_id: str) -> Package:
    """The stored package ``package_id``, if it is complete (receipted)."""
    async with store.read() as session:
        package = await session.get(Package, package_id)
    if package is None:
        raise PackageNotFound()
    if package.state != "complete":
        raise PackageIncomplete()
    return package


_Verified = tuple[Escalation, Contact, tuple[FollowUp, ...], tuple[Reply, ...]]


def _verify(package: Package, opened: OpenedEnvelope, directory: Directory) -> _Verified:
    escalation = Escalation.open_payload(opened.plaintext, directory)
    if escalation.package_id != package.id or escalation.handler_id != package.handler:
        raise PackageInconsistent("it was delivered under another package id or by another handler than signed it")
    contact = Contact.open_payload(escalation.contact)
    if contact.pool != escalation.pool:
        raise PackageInconsistent("the applicant's contact names another pool than the escalation")
    if len(contact.attachments) != package.attachments:
        raise PackageInconsistent("the number of attachments differs from the applicant's list")
    follow_ups = tuple(FollowUp.open_payload(f) for f in escalation.follow_ups)
    for follow_up in follow_ups:
        if follow_up.contact_id != escalation.contact_id or follow_up.mailbox_key != contact.mailbox_key:
            raise PackageInconsistent("a follow-up is from another applicant or for another case")
    replies = tuple(Reply.open_payload(r, directory) for r in escalation.replies)
    if any(r.contact_id != escalation.contact_id for r in replies):
        raise PackageInconsistent("a reply is for another case")
    return escalation, contact, follow_ups, replies


async def _write_attachment(
    session: AsyncSession, opened: OpenedEnvelope, package_id: str, attachment: int, info: AttachmentInfo, path: Path
) -> int:
    """Decrypt one attachment into ``path``, one chunk (1 MiB) in memory at a time; return its size."""
    opener = opened.attachment_opener(attachment)
    size = index = 0
    with _create_private(path) as f:
        while not opener.finished:
            chunk = await session.get(PackageChunk, (package_id, attachment, index))
            if chunk is None:
                break
            data = opener.open_chunk(chunk.frame)
            f.write(data)
            size += len(data)
            index += 1
    count = opener.finish()  # DecryptionFailed if the final chunk never came
    if count != info.chunks or size != info.size:
        raise PackageInconsistent(f"attachment {attachment} differs from its declared size")
    return size


def _quoted(text: str) -> list[str]:
    """Body text, every line behind a ``  | `` prefix: text from others can never start a line of the frame
    (a message cannot fake a "Reply ..., signed by handler ..." or "Assessment by ..." heading)."""
    return [f"  | {line}" for line in printable(text).splitlines() or [""]]


def _one_line(text: str) -> str:
    return " ".join(printable(text).split())


def _case_text(read: ReadPackage, names: Sequence[str]) -> str:
    e, c = read.escalation, read.contact
    lines = [
        f"Package {read.package_id}: delivered by handler {read.handler_id} on {read.day}",
        f"Case {e.contact_id}: pool {e.pool}, first contact on {e.day}",
        f"Language {c.language}, sent from {c.origin}",
        "",
        "Applicant's message (signed by the applicant's mailbox key):",
        *_quoted(c.message),
        "",
    ]
    if c.fields:
        lines.append("Fields:")
        lines += [f"  {k}: {_one_line(v)}" for k, v in sorted(c.fields.items())]
        lines.append("")
    if c.attachments:
        lines.append("Attachments:")
        for info, name in zip(c.attachments, names, strict=True):
            declared = f"{_one_line(info.name)!r}, {_one_line(info.media_type) or 'no media type'}, {info.size} bytes"
            lines.append(f"  {name}: declared as {declared}")
        lines.append("")
    for i, f in enumerate(read.follow_ups, 1):
        lines += [f"Follow-up {i} from the applicant (signed by the same mailbox key):", *_quoted(f.message), ""]
    for i, r in enumerate(read.replies, 1):
        lines += [f"Reply {i}, signed by handler {r.handler_id}:", *_quoted(r.message), ""]
    lines += [f"Assessment by handler {e.handler_id}:", *_quoted(e.assessment), ""]
    return "\n".join(lines)


async def read_package(
    store: Store, package: Package, keys: Sequence[HybridPrivateKey], directory: Directory, out: Path
) -> ReadPackage:
    """Open ``package`` with ``keys``, verify it against ``directory``, write it to the new folder ``out``."""
    check_out_folder(out)
    staging = out.parent / f".{out.name}.read-{secrets.token_hex(4)}"
    async with store.read() as session:
        opened = open_envelope(package.envelope, keys, expected_purpose=Purpose.ESCALATION)
        escalation, contact, follow_ups, replies = _verify(package, opened, directory)
        names = [safe_file_name(info.name, a) for a, info in enumerate(contact.attachments)]
        staging.mkdir(mode=0o700)
        try:
            files = []
            for a, (info, name) in enumerate(zip(contact.attachments, names, strict=True)):
                size = await _write_attachment(session, opened, package.id, a, info, staging / name)
                files.append(WrittenFile(name, size))
            result = ReadPackage(
                package_id=package.id,
                handler_id=package.handler,
                day=package.day.isoformat(),
                directory_version=directory.version,
                opened_with=opened.opened_with,
                escalation=escalation,
                contact=contact,
                follow_ups=follow_ups,
                replies=replies,
                files=tuple(files),
            )
            with _create_private(staging / CASE_FILE) as f:
                f.write(_case_text(result, names).encode("utf-8"))
            check_out_folder(out)
            if out.exists():
                out.rmdir()
            staging.rename(out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return result


__all__ = [
    "CASE_FILE",
    "InboxRow",
    "OutputFolderInUse",
    "PackageInconsistent",
    "PackageIncomplete",
    "PackageNotFound",
    "ReadPackage",
    "WrittenFile",
    "check_out_folder",
    "complete_package",
    "list_packages",
    "read_package",
    "safe_file_name",
]
