"""Entries of the server's hash-chained, signed audit log (docs/protocol.md, section 20).

Each entry names the one before it by hash and is signed by the server's
receipt key under its own purpose (``SIG_AUDIT``), so an audit signature can
never pass as a receipt and a receipt never as an audit entry. Because every
entry commits to its predecessor, one good signature at the end vouches for
the whole history before it: deleting, editing or reordering an entry breaks
a hash or a link that the server cannot repair without the key, and even with
the key it cannot hide a shortened log from an admin who remembers a head.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Final

from . import _primitives as P
from . import labels as L
from .encoding import JsonObject, JsonValue, as_obj, b64e, canonical_json, get_bytes, get_int, get_str, require_keys
from .errors import MalformedInput
from .keys import SIGNATURE_LEN, KeyId, SigningKey, VerifyKey

AUDIT_TYPE: Final = "safepassage/audit-entry/v1"
HASH_LEN: Final = 32
#: The ``prev`` of the first entry: no entry hashes to all zeros.
GENESIS_PREV: Final = bytes(HASH_LEN)
MAX_ACTOR: Final = 64
MAX_CASE: Final = 32
MAX_DETAIL: Final = 200
_ACTION = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _day(text: str) -> str:
    try:
        if _DAY.fullmatch(text) and dt.date.fromisoformat(text).isoformat() == text:
            return text
    except ValueError:
        pass
    raise MalformedInput("audit day must be a date YYYY-MM-DD")


@dataclass(frozen=True, slots=True)
class AuditBody:
    """What an entry says and what the signature covers (everything but the signature)."""

    seq: int
    prev: bytes
    day: str
    actor: str
    action: str
    case: str
    detail: str
    key_id: KeyId

    def __post_init__(self) -> None:
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or not 1 <= self.seq <= 2**53 - 1:
            raise MalformedInput("audit seq must be a positive integer")
        if not isinstance(self.prev, bytes) or len(self.prev) != HASH_LEN:
            raise MalformedInput("audit prev must be a 32-byte hash")
        _day(self.day)
        if not isinstance(self.actor, str) or not 1 <= len(self.actor) <= MAX_ACTOR:
            raise MalformedInput("audit actor must be 1 to 64 characters")
        if not isinstance(self.action, str) or not _ACTION.fullmatch(self.action):
            raise MalformedInput("audit action has an invalid form")
        if not isinstance(self.case, str) or len(self.case) > MAX_CASE:
            raise MalformedInput("audit case must be at most 32 characters")
        if not isinstance(self.detail, str) or len(self.detail) > MAX_DETAIL:
            raise MalformedInput("audit detail must be at most 200 characters")

    def to_json(self) -> JsonObject:
        return {
            "type": AUDIT_TYPE,
            "seq": self.seq,
            "prev": b64e(self.prev),
            "day": self.day,
            "actor": self.actor,
            "action": self.action,
            "case": self.case,
            "detail": self.detail,
            "key": self.key_id.hex(),
        }

    def signed_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    def entry_hash(self) -> bytes:
        """``SHA-256(AUDIT_ENTRY_HASH || 0x00 || canonical body)``: the next entry's ``prev``."""
        return P.sha256(L.AUDIT_ENTRY_HASH, b"\x00", self.signed_bytes())


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A body, the hash the server recorded for it, and the server's signature."""

    body: AuditBody
    hash: bytes
    signature: bytes

    @classmethod
    def make(cls, key: SigningKey, body: AuditBody) -> AuditEntry:
        if body.key_id != key.verify_key.key_id:
            raise MalformedInput("audit body names another signing key")
        return cls(body, body.entry_hash(), key.sign(L.SIG_AUDIT, body.signed_bytes()))

    def verify(self, key: VerifyKey) -> None:
        """Raise :class:`BadSignature` unless ``key`` signed exactly this body."""
        key.verify(L.SIG_AUDIT, self.body.signed_bytes(), self.signature)

    def hash_matches(self) -> bool:
        # A comparison of public values, not a verification: callers report a mismatch, they do not trust on it.
        return self.body.entry_hash() == self.hash

    def to_json(self) -> JsonObject:
        out = self.body.to_json()
        del out["type"]
        out["hash"] = b64e(self.hash)
        out["sig"] = b64e(self.signature)
        return out

    @classmethod
    def from_json(cls, value: JsonValue) -> AuditEntry:
        obj = as_obj(value, "audit entry")
        require_keys(
            obj, ("seq", "prev", "day", "actor", "action", "case", "detail", "key", "hash", "sig"), "audit entry"
        )
        body = AuditBody(
            seq=get_int(obj, "seq", minimum=1),
            prev=get_bytes(obj, "prev", length=HASH_LEN),
            day=_day(get_str(obj, "day", max_len=10)),
            actor=get_str(obj, "actor", max_len=MAX_ACTOR),
            action=get_str(obj, "action", max_len=32),
            case=get_str(obj, "case", max_len=MAX_CASE),
            detail=get_str(obj, "detail", max_len=MAX_DETAIL),
            key_id=KeyId.from_hex(get_str(obj, "key", max_len=64)),
        )
        return cls(body, get_bytes(obj, "hash", length=HASH_LEN), get_bytes(obj, "sig", length=SIGNATURE_LEN))
