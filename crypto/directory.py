"""The signed directory of keys (docs/protocol.md, section 7).

One canonical, versioned document says who may read contacts: pools, handlers
with their identity and intake keys, the integration service's keys, the
server's receipt key, onion addresses and policy. A client trusts a directory
only when

* the first one it sees is signed by M of the admin set whose fingerprint it
  pinned out of band (:func:`verify_genesis`), and
* every later one has a higher version and is signed by M of the *previous*
  admin set, and, when the admin set changes, also by M of the new one
  (:func:`verify_successor`): a planted insider cannot add a key alone, and the
  old admins cannot hand the organisation to keys nobody holds.

Each intake key is signed by its handler's identity key, so even the admins
cannot substitute an intake key for a handler without the handler's identity
key showing up as changed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from . import labels as L
from .encoding import (
    JsonObject,
    JsonValue,
    as_obj,
    b64d,
    b64e,
    canonical_json,
    get_bytes,
    get_int,
    get_list,
    get_obj,
    get_str,
    parse_canonical_json,
    require_keys,
)
from .errors import ExpiredKey, MalformedInput, Rollback, UntrustedRoot
from .keys import (
    HYBRID_PUBLIC_LEN,
    SIGNATURE_LEN,
    HybridPublicKey,
    KeyId,
    SigningKey,
    VerifyKey,
)
from .threshold import KeySet, Signature, signatures_from_json

DIRECTORY_TYPE: Final = "safepassage/directory/v1"
INTAKE_TYPE: Final = "safepassage/intake-key/v1"
MAX_DIRECTORY_BYTES: Final = 4 * 1024 * 1024
#: A handler client destroys an intake private key this long after its window ends
#: (protocol 19.3): late uploads under it (the upload window is a day) and clock skew
#: still find the key, and the server knows until when a handler can read a contact.
KEY_DESTRUCTION_GRACE: Final = 2 * 86400
MAX_POOLS: Final = 64
MAX_HANDLERS: Final = 512
MAX_INTAKE_KEYS: Final = 4
MAX_INTAKE_WINDOW: Final = 90 * 86400
MAX_INTEGRATION_KEYS: Final = 4
MAX_POLICY: Final = 64

_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
_HANDLER_ID = re.compile(r"[a-z][a-z0-9-]{0,63}")
_LANG = re.compile(r"[a-z]{2,3}")
_ONION = re.compile(r"[a-z2-7]{56}\.onion")
_POLICY_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_ONION_ROLES: Final = ("public", "staff", "integration")


def _match(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise MalformedInput(f"{what} has an invalid form")
    return value


def _verify_key(obj: JsonObject, key: str) -> VerifyKey:
    return VerifyKey(get_bytes(obj, key, length=32))


def _hybrid_key(value: JsonValue, what: str) -> HybridPublicKey:
    if not isinstance(value, str):
        raise MalformedInput(f"{what} must be a string")
    return HybridPublicKey(b64d(value, length=HYBRID_PUBLIC_LEN, what=what))


@dataclass(frozen=True, slots=True)
class Pool:
    """A routing category (military, science, ...), and the languages its handlers read."""

    name: str
    title: str
    languages: tuple[str, ...]

    def to_json(self) -> JsonObject:
        return {"name": self.name, "title": self.title, "languages": list(self.languages)}

    @classmethod
    def from_json(cls, value: JsonValue) -> Pool:
        obj = as_obj(value, "pool")
        require_keys(obj, ("name", "title", "languages"), "pool")
        langs = tuple(_match(_LANG, _str(v, "language"), "language") for v in get_list(obj, "languages"))
        if not langs or len(set(langs)) != len(langs) or len(langs) > 16:
            raise MalformedInput("pool languages must be 1 to 16 distinct codes")
        return cls(_match(_NAME, get_str(obj, "name"), "pool name"), get_str(obj, "title"), langs)


def _str(value: JsonValue, what: str) -> str:
    if not isinstance(value, str) or len(value) > 256:
        raise MalformedInput(f"{what} must be a short string")
    return value


@dataclass(frozen=True, slots=True)
class IntakeKey:
    """A handler's encryption key for a validity window, signed by the handler's identity key."""

    key: HybridPublicKey
    not_before: int
    not_after: int
    signature: bytes

    @staticmethod
    def signed_bytes(handler_id: str, key: HybridPublicKey, not_before: int, not_after: int) -> bytes:
        return canonical_json(
            {
                "type": INTAKE_TYPE,
                "handler": handler_id,
                "key": b64e(key.public_bytes_raw()),
                "not_before": not_before,
                "not_after": not_after,
            }
        )

    @classmethod
    def create(
        cls, handler_id: str, identity: SigningKey, key: HybridPublicKey, *, not_before: int, not_after: int
    ) -> IntakeKey:
        _check_window(not_before, not_after)
        sig = identity.sign(L.SIG_INTAKE_KEY, cls.signed_bytes(handler_id, key, not_before, not_after))
        return cls(key, not_before, not_after, sig)

    def verify(self, handler_id: str, identity: VerifyKey) -> None:
        _check_window(self.not_before, self.not_after)
        identity.verify(
            L.SIG_INTAKE_KEY,
            self.signed_bytes(handler_id, self.key, self.not_before, self.not_after),
            self.signature,
        )

    def valid_at(self, now: int) -> bool:
        return self.not_before <= now < self.not_after

    def to_json(self) -> JsonObject:
        return {
            "key": b64e(self.key.public_bytes_raw()),
            "not_before": self.not_before,
            "not_after": self.not_after,
            "sig": b64e(self.signature),
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> IntakeKey:
        obj = as_obj(value, "intake key")
        require_keys(obj, ("key", "not_before", "not_after", "sig"), "intake key")
        return cls(
            _hybrid_key(obj["key"], "intake key"),
            get_int(obj, "not_before"),
            get_int(obj, "not_after"),
            get_bytes(obj, "sig", length=SIGNATURE_LEN),
        )


def _check_window(not_before: int, not_after: int) -> None:
    if not 0 <= not_before < not_after or not_after - not_before > MAX_INTAKE_WINDOW:
        raise MalformedInput("intake key window must be non-empty and at most 90 days")


@dataclass(frozen=True, slots=True)
class Handler:
    """A vetted person who reads contacts of some pools."""

    handler_id: str
    name: str
    identity_key: VerifyKey
    pools: tuple[str, ...]
    intake_keys: tuple[IntakeKey, ...]

    def current_intake_key(self, now: int) -> IntakeKey:
        """The valid key that started last: during an overlap the newer key takes over."""
        valid = [k for k in self.intake_keys if k.valid_at(now)]
        if not valid:
            raise ExpiredKey(f"handler {self.handler_id} has no intake key valid now")
        return max(valid, key=lambda k: (k.not_before, k.key.key_id.raw))

    def to_json(self) -> JsonObject:
        return {
            "id": self.handler_id,
            "name": self.name,
            "identity_key": b64e(self.identity_key.public_bytes_raw()),
            "pools": list(self.pools),
            "intake_keys": [k.to_json() for k in self.intake_keys],
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> Handler:
        obj = as_obj(value, "handler")
        require_keys(obj, ("id", "name", "identity_key", "pools", "intake_keys"), "handler")
        pools = tuple(_match(_NAME, _str(v, "pool name"), "pool name") for v in get_list(obj, "pools"))
        keys = tuple(IntakeKey.from_json(v) for v in get_list(obj, "intake_keys"))
        if not pools or len(set(pools)) != len(pools):
            raise MalformedInput("handler pools must be distinct and not empty")
        if not 1 <= len(keys) <= MAX_INTAKE_KEYS:
            raise MalformedInput(f"a handler has 1 to {MAX_INTAKE_KEYS} intake keys")
        return cls(
            _match(_HANDLER_ID, get_str(obj, "id"), "handler id"),
            get_str(obj, "name"),
            _verify_key(obj, "identity_key"),
            pools,
            keys,
        )


@dataclass(frozen=True, slots=True)
class IntegrationService:
    """The downstream service that receives escalated cases."""

    signing_key: VerifyKey
    encryption_keys: tuple[HybridPublicKey, ...]

    def to_json(self) -> JsonObject:
        return {
            "signing_key": b64e(self.signing_key.public_bytes_raw()),
            "encryption_keys": [b64e(k.public_bytes_raw()) for k in self.encryption_keys],
        }

    @classmethod
    def from_json(cls, value: JsonValue) -> IntegrationService:
        obj = as_obj(value, "integration")
        require_keys(obj, ("signing_key", "encryption_keys"), "integration")
        keys = tuple(_hybrid_key(v, "integration key") for v in get_list(obj, "encryption_keys"))
        if not 1 <= len(keys) <= MAX_INTEGRATION_KEYS:
            raise MalformedInput(f"integration service has 1 to {MAX_INTEGRATION_KEYS} encryption keys")
        return cls(_verify_key(obj, "signing_key"), keys)


PolicyValue = int | str | bool


@dataclass(frozen=True, slots=True)
class Directory:
    """The content the admins sign. Build it, then sign its :meth:`signed_bytes`."""

    version: int
    issued: int
    organisation: str
    admins: KeySet
    pools: tuple[Pool, ...]
    handlers: tuple[Handler, ...]
    integration: IntegrationService
    receipt_key: VerifyKey
    onions: dict[str, str] = field(default_factory=dict)
    policy: dict[str, PolicyValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_consistency(self)

    # --- lookups -------------------------------------------------------------------

    def pool(self, name: str) -> Pool:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise MalformedInput("no such pool in the directory")

    def handler(self, handler_id: str) -> Handler:
        for handler in self.handlers:
            if handler.handler_id == handler_id:
                return handler
        raise MalformedInput("no such handler in the directory")

    def pool_handlers(self, pool: str) -> tuple[Handler, ...]:
        self.pool(pool)
        return tuple(h for h in self.handlers if pool in h.pools)

    def recipients(self, pool: str, now: int) -> tuple[tuple[Handler, HybridPublicKey], ...]:
        """Every handler of ``pool`` with its current intake key: exactly whom a contact is sealed to.

        A handler with no key valid now is left out (it cannot read new contacts);
        a pool with nobody able to read raises :class:`ExpiredKey`.
        """
        out = []
        for handler in self.pool_handlers(pool):
            try:
                out.append((handler, handler.current_intake_key(now).key))
            except ExpiredKey:
                continue
        if not out:
            raise ExpiredKey(f"no handler of pool {pool} has a valid intake key")
        return tuple(out)

    # --- encoding --------------------------------------------------------------------

    def to_json(self) -> JsonObject:
        policy: JsonObject = dict(self.policy)
        onions: JsonObject = dict(self.onions)
        return {
            "type": DIRECTORY_TYPE,
            "version": self.version,
            "issued": self.issued,
            "organisation": self.organisation,
            "admins": self.admins.to_json(),
            "pools": [p.to_json() for p in self.pools],
            "handlers": [h.to_json() for h in self.handlers],
            "integration": self.integration.to_json(),
            "receipt_key": b64e(self.receipt_key.public_bytes_raw()),
            "onions": onions,
            "policy": policy,
        }

    def signed_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, value: JsonValue) -> Directory:
        obj = as_obj(value, "directory")
        fields = (
            "type",
            "version",
            "issued",
            "organisation",
            "admins",
            "pools",
            "handlers",
            "integration",
            "receipt_key",
            "onions",
            "policy",
        )
        require_keys(obj, fields, "directory")
        if obj["type"] != DIRECTORY_TYPE:
            raise MalformedInput("not a Safe Passage v1 directory")
        pools = get_list(obj, "pools")
        handlers = get_list(obj, "handlers")
        if len(pools) > MAX_POOLS or len(handlers) > MAX_HANDLERS:
            raise MalformedInput("directory has too many pools or handlers")
        return cls(
            version=get_int(obj, "version", minimum=1),
            issued=get_int(obj, "issued"),
            organisation=get_str(obj, "organisation"),
            admins=_keyset_from_json(get_obj(obj, "admins")),
            pools=tuple(Pool.from_json(p) for p in pools),
            handlers=tuple(Handler.from_json(h) for h in handlers),
            integration=IntegrationService.from_json(obj["integration"]),
            receipt_key=_verify_key(obj, "receipt_key"),
            onions=_onions_from_json(get_obj(obj, "onions")),
            policy=_policy_from_json(get_obj(obj, "policy")),
        )


#: How long a handler's intake key lives when the policy does not say (protocol 7.5).
DEFAULT_INTAKE_KEY_DAYS: Final = 7
INTAKE_KEY_DAYS_POLICY: Final = "intake_key_days"


def intake_key_days(directory: Directory) -> int:
    """The admins' rotation period for intake keys: policy ``intake_key_days`` (1..90), else 7.

    Handler clients make keys with this window and remind their handler to rotate; a server
    refuses to publish a newly listed key with a longer window (protocol 7.5).
    """
    value = directory.policy.get(INTAKE_KEY_DAYS_POLICY, DEFAULT_INTAKE_KEY_DAYS)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INTAKE_WINDOW // 86400:
        raise MalformedInput(f"policy {INTAKE_KEY_DAYS_POLICY} must be an integer from 1 to 90")
    return value


def _keyset_from_json(obj: JsonObject) -> KeySet:
    require_keys(obj, ("threshold", "keys"), "admins")
    keys = get_list(obj, "keys")
    parsed = tuple(VerifyKey(b64d(_str(k, "admin key"), length=32, what="admin key")) for k in keys)
    keyset = KeySet(parsed, get_int(obj, "threshold", minimum=1))
    # One encoding per key set: keys sorted by key id.
    if keyset.to_json() != obj:
        raise MalformedInput("admin keys must be sorted by key id")
    return keyset


def _onions_from_json(obj: JsonObject) -> dict[str, str]:
    out = {}
    for role, value in obj.items():
        if role not in _ONION_ROLES:
            raise MalformedInput("unknown onion role")
        out[role] = _match(_ONION, _str(value, "onion address"), "onion address")
    return out


def _policy_from_json(obj: JsonObject) -> dict[str, PolicyValue]:
    if len(obj) > MAX_POLICY:
        raise MalformedInput("too many policy entries")
    out: dict[str, PolicyValue] = {}
    for key, value in obj.items():
        _match(_POLICY_KEY, key, "policy key")
        if not isinstance(value, int | str | bool) or (isinstance(value, str) and len(value) > 256):
            raise MalformedInput("policy values must be integers, booleans or short strings")
        out[key] = value
    return out


def _printable(value: str, what: str) -> None:
    # Display text reaches admins' terminals in the diff they sign: an escape
    # sequence or a bidirectional override could hide a line (protocol 7.1).
    if any(unicodedata.category(ch)[0] == "C" for ch in value):
        raise MalformedInput(f"{what} contains control or format characters")


def _check_text(d: Directory) -> None:
    _printable(d.organisation, "organisation")
    for pool in d.pools:
        _printable(pool.title, "pool title")
    for handler in d.handlers:
        _printable(handler.name, "handler name")
    for value in d.policy.values():
        if isinstance(value, str):
            _printable(value, "policy value")


def _check_consistency(d: Directory) -> None:
    """Rules no signature can make true: unique names and keys, references that resolve."""
    _check_text(d)
    if d.version < 1:
        raise MalformedInput("directory version must be at least 1")
    pool_names = [p.name for p in d.pools]
    if not pool_names or len(set(pool_names)) != len(pool_names):
        raise MalformedInput("pool names must be distinct and there must be at least one pool")
    handler_ids = [h.handler_id for h in d.handlers]
    if len(set(handler_ids)) != len(handler_ids):
        raise MalformedInput("handler ids must be distinct")
    seen: set[KeyId] = set()
    all_keys: list[KeyId] = [k.key_id for k in d.admins.keys]
    all_keys += [d.receipt_key.key_id, d.integration.signing_key.key_id]
    all_keys += [k.key_id for k in d.integration.encryption_keys]
    for handler in d.handlers:
        unknown = set(handler.pools) - set(pool_names)
        if unknown:
            raise MalformedInput(f"handler {handler.handler_id} names an unknown pool")
        all_keys.append(handler.identity_key.key_id)
        all_keys += [k.key.key_id for k in handler.intake_keys]
        for intake in handler.intake_keys:
            intake.verify(handler.handler_id, handler.identity_key)
    for kid in all_keys:
        # A key serving two roles (or two handlers) would let one compromise
        # count twice, or route one handler's contacts to another.
        if kid in seen:
            raise MalformedInput("a key appears twice in the directory")
        seen.add(kid)


# --- signed directories -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedDirectory:
    directory: Directory
    signatures: tuple[Signature, ...]

    def to_json(self) -> JsonObject:
        return {"directory": self.directory.to_json(), "signatures": [s.to_json() for s in self.signatures]}

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    def with_signature(self, key: SigningKey) -> SignedDirectory:
        """Add ``key``'s signature (replacing an earlier one by the same key)."""
        sig = Signature.make(key, L.SIG_DIRECTORY, self.directory.signed_bytes())
        others = tuple(s for s in self.signatures if s.key_id != sig.key_id)
        return SignedDirectory(self.directory, tuple(sorted((*others, sig), key=lambda s: s.key_id.raw)))

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedDirectory:
        obj = as_obj(parse_canonical_json(data, max_len=MAX_DIRECTORY_BYTES), "signed directory")
        require_keys(obj, ("directory", "signatures"), "signed directory")
        return cls(Directory.from_json(obj["directory"]), signatures_from_json(obj["signatures"]))


def sign_directory(directory: Directory, keys: Iterable[SigningKey]) -> SignedDirectory:
    signed = SignedDirectory(directory, ())
    for key in keys:
        signed = signed.with_signature(key)
    return signed


def verify_genesis(signed: SignedDirectory, pinned: KeySet | str) -> Directory:
    """Trust the first directory a client sees: its admin set must be the pinned one.

    ``pinned`` is the key set itself or its fingerprint as published out of band.
    """
    d = signed.directory
    expected = pinned.fingerprint() if isinstance(pinned, KeySet) else pinned
    if d.admins.fingerprint() != expected:
        raise UntrustedRoot()
    d.admins.verify(L.SIG_DIRECTORY, d.signed_bytes(), signed.signatures)
    return d


def verify_successor(previous: Directory, signed: SignedDirectory) -> Directory:
    """Trust ``signed`` as the next directory after ``previous`` (which the caller already trusts)."""
    d = signed.directory
    if d.version <= previous.version:
        raise Rollback(f"version {d.version} is not newer than {previous.version}")
    message = d.signed_bytes()
    previous.admins.verify(L.SIG_DIRECTORY, message, signed.signatures)
    if d.admins != previous.admins:
        d.admins.verify(L.SIG_DIRECTORY, message, signed.signatures)
    return d


def verify_chain(pinned: KeySet | str, chain: Sequence[SignedDirectory]) -> Directory:
    """Verify a run of directories from the genesis one; return the last."""
    if not chain:
        raise MalformedInput("empty directory chain")
    current = verify_genesis(chain[0], pinned)
    for signed in chain[1:]:
        current = verify_successor(current, signed)
    return current
