"""Writing a case's attachments to the handler's output folder (docs/protocol.md, 15.1).

Attachment names are chosen by the applicant, who may be hostile: a name must
not leave the folder (separators, ``..``), hide itself (a leading dot), lie on
the terminal (direction overrides, escapes) or replace a file already there.
Files are written into a private temporary folder inside the output folder and
linked into place only after the whole case verified, so a case that fails
any check leaves nothing behind; an existing file is never overwritten (the
new one gets `` (2)``, `` (3)``, ...).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from safepassage.crypto.intake import AttachmentInfo

from .errors import ClientError

MAX_FILE_NAME_BYTES: Final = 200
#: Prefix of the temporary files and folders written inside an output folder.
TEMP_PREFIX: Final = ".safepassage-"
#: A temporary untouched this long is a crashed run's leftover.
STALE_SECONDS: Final = 3600


class OutputFolderError(ClientError):
    """The output folder cannot be used."""

    hint = "Use a folder that only you can read (mode 0700), or a new path: it is created with mode 0700."
    exit_code = 5


@dataclass(frozen=True, slots=True, repr=False)
class SavedAttachment:
    number: int
    info: AttachmentInfo
    path: Path

    def __repr__(self) -> str:
        return f"SavedAttachment({self.number})"


_UNSAFE_CHARS: Final = '/\\:*?"<>|'


def safe_file_name(name: str, number: int) -> str:
    """A name that stays inside the folder and prints honestly: no separators, controls or direction marks."""
    text = unicodedata.normalize("NFC", name)
    # Separators become "_", odd spaces (no-break, line separators) a plain space, and control,
    # format (direction overrides), private-use and unassigned characters go.
    text = "".join(
        "_" if ch in _UNSAFE_CHARS else " " if ch.isspace() else ch
        for ch in text
        if ch.isspace() or unicodedata.category(ch)[0] != "C"
    )
    text = text.strip().lstrip(".").strip()
    stem, dot, ext = text.rpartition(".")
    if not dot or not stem or len(ext.encode()) > 16:
        stem, ext = text, ""
    budget = MAX_FILE_NAME_BYTES - len(ext.encode()) - (1 if ext else 0)
    stem = stem.encode()[:budget].decode("utf-8", errors="ignore").rstrip()
    text = f"{stem}.{ext}" if ext and stem else stem
    return text or f"attachment-{number + 1}"


def _prepare_folder(folder: Path) -> bool:
    """Make sure ``folder`` is a private directory; return whether it was created here."""
    try:
        st = os.stat(folder, follow_symlinks=False)
    except FileNotFoundError:
        try:
            os.mkdir(folder, 0o700)
        except OSError as exc:
            raise OutputFolderError(exc.strerror or "cannot create it") from None
        os.chmod(folder, 0o700)
        return True
    if not stat.S_ISDIR(st.st_mode):
        raise OutputFolderError("it is not a folder")
    if st.st_mode & 0o077:
        raise OutputFolderError(f"others may access it (mode {stat.S_IMODE(st.st_mode):04o})")
    _sweep_leftovers(folder)
    return False


def _sweep_leftovers(folder: Path, now: float | None = None) -> None:
    """Remove ``.safepassage-*`` temporaries a crashed or killed run left (they may hold plaintext).

    Only those untouched for STALE_SECONDS: a running command keeps its own
    temporaries' modification times fresh while it writes them.
    """
    cutoff = (time.time() if now is None else now) - STALE_SECONDS
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.startswith(TEMP_PREFIX):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            except FileNotFoundError:
                continue  # another run removed it


def _publish(temp: Path, folder: Path, name: str) -> Path:
    """Link ``temp`` into ``folder`` under ``name`` or ``name (2)``, ...: never over an existing file."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    for n in range(1, 1000):
        candidate = name if n == 1 else (f"{stem} ({n}).{ext}" if ext else f"{stem} ({n})")
        target = folder / candidate
        try:
            os.link(temp, target)
        except FileExistsError:
            continue
        return target
    raise OutputFolderError("too many files with the same name")


def prepare_folder(folder: Path) -> None:
    """The output folder, private: created with mode 0700, or refused if others may access it."""
    _prepare_folder(folder)


def publish_file(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to a temporary file in ``folder``, flush it to disk, then link it in as ``name``.

    The file appears whole or not at all (a crash leaves at most a hidden
    ``.safepassage-*`` temporary, removed by the next command that writes to the
    folder once it is STALE_SECONDS old), and never over an existing file.
    """
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return _publish(Path(temp), folder, name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


class Staging:
    """Files written to a private temporary folder inside the output folder, published only on success."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.created = _prepare_folder(folder)
        self.temp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=folder))
        self.files: list[tuple[SavedAttachment, Path]] = []

    def open(self, number: int) -> tuple[Path, int]:
        path = self.temp / str(number)
        return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)

    def publish(self, items: Sequence[tuple[int, AttachmentInfo, Path]]) -> tuple[SavedAttachment, ...]:
        saved = []
        for number, info, temp in items:
            target = _publish(temp, self.folder, safe_file_name(info.name, number))
            saved.append(SavedAttachment(number, info, target))
        return tuple(saved)

    def discard(self, *, everything: bool) -> None:
        shutil.rmtree(self.temp, ignore_errors=True)
        if everything and self.created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()


__all__ = [
    "MAX_FILE_NAME_BYTES",
    "OutputFolderError",
    "SavedAttachment",
    "Staging",
    "prepare_folder",
    "publish_file",
    "safe_file_name",
]
