"""HTTP client for the staff API (docs/openapi/staff.yaml), as the handler client uses it.

Every answer is parsed strictly into a typed value, like the intake client's
(:mod:`safepassage.client.wire`): exactly the documented members, each of its
documented form, else :class:`ProtocolViolation`. The staff server is trusted
with routing and nothing else: it never sees plaintext, and what it says about
a case (its pool, mailbox id, attachment count) is checked against what the
applicant signed inside the envelope (:mod:`safepassage.client.handler`).

The session token and the TOTP secret are capabilities: typed values whose
``repr`` never shows them, sent only in headers and bodies, never in an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from safepassage.crypto.encoding import MAX_SAFE_INT, JsonObject, JsonValue, b64d
from safepassage.crypto.envelope import BUCKETS, CHUNK_LEN, MAX_RECIPIENTS, envelope_length
from safepassage.crypto.errors import MalformedInput
from safepassage.crypto.staffmsg import IntegrationReceipt

from .errors import ProtocolViolation, UsageError
from .http import UPLOAD_TIMEOUT
from .transport import LIMIT_SMALL, Transport, expect_bytes, expect_json
from .wire import ID, _b64

STAFF_PREFIX: Final = "/staff/v1"
#: The largest envelope of any purpose: the biggest bucket sealed to the most recipients.
MAX_ENVELOPE: Final = envelope_length(len(BUCKETS) - 1, MAX_RECIPIENTS)
MAX_PAGE: Final = 200
#: GET /case-envelopes (protocol 18.5): at most 100 cases and 4 MiB of envelopes a page, or one largest envelope.
MAX_BULK_PAGE: Final = 100
BULK_PAGE_BYTES: Final = 4 * 1024 * 1024
#: The page in JSON: its envelopes in base64, and up to about 1 KB of metadata per case.
LIMIT_BULK_PAGE: Final = (BULK_PAGE_BYTES + MAX_ENVELOPE) * 4 // 3 + MAX_BULK_PAGE * 1024
MAX_AUDIT_PAGE: Final = 500
#: A full audit page: 500 entries of at most about 900 bytes each, with room to spare.
LIMIT_AUDIT_PAGE: Final = 1024 * 1024
CASE_STATUSES: Final = ("new", "reviewing", "replied", "escalated", "rejected", "closed")

_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_POOL = re.compile(r"[a-z][a-z0-9-]{0,31}")
_HANDLER = re.compile(r"[a-z][a-z0-9-]{0,63}")
_MAILBOX = re.compile(r"[0-9a-f]{64}")
_STATUS = re.compile(r"[a-z][a-z_-]{0,15}")
_ROLE = re.compile(r"[a-z][a-z_-]{0,31}")
_TOKEN = re.compile(r"[!-~]{16,512}")
_TOTP_SECRET = re.compile(r"[A-Z2-7]{16,128}=*")
_CURSOR = re.compile(r"[!-~]{1,256}")
_KIND = ("reply", "follow-up")


@dataclass(frozen=True, slots=True)
class AuditPage:
    """GET /admin/audit: entries as the server sent them (each checked later, one by one) and its head."""

    entries: tuple[JsonObject, ...]
    head_seq: int
    head_hash: bytes


def audit_page(obj: JsonObject, limit: int) -> AuditPage:
    """Only the page's shape is checked here: a malformed *entry* is evidence for the audit report, not a crash."""
    _members(obj, "audit page", ("entries", "head"))
    entries = []
    for value in _list(obj, "entries", limit):
        entry = _obj(value, "audit entry")
        _int(entry, "seq", minimum=1)
        entries.append(entry)
    head = _obj(obj["head"], "audit head")
    _members(head, "audit head", ("seq", "hash"))
    return AuditPage(tuple(entries), _int(head, "seq"), _b64(head, "hash", 32))


# --- secrets -----------------------------------------------------------------------------------


class SessionToken:
    """A staff session's bearer token. Never shown."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not _TOKEN.fullmatch(value):
            raise ProtocolViolation("the session token has an invalid form")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SessionToken) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "SessionToken(<secret>)"

    __str__ = __repr__


class TotpSecret:
    """The TOTP shared secret shown once at enrolment (base32). Never logged, never stored by this client."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not _TOTP_SECRET.fullmatch(value):
            raise ProtocolViolation("the TOTP secret has an invalid form")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "TotpSecret(<secret>)"

    __str__ = __repr__


# --- typed answers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class StaffEnrolment:
    """POST /enroll: the account the invitation made, and its TOTP secret (shown once)."""

    username: str
    role: str
    totp_secret: TotpSecret
    otpauth_uri: str

    def __repr__(self) -> str:
        return f"StaffEnrolment({self.username}, role={self.role})"


@dataclass(frozen=True, slots=True, repr=False)
class StaffSession:
    """POST /login: a bearer token and when it lapses (Unix seconds)."""

    token: SessionToken
    role: str
    idle_expires: int
    absolute_expires: int

    def __repr__(self) -> str:
        return f"StaffSession(role={self.role}, expires={self.absolute_expires})"


@dataclass(frozen=True, slots=True)
class CaseSummary:
    """One case as the staff server describes it: routing metadata only."""

    case_id: str
    pool: str
    day: str
    bucket: int
    status: str
    attachments: int
    server_sealed: bool
    mailbox: str
    follow_ups: int


@dataclass(frozen=True, slots=True)
class MessageRef:
    message_id: str
    kind: str
    day: str
    seq: int
    #: Sealed by the server (a follow-up from the web page without JavaScript).
    server_sealed: bool = False


@dataclass(frozen=True, slots=True)
class EscalationRef:
    package_id: str
    day: str


@dataclass(frozen=True, slots=True)
class CaseDetail:
    case: CaseSummary
    messages: tuple[MessageRef, ...]
    escalations: tuple[EscalationRef, ...]


@dataclass(frozen=True, slots=True)
class CasePage:
    cases: tuple[CaseSummary, ...]
    next: str | None


@dataclass(frozen=True, slots=True, repr=False)
class SealedCase:
    """A case as ``GET /cases/{id}`` describes it, and its sealed contact envelope, from one bulk page."""

    detail: CaseDetail
    envelope: bytes

    def __repr__(self) -> str:
        return f"SealedCase({self.detail.case.case_id})"


@dataclass(frozen=True, slots=True)
class EnvelopePage:
    """GET /case-envelopes: one page; ``total`` only on the first."""

    cases: tuple[SealedCase, ...]
    next: str | None
    total: int | None


@dataclass(frozen=True, slots=True)
class PostedReply:
    message_id: str
    seq: int


# --- strict parsing --------------------------------------------------------------------------------


def _members(obj: JsonObject, what: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    keys = set(obj)
    if not set(required) <= keys or not keys <= set(required) | set(optional):
        raise ProtocolViolation(f"{what} does not have the documented fields")


def _obj(value: JsonValue, what: str) -> JsonObject:
    if not isinstance(value, dict):
        raise ProtocolViolation(f"{what} must be an object")
    return value


def _str(obj: JsonObject, key: str, pattern: re.Pattern[str] | None = None, *, max_len: int = 256) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or len(value) > max_len or (pattern is not None and not pattern.fullmatch(value)):
        raise ProtocolViolation(f"field {key!r} has an invalid form")
    return value


def _int(obj: JsonObject, key: str, *, minimum: int = 0, maximum: int = 2**53 - 1) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ProtocolViolation(f"field {key!r} must be an integer in [{minimum}, {maximum}]")
    return value


def _bool(obj: JsonObject, key: str) -> bool:
    value = obj.get(key)
    if not isinstance(value, bool):
        raise ProtocolViolation(f"field {key!r} must be a boolean")
    return value


def _list(obj: JsonObject, key: str, max_items: int) -> list[JsonValue]:
    value = obj.get(key)
    if not isinstance(value, list) or len(value) > max_items:
        raise ProtocolViolation(f"field {key!r} must be a list of at most {max_items}")
    return value


_CASE_FIELDS: Final = ("id", "pool", "day", "bucket", "status", "attachments", "server_sealed", "mailbox", "follow_ups")


def _case_fields(obj: JsonObject) -> CaseSummary:
    return CaseSummary(
        case_id=_str(obj, "id", ID),
        pool=_str(obj, "pool", _POOL),
        day=_str(obj, "day", _DAY),
        bucket=_int(obj, "bucket", maximum=len(BUCKETS) - 1),
        status=_str(obj, "status", _STATUS),
        attachments=_int(obj, "attachments", maximum=64),
        server_sealed=_bool(obj, "server_sealed"),
        mailbox=_str(obj, "mailbox", _MAILBOX),
        follow_ups=_int(obj, "follow_ups", maximum=1_000_000),
    )


def case_summary(value: JsonValue) -> CaseSummary:
    obj = _obj(value, "case")
    _members(obj, "case", _CASE_FIELDS)
    return _case_fields(obj)


def case_page(obj: JsonObject) -> CasePage:
    _members(obj, "case list", ("cases", "next"))
    cases = tuple(case_summary(c) for c in _list(obj, "cases", MAX_PAGE))
    cursor = obj.get("next")
    if cursor is not None and (not isinstance(cursor, str) or not _CURSOR.fullmatch(cursor)):
        raise ProtocolViolation("field 'next' has an invalid form")
    return CasePage(cases, cursor)


def envelope_page(obj: JsonObject, *, first: bool) -> EnvelopePage:
    """A bulk page (protocol 18.5); every envelope at most :data:`MAX_ENVELOPE`, no case twice."""
    _members(obj, "envelope page", ("cases", "next", "total"))
    cases = []
    for value in _list(obj, "cases", MAX_BULK_PAGE):
        item = _obj(value, "case")
        _members(item, "case", (*_CASE_FIELDS, "messages", "escalations", "envelope"))
        text = _str(item, "envelope", max_len=(MAX_ENVELOPE * 4 + 2) // 3)
        try:
            envelope = b64d(text, what="field 'envelope'")
        except MalformedInput:
            raise ProtocolViolation("field 'envelope' is not valid base64url") from None
        cases.append(SealedCase(_detail_fields(item), envelope))
    if len({c.detail.case.case_id for c in cases}) != len(cases):
        raise ProtocolViolation("a case is on the page twice")
    cursor = obj.get("next")
    if cursor is not None and (not isinstance(cursor, str) or not _CURSOR.fullmatch(cursor)):
        raise ProtocolViolation("field 'next' has an invalid form")
    if cursor is not None and not cases:
        raise ProtocolViolation("an empty page that is not the last")
    total = None if obj.get("total") is None else _int(obj, "total", maximum=MAX_SAFE_INT)
    if (total is None) == first:
        raise ProtocolViolation("field 'total' belongs to the first page only")
    return EnvelopePage(tuple(cases), cursor, total)


def case_detail(obj: JsonObject) -> CaseDetail:
    _members(obj, "case", (*_CASE_FIELDS, "messages", "escalations"))
    return _detail_fields(obj)


def _detail_fields(obj: JsonObject) -> CaseDetail:
    messages = []
    for item in _list(obj, "messages", 100_000):
        m = _obj(item, "message")
        _members(m, "message", ("id", "kind", "day", "seq", "server_sealed"))
        kind = _str(m, "kind")
        if kind not in _KIND:
            raise ProtocolViolation("field 'kind' must be 'reply' or 'follow-up'")
        messages.append(
            MessageRef(_str(m, "id", ID), kind, _str(m, "day", _DAY), _int(m, "seq"), _bool(m, "server_sealed"))
        )
    escalations = []
    for item in _list(obj, "escalations", 10_000):
        e = _obj(item, "escalation")
        _members(e, "escalation", ("package", "day"))
        escalations.append(EscalationRef(_str(e, "package", ID), _str(e, "day", _DAY)))
    if len({m.message_id for m in messages}) != len(messages):
        raise ProtocolViolation("a message is listed twice")
    ordered = tuple(sorted(messages, key=lambda m: m.seq))
    return CaseDetail(_case_fields(obj), ordered, tuple(escalations))


def enrolment_answer(obj: JsonObject) -> StaffEnrolment:
    _members(obj, "enrolment answer", ("username", "role", "totp_secret", "otpauth_uri"))
    uri = _str(obj, "otpauth_uri", max_len=1024)
    if not uri.startswith("otpauth://totp/") or any(not ("!" <= ch <= "~") for ch in uri):
        raise ProtocolViolation("field 'otpauth_uri' is not an otpauth://totp/ URI")
    secret = TotpSecret(_str(obj, "totp_secret", max_len=256))
    if f"secret={secret.reveal()}" not in uri:
        raise ProtocolViolation("the otpauth URI does not carry the TOTP secret it came with")
    return StaffEnrolment(_str(obj, "username", _HANDLER), _str(obj, "role", _ROLE), secret, uri)


def session_answer(obj: JsonObject) -> StaffSession:
    _members(obj, "login answer", ("token", "role", "idle_expires", "absolute_expires"))
    return StaffSession(
        SessionToken(_str(obj, "token", max_len=512)),
        _str(obj, "role", _ROLE),
        _int(obj, "idle_expires"),
        _int(obj, "absolute_expires"),
    )


def _check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not ID.fullmatch(value):
        raise UsageError(f"{what} must be 8 to 64 letters, digits, '-' or '_'")
    return value


# --- the client --------------------------------------------------------------------------------------


class StaffClient(Transport):
    """The staff API over one network identity. Use as ``async with``.

    ``token`` (from :meth:`login`, or a saved session) is sent as a bearer
    token with every call that needs one.
    """

    def __init__(
        self,
        server: str,
        *,
        socks: str | None = None,
        allow_direct: bool = False,
        token: SessionToken | None = None,
    ) -> None:
        super().__init__(server, STAFF_PREFIX, socks=socks, allow_direct=allow_direct)
        self.token = token

    async def __aenter__(self) -> StaffClient:
        await super().__aenter__()
        return self

    def _auth(self) -> dict[str, str]:
        if self.token is None:
            raise UsageError("not logged in")
        return {"Authorization": f"Bearer {self.token.reveal()}"}

    def _case(self, case_id: str, *rest: str) -> tuple[str, ...]:
        return ("cases", _check_id(case_id, "case id"), *rest)

    # --- accounts ----------------------------------------------------------------------------

    async def enroll(self, invitation: str, password: str) -> StaffEnrolment:
        answer = await self.call(
            "POST",
            self.url("enroll"),
            expect=(201,),
            want="json",
            limit=LIMIT_SMALL,
            json_body={"invitation": invitation, "password": password},
        )
        return enrolment_answer(expect_json(answer))

    async def confirm_enrolment(self, invitation: str, code: str) -> str:
        answer = await self.call(
            "POST",
            self.url("enroll", "confirm"),
            expect=(200,),
            want="json",
            limit=LIMIT_SMALL,
            json_body={"invitation": invitation, "code": code},
        )
        obj = expect_json(answer)
        _members(obj, "confirmation answer", ("username",))
        return _str(obj, "username", _HANDLER)

    async def login(self, username: str, password: str, code: str) -> StaffSession:
        answer = await self.call(
            "POST",
            self.url("login"),
            expect=(201,),
            want="json",
            limit=LIMIT_SMALL,
            json_body={"username": username, "password": password, "code": code},
        )
        session = session_answer(expect_json(answer))
        self.token = session.token
        return session

    async def logout(self) -> None:
        await self.call("POST", self.url("logout"), expect=(204,), want="empty", limit=0, headers=self._auth())

    async def change_password(self, old: str, new: str, code: str) -> None:
        await self.call(
            "POST",
            self.url("password"),
            expect=(204,),
            want="empty",
            limit=0,
            headers=self._auth(),
            json_body={"old": old, "new": new, "code": code},
        )

    # --- cases -------------------------------------------------------------------------------

    async def list_cases(
        self, *, status: str | None = None, pool: str | None = None, after: str | None = None, limit: int = 100
    ) -> CasePage:
        params = {"limit": str(limit)}
        if not 1 <= limit <= MAX_PAGE:
            raise UsageError(f"ask for 1 to {MAX_PAGE} cases a page")
        if status is not None:
            if not _STATUS.fullmatch(status):
                raise UsageError("status has an invalid form")
            params["status"] = status
        if pool is not None:
            if not _POOL.fullmatch(pool):
                raise UsageError("pool has an invalid form")
            params["pool"] = pool
        if after is not None:
            params["after"] = after
        answer = await self.call(
            "GET", self.url("cases"), expect=(200,), want="json", limit=LIMIT_SMALL, params=params, headers=self._auth()
        )
        return case_page(expect_json(answer))

    async def get_case(self, case_id: str) -> CaseDetail:
        answer = await self.call(
            "GET",
            self.url(*self._case(case_id)),
            expect=(200,),
            want="json",
            limit=8 * LIMIT_SMALL,
            headers=self._auth(),
        )
        detail = case_detail(expect_json(answer))
        if detail.case.case_id != case_id:
            raise ProtocolViolation("the server answered with another case")
        return detail

    async def case_envelope(self, case_id: str) -> bytes:
        answer = await self.call(
            "GET",
            self.url(*self._case(case_id, "envelope")),
            expect=(200,),
            want="bytes",
            limit=MAX_ENVELOPE,
            headers=self._auth(),
            timeout=UPLOAD_TIMEOUT,
        )
        return expect_bytes(answer)

    async def case_envelopes(self, *, after: str | None = None, limit: int = MAX_BULK_PAGE) -> EnvelopePage:
        """One page of this handler's cases with their sealed contacts (protocol 18.5)."""
        if not 1 <= limit <= MAX_BULK_PAGE:
            raise UsageError(f"ask for 1 to {MAX_BULK_PAGE} cases a page")
        params = {"limit": str(limit)}
        if after is not None:
            params["after"] = after
        answer = await self.call(
            "GET",
            self.url("case-envelopes"),
            expect=(200,),
            want="json",
            limit=LIMIT_BULK_PAGE,
            params=params,
            headers=self._auth(),
            timeout=UPLOAD_TIMEOUT,
        )
        return envelope_page(expect_json(answer), first=after is None)

    async def attachment_chunk(self, case_id: str, attachment: int, index: int) -> bytes:
        if not 0 <= attachment < 64 or not 0 <= index < 2**20:
            raise UsageError("attachment or chunk index out of range")
        answer = await self.call(
            "GET",
            self.url(*self._case(case_id, "attachments", str(attachment), "chunks", str(index))),
            expect=(200,),
            want="bytes",
            limit=CHUNK_LEN,
            headers=self._auth(),
            timeout=UPLOAD_TIMEOUT,
        )
        return expect_bytes(answer)

    async def message_envelope(self, case_id: str, message_id: str) -> bytes:
        answer = await self.call(
            "GET",
            self.url(*self._case(case_id, "messages", _check_id(message_id, "message id"), "envelope")),
            expect=(200,),
            want="bytes",
            limit=MAX_ENVELOPE,
            headers=self._auth(),
            timeout=UPLOAD_TIMEOUT,
        )
        return expect_bytes(answer)

    async def set_status(self, case_id: str, status: str) -> None:
        if not _STATUS.fullmatch(status):
            raise UsageError("status has an invalid form")
        await self.call(
            "POST",
            self.url(*self._case(case_id, "status")),
            expect=(200, 204),
            want="empty",
            limit=LIMIT_SMALL,
            headers=self._auth(),
            json_body={"status": status},
        )

    async def post_reply(self, case_id: str, envelope: bytes) -> PostedReply:
        answer = await self.call(
            "POST",
            self.url(*self._case(case_id, "replies")),
            expect=(201,),
            want="json",
            limit=LIMIT_SMALL,
            headers=self._auth(),
            body=envelope,
            timeout=UPLOAD_TIMEOUT,
        )
        obj = expect_json(answer)
        _members(obj, "reply answer", ("message", "seq"))
        return PostedReply(_str(obj, "message", ID), _int(obj, "seq", minimum=1))

    async def handover(self, case_id: str, handler_id: str) -> None:
        if not _HANDLER.fullmatch(handler_id):
            raise UsageError("handler id has an invalid form")
        await self.call(
            "POST",
            self.url(*self._case(case_id, "handover")),
            expect=(200, 204),
            want="empty",
            limit=LIMIT_SMALL,
            headers=self._auth(),
            json_body={"handler": handler_id},
        )

    async def record_escalation(self, case_id: str, receipt: IntegrationReceipt) -> None:
        await self.call(
            "POST",
            self.url(*self._case(case_id, "escalations")),
            expect=(200, 201, 204),
            want="empty",
            limit=LIMIT_SMALL,
            headers=self._auth(),
            json_body={"receipt": receipt.to_json()},
        )

    # --- admin: the audit log --------------------------------------------------------------------

    async def audit_page(self, *, after: int = 0, limit: int = MAX_AUDIT_PAGE) -> AuditPage:
        """One page of the audit log after sequence number ``after`` (admins only); checked by client/audit.py."""
        if not 1 <= limit <= MAX_AUDIT_PAGE or not 0 <= after <= MAX_SAFE_INT:
            raise UsageError(f"ask for 1 to {MAX_AUDIT_PAGE} audit entries after a sequence number >= 0")
        answer = await self.call(
            "GET",
            self.url("admin", "audit"),
            expect=(200,),
            want="json",
            limit=LIMIT_AUDIT_PAGE,
            params={"after": str(after), "limit": str(limit)},
            headers=self._auth(),
        )
        return audit_page(expect_json(answer), limit)


__all__ = [
    "AuditPage",
    "audit_page",
    "CASE_STATUSES",
    "MAX_ENVELOPE",
    "STAFF_PREFIX",
    "CaseDetail",
    "CasePage",
    "CaseSummary",
    "EnvelopePage",
    "SealedCase",
    "envelope_page",
    "EscalationRef",
    "MessageRef",
    "PostedReply",
    "SessionToken",
    "StaffClient",
    "StaffEnrolment",
    "StaffSession",
    "TotpSecret",
    "case_detail",
    "case_page",
    "case_summary",
    "enrolment_answer",
    "session_answer",
]
