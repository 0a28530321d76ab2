"""HTTP client for the public intake API (docs/openapi/public.yaml).

One :class:`IntakeClient` is one network identity: over Tor it uses its own
random SOCKS username and password, which Tor's default ``IsolateSOCKSAuth``
turns into a circuit of its own, so two clients (for example two applicants on
one machine, or a contact and a later mailbox check) do not share a circuit.
Host names are resolved by the proxy (``rdns``), never by the local resolver.

Everything the server says is untrusted input: bodies are bounded in size
before they are read into memory, then parsed strictly into typed answers by
:mod:`safepassage.client.wire`. A refusal becomes :class:`ServerRefused` with the server's
code and a cleaned message; a network failure becomes
:class:`ServerUnreachable`. No request or response body is ever logged: this
module does not log at all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from types import TracebackType
from typing import Final

import aiohttp
from yarl import URL

from safepassage.crypto.encoding import MAX_SAFE_INT, JsonObject, b64e, canonical_json
from safepassage.crypto.intake import MAILBOX_NONCE_LEN
from safepassage.crypto.keys import SIGNATURE_LEN, KeyId, VerifyKey

from .errors import (
    DirectConnectionRefused,
    ProtocolViolation,
    ResponseTooLarge,
    UsageError,
)
from .http import TIMEOUT, UPLOAD_TIMEOUT, USER_AGENT, HttpIdentity, network_errors
from .proxy import SocksProxy, is_loopback
from .wire import (
    ID,
    MAX_LOG_PAGE,
    ChunkAnswer,
    DirectoryAnswer,
    FollowUpAnswer,
    MailboxMessage,
    MailboxNonce,
    PowChallenge,
    SubmitAnswer,
    UploadToken,
    challenge_answer,
    chunk_answer,
    directory_answer,
    follow_up_answer,
    log_entries_answer,
    mailbox_messages_answer,
    mailbox_nonce_answer,
    parse_json,
    refusal,
    submit_answer,
)

MiB: Final = 1024 * 1024
API_PREFIX: Final = "/api/v1"

#: Response size limits. A directory response carries one signed directory
#: (at most 4 MiB, protocol 7.2) plus its head and proofs; a log page carries
#: signed directories too, so it gets the same bound and the caller asks for
#: fewer entries when a page would not fit. Mailbox fetches carry many sealed
#: replies (each at most about 1 MiB).
LIMIT_DIRECTORY: Final = 8 * MiB
LIMIT_LOG: Final = 8 * MiB
LIMIT_DEFAULT: Final = 2 * MiB
LIMIT_MAILBOX: Final = 64 * MiB
#: Error bodies are short JSON; anything longer is not read at all.
LIMIT_ERROR: Final = 16 * 1024

_POOL = re.compile(r"[a-z][a-z0-9-]{0,31}")
# A header value must not be able to carry CR/LF or anything invisible.
_HEADER_VALUE = re.compile(r"[!-~]{1,200}")


# --- addresses ----------------------------------------------------------------------------


def api_base(server: str) -> URL:
    """The API root for a server address given as ``http://<onion>`` (the client appends /api/v1)."""
    try:
        url = URL(server)
    except (ValueError, TypeError) as exc:
        raise UsageError("the server address is not a URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise UsageError("the server address must start with http:// or https:// and name a host")
    if url.user or url.password or url.query_string or url.fragment:
        raise UsageError("the server address must not contain a user name, query or fragment")
    return url.with_path(url.path.rstrip("/") + API_PREFIX)


# --- the client ------------------------------------------------------------------------------


def _check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not ID.fullmatch(value):
        raise UsageError(f"{what} must be 8 to 64 letters, digits, '-' or '_'")
    return value


def _check_header(value: str, what: str) -> str:
    if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
        raise UsageError(f"{what} has an invalid form")
    return value


class IntakeClient:
    """One network identity talking to one intake server. Use as ``async with``.

    ``socks`` is ``socks5://host:port`` of a Tor SOCKS port. Without it, only
    a loopback server is allowed (tests, a local demonstration) unless
    ``allow_direct`` says otherwise: a direct connection shows the applicant's
    address to the network and the server.
    """

    def __init__(self, server: str, *, socks: str | None = None, allow_direct: bool = False) -> None:
        self._base = api_base(server)
        self._proxy = SocksProxy.parse(socks) if socks is not None else None
        if self._proxy is None and not allow_direct and not is_loopback(self._base.host or ""):
            raise DirectConnectionRefused()
        self._http = HttpIdentity(self._proxy)

    def __repr__(self) -> str:
        via = f"socks {self._proxy.host}:{self._proxy.port}" if self._proxy else "direct"
        return f"IntakeClient({self._base.host}, {via})"

    @property
    def base(self) -> URL:
        """The API root this client talks to (its host is what :func:`check_onion` compares)."""
        return self._base

    async def __aenter__(self) -> IntakeClient:
        self._http.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._http.close()

    # --- transport ---------------------------------------------------------------------------

    def _url(self, *segments: str) -> URL:
        # Every segment is validated by the caller (ids, integers), so none needs quoting.
        return self._base.with_path("/".join((self._base.path, *segments)))

    async def _call(
        self,
        method: str,
        url: URL,
        *,
        expect: int,
        limit: int,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> JsonObject:
        if not self._http.is_open:
            raise RuntimeError("use IntakeClient as 'async with'")
        request_headers = {"Accept": "application/json", **(headers or {})}
        if content_type is not None:
            request_headers["Content-Type"] = content_type
        with network_errors():
            response = await self._http.send(
                method, url, params=params, headers=request_headers, data=body, timeout=timeout or TIMEOUT
            )
            async with response:
                status = response.status
                if 200 <= status < 300:
                    data = await _read_bounded(response, limit)
                    _check_json_response(response)
                elif status >= 400:
                    data = await _read_bounded(response, LIMIT_ERROR, error=True)
                else:
                    raise ProtocolViolation(f"unexpected HTTP status {status}")
                json_content = response.content_type == "application/json"
        if status >= 400:
            raise refusal(status, data if json_content else b"")
        if status != expect:
            raise ProtocolViolation(f"unexpected HTTP status {status}")
        return parse_json(data)

    # --- endpoints ---------------------------------------------------------------------------

    async def get_directory(self, known_size: int | None = None) -> DirectoryAnswer:
        params = {}
        if known_size is not None:
            if isinstance(known_size, bool) or not 0 <= known_size <= MAX_SAFE_INT:
                raise UsageError("known_size out of range")
            params["known_size"] = str(known_size)
        obj = await self._call("GET", self._url("directory"), expect=200, limit=LIMIT_DIRECTORY, params=params)
        return directory_answer(obj)

    async def get_log_entries(self, start: int, end: int) -> tuple[bytes, ...]:
        """Entries ``[start, end)`` as the canonical bytes of each signed directory."""
        if not 0 <= start < end <= MAX_SAFE_INT or end - start > MAX_LOG_PAGE:
            raise UsageError(f"ask for 1 to {MAX_LOG_PAGE} log entries")
        obj = await self._call(
            "GET",
            self._url("log", "entries"),
            expect=200,
            limit=LIMIT_LOG,
            params={"start": str(start), "end": str(end)},
        )
        return log_entries_answer(obj, end - start)

    async def post_cosignature(self, size: int, signature: JsonObject) -> int:
        """Send a witness cosignature over the head of ``size``; the number of cosignatures it now has."""
        body = canonical_json({"size": size, "signature": signature})
        obj = await self._call(
            "POST",
            self._url("log", "cosignatures"),
            expect=200,
            limit=LIMIT_ERROR,
            body=body,
            content_type="application/json",
        )
        count = obj.get("witness_signatures")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ProtocolViolation("malformed cosignature answer")
        return count

    async def new_challenge(self) -> PowChallenge:
        obj = await self._call("POST", self._url("pow"), expect=201, limit=LIMIT_DEFAULT)
        return challenge_answer(obj)

    async def submit_contact(
        self,
        envelope: bytes,
        pool: str,
        attachments: int,
        pow_header: str,
        mailbox_key: VerifyKey,
        signature: bytes,
    ) -> SubmitAnswer:
        if not _POOL.fullmatch(pool) or not 0 <= attachments <= 64 or len(signature) != SIGNATURE_LEN:
            raise UsageError("pool, attachment count or signature has an invalid form")
        obj = await self._call(
            "POST",
            self._url("contacts"),
            expect=201,
            limit=LIMIT_DEFAULT,
            params={"pool": pool, "attachments": str(attachments)},
            headers={
                "Safe-Passage-PoW": _check_header(pow_header, "proof-of-work header"),
                "Safe-Passage-Mailbox-Key": b64e(mailbox_key.public_bytes_raw()),
                "Safe-Passage-Signature": b64e(signature),
            },
            body=envelope,
            content_type="application/octet-stream",
            timeout=UPLOAD_TIMEOUT,
        )
        return submit_answer(obj)

    async def upload_chunk(
        self, contact_id: str, attachment: int, index: int, frame: bytes, token: UploadToken
    ) -> ChunkAnswer:
        if not 0 <= attachment < 64 or not 0 <= index < 2**20:
            raise UsageError("attachment or chunk index out of range")
        url = self._url(
            "contacts", _check_id(contact_id, "contact id"), "attachments", str(attachment), "chunks", str(index)
        )
        obj = await self._call(
            "PUT",
            url,
            expect=201,
            limit=LIMIT_DEFAULT,
            headers={"Safe-Passage-Upload": token.reveal()},
            body=frame,
            content_type="application/octet-stream",
            timeout=UPLOAD_TIMEOUT,
        )
        answer = chunk_answer(obj)
        if (answer.attachment, answer.index) != (attachment, index):
            raise ProtocolViolation("the server acknowledged a different chunk")
        return answer

    async def finalise(self, contact_id: str, token: UploadToken) -> SubmitAnswer:
        obj = await self._call(
            "POST",
            self._url("contacts", _check_id(contact_id, "contact id"), "finalise"),
            expect=200,
            limit=LIMIT_DEFAULT,
            headers={"Safe-Passage-Upload": token.reveal()},
        )
        answer = submit_answer(obj)
        if answer.status != "complete" or answer.contact_id != contact_id:
            raise ProtocolViolation("finalising did not complete this contact")
        return answer

    async def mailbox_challenge(self, mailbox_id: KeyId) -> MailboxNonce:
        obj = await self._call(
            "POST", self._url("mailboxes", mailbox_id.hex(), "challenge"), expect=201, limit=LIMIT_DEFAULT
        )
        return mailbox_nonce_answer(obj)

    async def mailbox_fetch(
        self, mailbox_id: KeyId, nonce: bytes, signature: bytes, *, after: int = 0
    ) -> tuple[MailboxMessage, ...]:
        """One page of replies with ``seq`` greater than ``after``, oldest first."""
        if len(nonce) != MAILBOX_NONCE_LEN or len(signature) != SIGNATURE_LEN:
            raise UsageError("mailbox nonce or signature has the wrong length")
        request = {"nonce": b64e(nonce), "signature": b64e(signature), "after": after}
        body = json.dumps(request, separators=(",", ":")).encode()
        obj = await self._call(
            "POST",
            self._url("mailboxes", mailbox_id.hex(), "fetch"),
            expect=200,
            limit=LIMIT_MAILBOX,
            body=body,
            content_type="application/json",
        )
        return mailbox_messages_answer(obj, LIMIT_MAILBOX)

    async def post_follow_up(
        self, mailbox_id: KeyId, contact_id: str, envelope: bytes, pow_header: str, signature: bytes
    ) -> FollowUpAnswer:
        if len(signature) != SIGNATURE_LEN:
            raise UsageError("signature has the wrong length")
        obj = await self._call(
            "POST",
            self._url("mailboxes", mailbox_id.hex(), "follow-ups"),
            expect=201,
            limit=LIMIT_DEFAULT,
            params={"contact": _check_id(contact_id, "contact id")},
            headers={
                "Safe-Passage-PoW": _check_header(pow_header, "proof-of-work header"),
                "Safe-Passage-Signature": b64e(signature),
            },
            body=envelope,
            content_type="application/octet-stream",
            timeout=UPLOAD_TIMEOUT,
        )
        return follow_up_answer(obj)


# --- response helpers ------------------------------------------------------------------------


async def _read_bounded(response: aiohttp.ClientResponse, limit: int, *, error: bool = False) -> bytes:
    """The body, refusing to hold more than ``limit`` bytes whatever Content-Length says."""
    declared = response.content_length
    if declared is not None and declared > limit:
        if error:
            return b""
        raise ResponseTooLarge(f"over {limit} bytes")
    parts: list[bytes] = []
    size = 0
    async for part in response.content.iter_chunked(64 * 1024):
        size += len(part)
        if size > limit:
            if error:
                return b""
            raise ResponseTooLarge(f"over {limit} bytes")
        parts.append(part)
    return b"".join(parts)


def _check_json_response(response: aiohttp.ClientResponse) -> None:
    if response.content_type != "application/json":
        raise ProtocolViolation("the answer is not JSON")
    if response.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise ProtocolViolation("the answer is compressed although this client asked for no compression")


__all__ = [
    "API_PREFIX",
    "LIMIT_DEFAULT",
    "LIMIT_DIRECTORY",
    "LIMIT_LOG",
    "LIMIT_MAILBOX",
    "MAX_LOG_PAGE",
    "USER_AGENT",
    "ChunkAnswer",
    "DirectoryAnswer",
    "FollowUpAnswer",
    "IntakeClient",
    "MailboxMessage",
    "MailboxNonce",
    "PowChallenge",
    "SocksProxy",
    "SubmitAnswer",
    "UploadToken",
    "api_base",
    "parse_json",
]
