"""Staff accounts: invitation, enrolment, login, logout, password change (docs/protocol.md, 18).

Login has one answer for every failure: an unknown username, a wrong
password, a wrong or replayed code, a pending, revoked or locked account all
get the same 401 ``login_failed`` after the same Argon2id work, so the answer
tells a guesser nothing about which part was wrong or whether the account
exists. After ``MAX_FAILED`` consecutive failures an account is locked for a
minute, doubling with every further failure up to a day; during a lock every
attempt fails (right credentials included) without extending it. No
``Retry-After`` is sent: it would only exist for real accounts.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from aiohttp import web
from sqlalchemy import delete, update

from safepassage.crypto.encoding import JsonObject
from safepassage.crypto.errors import MalformedInput, SafePassageError
from safepassage.crypto.keys import SigningKey
from safepassage.crypto.passwords import Password, WeakPassword, WrongPassword, check_staff_password

from ..audit import append_audit
from ..db.engine import Store
from ..db.models import StaffInvitation, StaffSession, StaffUser
from ..errors import ApiError, from_crypto
from .auth import authenticate, new_token, secret_hash, unauthorized
from .body import USERNAME, read_json, string
from .context import Staff, staff_of
from .totp import InvalidCode, Totp, TotpSecret, new_secret

PREFIX: Final = "/staff/v1"
INVITATION_HOURS: Final = 72
MAX_FAILED: Final = 5
LOCK_BASE: Final = 60
LOCK_MAX: Final = 24 * 3600
#: Longest password accepted on the wire, in characters (the stored rule is at most 256).
MAX_PASSWORD_FIELD: Final = 1024
MAX_CODE_FIELD: Final = 16

routes = web.RouteTableDef()


class UsernameTaken(SafePassageError):
    """An active account already has that username."""

    hint = "Revoke the account first if it must be enrolled again (for a lost authenticator)."
    exit_code = 2


def lock_seconds(failures: int) -> int:
    """How long the ``failures``-th consecutive failure locks an account (0 below ``MAX_FAILED``)."""
    if failures < MAX_FAILED:
        return 0
    return min(LOCK_MAX, LOCK_BASE << min(failures - MAX_FAILED, 16))


async def create_invitation(
    store: Store, *, username: str, role: str, now: int, day: dt.date, actor: str, audit_key: SigningKey
) -> tuple[str, int]:
    """A one-time invitation for ``username``; returns ``(code, expires)``. Earlier unused ones lapse."""
    code, code_hash = new_token()
    expires = now + INVITATION_HOURS * 3600
    async with store.write() as session:
        user = await session.get(StaffUser, username)
        if user is not None and user.state == "active":
            raise UsernameTaken()
        await session.execute(
            delete(StaffInvitation).where(StaffInvitation.username == username, StaffInvitation.used.is_(False))
        )
        session.add(StaffInvitation(code_hash=code_hash, username=username, role=role, expires=expires, used=False))
        await append_audit(session, audit_key, day=day, actor=actor, action="invite", detail=f"{username} as {role}")
    return code, expires


def _invitation_invalid() -> ApiError:
    return ApiError(403, "invitation_invalid", "This invitation is unknown, expired or already used.")


def _login_failed() -> ApiError:
    return ApiError(401, "login_failed", "Login failed.")


def _password_field(body: JsonObject, name: str) -> str:
    return string(body, name, max_len=MAX_PASSWORD_FIELD)


def _new_password(raw: str) -> Password:
    try:
        return check_staff_password(raw)
    except WeakPassword as exc:
        raise from_crypto(exc, 422, "weak_password") from None


async def _valid_invitation(staff: Staff, code: str, now: int) -> StaffInvitation:
    async with staff.store.read() as session:
        invitation = await session.get(StaffInvitation, secret_hash(code))
    if invitation is None or invitation.used or invitation.expires <= now:
        raise _invitation_invalid()
    return invitation


# --- enrolment ------------------------------------------------------------------------------------


@routes.post(PREFIX + "/enroll", name="staff_enroll")
async def enroll(request: web.Request) -> web.Response:
    staff = staff_of(request)
    body = await read_json(request, ("invitation", "password"))
    code = string(body, "invitation", max_len=64)
    password = _new_password(_password_field(body, "password"))
    now = staff.now()
    invitation = await _valid_invitation(staff, code, now)
    username = invitation.username
    password_hash = await staff.hash_password(password)
    secret = new_secret()
    sealed = staff.totp_key.seal(username, secret)
    async with staff.store.write() as session:
        current = await session.get(StaffInvitation, invitation.code_hash)
        if current is None or current.used or current.expires <= now:
            raise _invitation_invalid()
        user = await session.get(StaffUser, username)
        if user is not None and user.state == "active":
            raise ApiError(409, "username_taken", UsernameTaken().message)
        if user is None:
            user = StaffUser(username=username)
            session.add(user)
        # Enrolling again with the invitation (an answer lost on the way) or after a
        # revocation starts over: a new password, a new secret, pending until confirmed.
        user.role = current.role
        user.password_hash = password_hash
        user.totp_secret = sealed
        user.totp_last_counter = 0
        user.failed_logins = 0
        user.locked_until = 0
        user.state = "pending"
        user.created_day = staff.today()
        await staff.audit(session, username, "enroll", detail=current.role)
    return web.json_response(
        {
            "username": username,
            "role": invitation.role,
            "totp_secret": secret,
            "otpauth_uri": Totp(secret).provisioning_uri(username),
        },
        status=201,
    )


@routes.post(PREFIX + "/enroll/confirm", name="staff_enroll_confirm")
async def confirm_enrolment(request: web.Request) -> web.Response:
    staff = staff_of(request)
    body = await read_json(request, ("invitation", "code"))
    code_text = string(body, "invitation", max_len=64)
    otp = string(body, "code", max_len=MAX_CODE_FIELD)
    now = staff.now()
    invitation = await _valid_invitation(staff, code_text, now)
    async with staff.store.read() as session:
        user = await session.get(StaffUser, invitation.username)
    if user is None or user.state != "pending" or user.role != invitation.role:
        raise _invitation_invalid()
    try:
        counter = Totp(_secret(staff, user)).verify(otp, now=now, last_counter=user.totp_last_counter)
    except InvalidCode:
        raise ApiError(403, "code_invalid", "The code is wrong or expired; use the next one.") from None
    async with staff.store.write() as session:
        # Single use, decided by the database: of two racing confirmations only one updates the row.
        used = await session.execute(
            update(StaffInvitation)
            .where(
                StaffInvitation.code_hash == invitation.code_hash,
                StaffInvitation.used.is_(False),
                StaffInvitation.expires > now,
            )
            .values(used=True)
        )
        activated = await session.execute(
            update(StaffUser)
            .where(
                StaffUser.username == user.username,
                StaffUser.state == "pending",
                StaffUser.totp_secret == user.totp_secret,
                StaffUser.totp_last_counter < counter,
            )
            .values(state="active", totp_last_counter=counter, failed_logins=0, locked_until=0)
        )
        if used.rowcount != 1 or activated.rowcount != 1:  # type: ignore[attr-defined]
            raise _invitation_invalid()
        await staff.audit(session, user.username, "enroll_confirmed")
    return web.json_response({"username": user.username})


def _secret(staff: Staff, user: StaffUser) -> TotpSecret:
    return TotpSecret(staff.totp_key.open(user.username, user.totp_secret))


# --- login ----------------------------------------------------------------------------------------


async def _second_factor(staff: Staff, user: StaffUser | None, password: str, code: str, now: int) -> int | None:
    """The TOTP counter if the password and code are right for an active, unlocked account; else None.

    The Argon2id verification runs in every case, against a dummy hash when
    there is no account, so every answer costs the same.
    """
    stored = user.password_hash if user is not None else staff.dummy_hash
    try:
        await staff.verify_password(stored, password)
        password_ok = user is not None
    except (WrongPassword, MalformedInput):
        password_ok = False
    if user is None or not password_ok or user.state != "active" or user.locked_until > now:
        return None
    try:
        return Totp(_secret(staff, user)).verify(code, now=now, last_counter=user.totp_last_counter)
    except InvalidCode:
        return None


#: The actor recorded for a failed login that named no account: never the name typed.
UNKNOWN_ACTOR: Final = "-"


async def _record_failure(staff: Staff, user: StaffUser | None, now: int) -> None:
    """Record a failed login (or re-authentication); count it and lock the account once there are too many.

    Every failure costs one write, whether the account exists, is locked or
    not, so not even the time of the answer tells a guesser which it was.
    """
    async with staff.store.write() as session:
        row = await session.get(StaffUser, user.username, with_for_update=True) if user is not None else None
        if row is None:
            # Never the name typed: it may be a password typed in the wrong field.
            await staff.audit(session, UNKNOWN_ACTOR, "login_failed", detail="no such account")
            return
        if row.locked_until > now:
            # Attempts during a lock neither count nor extend it.
            await staff.audit(session, row.username, "login_failed", detail="while locked")
            return
        row.failed_logins += 1
        lock = lock_seconds(row.failed_logins)
        if lock:
            row.locked_until = now + lock
        await staff.audit(session, row.username, "login_failed", detail=f"locked {lock} s" if lock else "")


@routes.post(PREFIX + "/login", name="staff_login")
async def login(request: web.Request) -> web.Response:
    staff = staff_of(request)
    body = await read_json(request, ("username", "password", "code"))
    name = string(body, "username", max_len=64)
    password = _password_field(body, "password")
    code = string(body, "code", max_len=MAX_CODE_FIELD)
    now = staff.now()
    user = None
    if USERNAME.fullmatch(name):
        async with staff.store.read() as session:
            user = await session.get(StaffUser, name)
    counter = await _second_factor(staff, user, password, code, now)
    if user is None or counter is None:
        await _record_failure(staff, user, now)
        raise _login_failed()
    token, token_hash = new_token()
    absolute = now + staff.session_seconds
    async with staff.store.write() as session:
        # The counter is raised in the same statement that checks it, so two
        # logins racing with one code cannot both succeed.
        accepted = await session.execute(
            update(StaffUser)
            .where(
                StaffUser.username == user.username,
                StaffUser.state == "active",
                StaffUser.totp_last_counter < counter,
                StaffUser.locked_until <= now,
            )
            .values(totp_last_counter=counter, failed_logins=0, locked_until=0)
        )
        if accepted.rowcount != 1:  # type: ignore[attr-defined]
            raise _login_failed()
        session.add(
            StaffSession(
                token_hash=token_hash, username=user.username, created=now, last_seen=now, absolute_expires=absolute
            )
        )
        await staff.audit(session, user.username, "login")
    return web.json_response(
        {
            "token": token,
            "role": user.role,
            "idle_expires": min(now + staff.idle_seconds, absolute),
            "absolute_expires": absolute,
        },
        status=201,
    )


@routes.post(PREFIX + "/logout", name="staff_logout")
async def logout(request: web.Request) -> web.Response:
    staff = staff_of(request)
    caller = await authenticate(request)
    async with staff.store.write() as session:
        await session.execute(delete(StaffSession).where(StaffSession.token_hash == caller.token_hash))
        await staff.audit(session, caller.username, "logout")
    return web.Response(status=204)


@routes.get(PREFIX + "/me", name="staff_me")
async def me(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    return web.json_response({"username": caller.username, "role": caller.role})


@routes.post(PREFIX + "/password", name="staff_password")
async def change_password(request: web.Request) -> web.Response:
    """A new password, proven by the old one and a fresh code; every session of the account ends."""
    staff = staff_of(request)
    caller = await authenticate(request)
    body = await read_json(request, ("old", "new", "code"))
    old = _password_field(body, "old")
    new = _new_password(_password_field(body, "new"))
    code = string(body, "code", max_len=MAX_CODE_FIELD)
    now = staff.now()
    async with staff.store.read() as session:
        user = await session.get(StaffUser, caller.username)
    if user is None:
        raise unauthorized()
    counter = await _second_factor(staff, user, old, code, now)
    refused = ApiError(403, "reauth_failed", "The current password or the code is wrong.")
    if counter is None:
        # A stolen session must not become a way to guess the password: this counts as a failed login.
        await _record_failure(staff, user, now)
        raise refused
    new_hash = await staff.hash_password(new)
    async with staff.store.write() as session:
        changed = await session.execute(
            update(StaffUser)
            .where(
                StaffUser.username == user.username,
                StaffUser.state == "active",
                StaffUser.totp_last_counter < counter,
            )
            .values(password_hash=new_hash, totp_last_counter=counter, failed_logins=0, locked_until=0)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            raise refused
        await session.execute(delete(StaffSession).where(StaffSession.username == user.username))
        await staff.audit(session, user.username, "password_change")
    return web.Response(status=204)
