"""The intake API's answers as typed values (docs/openapi/public.yaml, components).

Everything here reads what a server sent and trusts none of it: JSON is parsed
strictly (no duplicate keys, no floats or non-finite numbers, integers of at
most 16 digits that survive a double, no lone surrogates, bounded nesting),
every object must have exactly the documented members, and every value is
checked for its documented form before it becomes a typed answer. A failure is
:class:`ProtocolViolation`; a refusal body becomes :class:`ServerRefused` with
its message cleaned for a terminal.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final, Literal

from safepassage.crypto.directory import MAX_DIRECTORY_BYTES
from safepassage.crypto.encoding import MAX_SAFE_INT, JsonObject, JsonValue, b64d, canonical_json
from safepassage.crypto.errors import MalformedInput
from safepassage.crypto.intake import MAILBOX_NONCE_LEN
from safepassage.crypto.pow import Challenge
from safepassage.crypto.receipt import Receipt
from safepassage.crypto.translog import HASH_LEN, MAX_PROOF_LEN, SignedTreeHead

from .errors import ProtocolViolation, ServerRefused

MAX_LOG_PAGE: Final = 64
ID: Final = re.compile(r"[A-Za-z0-9_-]{8,64}")
_POOL: Final = re.compile(r"[a-z][a-z0-9-]{0,31}")
#: A mailbox page lists at most this many contacts (protocol 15.4).
MAILBOX_CONTACTS_MAX: Final = 50
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_HEX_HASH = re.compile(r"[0-9a-f]{64}")
_CODE = re.compile(r"[a-z_]+")
_TOKEN = re.compile(r"[!-~]{1,64}")
_JSON_DEPTH: Final = 32


# --- typed answers ---------------------------------------------------------------------------


class UploadToken:
    """The capability to add chunks to one pending contact. Never shown."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not _TOKEN.fullmatch(value):
            raise ProtocolViolation("upload token has an invalid form")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "UploadToken(<secret>)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class DirectoryAnswer:
    """GET /directory: the signed directory exactly as logged, its head and proofs."""

    directory: bytes
    tree_head: SignedTreeHead
    index: int
    inclusion: tuple[bytes, ...]
    consistency: tuple[bytes, ...]

    def __repr__(self) -> str:
        return f"DirectoryAnswer(index={self.index}, size={self.tree_head.head.size})"


@dataclass(frozen=True, slots=True)
class PowChallenge:
    """POST /pow: the challenge and its wire text (what goes back in the PoW header)."""

    challenge: Challenge
    text: str


@dataclass(frozen=True, slots=True)
class SubmitAnswer:
    """POST /contacts and POST /contacts/{id}/finalise."""

    contact_id: str
    status: Literal["complete", "pending"]
    receipt: Receipt | None
    upload_token: UploadToken | None


@dataclass(frozen=True, slots=True)
class ChunkAnswer:
    attachment: int
    index: int
    final: bool


@dataclass(frozen=True, slots=True)
class MailboxNonce:
    nonce: bytes
    expires: int


@dataclass(frozen=True, slots=True, repr=False)
class MailboxMessage:
    """One sealed reply from a mailbox fetch."""

    message_id: str
    contact_id: str
    day: str
    seq: int
    envelope: bytes

    def __repr__(self) -> str:
        return f"MailboxMessage({self.message_id}, contact={self.contact_id}, {len(self.envelope)} bytes)"


@dataclass(frozen=True, slots=True)
class FollowUpAnswer:
    message_id: str
    receipt: Receipt


# --- strict JSON -----------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, JsonValue]]) -> JsonObject:
    out: JsonObject = {}
    for key, value in pairs:
        if key in out:
            raise ProtocolViolation("duplicate key in the answer's JSON")
        out[key] = value
    return out


def _bounded_int(text: str) -> int:
    # Checked on the digits, before int() builds a number from thousands of them.
    if len(text.lstrip("-")) > 16:
        raise ProtocolViolation("integer out of range in the answer's JSON")
    return int(text)


def _no_float(_text: str) -> JsonValue:
    raise ProtocolViolation("non-integer number in the answer's JSON")


def _check_json(value: JsonValue, depth: int) -> None:
    if depth > _JSON_DEPTH:
        raise ProtocolViolation("the answer's JSON is nested too deeply")
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise ProtocolViolation("integer out of range in the answer's JSON")
    elif isinstance(value, str):
        # Strict UTF-8 encoding refuses exactly the surrogate code points; both checks run in C,
        # where a loop over the characters cost seconds on a page of base64 envelopes.
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ProtocolViolation("lone surrogate in the answer's JSON") from None
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json(key, depth + 1)
            _check_json(item, depth + 1)


def parse_json(body: bytes) -> JsonObject:
    """Strictly parse a JSON object from the server (raises :class:`ProtocolViolation`)."""
    try:
        value: JsonValue = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_int=_bounded_int,
            parse_float=_no_float,
            parse_constant=_no_float,
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise ProtocolViolation("the answer is not valid JSON") from exc
    _check_json(value, 0)
    if not isinstance(value, dict):
        raise ProtocolViolation("the answer is not a JSON object")
    return value


def _members(obj: JsonObject, what: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    keys = set(obj)
    if not set(required) <= keys or not keys <= set(required) | set(optional):
        raise ProtocolViolation(f"{what} does not have the documented fields")


def _obj(value: JsonValue, what: str) -> JsonObject:
    if not isinstance(value, dict):
        raise ProtocolViolation(f"{what} must be an object")
    return value


def _int(obj: JsonObject, key: str, *, minimum: int = 0, maximum: int = MAX_SAFE_INT) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ProtocolViolation(f"field {key!r} must be an integer in [{minimum}, {maximum}]")
    return value


def _str(obj: JsonObject, key: str, pattern: re.Pattern[str] | None = None, *, max_len: int = 256) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or len(value) > max_len or (pattern is not None and not pattern.fullmatch(value)):
        raise ProtocolViolation(f"field {key!r} has an invalid form")
    return value


def _list(obj: JsonObject, key: str, max_items: int | None = None) -> list[JsonValue]:
    value = obj.get(key)
    if not isinstance(value, list) or (max_items is not None and len(value) > max_items):
        raise ProtocolViolation(f"field {key!r} must be a list" + (f" of at most {max_items}" if max_items else ""))
    return value


def _b64(obj: JsonObject, key: str, length: int | None = None, *, max_len: int = 256) -> bytes:
    text = _str(obj, key, max_len=max_len)
    try:
        return b64d(text, length=length, what=f"field {key!r}")
    except MalformedInput as exc:
        raise ProtocolViolation(f"field {key!r} is not valid base64url") from exc


def _proof(obj: JsonObject, key: str) -> tuple[bytes, ...]:
    # The contract writes proof hashes as 64 lowercase hex digits.
    items = _list(obj, key, MAX_PROOF_LEN)
    out = []
    for item in items:
        if not isinstance(item, str) or not _HEX_HASH.fullmatch(item):
            raise ProtocolViolation(f"field {key!r} must hold {HASH_LEN}-byte hashes in hex")
        out.append(bytes.fromhex(item))
    return tuple(out)


def _document(value: JsonValue, what: str, max_len: int) -> bytes:
    """The canonical bytes of a JSON document inside an answer (what signatures and the log cover)."""
    try:
        data = canonical_json(_obj(value, what))
    except MalformedInput as exc:
        raise ProtocolViolation(f"{what} cannot be encoded canonically") from exc
    if len(data) > max_len:
        raise ProtocolViolation(f"{what} is larger than {max_len} bytes")
    return data


def _receipt(value: JsonValue) -> Receipt:
    obj = _obj(value, "receipt")
    _members(obj, "receipt", ("contact", "day", "envelope", "sig"))
    _str(obj, "contact", ID)
    _str(obj, "day", _DAY)
    try:
        return Receipt.from_bytes(canonical_json(obj))
    except MalformedInput as exc:
        raise ProtocolViolation("the receipt has an invalid form") from exc


def submit_answer(obj: JsonObject) -> SubmitAnswer:
    _members(obj, "submission answer", ("contact", "status"), ("receipt", "upload_token"))
    contact_id = _str(obj, "contact", ID)
    status = obj.get("status")
    if status == "complete":
        if "receipt" not in obj or "upload_token" in obj:
            raise ProtocolViolation("a complete contact must come with a receipt and no upload token")
        return SubmitAnswer(contact_id, "complete", _receipt(obj["receipt"]), None)
    if status == "pending":
        if "upload_token" not in obj or "receipt" in obj:
            raise ProtocolViolation("a pending contact must come with an upload token and no receipt")
        return SubmitAnswer(contact_id, "pending", None, UploadToken(_str(obj, "upload_token", max_len=64)))
    raise ProtocolViolation("field 'status' must be 'complete' or 'pending'")


# --- answers, endpoint by endpoint ----------------------------------------------------------------


def directory_answer(obj: JsonObject) -> DirectoryAnswer:
    _members(obj, "directory answer", ("directory", "tree_head", "index", "inclusion", "consistency"))
    try:
        tree_head = SignedTreeHead.from_json(_obj(obj["tree_head"], "tree_head"))
    except MalformedInput as exc:
        raise ProtocolViolation(f"tree_head: {exc.detail}") from exc
    return DirectoryAnswer(
        directory=_document(obj["directory"], "directory", MAX_DIRECTORY_BYTES),
        tree_head=tree_head,
        index=_int(obj, "index"),
        inclusion=_proof(obj, "inclusion"),
        consistency=_proof(obj, "consistency"),
    )


def log_entries_answer(obj: JsonObject, count: int) -> tuple[bytes, ...]:
    """Exactly ``count`` entries, as the canonical bytes of each signed directory."""
    _members(obj, "log answer", ("entries",))
    entries = _list(obj, "entries", MAX_LOG_PAGE)
    if len(entries) != count:
        raise ProtocolViolation(f"asked for {count} log entries, got {len(entries)}")
    return tuple(_document(e, "log entry", MAX_DIRECTORY_BYTES) for e in entries)


def challenge_answer(obj: JsonObject) -> PowChallenge:
    _members(obj, "challenge answer", ("challenge", "difficulty", "memlimit_kib", "opslimit", "expires"))
    text = _str(obj, "challenge", max_len=200)
    try:
        challenge = Challenge.from_text(text)
    except MalformedInput as exc:
        raise ProtocolViolation("the proof-of-work challenge has an invalid form") from exc
    described = (_int(obj, "difficulty"), _int(obj, "memlimit_kib"), _int(obj, "opslimit"), _int(obj, "expires"))
    actual = (challenge.difficulty, challenge.memlimit_kib, challenge.opslimit, challenge.expires)
    if described != actual:
        raise ProtocolViolation("the challenge's fields do not match the challenge")
    return PowChallenge(challenge, text)


def chunk_answer(obj: JsonObject) -> ChunkAnswer:
    _members(obj, "chunk answer", ("attachment", "index", "final"))
    final = obj.get("final")
    if not isinstance(final, bool):
        raise ProtocolViolation("field 'final' must be a boolean")
    return ChunkAnswer(_int(obj, "attachment", maximum=63), _int(obj, "index"), final)


def mailbox_nonce_answer(obj: JsonObject) -> MailboxNonce:
    _members(obj, "mailbox challenge", ("nonce", "expires"))
    return MailboxNonce(_b64(obj, "nonce", MAILBOX_NONCE_LEN), _int(obj, "expires"))


def mailbox_messages_answer(obj: JsonObject, max_envelope_text: int) -> tuple[MailboxMessage, ...]:
    _members(obj, "mailbox answer", ("messages",), ("contacts",))
    # Which contacts a follow-up can continue (the browser's need; this client keeps them).
    for item in _list(obj, "contacts", MAILBOX_CONTACTS_MAX) if "contacts" in obj else ():
        contact = _obj(item, "contact")
        _members(contact, "contact", ("id", "pool"))
        _str(contact, "id", ID)
        _str(contact, "pool", _POOL)
    out = []
    for item in _list(obj, "messages"):
        message = _obj(item, "message")
        _members(message, "message", ("id", "contact", "day", "seq", "envelope"))
        out.append(
            MailboxMessage(
                message_id=_str(message, "id", ID),
                contact_id=_str(message, "contact", ID),
                day=_str(message, "day", _DAY),
                seq=_int(message, "seq"),
                envelope=_b64(message, "envelope", max_len=max_envelope_text),
            )
        )
    return tuple(out)


def follow_up_answer(obj: JsonObject) -> FollowUpAnswer:
    _members(obj, "follow-up answer", ("message", "receipt"))
    return FollowUpAnswer(_str(obj, "message", ID), _receipt(obj["receipt"]))


def refusal(status: int, data: bytes) -> ServerRefused:
    """``{"error": {"code", "message"}}`` if the server sent that, else the bare status."""
    try:
        obj = parse_json(data)
    except ProtocolViolation:
        return ServerRefused(status)
    error = obj.get("error")
    if set(obj) != {"error"} or not isinstance(error, dict) or set(error) != {"code", "message"}:
        return ServerRefused(status)
    code, message = error["code"], error["message"]
    if not isinstance(code, str) or not _CODE.fullmatch(code) or not isinstance(message, str):
        return ServerRefused(status)
    return ServerRefused(status, code, message[:4096])


__all__ = [
    "ID",
    "MAX_LOG_PAGE",
    "ChunkAnswer",
    "DirectoryAnswer",
    "FollowUpAnswer",
    "MailboxMessage",
    "MailboxNonce",
    "PowChallenge",
    "SubmitAnswer",
    "UploadToken",
    "challenge_answer",
    "chunk_answer",
    "directory_answer",
    "follow_up_answer",
    "log_entries_answer",
    "mailbox_messages_answer",
    "mailbox_nonce_answer",
    "parse_json",
    "refusal",
    "submit_answer",
]
