"""The handler's local files: the vault (protocol 11) and the small files beside it.

The vault holds everything secret and everything that decides whom to trust:

========================  =======================================================
entry                     value
========================  =======================================================
``identity``              the Ed25519 seed of the handler's identity key
``handler``               the handler id (UTF-8)
``org``                   the pinned organisation fingerprint (UTF-8)
``intake.<key id>``       canonical JSON ``{"key": b64(private), "not_before",
                          "not_after", "sig"}``: an intake key and its signed window
``reply.<hash>``          canonical JSON ``{"case", "message", "payload"}``: a reply
                          this handler sent, kept because it is sealed to the
                          applicant alone and an escalation must carry it (17.1)
========================  =======================================================

Beside the vault ``V`` (all 0600, written atomically, refused when others may
read them): ``V.session`` (the staff session token), ``V.state`` (the last
transparency-log head, :class:`~safepassage.client.trust.HeadState`),
``V.profile`` (server addresses and the handler id, not secret), ``V.lock``
(one process owns the vault at a time, protocol 11.7) and ``intake-key.json``
(the public intake-key entry admins add to the directory).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from safepassage.crypto.directory import IntakeKey
from safepassage.crypto.encoding import (
    JsonObject,
    as_obj,
    b64d,
    b64e,
    canonical_json,
    get_int,
    get_str,
    parse_canonical_json,
    require_keys,
)
from safepassage.crypto.errors import FileAccessError, InsecureFile, MalformedInput, SafePassageError
from safepassage.crypto.keys import HYBRID_PRIVATE_LEN, HybridPrivateKey, SigningKey, VerifyKey
from safepassage.crypto.privatefile import read_private, write_private
from safepassage.crypto.staffmsg import MAX_PAYLOAD
from safepassage.crypto.threshold import KeySet
from safepassage.crypto.vault import Passphrase, VaultContents, open_vault, save_vault

from .errors import ClientError, UsageError
from .staff_api import SessionToken

PROFILE_TYPE: Final = "safepassage/handler-profile/v1"
SESSION_TYPE: Final = "safepassage/handler-session/v1"
ENROLMENT_TYPE: Final = "safepassage/handler-enrolment/v1"
INTAKE_KEY_FILE: Final = "intake-key.json"
NEXT_INTAKE_KEY_FILE: Final = "next-intake-key.json"
NEW_IDENTITY_FILE: Final = "new-identity.json"
#: Vault entry of the local archive key (hybrid, never published, never sent anywhere).
ARCHIVE_KEY: Final = "archive-key"
#: Vault entry of a rotated identity key waiting for the admins to list it.
IDENTITY_NEXT: Final = "identity.next"
#: The witness keys and threshold pinned at enrolment (canonical JSON of the key set).
WITNESSES: Final = "witnesses"
MAX_SMALL_FILE: Final = 64 * 1024
_HANDLER = re.compile(r"[a-z][a-z0-9-]{0,63}")


class NotLoggedIn(ClientError):
    """You are not logged in to the staff server, or the session has expired."""

    hint = "Run: safepassage handler login --vault PATH"
    exit_code = 6


class ProfileError(ClientError):
    """The handler's files beside the vault cannot be used."""

    hint = "They are written by 'safepassage handler enroll'. Pass the server addresses as options instead."
    exit_code = 5


class VaultBusy(ClientError):
    """Another Safe Passage process is using this vault."""

    hint = "Wait for it to finish. Two processes writing one vault would lose an update."
    exit_code = 5


# --- paths ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandlerPaths:
    """Where a handler's files live: the vault and its siblings."""

    vault: Path

    @property
    def session(self) -> Path:
        return self.vault.with_name(self.vault.name + ".session")

    @property
    def state(self) -> Path:
        return self.vault.with_name(self.vault.name + ".state")

    @property
    def profile(self) -> Path:
        return self.vault.with_name(self.vault.name + ".profile")

    @property
    def lock(self) -> Path:
        return self.vault.with_name(self.vault.name + ".lock")

    @property
    def intake_key(self) -> Path:
        return self.vault.with_name(INTAKE_KEY_FILE)

    @property
    def next_intake_key(self) -> Path:
        """The public entry of a rotated intake key, for the admins (``handler rotate``)."""
        return self.vault.with_name(NEXT_INTAKE_KEY_FILE)

    @property
    def new_identity(self) -> Path:
        """A rotated identity key with the current intake key signed by it, for the admins."""
        return self.vault.with_name(NEW_IDENTITY_FILE)

    @property
    def archive(self) -> Path:
        """Cases re-sealed to the local archive key when an intake key is destroyed (0700)."""
        return self.vault.with_name(self.vault.name + ".archive")

    @property
    def onion_key(self) -> Path:
        """The Tor client authorisation key for the staff and integration onions (client/onion.py)."""
        return self.vault.with_name(self.vault.name + ".onion-key")


@contextlib.contextmanager
def vault_lock(paths: HandlerPaths) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``V.lock`` (protocol 11.7: one writer at a time)."""
    try:
        fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise FileAccessError("the vault's lock file") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VaultBusy() from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --- the vault -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class HeldIntakeKey:
    """An intake private key with its signed public entry."""

    private: HybridPrivateKey
    entry: IntakeKey

    def __repr__(self) -> str:
        return f"HeldIntakeKey({self.entry.key.key_id.short()}, {self.entry.not_before}..{self.entry.not_after})"

    @property
    def vault_name(self) -> str:
        return "intake." + self.private.key_id.hex()[:32]

    def to_bytes(self) -> bytes:
        entry = self.entry.to_json()
        return canonical_json({**entry, "key": b64e(self.private.private_bytes_raw())})

    @classmethod
    def from_bytes(cls, data: bytes) -> HeldIntakeKey:
        obj = as_obj(parse_canonical_json(data, max_len=MAX_SMALL_FILE), "intake key")
        require_keys(obj, ("key", "not_before", "not_after", "sig"), "intake key")
        private = HybridPrivateKey(b64d(get_str(obj, "key"), length=HYBRID_PRIVATE_LEN, what="intake key"))
        entry = IntakeKey(
            private.public_key,
            get_int(obj, "not_before"),
            get_int(obj, "not_after"),
            b64d(get_str(obj, "sig"), length=64, what="intake key signature"),
        )
        return cls(private, entry)


@dataclass(frozen=True, slots=True, repr=False)
class HandlerKeys:
    """What an opened vault gives: who this handler is and every key it holds."""

    handler_id: str
    org: str
    identity: SigningKey
    intake: tuple[HeldIntakeKey, ...]
    replies: dict[str, tuple[str, bytes]]  # message id -> (case id, payload)
    archive: HybridPrivateKey | None = None
    #: A new identity key made by ``handler rotate --identity``, used once a directory lists it.
    identity_next: SigningKey | None = None
    #: Independent witnesses pinned at enrolment: K of them must have cosigned every head (8.6).
    witnesses: KeySet | None = None

    def __repr__(self) -> str:
        return f"HandlerKeys({self.handler_id}, {len(self.intake)} intake key(s), {len(self.replies)} reply(ies))"

    @property
    def intake_private(self) -> tuple[HybridPrivateKey, ...]:
        return tuple(k.private for k in self.intake)

    @property
    def opening_keys(self) -> tuple[HybridPrivateKey, ...]:
        """Every key a case may be sealed to: the intake keys, and the local archive key."""
        return self.intake_private + ((self.archive,) if self.archive is not None else ())

    def current_intake(self, now: int) -> HeldIntakeKey:
        valid = [k for k in self.intake if k.entry.valid_at(now)]
        if not valid:
            raise UsageError("the vault holds no intake key valid now")
        return max(valid, key=lambda k: (k.entry.not_before, k.private.key_id.raw))


def _reply_name(message_id: str) -> str:
    return "reply." + hashlib.sha256(message_id.encode()).hexdigest()[:32]


def new_vault_contents(
    handler_id: str, org: str, identity: SigningKey, intake: HeldIntakeKey, witnesses: KeySet | None = None
) -> VaultContents:
    entries = {
        "identity": identity.seed_bytes_raw(),
        "handler": handler_id.encode(),
        "org": org.encode(),
        intake.vault_name: intake.to_bytes(),
    }
    if witnesses is not None:
        entries[WITNESSES] = canonical_json(witnesses.to_json())
    return VaultContents(entries)


def pinned_witnesses_in(contents: VaultContents) -> KeySet | None:
    """The witness set pinned in a handler's or admin's vault (entry ``witnesses``), if any."""
    if WITNESSES not in contents:
        return None
    obj = as_obj(parse_canonical_json(contents.get(WITNESSES), max_len=4096), "pinned witnesses")
    require_keys(obj, ("threshold", "keys"), "pinned witnesses")
    values = obj["keys"]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise MalformedInput("pinned witness keys must be a list of strings")
    keys = tuple(VerifyKey(b64d(str(v), length=32, what="witness key")) for v in values)
    return KeySet(keys, get_int(obj, "threshold", minimum=1))


def keys_from_contents(contents: VaultContents) -> HandlerKeys:
    try:
        handler_id = contents.get("handler").decode("utf-8")
        org = contents.get("org").decode("utf-8")
        identity = SigningKey.from_seed_bytes(contents.get("identity"))
        intake = tuple(HeldIntakeKey.from_bytes(contents.get(n)) for n in contents.names() if n.startswith("intake."))
        replies: dict[str, tuple[str, bytes]] = {}
        for name in contents.names():
            if name.startswith("reply."):
                obj = as_obj(parse_canonical_json(contents.get(name), max_len=2 * MAX_PAYLOAD), "archived reply")
                require_keys(obj, ("case", "message", "payload"), "archived reply")
                replies[get_str(obj, "message")] = (
                    get_str(obj, "case"),
                    b64d(get_str(obj, "payload", max_len=2 * MAX_PAYLOAD)),
                )
        archive = HybridPrivateKey.from_private_bytes(contents.get(ARCHIVE_KEY)) if ARCHIVE_KEY in contents else None
        identity_next = SigningKey.from_seed_bytes(contents.get(IDENTITY_NEXT)) if IDENTITY_NEXT in contents else None
    except (UnicodeDecodeError, KeyError) as exc:
        raise MalformedInput("this vault is not a handler vault") from exc
    if not _HANDLER.fullmatch(handler_id) or not intake:
        raise MalformedInput("this vault is not a handler vault")
    return HandlerKeys(
        handler_id, org, identity, intake, replies, archive, identity_next, pinned_witnesses_in(contents)
    )


def open_handler_vault(paths: HandlerPaths, passphrase: Passphrase) -> tuple[VaultContents, HandlerKeys]:
    contents = open_vault(paths.vault, passphrase)
    return contents, keys_from_contents(contents)


def archive_reply(
    paths: HandlerPaths,
    passphrase: Passphrase,
    contents: VaultContents,
    *,
    case_id: str,
    message_id: str,
    payload: bytes,
) -> VaultContents:
    """Keep a sent reply's signed payload in the vault (it is sealed to the applicant alone)."""
    value = canonical_json({"case": case_id, "message": message_id, "payload": b64e(payload)})
    updated = contents.with_entry(_reply_name(message_id), value)
    save_vault(paths.vault, passphrase, updated)
    return updated


# --- the enrolment file for admins --------------------------------------------------------------------


def enrolment_document(handler_id: str, identity: SigningKey, intake: IntakeKey) -> JsonObject:
    """What admins need to list this handler: its id, identity key and signed intake-key entry (7.1, 7.3)."""
    return {
        "type": ENROLMENT_TYPE,
        "handler": handler_id,
        "identity_key": b64e(identity.verify_key.public_bytes_raw()),
        "intake_key": intake.to_json(),
    }


def read_enrolment_document(path: Path) -> tuple[str, bytes, IntakeKey]:
    """``(handler id, identity public key, intake-key entry)`` from an ``intake-key.json``, verified."""
    with open(path, "rb") as f:
        data = f.read(MAX_SMALL_FILE + 1)
    obj = as_obj(parse_canonical_json(data, max_len=MAX_SMALL_FILE), "enrolment file")
    require_keys(obj, ("type", "handler", "identity_key", "intake_key"), "enrolment file")
    if obj["type"] != ENROLMENT_TYPE:
        raise MalformedInput("not a Safe Passage handler enrolment file")
    handler_id = get_str(obj, "handler", max_len=64)
    identity = VerifyKey(b64d(get_str(obj, "identity_key"), length=32, what="identity key"))
    entry = IntakeKey.from_json(obj["intake_key"])
    entry.verify(handler_id, identity)
    return handler_id, identity.public_bytes_raw(), entry


# --- profile and session ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    """Addresses and names a handler's commands default to (not secret; written at enrolment)."""

    handler_id: str
    staff: str
    intake: str
    org: str

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": PROFILE_TYPE,
                "handler": self.handler_id,
                "staff": self.staff,
                "intake": self.intake,
                "org": self.org,
            }
        )

    def save(self, paths: HandlerPaths) -> None:
        write_private(paths.profile, self.to_bytes(), replace=True)

    @classmethod
    def load(cls, paths: HandlerPaths) -> Profile | None:
        data = _read_small(paths.profile, "the profile file")
        if data is None:
            return None
        try:
            obj = as_obj(parse_canonical_json(data, max_len=MAX_SMALL_FILE), "profile")
            require_keys(obj, ("type", "handler", "staff", "intake", "org"), "profile")
            if obj["type"] != PROFILE_TYPE:
                raise MalformedInput("not a handler profile")
            return cls(get_str(obj, "handler"), get_str(obj, "staff"), get_str(obj, "intake"), get_str(obj, "org"))
        except SafePassageError as exc:
            raise ProfileError(exc.detail) from None


@dataclass(frozen=True, slots=True, repr=False)
class SavedSession:
    """A staff session as kept in ``V.session``: the server it is for, the token and its lapse."""

    staff: str
    username: str
    token: SessionToken
    role: str
    absolute_expires: int

    def __repr__(self) -> str:
        return f"SavedSession({self.username}, expires={self.absolute_expires})"

    def save(self, paths: HandlerPaths) -> None:
        data = canonical_json(
            {
                "type": SESSION_TYPE,
                "staff": self.staff,
                "username": self.username,
                "token": self.token.reveal(),
                "role": self.role,
                "absolute_expires": self.absolute_expires,
            }
        )
        write_private(paths.session, data, replace=True)

    @classmethod
    def load(cls, paths: HandlerPaths, *, now: int | None = None) -> SavedSession:
        """The saved session; :class:`NotLoggedIn` if there is none or it has lapsed."""
        data = _read_small(paths.session, "the session file")
        if data is None:
            raise NotLoggedIn()
        try:
            obj = as_obj(parse_canonical_json(data, max_len=MAX_SMALL_FILE), "session")
            require_keys(obj, ("type", "staff", "username", "token", "role", "absolute_expires"), "session")
            if obj["type"] != SESSION_TYPE:
                raise MalformedInput("not a handler session file")
            session = cls(
                get_str(obj, "staff"),
                get_str(obj, "username"),
                SessionToken(get_str(obj, "token", max_len=512)),
                get_str(obj, "role"),
                get_int(obj, "absolute_expires"),
            )
        except SafePassageError:
            raise NotLoggedIn("the session file is damaged") from None
        if session.absolute_expires <= (int(time.time()) if now is None else now):
            forget_session(paths)
            raise NotLoggedIn("the session has expired")
        return session


def forget_session(paths: HandlerPaths) -> None:
    paths.session.unlink(missing_ok=True)


def _read_small(path: Path, what: str) -> bytes | None:
    try:
        return read_private(path, max_len=MAX_SMALL_FILE, what=what)
    except FileNotFoundError:
        return None
    except InsecureFile:
        raise
    except MalformedInput as exc:
        raise ProfileError(exc.detail) from None


__all__ = [
    "ENROLMENT_TYPE",
    "INTAKE_KEY_FILE",
    "HandlerKeys",
    "HandlerPaths",
    "HeldIntakeKey",
    "NotLoggedIn",
    "Profile",
    "ProfileError",
    "SavedSession",
    "VaultBusy",
    "archive_reply",
    "enrolment_document",
    "forget_session",
    "keys_from_contents",
    "new_vault_contents",
    "open_handler_vault",
    "read_enrolment_document",
    "vault_lock",
]
