"""The handler's local archive: cases kept readable after their intake key is destroyed.

Forward secrecy (ARCHITECTURE, "Trust and keys"): once an intake key has
expired, the handler client re-seals every contact, attachment and follow-up
that was sealed to it to a local *archive key* (a hybrid key that lives only in
the vault and is never published), writes them under ``V.archive/<case>/``,
and only then removes the intake private key from the vault. A copy of the
server's database taken before cannot be opened with anything left on the
handler's machine: nothing there can open what the server stores. The archive
files use the same envelope and chunk formats (protocol 4 and 5), so reading
an archived case runs the same checks as reading one from the server.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final, Protocol

from safepassage.crypto.envelope import OpenedEnvelope, Purpose, open_envelope, parse_chunk_frame, parse_header, seal
from safepassage.crypto.errors import FileAccessError, MalformedInput
from safepassage.crypto.keys import HybridPrivateKey, HybridPublicKey, KeyId
from safepassage.crypto.privatefile import write_private

from .handler_vault import HandlerPaths
from .staff_api import CaseDetail, StaffClient

ENVELOPE: Final = "envelope"
_SAFE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


class CaseSource(Protocol):
    """Where a case's sealed pieces come from: the staff server, or the local archive."""

    async def case_envelope(self, case_id: str) -> bytes: ...

    async def attachment_chunk(self, case_id: str, attachment: int, index: int) -> bytes: ...

    async def message_envelope(self, case_id: str, message_id: str) -> bytes: ...


def _name(value: str) -> str:
    if not _SAFE.fullmatch(value):
        raise MalformedInput("an id the archive cannot store")
    return value


def case_dir(paths: HandlerPaths, case_id: str) -> Path:
    return paths.archive / _name(case_id)


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise FileAccessError(f"the archive file {path.name}") from exc


class ArchivedCase:
    """A case's pieces from ``V.archive/<case>/`` where archived, from the server for the rest."""

    def __init__(self, paths: HandlerPaths, staff: StaffClient) -> None:
        self.paths, self.staff = paths, staff

    def _contact_archived(self, case_id: str) -> bool:
        return (case_dir(self.paths, case_id) / ENVELOPE).is_file()

    async def case_envelope(self, case_id: str) -> bytes:
        if self._contact_archived(case_id):
            return _read(case_dir(self.paths, case_id) / ENVELOPE)
        return await self.staff.case_envelope(case_id)

    async def attachment_chunk(self, case_id: str, attachment: int, index: int) -> bytes:
        # Chunks come from where the envelope came from: they are bound to its hash.
        if self._contact_archived(case_id):
            return _read(case_dir(self.paths, case_id) / f"a{attachment}.{index}")
        return await self.staff.attachment_chunk(case_id, attachment, index)

    async def message_envelope(self, case_id: str, message_id: str) -> bytes:
        local = case_dir(self.paths, case_id) / f"m.{_name(message_id)}"
        if local.is_file():
            return _read(local)
        # A follow-up under a key not yet destroyed is read from the server.
        return await self.staff.message_envelope(case_id, message_id)


def source_for(paths: HandlerPaths, staff: StaffClient, case_id: str) -> CaseSource:
    return ArchivedCase(paths, staff) if case_dir(paths, case_id).is_dir() else staff


def sealed_to(envelope: bytes, key_ids: set[KeyId]) -> bool:
    try:
        return bool(set(parse_header(envelope).recipients) & key_ids)
    except MalformedInput:
        return False


async def _chunks(staff: StaffClient, case_id: str, opened: OpenedEnvelope, attachment: int) -> AsyncIterator[bytes]:
    """Each chunk's data, authenticated in order, until the final one."""
    opener = opened.attachment_opener(attachment)
    index = 0
    while True:
        frame = await staff.attachment_chunk(case_id, attachment, index)
        data = opener.open_chunk(frame)
        final = parse_chunk_frame(frame).final
        yield data
        if final:
            opener.finish()
            return
        index += 1


def _make_folder(paths: HandlerPaths, folder: Path) -> None:
    # Each level 0700 (mkdir's parents=True would give parents the umask's mode).
    paths.archive.mkdir(mode=0o700, exist_ok=True)
    folder.mkdir(mode=0o700, exist_ok=True)


async def _archive_contact(
    folder: Path,
    staff: StaffClient,
    detail: CaseDetail,
    envelope: bytes,
    keys: tuple[HybridPrivateKey, ...],
    archive_key: HybridPublicKey,
) -> None:
    case_id = detail.case.case_id
    opened = open_envelope(envelope, keys, expected_purpose=Purpose.CONTACT)
    local = seal(opened.plaintext, [archive_key], Purpose.CONTACT, min_bucket=opened.header.bucket)
    for attachment in range(detail.case.attachments):
        sealer = local.attachment_sealer(attachment)
        index = 0
        pending: bytes | None = None
        # One chunk behind: only at the end is it known which chunk is final.
        async for data in _chunks(staff, case_id, opened, attachment):
            if pending is not None:
                frame = sealer.seal_chunk(pending, final=False)
                write_private(folder / f"a{attachment}.{index}", frame, replace=True)
                index += 1
            pending = data
        frame = sealer.seal_chunk(pending or b"", final=True)
        write_private(folder / f"a{attachment}.{index}", frame, replace=True)
    # The envelope last: its presence says the contact and all its chunks are archived
    # (a crash before it leaves chunks that the next run rewrites under a new envelope).
    write_private(folder / ENVELOPE, local.data, replace=True)


async def archive_case(
    paths: HandlerPaths,
    staff: StaffClient,
    detail: CaseDetail,
    keys: tuple[HybridPrivateKey, ...],
    archive_key: HybridPublicKey,
    retiring: set[KeyId],
) -> int:
    """Re-seal every piece of ``detail``'s case sealed to a ``retiring`` key; the number of pieces written.

    The contact and each follow-up are checked separately: a follow-up may be
    sealed to a later key than its contact. Each piece is written whole or not
    at all, so a run after a crash finishes what is missing; the keys are
    removed from the vault only after a run that archived every piece.
    """
    case_id = detail.case.case_id
    folder = case_dir(paths, case_id)
    written = 0
    if not (folder / ENVELOPE).is_file():
        envelope = await staff.case_envelope(case_id)
        if sealed_to(envelope, retiring):
            _make_folder(paths, folder)
            await _archive_contact(folder, staff, detail, envelope, keys, archive_key)
            written += 1
    for message in (m for m in detail.messages if m.kind == "follow-up"):
        target = folder / f"m.{_name(message.message_id)}"
        if target.is_file():
            continue
        sealed = await staff.message_envelope(case_id, message.message_id)
        if not sealed_to(sealed, retiring):
            continue
        plain = open_envelope(sealed, keys, expected_purpose=Purpose.FOLLOW_UP)
        again = seal(plain.plaintext, [archive_key], Purpose.FOLLOW_UP, min_bucket=plain.header.bucket)
        _make_folder(paths, folder)
        write_private(target, again.data, replace=True)
        written += 1
    return written
