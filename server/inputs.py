"""Reading untrusted request input, shared by the intake and the integration service.

Every value a client sends is bounded before it is used: integers by digit
count and range, headers by their decoded length, bodies by reading at most
``limit + 1`` bytes whatever ``Content-Length`` claimed. A bad value raises
:class:`~.errors.ApiError`; nothing here logs or echoes what was sent.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler

from safepassage.crypto import envelope as E
from safepassage.crypto.encoding import b64d
from safepassage.crypto.errors import MalformedInput, SafePassageError

from .errors import ApiError, bad_request, from_crypto

OCTET = "application/octet-stream"
#: A body may take this long to start arriving, and after that must keep up
#: BODY_MIN_RATE bytes per second on average: Tor is slow, a slowloris is slower.
#: A client that falls behind is answered 408 and its connection freed.
BODY_GRACE_SECONDS = 10.0
BODY_MIN_RATE = 4 * 1024
#: Bytes of request bodies one process holds at once (received, not merely announced);
#: past it a body is refused with 503 instead of growing the process without bound.
BODY_BUDGET_BYTES = 96 * 1024 * 1024

T = TypeVar("T")


class BodyBudget:
    """Counts body bytes held by requests in progress (one process, one event loop: no lock needed)."""

    def __init__(self, limit: int = BODY_BUDGET_BYTES) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> None:
        if self.used + n > self.limit:
            raise ApiError(503, "busy", "The server is handling too many uploads; try again in a moment.")
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n


BODY_BUDGET = web.AppKey("body_budget", BodyBudget)
#: Body bytes the current request holds (aiohttp runs each request in a task of its own).
_HELD: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("body_bytes", default=None)


@web.middleware
async def body_budget_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bytes a request read stay counted until its answer is made (its handler still holds them)."""
    held = [0]
    token = _HELD.set(held)
    try:
        return await handler(request)
    finally:
        _HELD.reset(token)
        request.app[BODY_BUDGET].give(held[0])


class BodyPace:
    """The pacing rule for one request body: each read must end before the average rate since
    the grace period falls below BODY_MIN_RATE, or the request is answered 408."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.started = time.monotonic()
        self.size = 0

    async def read(self, pending: Awaitable[T]) -> T:
        """Await one read of the body (the caller adds what it got with :meth:`add`)."""
        wait = self.started + BODY_GRACE_SECONDS + (self.size + 1) / BODY_MIN_RATE - time.monotonic()
        try:
            async with asyncio.timeout(max(wait, 0.0)):
                return await pending
        except TimeoutError:
            raise ApiError(408, "body_too_slow", f"The {self.what} arrived too slowly; send it again.") from None

    def add(self, n: int) -> None:
        self.size += n


async def body_parts(request: web.Request, limit: int, what: str) -> AsyncIterator[bytes]:
    """The body in pieces, at most ``limit`` bytes, paced (408) and counted against the budget (503)."""
    budget, held = request.app.get(BODY_BUDGET), _HELD.get()
    pace = BodyPace(what)
    while True:
        part = await pace.read(request.content.readany())
        if not part:
            return
        pace.add(len(part))
        if pace.size > limit:
            raise ApiError(413, "payload_too_large", f"The body may be at most {limit} bytes.")
        if budget is not None and held is not None:
            budget.take(len(part))
            held[0] += len(part)
        yield part


def token_hash(token: str) -> bytes:
    """What is stored of an upload token: its SHA-256 (the token itself never is)."""
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


def round_up_hour(t: int) -> int:
    """Expiry times kept to the hour, so they do not date an upload to the second."""
    return -(-t // 3600) * 3600


def query_int(request: web.Request, name: str, *, default: int | None, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise bad_request(f"Query parameter {name!r} is required.")
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 16 or int(raw) > maximum:
        raise bad_request(f"Query parameter {name!r} must be an integer from 0 to {maximum}.")
    return int(raw)


def path_int(request: web.Request, name: str, maximum: int) -> int:
    raw = request.match_info[name]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9 or int(raw) > maximum:
        raise bad_request(f"Path segment {name!r} must be an integer from 0 to {maximum}.")
    return int(raw)


def header_bytes(request: web.Request, name: str, length: int) -> bytes:
    """The b64 header ``name`` decoded to exactly ``length`` bytes; 403 ``missing_*`` when absent."""
    raw = request.headers.get(name)
    if raw is None:
        raise ApiError(
            403, "missing_" + name.lower().removeprefix("safe-passage-").replace("-", "_"), f"{name} is required."
        )
    try:
        return b64d(raw.strip(), length=length, what=name)
    except MalformedInput:
        raise bad_request(f"{name} is malformed.") from None


async def read_binary(request: web.Request, limit: int, *, exact: int | None = None) -> bytes:
    if request.content_type != OCTET:
        raise ApiError(415, "unsupported_media_type", f"Send the body as {OCTET}.")
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"The body may be at most {limit} bytes.")
    # Read at most limit+1 bytes, in pieces, whatever Content-Length claimed.
    body = b"".join([part async for part in body_parts(request, limit, "body")])
    if exact is not None and len(body) != exact:
        raise bad_request(f"The body must be exactly {exact} bytes.", "malformed_chunk")
    return body


async def read_chunk_frame(request: web.Request, attachment: int, index: int) -> tuple[bytes, E.ChunkFrame]:
    """One attachment chunk frame (docs/protocol.md 5.1) whose fields match its URL."""
    frame = await read_binary(request, E.CHUNK_LEN, exact=E.CHUNK_LEN)
    try:
        fields = E.parse_chunk_frame(frame)
    except SafePassageError as exc:
        raise from_crypto(exc, 400, "malformed_chunk") from None
    if (fields.attachment, fields.index) != (attachment, index):
        raise bad_request("The chunk frame does not match its URL.", "malformed_chunk")
    return frame, fields


def check_chunk_order(last_index: int | None, last_final: bool, index: int) -> None:
    """Chunks of one attachment arrive in order, and none after the final one."""
    if last_final:
        raise ApiError(409, "attachment_complete", "This attachment already has its final chunk.")
    expected = 0 if last_index is None else last_index + 1
    if index != expected:
        raise ApiError(409, "chunk_out_of_order", f"Expected chunk {expected} of this attachment.")
