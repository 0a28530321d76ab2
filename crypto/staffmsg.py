"""What handlers write: replies to applicants and escalation packages (sections 16 and 17).

A reply is sealed to the applicant's reply key and signed by the handler's
identity key, so the applicant's client can check against the verified
directory that a vetted handler wrote it (the server, which knows the reply
key, could otherwise forge one).

An escalation package carries the case to the integration service: the
original contact payload (still signed by the applicant's mailbox key), the
follow-ups and replies, and the handler's assessment, signed by the handler's
identity key and sealed to the integration service's keys. A second, outer
signature over the sealed envelope (the delivery) lets the integration service
check who delivered it without being able to read it: the service holds no
decryption key; the officer's vault does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from . import _primitives as P
from . import labels as L
from .directory import Directory
from .encoding import (
    JsonObject,
    as_obj,
    b64d,
    b64e,
    canonical_json,
    get_list,
    get_obj,
    get_str,
    parse_canonical_json,
    require_keys,
)
from .envelope import MAX_BODY
from .errors import BadSignature, MalformedInput
from .keys import SIGNATURE_LEN, SigningKey, VerifyKey

REPLY_TYPE: Final = "safepassage/reply/v1"
ESCALATION_TYPE: Final = "safepassage/escalation/v1"
DELIVERY_TYPE: Final = "safepassage/delivery/v1"
INTEGRATION_RECEIPT_TYPE: Final = "safepassage/integration-receipt/v1"
MAX_TEXT: Final = 1_000_000
MAX_PAYLOAD: Final = MAX_BODY
_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_HANDLER = re.compile(r"[a-z][a-z0-9-]{0,63}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise MalformedInput(f"{what} has an invalid form")
    return value


def _handler(value: str) -> str:
    if not isinstance(value, str) or not _HANDLER.fullmatch(value):
        raise MalformedInput("handler id has an invalid form")
    return value


def _signed(outer_key: str, body: JsonObject, purpose: bytes, key: SigningKey) -> bytes:
    payload = canonical_json({outer_key: body, "sig": b64e(key.sign(purpose, canonical_json(body)))})
    if len(payload) > MAX_PAYLOAD:
        raise MalformedInput(f"the text is too long: at most {MAX_PAYLOAD} bytes once encoded")
    return payload


def _open(plaintext: bytes, outer_key: str) -> tuple[JsonObject, bytes]:
    outer = as_obj(parse_canonical_json(plaintext, max_len=MAX_PAYLOAD), "payload")
    require_keys(outer, (outer_key, "sig"), "payload")
    return get_obj(outer, outer_key), b64d(get_str(outer, "sig"), length=SIGNATURE_LEN, what="signature")


def _handler_key(directory: Directory, handler_id: str) -> VerifyKey:
    try:
        return directory.handler(handler_id).identity_key
    except MalformedInput:
        raise BadSignature(f"handler {handler_id} is not in the verified directory") from None


# --- replies -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class Reply:
    """A handler's message to an applicant (section 16.1)."""

    contact_id: str
    handler_id: str
    message: str

    def __repr__(self) -> str:
        return f"Reply(contact={self.contact_id}, handler={self.handler_id})"

    def seal_payload(self, identity: SigningKey) -> bytes:
        _id(self.contact_id, "contact id")
        _handler(self.handler_id)
        if not isinstance(self.message, str) or len(self.message) > MAX_TEXT:
            raise MalformedInput("reply text too long")
        body: JsonObject = {
            "type": REPLY_TYPE,
            "contact": self.contact_id,
            "handler": self.handler_id,
            "message": self.message,
        }
        return _signed("reply", body, L.SIG_REPLY, identity)

    @classmethod
    def open_payload(cls, plaintext: bytes, directory: Directory) -> Reply:
        """Parse a reply and check that a handler of ``directory`` signed it."""
        body, sig = _open(plaintext, "reply")
        require_keys(body, ("type", "contact", "handler", "message"), "reply")
        if body["type"] != REPLY_TYPE:
            raise MalformedInput("not a v1 reply")
        reply = cls(
            _id(get_str(body, "contact", max_len=64), "contact id"),
            _handler(get_str(body, "handler", max_len=64)),
            get_str(body, "message", max_len=MAX_TEXT),
        )
        _handler_key(directory, reply.handler_id).verify(L.SIG_REPLY, canonical_json(body), sig)
        return reply


# --- escalation packages -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class Escalation:
    """A case, as the handler hands it to the integration service (section 17.1).

    ``contact`` is the applicant's original contact payload, byte for byte (so
    the officer can check the applicant's own signature); ``follow_ups`` are
    the applicant's follow-up payloads likewise; ``replies`` the handlers'
    reply payloads; ``assessment`` the handler's own words. Attachments travel
    as chunks of the escalation envelope, in the contact's order.
    """

    package_id: str
    contact_id: str
    handler_id: str
    pool: str
    day: str
    contact: bytes
    follow_ups: tuple[bytes, ...]
    replies: tuple[bytes, ...]
    assessment: str

    def __repr__(self) -> str:
        return f"Escalation({self.package_id}, case={self.contact_id}, handler={self.handler_id})"

    def _body(self) -> JsonObject:
        return {
            "type": ESCALATION_TYPE,
            "package": self.package_id,
            "case": self.contact_id,
            "handler": self.handler_id,
            "pool": self.pool,
            "day": self.day,
            "contact": b64e(self.contact),
            "follow_ups": [b64e(f) for f in self.follow_ups],
            "replies": [b64e(r) for r in self.replies],
            "assessment": self.assessment,
        }

    def seal_payload(self, identity: SigningKey) -> bytes:
        _id(self.package_id, "package id")
        _id(self.contact_id, "contact id")
        _handler(self.handler_id)
        if not _DAY.fullmatch(self.day) or len(self.assessment) > MAX_TEXT:
            raise MalformedInput("escalation fields have an invalid form")
        return _signed("escalation", self._body(), L.SIG_ESCALATION, identity)

    @classmethod
    def open_payload(cls, plaintext: bytes, directory: Directory) -> Escalation:
        body, sig = _open(plaintext, "escalation")
        fields = ("type", "package", "case", "handler", "pool", "day", "contact", "follow_ups", "replies", "assessment")
        require_keys(body, fields, "escalation")
        if body["type"] != ESCALATION_TYPE:
            raise MalformedInput("not a v1 escalation package")

        def blobs(key: str) -> tuple[bytes, ...]:
            return tuple(b64d(_str(v), what=key) for v in get_list(body, key))

        package = cls(
            package_id=_id(get_str(body, "package", max_len=64), "package id"),
            contact_id=_id(get_str(body, "case", max_len=64), "contact id"),
            handler_id=_handler(get_str(body, "handler", max_len=64)),
            pool=get_str(body, "pool", max_len=32),
            day=get_str(body, "day", max_len=10),
            contact=b64d(get_str(body, "contact", max_len=2 * MAX_PAYLOAD), what="contact"),
            follow_ups=blobs("follow_ups"),
            replies=blobs("replies"),
            assessment=get_str(body, "assessment", max_len=MAX_TEXT),
        )
        _handler_key(directory, package.handler_id).verify(L.SIG_ESCALATION, canonical_json(body), sig)
        return package


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise MalformedInput("expected a string")
    return value


# --- delivery to the integration service, and its receipt ---------------------------------------


def delivery_bytes(*, handler_id: str, package_id: str, envelope_hash: bytes, attachments: int) -> bytes:
    _handler(handler_id)
    _id(package_id, "package id")
    if len(envelope_hash) != 32 or not 0 <= attachments <= 64:
        raise MalformedInput("delivery fields have an invalid form")
    return canonical_json(
        {
            "type": DELIVERY_TYPE,
            "handler": handler_id,
            "package": package_id,
            "envelope": b64e(envelope_hash),
            "attachments": attachments,
        }
    )


def sign_delivery(
    identity: SigningKey, *, handler_id: str, package_id: str, envelope: bytes, attachments: int
) -> bytes:
    message = delivery_bytes(
        handler_id=handler_id, package_id=package_id, envelope_hash=P.sha256(envelope), attachments=attachments
    )
    return identity.sign(L.SIG_DELIVERY, message)


def verify_delivery(
    directory: Directory, signature: bytes, *, handler_id: str, package_id: str, envelope: bytes, attachments: int
) -> None:
    """Raise :class:`BadSignature` unless a handler in ``directory`` delivered exactly this envelope."""
    message = delivery_bytes(
        handler_id=handler_id, package_id=package_id, envelope_hash=P.sha256(envelope), attachments=attachments
    )
    _handler_key(directory, handler_id).verify(L.SIG_DELIVERY, message, signature)


@dataclass(frozen=True, slots=True)
class IntegrationReceipt:
    """The integration service's signed word that it stored a package (section 17.3)."""

    package_id: str
    envelope_hash: bytes
    day: str
    signature: bytes

    @staticmethod
    def signed_bytes(package_id: str, envelope_hash: bytes, day: str) -> bytes:
        _id(package_id, "package id")
        if len(envelope_hash) != 32 or not _DAY.fullmatch(day):
            raise MalformedInput("receipt fields have an invalid form")
        return canonical_json(
            {"type": INTEGRATION_RECEIPT_TYPE, "package": package_id, "envelope": b64e(envelope_hash), "day": day}
        )

    @classmethod
    def issue(cls, key: SigningKey, package_id: str, envelope_hash: bytes, day: str) -> IntegrationReceipt:
        sig = key.sign(L.SIG_INTEGRATION_RECEIPT, cls.signed_bytes(package_id, envelope_hash, day))
        return cls(package_id, envelope_hash, day, sig)

    def verify(self, directory: Directory, *, envelope_hash: bytes) -> None:
        directory.integration.signing_key.verify(
            L.SIG_INTEGRATION_RECEIPT, self.signed_bytes(self.package_id, self.envelope_hash, self.day), self.signature
        )
        if envelope_hash != self.envelope_hash:
            raise BadSignature("the receipt is for a different package")

    def to_json(self) -> JsonObject:
        return {
            "package": self.package_id,
            "envelope": b64e(self.envelope_hash),
            "day": self.day,
            "sig": b64e(self.signature),
        }

    @classmethod
    def from_json(cls, value: object) -> IntegrationReceipt:
        obj = as_obj(value, "receipt")  # type: ignore[arg-type]
        require_keys(obj, ("package", "envelope", "day", "sig"), "receipt")
        receipt = cls(
            _id(get_str(obj, "package", max_len=64), "package id"),
            b64d(get_str(obj, "envelope"), length=32, what="envelope hash"),
            get_str(obj, "day", max_len=10),
            b64d(get_str(obj, "sig"), length=SIGNATURE_LEN, what="signature"),
        )
        cls.signed_bytes(receipt.package_id, receipt.envelope_hash, receipt.day)
        return receipt


__all__ = [
    "Escalation",
    "IntegrationReceipt",
    "Reply",
    "delivery_bytes",
    "sign_delivery",
    "verify_delivery",
]
