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

import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import suppress
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


def is_archived(paths: HandlerPaths, case_id: str) -> bool:
    return (case_dir(paths, case_id) / ENVELOPE).is_file()


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise FileAccessError(f"the archive file {path.name}") from exc


class ArchivedCase:
    """A case's pieces from ``V.archive/<case>/``, falling back to the server for what came later."""

    def __init__(self, paths: HandlerPaths, staff: StaffClient) -> None:
        self.paths, self.staff = paths, staff

    async def case_envelope(self, case_id: str) -> bytes:
        return _read(case_dir(self.paths, case_id) / ENVELOPE)

    async def attachment_chunk(self, case_id: str, attachment: int, index: int) -> bytes:
        return _read(case_dir(self.paths, case_id) / f"a{attachment}.{index}")

    async def message_envelope(self, case_id: str, message_id: str) -> bytes:
        local = case_dir(self.paths, case_id) / f"m.{_name(message_id)}"
        if local.is_file():
            return _read(local)
        # A follow-up that arrived after the archive was made is sealed to a current key.
        return await self.staff.message_envelope(case_id, message_id)


def source_for(paths: HandlerPaths, staff: StaffClient, case_id: str) -> CaseSource:
    return ArchivedCase(paths, staff) if is_archived(paths, case_id) else staff


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


async def archive_case(
    paths: HandlerPaths,
    staff: StaffClient,
    detail: CaseDetail,
    keys: tuple[HybridPrivateKey, ...],
    archive_key: HybridPublicKey,
    retiring: set[KeyId],
) -> bool:
    """Re-seal what of ``detail``'s case is sealed to a ``retiring`` key; ``True`` if anything was written.

    Written to a temporary folder and renamed into place, so a crash leaves
    either the whole archived case or none of it (and the keys are removed
    from the vault only after every case is archived).
    """
    case_id = detail.case.case_id
    envelope = await staff.case_envelope(case_id)
    follow_ups = [m for m in detail.messages if m.kind == "follow-up"]
    if not sealed_to(envelope, retiring) or is_archived(paths, case_id):
        return False
    paths.archive.mkdir(mode=0o700, exist_ok=True)
    target = case_dir(paths, case_id)
    staging = paths.archive / f".{case_id}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    try:
        opened = open_envelope(envelope, keys, expected_purpose=Purpose.CONTACT)
        local = seal(opened.plaintext, [archive_key], Purpose.CONTACT, min_bucket=opened.header.bucket)
        write_private(staging / ENVELOPE, local.data, replace=False)
        for attachment in range(detail.case.attachments):
            sealer = local.attachment_sealer(attachment)
            index = 0
            pending: bytes | None = None
            async for data in _chunks(staff, case_id, opened, attachment):
                if pending is not None:
                    write_private(
                        staging / f"a{attachment}.{index}", sealer.seal_chunk(pending, final=False), replace=False
                    )
                    index += 1
                pending = data
            write_private(
                staging / f"a{attachment}.{index}", sealer.seal_chunk(pending or b"", final=True), replace=False
            )
        for message in follow_ups:
            sealed = await staff.message_envelope(case_id, message.message_id)
            if not sealed_to(sealed, retiring):
                continue
            plain = open_envelope(sealed, keys, expected_purpose=Purpose.FOLLOW_UP)
            again = seal(plain.plaintext, [archive_key], Purpose.FOLLOW_UP, min_bucket=plain.header.bucket)
            write_private(staging / f"m.{_name(message.message_id)}", again.data, replace=False)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with suppress(OSError):
        fd = os.open(paths.archive, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)
    return True
