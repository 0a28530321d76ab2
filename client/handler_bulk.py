"""``handler read-all``: every case of the handler opened into one folder (docs/protocol.md, 18.5).

Pages of sealed contacts come from ``GET /case-envelopes`` (many cases per
round trip, where ``handler read`` takes two per case); each contact is opened
and verified by the same code as a single read (``_verify_contact``: 15.1), and
a case with follow-ups or attachments is finished by the same code too
(``_complete_reading``: follow-ups, replies, attachments into
``<out>/<case id>/``). Each case becomes ``<out>/<case id>.txt``, the text
``handler read`` prints, written to a temporary file, flushed and linked into
place, so a file is there whole or not at all and nothing is overwritten.

One case that fails a check (a corrupt or forged envelope, a case the server
describes wrongly) is reported by id and reason and does not stop the others;
the caller decides the exit status from :attr:`BulkReading.failed`. A failure
that concerns every case (the session ended, the server is unreachable, the
folder cannot be written) stops the run at once.

While one page's contacts are opened and written (in a worker thread, since it
is CPU and disk work), the next page is already downloading.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from safepassage.crypto.directory import Directory
from safepassage.crypto.errors import CryptoError, FileAccessError
from safepassage.crypto.vault import Passphrase

from .case_files import prepare_folder, publish_file
from .case_text import reading_text
from .errors import ClientError, ProtocolViolation, ServerRefused
from .handler import (
    CaseReading,
    _assemble_reading,
    _check_staff_onion,
    _complete_reading,
    _now,
    _OpenedCase,
    _staff,
    _trusted,
    _verify_contact,
)
from .handler_archive import ENVELOPE, case_dir, source_for
from .handler_vault import HandlerKeys, HandlerPaths, SavedSession, open_handler_vault, vault_lock
from .staff_api import MAX_BULK_PAGE, EnvelopePage, SealedCase, StaffClient

#: Pages one run follows at most: 10,000,000 cases at 100 a page.
MAX_BULK_PAGES: Final = 100_000
#: Case files written and fsynced at once. Concurrent fsyncs share the file system's journal
#: commits: on ext4 here 16 at once cost 0.5 ms a file against 5 ms one after the other.
WRITERS: Final = 16

#: Called after each case with (cases done, cases in all as the server counted them at the start).
Progress = Callable[[int, int | None], None]


class SomeCasesFailed(ClientError):
    """Some cases could not be opened and were not written; every other case was."""

    hint = "Each is listed above with the reason. Do not trust those cases; report them to the administrators."
    exit_code = 3


@dataclass(frozen=True, slots=True)
class CaseFailure:
    """A case that was not written, and why (a message safe to show: no content, no secret)."""

    case_id: str
    problem: str


@dataclass(frozen=True, slots=True, repr=False)
class BulkReading:
    written: tuple[tuple[str, Path], ...]
    failed: tuple[CaseFailure, ...]

    def __repr__(self) -> str:
        return f"BulkReading({len(self.written)} written, {len(self.failed)} failed)"


class _Run:
    def __init__(self, paths: HandlerPaths, keys: HandlerKeys, directory: Directory, out: Path, progress: Progress):
        self.paths, self.keys, self.directory, self.out = paths, keys, directory, out
        self.progress = progress
        self.total: int | None = None
        self.done = 0
        self.written: list[tuple[str, Path]] = []
        self.failed: list[CaseFailure] = []
        self.seen: set[str] = set()
        self.writers = ThreadPoolExecutor(WRITERS, thread_name_prefix="read-all-writer")
        self.pending: list[tuple[str, Future[Path]]] = []

    def drain(self, pending: list[tuple[str, Future[Path]]]) -> None:
        """Wait for these files to be on disk (a write error stops the run here)."""
        for case_id, future in pending:
            self.written.append((case_id, future.result()))

    def close(self) -> None:
        self.writers.shutdown(wait=True)

    def _tick(self) -> None:
        self.done += 1
        self.progress(self.done, self.total)

    def _envelope(self, sealed: SealedCase) -> bytes:
        """The server's envelope, or the local archive's once the intake key it came under is destroyed."""
        local = case_dir(self.paths, sealed.detail.case.case_id) / ENVELOPE
        if local.is_file():
            try:
                return local.read_bytes()
            except OSError as exc:
                raise FileAccessError(f"the archive file {local.name}") from exc
        return sealed.envelope

    def _write(self, reading: CaseReading) -> None:
        case_id = reading.case.case_id
        data = reading_text(reading).encode("utf-8")
        self.pending.append((case_id, self.writers.submit(publish_file, self.out, f"{case_id}.txt", data)))

    def quick(self, cases: Iterable[SealedCase]) -> None:
        """Cases with no follow-up or attachment: everything is on the page; open, verify, write.

        The previous page's files are waited for only after this page's cases are opened, so
        their fsyncs overlap this page's cryptography.
        """
        previous, self.pending = self.pending, []
        for sealed in cases:
            detail = sealed.detail
            try:
                opened, contact, verified, warnings = _verify_contact(self.keys, detail.case, self._envelope(sealed))
                # Replies come from this vault's archive (no request); nothing else is fetched.
                case = _OpenedCase(detail, opened, contact, verified, warnings)
                self._write(_assemble_reading(self.keys, self.directory, case))
            except (CryptoError, ProtocolViolation, FileAccessError) as exc:
                self.failed.append(CaseFailure(detail.case.case_id, exc.message))
            self._tick()
        self.drain(previous)

    async def full(self, staff: StaffClient, sealed: SealedCase) -> None:
        """A case with follow-ups or attachments: finished exactly as ``handler read`` finishes one."""
        detail = sealed.detail
        case_id = detail.case.case_id
        try:
            opened, contact, verified, warnings = _verify_contact(self.keys, detail.case, self._envelope(sealed))
            case = _OpenedCase(detail, opened, contact, verified, warnings)
            source = source_for(self.paths, staff, case_id)
            reading = await _complete_reading(source, self.keys, self.directory, case, self.out / case_id)
            self._write(reading)
        except (CryptoError, ProtocolViolation, FileAccessError) as exc:
            self.failed.append(CaseFailure(case_id, exc.message))
        except ServerRefused as exc:
            if exc.status != 404:
                raise
            # Handed over or deleted since the page was made.
            self.failed.append(CaseFailure(case_id, "the server no longer shows this case to you"))
        self._tick()

    def check_page(self, page: EnvelopePage) -> None:
        for sealed in page.cases:
            case_id = sealed.detail.case.case_id
            if case_id in self.seen:
                raise ProtocolViolation("the server sent a case twice")
            self.seen.add(case_id)


def _needs_requests(sealed: SealedCase) -> bool:
    case = sealed.detail.case
    return case.attachments > 0 or any(m.kind == "follow-up" for m in sealed.detail.messages)


async def _pages(run: _Run, staff: StaffClient, page_size: int) -> None:
    page = await staff.case_envelopes(limit=page_size)
    run.total = page.total
    cursors: set[str] = set()
    for _ in range(MAX_BULK_PAGES):
        run.check_page(page)
        following = None
        if page.next is not None:
            if page.next in cursors:
                raise ProtocolViolation("the case pages do not move forward")
            cursors.add(page.next)
            # The next page downloads while this one is opened and written.
            following = asyncio.create_task(staff.case_envelopes(after=page.next, limit=page_size))
        try:
            await asyncio.to_thread(run.quick, [c for c in page.cases if not _needs_requests(c)])
            for sealed in (c for c in page.cases if _needs_requests(c)):
                await run.full(staff, sealed)
        except BaseException:
            if following is not None:
                following.cancel()
            raise
        if following is None:
            return
        page = await following
    raise ProtocolViolation("too many case pages")


async def read_all(
    paths: HandlerPaths,
    passphrase: Passphrase,
    out_dir: Path,
    *,
    intake: str | None = None,
    socks: str | None = None,
    now: int | None = None,
    progress: Progress | None = None,
    page_size: int = MAX_BULK_PAGE,
) -> BulkReading:
    """Open, verify and write every case the staff server shows this handler into ``out_dir``."""
    now = _now(now)
    out = Path(out_dir)
    with vault_lock(paths):
        _, keys = open_handler_vault(paths, passphrase)
        SavedSession.load(paths, now=now)
        trusted = await _trusted(paths, keys.org, intake, socks, now, keys.witnesses)
        _check_staff_onion(paths, trusted.directory, now)
        prepare_folder(out)
        run = _Run(paths, keys, trusted.directory, out, progress or (lambda done, total: None))
        try:
            async with _staff(paths, socks, now) as staff:
                await _pages(run, staff, page_size)
            run.drain(run.pending)
        finally:
            run.close()
    return BulkReading(tuple(run.written), tuple(run.failed))


__all__ = ["BulkReading", "CaseFailure", "Progress", "SomeCasesFailed", "read_all"]
