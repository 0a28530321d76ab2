"""Intake messages: contact and follow-up payloads, submission and mailbox signatures.

Implements docs/protocol.md, section 15. The payloads live inside sealed
envelopes (only handlers read them); the submission signature and mailbox
authentication are what the server itself checks, on public data only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from . import _primitives as P
from . import labels as L
from .encoding import (
    JsonObject,
    JsonValue,
    as_obj,
    b64d,
    b64e,
    canonical_json,
    get_int,
    get_list,
    get_obj,
    get_str,
    parse_canonical_json,
    require_keys,
)
from .envelope import CHUNK_DATA_MAX, MAX_BODY
from .errors import MalformedInput
from .keys import HYBRID_PUBLIC_LEN, SIGNATURE_LEN, HybridPublicKey, KeyId, SigningKey, VerifyKey

CONTACT_TYPE: Final = "safepassage/contact/v1"
FOLLOW_UP_TYPE: Final = "safepassage/follow-up/v1"
SUBMISSION_TYPE: Final = "safepassage/submission/v1"
MAILBOX_AUTH_TYPE: Final = "safepassage/mailbox-auth/v1"
MAX_MESSAGE_CHARS: Final = 1_000_000
MAX_FIELD_CHARS: Final = 2000
FIELD_NAMES: Final = ("role", "access", "offer", "urgency", "languages", "contact_window")
ORIGINS: Final = ("cli", "browser", "server-sealed")
MAX_ATTACHMENTS: Final = 64
MAILBOX_NONCE_LEN: Final = 32
_LANG = re.compile(r"[a-z]{2,3}")
_POOL = re.compile(r"[a-z][a-z0-9-]{0,31}")
_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")

Kind = Literal["contact", "follow-up"]
Origin = Literal["cli", "browser", "server-sealed"]


@dataclass(frozen=True, slots=True, repr=False)
class AttachmentInfo:
    """What the handler is told about one attachment; never visible to the server."""

    name: str
    media_type: str
    size: int
    chunks: int

    def __post_init__(self) -> None:
        # Checked on both sides: a contact the client seals must be one every
        # handler's client will open, or a first contact is silently lost.
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= 255:
            raise MalformedInput("attachment name must be 1 to 255 characters")
        if not isinstance(self.media_type, str) or len(self.media_type) > 127:
            raise MalformedInput("attachment media type must be at most 127 characters")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise MalformedInput("attachment size must be a non-negative integer")
        if self.chunks != attachment_chunk_count(self.size):
            raise MalformedInput("attachment chunk count does not match its size")

    def __repr__(self) -> str:
        # The name, type and size are sealed content: never in a repr.
        return f"AttachmentInfo({self.chunks} chunk(s))"

    def to_json(self) -> JsonObject:
        return {"name": self.name, "media_type": self.media_type, "size": self.size, "chunks": self.chunks}

    @classmethod
    def from_json(cls, value: JsonValue) -> AttachmentInfo:
        obj = as_obj(value, "attachment")
        require_keys(obj, ("name", "media_type", "size", "chunks"), "attachment")
        return cls(
            get_str(obj, "name", max_len=255),
            get_str(obj, "media_type", max_len=127),
            get_int(obj, "size"),
            get_int(obj, "chunks", minimum=1, maximum=2**20),
        )


def _attachments(value: JsonValue) -> tuple[AttachmentInfo, ...]:
    if not isinstance(value, list) or len(value) > MAX_ATTACHMENTS:
        raise MalformedInput(f"at most {MAX_ATTACHMENTS} attachments")
    return tuple(AttachmentInfo.from_json(v) for v in value)


def _fields(obj: JsonObject) -> dict[str, str]:
    out = {}
    for key, value in obj.items():
        if key not in FIELD_NAMES or not isinstance(value, str) or len(value) > MAX_FIELD_CHARS:
            raise MalformedInput("unknown contact field or field too long")
        out[key] = value
    return out


@dataclass(frozen=True, slots=True, repr=False)
class Contact:
    """The first message of an applicant (section 15.1)."""

    pool: str
    language: str
    message: str
    fields: Mapping[str, str]
    attachments: tuple[AttachmentInfo, ...]
    reply_key: HybridPublicKey
    mailbox_key: VerifyKey
    origin: Origin

    def __repr__(self) -> str:
        # The message and fields are the applicant's words: never in a repr.
        return f"Contact(pool={self.pool}, mailbox={self.mailbox_key.key_id.short()}, {len(self.attachments)} att.)"

    def to_json(self) -> JsonObject:
        fields: JsonObject = dict(self.fields)
        return {
            "type": CONTACT_TYPE,
            "pool": self.pool,
            "language": self.language,
            "message": self.message,
            "fields": fields,
            "attachments": [a.to_json() for a in self.attachments],
            "reply_key": b64e(self.reply_key.public_bytes_raw()),
            "mailbox_key": b64e(self.mailbox_key.public_bytes_raw()),
            "origin": self.origin,
        }

    def seal_payload(self, mailbox: SigningKey) -> bytes:
        """The signed plaintext that goes into the envelope."""
        if mailbox.verify_key != self.mailbox_key:
            raise MalformedInput("the contact must be signed by its own mailbox key")
        _check_contact(self)
        body = self.to_json()
        sig = mailbox.sign(L.SIG_CONTACT, canonical_json(body))
        return _fits(canonical_json({"contact": body, "sig": b64e(sig)}))

    @classmethod
    def open_payload(cls, plaintext: bytes) -> Contact:
        """Parse and verify a contact payload; raises unless the mailbox signature holds."""
        outer = as_obj(parse_canonical_json(plaintext, max_len=4 * 1024 * 1024), "contact payload")
        require_keys(outer, ("contact", "sig"), "contact payload")
        body = get_obj(outer, "contact")
        require_keys(
            body,
            ("type", "pool", "language", "message", "fields", "attachments", "reply_key", "mailbox_key", "origin"),
            "contact",
        )
        if body["type"] != CONTACT_TYPE:
            raise MalformedInput("not a v1 contact")
        origin = get_str(body, "origin")
        if origin not in ORIGINS:
            raise MalformedInput("unknown contact origin")
        contact = cls(
            pool=get_str(body, "pool", max_len=32),
            language=get_str(body, "language", max_len=3),
            message=get_str(body, "message", max_len=MAX_MESSAGE_CHARS),
            fields=_fields(get_obj(body, "fields")),
            attachments=_attachments(body["attachments"]),
            reply_key=HybridPublicKey(b64d(get_str(body, "reply_key", max_len=2000), length=HYBRID_PUBLIC_LEN)),
            mailbox_key=VerifyKey(b64d(get_str(body, "mailbox_key"), length=32)),
            origin=origin,  # type: ignore[arg-type]  # checked against ORIGINS above
        )
        _check_contact(contact)
        sig = b64d(get_str(outer, "sig"), length=SIGNATURE_LEN, what="contact signature")
        contact.mailbox_key.verify(L.SIG_CONTACT, canonical_json(body), sig)
        return contact


def _fits(payload: bytes) -> bytes:
    if len(payload) > MAX_BODY:
        raise MalformedInput(f"the message is too long: at most {MAX_BODY} bytes once encoded")
    return payload


def _check_contact(c: Contact) -> None:
    if not _POOL.fullmatch(c.pool) or not _LANG.fullmatch(c.language):
        raise MalformedInput("contact pool or language has an invalid form")
    if len(c.message) > MAX_MESSAGE_CHARS or len(c.attachments) > MAX_ATTACHMENTS:
        raise MalformedInput("contact message or attachment list too long")
    _fields(dict(c.fields))


@dataclass(frozen=True, slots=True, repr=False)
class FollowUp:
    """A later message from the same applicant (section 15.2)."""

    contact_id: str
    message: str
    mailbox_key: VerifyKey

    def __repr__(self) -> str:
        return f"FollowUp(contact={self.contact_id})"

    def to_json(self) -> JsonObject:
        return {
            "type": FOLLOW_UP_TYPE,
            "contact": self.contact_id,
            "message": self.message,
            "attachments": [],
            "mailbox_key": b64e(self.mailbox_key.public_bytes_raw()),
        }

    def seal_payload(self, mailbox: SigningKey) -> bytes:
        if mailbox.verify_key != self.mailbox_key:
            raise MalformedInput("the follow-up must be signed by its own mailbox key")
        if not _ID.fullmatch(self.contact_id) or len(self.message) > MAX_MESSAGE_CHARS:
            raise MalformedInput("follow-up fields have an invalid form")
        body = self.to_json()
        return _fits(
            canonical_json({"follow_up": body, "sig": b64e(mailbox.sign(L.SIG_FOLLOW_UP, canonical_json(body)))})
        )

    @classmethod
    def open_payload(cls, plaintext: bytes) -> FollowUp:
        outer = as_obj(parse_canonical_json(plaintext, max_len=4 * 1024 * 1024), "follow-up payload")
        require_keys(outer, ("follow_up", "sig"), "follow-up payload")
        body = get_obj(outer, "follow_up")
        require_keys(body, ("type", "contact", "message", "attachments", "mailbox_key"), "follow-up")
        if body["type"] != FOLLOW_UP_TYPE or get_list(body, "attachments"):
            raise MalformedInput("not a v1 follow-up")
        contact_id = get_str(body, "contact", max_len=64)
        if not _ID.fullmatch(contact_id):
            raise MalformedInput("follow-up contact id has an invalid form")
        follow_up = cls(
            contact_id,
            get_str(body, "message", max_len=MAX_MESSAGE_CHARS),
            VerifyKey(b64d(get_str(body, "mailbox_key"), length=32)),
        )
        sig = b64d(get_str(outer, "sig"), length=SIGNATURE_LEN, what="follow-up signature")
        follow_up.mailbox_key.verify(L.SIG_FOLLOW_UP, canonical_json(body), sig)
        return follow_up


# --- what the server checks -----------------------------------------------------------------


def submission_bytes(*, kind: Kind, pool: str, attachments: int, envelope_hash: bytes, contact_id: str) -> bytes:
    if kind not in ("contact", "follow-up") or not _POOL.fullmatch(pool) or len(envelope_hash) != 32:
        raise MalformedInput("submission fields have an invalid form")
    if not 0 <= attachments <= MAX_ATTACHMENTS or (contact_id and not _ID.fullmatch(contact_id)):
        raise MalformedInput("submission fields have an invalid form")
    # A new contact names no contact; a follow-up names the one it continues.
    if (kind == "contact") == bool(contact_id):
        raise MalformedInput("submission contact id does not fit its kind")
    return canonical_json(
        {
            "type": SUBMISSION_TYPE,
            "kind": kind,
            "pool": pool,
            "attachments": attachments,
            "envelope": b64e(envelope_hash),
            "contact": contact_id,
        }
    )


def sign_submission(
    mailbox: SigningKey, *, kind: Kind, pool: str, attachments: int, envelope: bytes, contact_id: str = ""
) -> bytes:
    message = submission_bytes(
        kind=kind, pool=pool, attachments=attachments, envelope_hash=P.sha256(envelope), contact_id=contact_id
    )
    return mailbox.sign(L.SIG_SUBMISSION, message)


def verify_submission(
    mailbox_key: VerifyKey,
    signature: bytes,
    *,
    kind: Kind,
    pool: str,
    attachments: int,
    envelope: bytes,
    contact_id: str = "",
) -> None:
    """Raise :class:`BadSignature` unless the mailbox key signed exactly this upload."""
    message = submission_bytes(
        kind=kind, pool=pool, attachments=attachments, envelope_hash=P.sha256(envelope), contact_id=contact_id
    )
    mailbox_key.verify(L.SIG_SUBMISSION, message, signature)


def mailbox_auth_bytes(mailbox_id: KeyId, nonce: bytes) -> bytes:
    if len(nonce) != MAILBOX_NONCE_LEN:
        raise MalformedInput(f"mailbox nonce must be {MAILBOX_NONCE_LEN} bytes")
    return canonical_json({"type": MAILBOX_AUTH_TYPE, "mailbox": mailbox_id.hex(), "nonce": b64e(nonce)})


def sign_mailbox_auth(mailbox: SigningKey, nonce: bytes) -> bytes:
    return mailbox.sign(L.SIG_MAILBOX_AUTH, mailbox_auth_bytes(mailbox.verify_key.key_id, nonce))


def verify_mailbox_auth(mailbox_key: VerifyKey, nonce: bytes, signature: bytes) -> None:
    mailbox_key.verify(L.SIG_MAILBOX_AUTH, mailbox_auth_bytes(mailbox_key.key_id, nonce), signature)


def attachment_chunk_count(size: int) -> int:
    """Chunks an attachment of ``size`` bytes takes (an empty one still has its final chunk)."""
    return max(1, -(-size // CHUNK_DATA_MAX))


__all__ = [
    "AttachmentInfo",
    "Contact",
    "FollowUp",
    "attachment_chunk_count",
    "mailbox_auth_bytes",
    "sign_mailbox_auth",
    "sign_submission",
    "submission_bytes",
    "verify_mailbox_auth",
    "verify_submission",
]
