"""Bearer sessions, and who may call what (docs/protocol.md, section 18.4).

A session token is 32 random bytes, sent as ``Authorization: Bearer <b64>``;
the database keeps only its SHA-256, so a copy of the database cannot be
replayed as a login. A session ends after ``staff_idle_minutes`` without a
request or ``staff_session_hours`` after login, whichever comes first, and is
deleted when it is found expired. ``last_seen`` is written at most once a
minute, so reading a case does not cost a database write every time.

Every refusal of a missing, malformed, unknown or expired token is the same
401: the answer does not say which, since a guesser could learn from it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy import delete, update

from safepassage.crypto.encoding import b64d, b64e
from safepassage.crypto.errors import MalformedInput

from ..db.models import StaffSession, StaffUser
from ..errors import ApiError
from .context import Staff, staff_of

TOKEN_BYTES = 32
#: ``last_seen`` is refreshed when it is at least this many seconds old.
LAST_SEEN_GRANULARITY = 60


@dataclass(frozen=True, slots=True)
class Caller:
    """The account behind a request's session."""

    username: str
    role: str
    token_hash: bytes

    def __repr__(self) -> str:
        return f"Caller({self.username}, {self.role})"


def new_token() -> tuple[str, bytes]:
    """A fresh session token and the hash to store for it."""
    raw = secrets.token_bytes(TOKEN_BYTES)
    return b64e(raw), hashlib.sha256(raw).digest()


def secret_hash(text: str) -> bytes:
    """What is stored of an invitation code: the SHA-256 of its bytes (the code itself never is)."""
    try:
        raw = b64d(text, length=TOKEN_BYTES)
    except MalformedInput:
        # Not a code we could have issued; hash the text so lookups simply miss.
        return hashlib.sha256(b"\x00" + text.encode("utf-8", "surrogatepass")).digest()
    return hashlib.sha256(raw).digest()


def unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", "Log in first: the session is missing, expired or ended.")


def _token_hash(request: web.Request) -> bytes:
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        raise unauthorized()
    try:
        raw = b64d(value.strip(), length=TOKEN_BYTES)
    except MalformedInput:
        raise unauthorized() from None
    return hashlib.sha256(raw).digest()


def session_expiries(staff: Staff, row: StaffSession) -> tuple[int, int]:
    """``(idle_expires, absolute_expires)`` in Unix seconds."""
    return row.last_seen + staff.idle_seconds, row.absolute_expires


async def authenticate(request: web.Request) -> Caller:
    staff = staff_of(request)
    token_hash = _token_hash(request)
    now = staff.now()
    async with staff.store.read() as session:
        row = await session.get(StaffSession, token_hash)
        user = await session.get(StaffUser, row.username) if row is not None else None
    if row is None or user is None:
        raise unauthorized()
    idle_expires, absolute_expires = session_expiries(staff, row)
    if now >= idle_expires or now >= absolute_expires or user.state != "active":
        async with staff.store.write() as session:
            await session.execute(delete(StaffSession).where(StaffSession.token_hash == token_hash))
        raise unauthorized()
    if now - row.last_seen >= LAST_SEEN_GRANULARITY:
        async with staff.store.write() as session:
            await session.execute(
                update(StaffSession)
                .where(StaffSession.token_hash == token_hash, StaffSession.last_seen < now)
                .values(last_seen=now)
            )
    return Caller(user.username, user.role, token_hash)


async def handler_caller(request: web.Request) -> Caller:
    """A handler listed in the current directory: the directory is the vetting decision."""
    caller = await authenticate(request)
    if caller.role != "handler":
        raise ApiError(403, "forbidden_role", "Only handlers may do this; admins never see cases.")
    directory = staff_of(request).published().directory
    if caller.username not in {h.handler_id for h in directory.handlers}:
        raise ApiError(403, "not_in_directory", "This handler is not in the current directory.")
    return caller


async def admin_caller(request: web.Request) -> Caller:
    caller = await authenticate(request)
    if caller.role != "admin":
        raise ApiError(403, "forbidden_role", "Only admins may do this.")
    return caller
