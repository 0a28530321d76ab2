"""Private files: written atomically with mode 0600, read only when nobody else may.

Used for every secret at rest (vaults, server keys). A crash at any moment
leaves either the old file or the new one, and a file another user can read
is refused rather than trusted.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from . import _primitives as P
from .errors import FileAccessError, InsecureFile, MalformedInput


def read_private(path: Path, *, max_len: int, what: str) -> bytes:
    """Read a private file, refusing it if group or others may access it.

    The mode is checked on the open descriptor, so the file checked is the file
    read. Only the file's own mode is checked: a group- or world-writable
    directory would let others replace the file, which an authenticated format
    (the vault) catches unless they put back an older copy. A missing file
    raises :class:`FileNotFoundError` for the caller to name; a symbolic link
    is refused, because a later save would replace the link and leave the file
    it pointed to (and any key "destroyed" since) behind.
    """
    try:
        # O_NONBLOCK: a planted FIFO must not hang us before fstat refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _access_error(exc, what) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MalformedInput(f"{what} is not a regular file")
        if st.st_mode & 0o077:
            raise InsecureFile(f"mode {stat.S_IMODE(st.st_mode):04o}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_len + 1)
    finally:
        os.close(fd)
    if len(data) > max_len:
        raise MalformedInput(f"{what} is larger than {max_len} bytes")
    return data


def _access_error(exc: OSError, what: str) -> FileAccessError | InsecureFile:
    if exc.errno == errno.ELOOP:
        return InsecureFile(f"{what} is a symbolic link")
    # The errno name only: the OS message is fine, but the path may be personal.
    return FileAccessError(f"{what}: {errno.errorcode.get(exc.errno or 0, 'error')}")


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to a new 0600 file next to the target and flush it to disk."""
    tmp = directory / f".{name}.{P.random_bytes(8).hex()}.tmp"
    # O_EXCL: never open an existing file or follow a planted symlink. The mode
    # is 0600 from creation (umask can only narrow it; fchmod pins it exactly).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def _publish_new(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` without ever replacing an existing file."""
    try:
        # link() fails if the target exists, atomically: no check-then-act race.
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # A file system without hard links: fall back to check-then-rename,
        # which is racy only against another writer of this same path.
        if path.exists():
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def write_private(path: Path, data: bytes, *, replace: bool) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600.

    Readers see the old file or the new one, never a half-written one, and the
    file never exists with wider permissions. Without ``replace``, an existing
    file raises :class:`FileExistsError` and is left untouched. A symbolic link
    at ``path`` is refused: replacing the link would leave its target behind.
    """
    if path.is_symlink():
        raise InsecureFile("refusing to write through a symbolic link")
    directory = path.parent
    try:
        tmp = _write_temp(directory, path.name, data)
        try:
            if replace:
                os.replace(tmp, path)
            else:
                _publish_new(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_directory(directory)
    except FileExistsError:
        raise
    except OSError as exc:
        raise _access_error(exc, "the file") from None
