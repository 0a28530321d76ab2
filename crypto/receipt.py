"""Receipts the server signs when it has durably stored an envelope (docs/protocol.md, section 10).

A receipt names the contact id, the SHA-256 of the exact envelope bytes and the
arrival day, signed with the server's receipt key from the directory. It lets an
applicant (or a handler, for a reply) prove later that the server accepted that
envelope, and lets a client check that what it sent is what was stored.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Final

from . import labels as L
from .encoding import as_obj, b64d, b64e, canonical_json, get_bytes, get_str, parse_canonical_json, require_keys
from .errors import BadSignature, MalformedInput
from .keys import SIGNATURE_LEN, SigningKey, VerifyKey

RECEIPT_TYPE: Final = "safepassage/receipt/v1"
MAX_RECEIPT_BYTES: Final = 4096
_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _valid_day(day: str) -> bool:
    if not _DAY.fullmatch(day):
        return False
    try:
        return dt.date.fromisoformat(day).isoformat() == day
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Receipt:
    contact_id: str
    envelope_hash: bytes
    day: str
    signature: bytes

    @staticmethod
    def signed_bytes(contact_id: str, envelope_hash: bytes, day: str) -> bytes:
        if not _ID.fullmatch(contact_id) or not _valid_day(day) or len(envelope_hash) != 32:
            raise MalformedInput("receipt fields have an invalid form")
        return canonical_json(
            {"type": RECEIPT_TYPE, "contact": contact_id, "envelope": b64e(envelope_hash), "day": day}
        )

    @classmethod
    def issue(cls, key: SigningKey, contact_id: str, envelope_hash: bytes, day: str) -> Receipt:
        sig = key.sign(L.SIG_RECEIPT, cls.signed_bytes(contact_id, envelope_hash, day))
        return cls(contact_id, envelope_hash, day, sig)

    def verify(self, key: VerifyKey, *, envelope_hash: bytes) -> None:
        """Raise unless the server key signed this receipt for exactly this envelope."""
        key.verify(L.SIG_RECEIPT, self.signed_bytes(self.contact_id, self.envelope_hash, self.day), self.signature)
        if envelope_hash != self.envelope_hash:
            raise BadSignature("the receipt is for a different envelope")

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "contact": self.contact_id,
                "envelope": b64e(self.envelope_hash),
                "day": self.day,
                "sig": b64e(self.signature),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Receipt:
        obj = as_obj(parse_canonical_json(data, max_len=MAX_RECEIPT_BYTES), "receipt")
        require_keys(obj, ("contact", "envelope", "day", "sig"), "receipt")
        receipt = cls(
            get_str(obj, "contact", max_len=64),
            b64d(get_str(obj, "envelope"), length=32, what="envelope hash"),
            get_str(obj, "day", max_len=10),
            get_bytes(obj, "sig", length=SIGNATURE_LEN),
        )
        cls.signed_bytes(receipt.contact_id, receipt.envelope_hash, receipt.day)
        return receipt
