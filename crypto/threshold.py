"""M-of-N signatures by a set of keys (docs/protocol.md, section 6.3).

Used for the organisation root (admins co-signing directories and tree heads)
and for witnesses co-signing tree heads. Only valid signatures by distinct
members count; a signature by a non-member or one that does not verify is not
counted (so an attacker cannot veto a document by appending garbage), and fewer
than M counted signatures raise :class:`BelowThreshold`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from . import labels as L
from .encoding import JsonObject, JsonValue, as_obj, b64e, canonical_json, get_bytes, get_str, require_keys
from .errors import BadSignature, BelowThreshold, MalformedInput
from .keys import SIGNATURE_LEN, KeyId, SigningKey, VerifyKey, fingerprint_of

MAX_SIGNERS: Final = 32


@dataclass(frozen=True, slots=True)
class Signature:
    """A signature and the key id of the key that made it."""

    key_id: KeyId
    signature: bytes

    def to_json(self) -> JsonObject:
        return {"key": self.key_id.hex(), "sig": b64e(self.signature)}

    @classmethod
    def from_json(cls, value: JsonValue) -> Signature:
        obj = as_obj(value, "signature")
        require_keys(obj, ("key", "sig"), "signature")
        return cls(KeyId.from_hex(get_str(obj, "key", max_len=64)), get_bytes(obj, "sig", length=SIGNATURE_LEN))

    @classmethod
    def make(cls, key: SigningKey, purpose: bytes, message: bytes) -> Signature:
        return cls(key.verify_key.key_id, key.sign(purpose, message))


def signatures_from_json(value: JsonValue) -> tuple[Signature, ...]:
    if not isinstance(value, list) or len(value) > MAX_SIGNERS:
        raise MalformedInput(f"signatures must be a list of at most {MAX_SIGNERS}")
    sigs = tuple(Signature.from_json(v) for v in value)
    if len({s.key_id for s in sigs}) != len(sigs):
        raise MalformedInput("two signatures by the same key")
    return sigs


@dataclass(frozen=True, slots=True)
class KeySet:
    """N public keys and a threshold M (1 <= M <= N)."""

    keys: tuple[VerifyKey, ...]
    threshold: int

    def __post_init__(self) -> None:
        # Keys are kept sorted by key id so that equal sets compare and encode equal.
        object.__setattr__(self, "keys", tuple(sorted(self.keys, key=lambda k: k.key_id.raw)))
        if not 1 <= len(self.keys) <= MAX_SIGNERS:
            raise MalformedInput(f"a key set needs 1 to {MAX_SIGNERS} keys")
        if len({k.key_id for k in self.keys}) != len(self.keys):
            raise MalformedInput("the same key appears twice in a key set")
        if not 1 <= self.threshold <= len(self.keys):
            raise MalformedInput("threshold must be between 1 and the number of keys")

    def member(self, key_id: KeyId) -> VerifyKey | None:
        return next((k for k in self.keys if k.key_id == key_id), None)

    def to_json(self) -> JsonObject:
        return {"threshold": self.threshold, "keys": [b64e(k.public_bytes_raw()) for k in self.keys]}

    def fingerprint(self) -> str:
        """The organisation fingerprint people compare out of band (ten groups of five digits)."""
        return fingerprint_of(L.ORG_FINGERPRINT, L.KEY_TYPE_KEYSET, canonical_json(self.to_json()))

    def verify(self, purpose: bytes, message: bytes, signatures: Sequence[Signature]) -> frozenset[KeyId]:
        """Return the ids of members whose signatures verify; raise unless there are at least M."""
        if len({s.key_id for s in signatures}) != len(signatures):
            raise MalformedInput("two signatures by the same key")
        valid: set[KeyId] = set()
        for sig in signatures:
            key = self.member(sig.key_id)
            if key is None:
                continue
            try:
                key.verify(purpose, message, sig.signature)
            except BadSignature:
                continue
            valid.add(sig.key_id)
        if len(valid) < self.threshold:
            raise BelowThreshold(f"{len(valid)} valid of {self.threshold} required")
        return frozenset(valid)
