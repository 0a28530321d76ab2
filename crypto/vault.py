"""The local encrypted key vault (docs/protocol.md, section 11).

Handler, admin and integration clients keep their private keys in one file,
sealed under a key stretched from a passphrase. The file is a fixed binary
header (format marker, Argon2id cost, salt, nonce) followed by an
XChaCha20-Poly1305 ciphertext whose associated data is that whole header, so
no header byte can be changed without the tag failing.

Two things a planted or damaged file must not be able to do: make us allocate
unbounded memory (the Argon2id cost is bounded before any work is done), and
make us accept weak parameters (the floor is checked on every read). Every
authentication failure is :class:`WrongPassphrase`, whatever the cause: a wrong
passphrase and a flipped bit look the same to the AEAD, and saying which would
only help an attacker.

Writes are atomic and private from the first byte: a temporary file created
with mode 0600 in the same directory, flushed to disk, renamed over the target,
then the directory flushed. A crash leaves either the old vault or the new one,
never a half-written or world-readable file.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final, NewType

from . import _primitives as P
from . import labels as L
from .encoding import (
    JsonObject,
    JsonValue,
    Reader,
    as_obj,
    b64d,
    b64e,
    canonical_json,
    get_obj,
    get_str,
    parse_canonical_json,
    require_keys,
    u32,
)
from .errors import (
    DecryptionFailed,
    MalformedInput,
    NoSuchEntry,
    UnsupportedVersion,
    VaultExists,
    VaultNotFound,
    WeakPassphrase,
    WrongPassphrase,
)
from .privatefile import read_private, write_private

Passphrase = NewType("Passphrase", str)

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

MIN_PASSPHRASE_CHARS: Final = 20

#: Default Argon2id cost for new vaults: 3 passes over 256 MiB (about 0.6 s on one
#: core of the development machine). A vault is opened rarely, by its owner, so
#: the cost is spent where it hurts a thief most.
DEFAULT_OPSLIMIT: Final = 3
DEFAULT_MEMLIMIT: Final = 256 * MiB
#: What a reader accepts. Below the floor a stolen vault is too cheap to attack;
#: above the ceiling a planted file could make us allocate memory without bound.
MIN_OPSLIMIT: Final = 2
MAX_OPSLIMIT: Final = 10
MIN_MEMLIMIT: Final = 64 * MiB
MAX_MEMLIMIT: Final = 1 * GiB

SALT_LEN: Final = 16
HEADER_LEN: Final = len(L.VAULT_MAGIC) + 4 + 4 + SALT_LEN + P.AEAD_NONCE_LEN  # 52
#: Largest plaintext payload (and so, with the header and tag, the largest file).
MAX_PAYLOAD: Final = 16 * MiB
MAX_FILE: Final = HEADER_LEN + MAX_PAYLOAD + P.AEAD_TAG_LEN

VAULT_TYPE: Final = "safepassage/vault/v1"
_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


# --- contents ------------------------------------------------------------------------------


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise MalformedInput("vault entry names are 1-64 characters of a-z, 0-9, '.', '_' and '-'")
    return name


class VaultContents:
    """The named secrets a vault holds; immutable, and its repr never shows a value.

    Names are not secret (they appear in repr and error details); values are.
    """

    __slots__ = ("_entries",)
    _entries: dict[str, bytes]

    def __init__(self, entries: Mapping[str, bytes] | None = None) -> None:
        checked: dict[str, bytes] = {}
        for name, value in (entries or {}).items():
            if not isinstance(value, bytes | bytearray):
                raise MalformedInput(f"vault entry {_check_name(name)!r} must be bytes")
            checked[_check_name(name)] = bytes(value)
        object.__setattr__(self, "_entries", checked)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("VaultContents is immutable; use with_entry() or without()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("VaultContents is immutable; use with_entry() or without()")

    @classmethod
    def empty(cls) -> VaultContents:
        return cls()

    def get(self, name: str) -> bytes:
        """The value stored under ``name``; :class:`NoSuchEntry` if there is none."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise NoSuchEntry(name if isinstance(name, str) else "") from None

    def with_entry(self, name: str, value: bytes) -> VaultContents:
        """A copy with ``name`` set to ``value`` (added, or replacing the old value)."""
        return VaultContents({**self._entries, name: value})

    def without(self, name: str) -> VaultContents:
        """A copy without ``name``; :class:`NoSuchEntry` if it is not there."""
        self.get(name)
        return VaultContents({k: v for k, v in self._entries.items() if k != name})

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VaultContents) and other._entries == self._entries

    # Equality compares secret values; nothing needs contents as a dict key.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"VaultContents(names={list(self.names())!r}, values=<secret>)"

    __str__ = __repr__

    # --- payload ---------------------------------------------------------------

    def _to_payload(self) -> bytes:
        entries: JsonObject = {name: b64e(value) for name, value in self._entries.items()}
        doc: JsonValue = {"type": VAULT_TYPE, "entries": entries}
        data = canonical_json(doc)
        if len(data) > MAX_PAYLOAD:
            # Refuse to write what we would refuse to read.
            raise MalformedInput(f"vault contents larger than {MAX_PAYLOAD} bytes when encoded")
        return data

    @classmethod
    def _from_payload(cls, data: bytes) -> VaultContents:
        obj = as_obj(parse_canonical_json(data, max_len=MAX_PAYLOAD), "vault payload")
        require_keys(obj, ("type", "entries"), "vault payload")
        if get_str(obj, "type") != VAULT_TYPE:
            raise UnsupportedVersion("vault payload type")
        entries: dict[str, bytes] = {}
        for name, value in get_obj(obj, "entries").items():
            if not isinstance(value, str):
                raise MalformedInput("vault entry values must be base64url strings")
            entries[_check_name(name)] = b64d(value, what="vault entry")
        return cls(entries)


# --- passphrases and keys ------------------------------------------------------------------


def _passphrase_bytes(passphrase: Passphrase) -> bytes:
    """UTF-8 of the NFC form, so the same passphrase typed on another keyboard or OS still opens."""
    if not isinstance(passphrase, str):
        raise MalformedInput("passphrase must be text")
    try:
        return unicodedata.normalize("NFC", passphrase).encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedInput("passphrase is not valid Unicode text") from None


def check_passphrase_strength(passphrase: Passphrase) -> None:
    """Raise :class:`WeakPassphrase` unless the passphrase has at least 20 characters (after NFC)."""
    _passphrase_bytes(passphrase)
    if len(unicodedata.normalize("NFC", passphrase)) < MIN_PASSPHRASE_CHARS:
        raise WeakPassphrase(f"at least {MIN_PASSPHRASE_CHARS} characters")


def _check_cost(opslimit: int, memlimit: int) -> None:
    ok_ops = isinstance(opslimit, int) and not isinstance(opslimit, bool) and MIN_OPSLIMIT <= opslimit <= MAX_OPSLIMIT
    ok_mem = isinstance(memlimit, int) and not isinstance(memlimit, bool) and MIN_MEMLIMIT <= memlimit <= MAX_MEMLIMIT
    if not (ok_ops and ok_mem):
        raise MalformedInput(
            f"vault Argon2id cost outside opslimit {MIN_OPSLIMIT}..{MAX_OPSLIMIT}, "
            f"memlimit {MIN_MEMLIMIT}..{MAX_MEMLIMIT} bytes"
        )


def _vault_key(passphrase: Passphrase, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    # HKDF after Argon2id gives the AEAD key its own label, so the stretched
    # secret is never used directly as a key for anything.
    stretched = P.argon2id(_passphrase_bytes(passphrase), salt, opslimit=opslimit, memlimit=memlimit, length=32)
    return P.hkdf_sha256(stretched, salt=b"", info=L.VAULT_KEY, length=P.AEAD_KEY_LEN)


# --- file format ---------------------------------------------------------------------------


class _Header:
    __slots__ = ("memlimit", "nonce", "opslimit", "raw", "salt")

    def __init__(self, raw: bytes, opslimit: int, memlimit: int, salt: bytes, nonce: bytes) -> None:
        self.raw = raw
        self.opslimit = opslimit
        self.memlimit = memlimit
        self.salt = salt
        self.nonce = nonce


def _parse_header(data: bytes) -> _Header:
    r = Reader(data, "vault")
    magic = r.take(len(L.VAULT_MAGIC))
    if magic != L.VAULT_MAGIC:
        if magic[:3] == L.VAULT_MAGIC[:3]:
            raise UnsupportedVersion(f"vault version {magic[3]}")
        raise MalformedInput("not a Safe Passage vault")
    opslimit, memlimit = r.u32(), r.u32()
    # Bounded before any Argon2id work: see the module docstring.
    _check_cost(opslimit, memlimit)
    salt, nonce = r.take(SALT_LEN), r.take(P.AEAD_NONCE_LEN)
    if len(data) - r.position < P.AEAD_TAG_LEN:
        raise MalformedInput("vault is truncated")
    return _Header(data[: r.position], opslimit, memlimit, salt, nonce)


def _seal(passphrase: Passphrase, contents: VaultContents, opslimit: int, memlimit: int) -> bytes:
    _check_cost(opslimit, memlimit)
    payload = contents._to_payload()
    # Fresh salt and nonce on every save: a new key each time, so nonce reuse is
    # impossible even if a save is repeated with the same contents.
    salt, nonce = P.random_bytes(SALT_LEN), P.random_bytes(P.AEAD_NONCE_LEN)
    header = L.VAULT_MAGIC + u32(opslimit) + u32(memlimit) + salt + nonce
    key = _vault_key(passphrase, salt, opslimit, memlimit)
    return header + P.aead_seal(key, nonce, payload, header)


def _unseal(data: bytes, passphrase: Passphrase) -> tuple[_Header, VaultContents]:
    header = _parse_header(data)
    key = _vault_key(passphrase, header.salt, header.opslimit, header.memlimit)
    try:
        payload = P.aead_open(key, header.nonce, data[len(header.raw) :], header.raw)
    except DecryptionFailed:
        raise WrongPassphrase() from None
    return header, VaultContents._from_payload(payload)


# --- files ---------------------------------------------------------------------------------


def _read_private(path: Path) -> bytes:
    try:
        return read_private(path, max_len=MAX_FILE, what="the vault")
    except FileNotFoundError:
        raise VaultNotFound() from None


def _write_private(path: Path, data: bytes, *, replace: bool) -> None:
    try:
        write_private(path, data, replace=replace)
    except FileExistsError:
        raise VaultExists() from None


# --- public API ----------------------------------------------------------------------------


def create_vault(
    path: str | os.PathLike[str],
    passphrase: Passphrase,
    contents: VaultContents,
    *,
    opslimit: int = DEFAULT_OPSLIMIT,
    memlimit: int = DEFAULT_MEMLIMIT,
) -> None:
    """Create a new vault at ``path``; :class:`VaultExists` if there is already a file there."""
    check_passphrase_strength(passphrase)
    target = Path(path)
    if target.exists() or target.is_symlink():
        raise VaultExists()
    _write_private(target, _seal(passphrase, contents, opslimit, memlimit), replace=False)


def open_vault(path: str | os.PathLike[str], passphrase: Passphrase) -> VaultContents:
    """Decrypt the vault at ``path``.

    Raises :class:`WrongPassphrase` for a wrong passphrase or any altered byte,
    :class:`InsecureFile` if group or others may access the file.
    """
    return _unseal(_read_private(Path(path)), passphrase)[1]


def vault_cost(path: str | os.PathLike[str]) -> tuple[int, int]:
    """The ``(opslimit, memlimit)`` a vault was sealed with, read without the passphrase."""
    header = _parse_header(_read_private(Path(path)))
    return header.opslimit, header.memlimit


def save_vault(
    path: str | os.PathLike[str],
    passphrase: Passphrase,
    contents: VaultContents,
    *,
    opslimit: int | None = None,
    memlimit: int | None = None,
) -> None:
    """Replace the contents of an existing vault, keeping its passphrase (and its cost unless given).

    The passphrase must open the current file first: a mistyped passphrase must
    never silently re-key the vault to something its owner does not know.
    """
    target = Path(path)
    header, _ = _unseal(_read_private(target), passphrase)
    ops = header.opslimit if opslimit is None else opslimit
    mem = header.memlimit if memlimit is None else memlimit
    _write_private(target, _seal(passphrase, contents, ops, mem), replace=True)


def change_passphrase(path: str | os.PathLike[str], old: Passphrase, new: Passphrase) -> None:
    """Re-seal an existing vault under a new passphrase (same contents and cost)."""
    check_passphrase_strength(new)
    target = Path(path)
    header, contents = _unseal(_read_private(target), old)
    _write_private(target, _seal(new, contents, header.opslimit, header.memlimit), replace=True)


__all__ = [
    "DEFAULT_MEMLIMIT",
    "DEFAULT_OPSLIMIT",
    "MAX_MEMLIMIT",
    "MAX_OPSLIMIT",
    "MAX_PAYLOAD",
    "MIN_MEMLIMIT",
    "MIN_OPSLIMIT",
    "MIN_PASSPHRASE_CHARS",
    "NoSuchEntry",
    "Passphrase",
    "VaultContents",
    "VaultExists",
    "VaultNotFound",
    "change_passphrase",
    "check_passphrase_strength",
    "create_vault",
    "open_vault",
    "save_vault",
    "vault_cost",
]
