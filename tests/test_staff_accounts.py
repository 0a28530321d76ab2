"""Staff accounts through the real staff API, on SQLite and PostgreSQL: enrolment, login,
lockout, replay, session expiry (with a moved clock, never sleeping), logout, password
change, revocation, and the audit trail they leave."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from safepassage.server.db.models import AuditLogEntry, StaffInvitation, StaffSession, StaffUser
from safepassage.server.periodic import running
from safepassage.server.staff import app as staff_app
from safepassage.server.staff.accounts import INVITATION_HOURS, LOCK_MAX, MAX_FAILED, lock_seconds
from safepassage.server.staff.app import housekeeping
from safepassage.server.staff.totp import Totp, counter_at

from .staff_deployment import PASSWORD, Account, StaffCalls, StaffDeployment


async def audit(sd: StaffDeployment) -> list[tuple[str, str, str | None, str]]:
    async with sd.dep.store.read() as session:
        rows = (await session.scalars(select(AuditLogEntry).order_by(AuditLogEntry.seq))).all()
    return [(r.actor, r.action, r.case_id or None, r.detail) for r in rows]


async def user(sd: StaffDeployment, name: str) -> StaffUser:
    async with sd.dep.store.read() as session:
        row = await session.get(StaffUser, name)
    assert row is not None
    return row


# --- enrolment -----------------------------------------------------------------------------------


async def test_enrol_confirm_login_me(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    code = await staff.invitation("alice", "handler")
    enrolled = await staff_calls.call("POST", "/staff/v1/enroll", json={"invitation": code, "password": PASSWORD})
    assert enrolled.status == 201
    assert enrolled.body["username"] == "alice"
    assert enrolled.body["role"] == "handler"
    assert f"secret={enrolled.body['totp_secret']}" in enrolled.body["otpauth_uri"]
    account = Account("alice", "handler", PASSWORD, enrolled.body["totp_secret"])
    assert (await user(staff, "alice")).state == "pending"
    # Pending: no login yet, whatever the credentials.
    pending = await staff_calls.login(account)
    assert pending.status == 401
    assert pending.body["error"]["code"] == "login_failed"
    confirmed = await staff_calls.call(
        "POST", "/staff/v1/enroll/confirm", json={"invitation": code, "code": account.code(staff.clock())}
    )
    assert confirmed.status == 200
    assert confirmed.body == {"username": "alice"}
    assert (await user(staff, "alice")).state == "active"
    # The invitation is used up.
    again = await staff_calls.call("POST", "/staff/v1/enroll", json={"invitation": code, "password": PASSWORD})
    assert again.status == 403
    assert again.body["error"]["code"] == "invitation_invalid"
    login = await staff_calls.login(account)
    assert login.status == 201
    now = int(staff.clock())
    assert login.body["role"] == "handler"
    assert login.body["idle_expires"] == now + 30 * 60
    assert login.body["absolute_expires"] == now + 12 * 3600
    me = await staff_calls.call("GET", "/staff/v1/me", account=account)
    assert me.status == 200
    assert me.body == {"username": "alice", "role": "handler"}
    actions = [(a, act) for a, act, _, _ in await audit(staff)]
    assert actions == [
        ("operator", "invite"),
        ("alice", "enroll"),
        ("alice", "login_failed"),
        ("alice", "enroll_confirmed"),
        ("alice", "login"),
    ]


async def test_invitation_expires(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    code = await staff.invitation("bob")
    staff.clock.advance(INVITATION_HOURS * 3600)
    late = await staff_calls.call("POST", "/staff/v1/enroll", json={"invitation": code, "password": PASSWORD})
    assert late.status == 403
    assert late.body["error"]["code"] == "invitation_invalid"
    counts = await housekeeping(staff.state)
    assert counts["expired_invitations"] == 1


async def test_enrol_again_before_confirming_starts_over(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    code = await staff.invitation("carol")
    first = await staff_calls.call("POST", "/staff/v1/enroll", json={"invitation": code, "password": PASSWORD})
    second = await staff_calls.call(
        "POST", "/staff/v1/enroll", json={"invitation": code, "password": "another long password"}
    )
    assert first.status == second.status == 201
    assert first.body["totp_secret"] != second.body["totp_secret"]
    # The first secret no longer confirms the enrolment; the second does.
    stale = Account("carol", "handler", PASSWORD, first.body["totp_secret"])
    refused = await staff_calls.call(
        "POST", "/staff/v1/enroll/confirm", json={"invitation": code, "code": stale.code(staff.clock())}
    )
    assert refused.status == 403
    assert refused.body["error"]["code"] == "code_invalid"
    fresh = Account("carol", "handler", "another long password", second.body["totp_secret"])
    ok = await staff_calls.call(
        "POST", "/staff/v1/enroll/confirm", json={"invitation": code, "code": fresh.code(staff.clock())}
    )
    assert ok.status == 200
    assert (await staff_calls.login(fresh)).status == 201


async def test_active_username_cannot_be_invited_or_enrolled_again(
    staff: StaffDeployment, staff_calls: StaffCalls
) -> None:
    admin = await staff_calls.enrol_and_login("root", "admin")
    await staff_calls.enrol("dave")
    taken = await staff_calls.call(
        "POST", "/staff/v1/admin/invitations", account=admin, json={"username": "dave", "role": "handler"}
    )
    assert taken.status == 409
    assert taken.body["error"]["code"] == "username_taken"


async def test_weak_password_refused_at_enrolment(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    code = await staff.invitation("erin")
    before = await staff.snapshot()
    weak = await staff_calls.call("POST", "/staff/v1/enroll", json={"invitation": code, "password": "short"})
    assert weak.status == 422
    assert weak.body["error"]["code"] == "weak_password"
    assert await staff.snapshot() == before


# --- login ----------------------------------------------------------------------------------------


async def test_every_login_failure_is_the_same_answer(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    account = await staff_calls.enrol("alice")
    now = staff.clock()
    answers = [
        await staff_calls.call(
            "POST", "/staff/v1/login", json={"username": "nobody", "password": PASSWORD, "code": "123456"}
        ),
        await staff_calls.call(
            "POST", "/staff/v1/login", json={"username": "Not A Name!", "password": PASSWORD, "code": "123456"}
        ),
        await staff_calls.login(account, password="wrong password here"),
        await staff_calls.call(
            "POST",
            "/staff/v1/login",
            json={"username": "alice", "password": PASSWORD, "code": Totp(account.secret).now(now + 300)},
        ),
    ]
    assert {a.status for a in answers} == {401}
    assert len({repr(a.body) for a in answers}) == 1
    assert "Retry-After" not in answers[0].headers
    # Every failure is recorded, but an unknown name never is (it may be a password typed in
    # the wrong field): such failures have the actor "-".
    events = await audit(staff)
    assert [(a, act) for a, act, _, _ in events if act == "login_failed"] == [("-", "login_failed")] * 2 + [
        ("alice", "login_failed")
    ] * 2
    assert "nobody" not in repr(events)
    assert "Not A Name" not in repr(events)


async def test_a_code_is_accepted_once(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    account = await staff_calls.enrol("alice")
    code = account.code(staff.clock())
    body = {"username": "alice", "password": PASSWORD, "code": code}
    first = await staff_calls.call("POST", "/staff/v1/login", json=body)
    assert first.status == 201
    replay = await staff_calls.call("POST", "/staff/v1/login", json=body)
    assert replay.status == 401
    assert replay.body["error"]["code"] == "login_failed"
    # Nor an older code still inside the window.
    older = Totp(account.secret).code_at(account.last - 1)
    stale = await staff_calls.call("POST", "/staff/v1/login", json={**body, "code": older})
    assert stale.status == 401
    # The stored counter is the one the code belonged to.
    assert (await user(staff, "alice")).totp_last_counter == account.last


async def test_lockout_backoff_and_its_end(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    account = await staff_calls.enrol("alice")
    for _ in range(MAX_FAILED):
        assert (await staff_calls.login(account, password="wrong password!", code="000000")).status == 401
    row = await user(staff, "alice")
    assert row.failed_logins == MAX_FAILED
    assert row.locked_until == int(staff.clock()) + 60
    # Locked: the right password and a fresh code still fail, and do not extend the lock.
    staff.clock.advance(30)
    locked = await staff_calls.login(account)
    assert locked.status == 401
    assert locked.body["error"]["code"] == "login_failed"
    assert (await user(staff, "alice")).locked_until == row.locked_until
    # After the lock: one more failure locks for twice as long.
    staff.clock.advance(31)
    assert (await staff_calls.login(account, password="wrong password!", code="000000")).status == 401
    row = await user(staff, "alice")
    assert row.locked_until == int(staff.clock()) + 120
    staff.clock.advance(121)
    ok = await staff_calls.login(account)
    assert ok.status == 201
    row = await user(staff, "alice")
    assert (row.failed_logins, row.locked_until) == (0, 0)
    details = [d for _, act, _, d in await audit(staff) if act == "login_failed"]
    assert details == ["", "", "", "", "locked 60 s", "while locked", "locked 120 s"]


def test_lock_schedule() -> None:
    assert [lock_seconds(n) for n in range(7)] == [0, 0, 0, 0, 0, 60, 120]
    assert lock_seconds(16) == LOCK_MAX
    assert lock_seconds(10_000) == LOCK_MAX


# --- sessions -------------------------------------------------------------------------------------


async def test_idle_expiry_and_refresh(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    account = await staff_calls.enrol_and_login("alice")
    for _ in range(3):
        staff.clock.advance(20 * 60)  # each request within 30 minutes keeps the session
        assert (await staff_calls.call("GET", "/staff/v1/me", account=account)).status == 200
    staff.clock.advance(30 * 60)
    expired = await staff_calls.call("GET", "/staff/v1/me", account=account)
    assert expired.status == 401
    assert expired.body["error"]["code"] == "unauthorized"
    async with staff.dep.store.read() as session:
        assert (await session.scalars(select(StaffSession))).all() == []


async def test_absolute_expiry(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    account = await staff_calls.enrol_and_login("alice")
    for _ in range(12 * 3 - 1):
        staff.clock.advance(20 * 60)
        assert (await staff_calls.call("GET", "/staff/v1/me", account=account)).status == 200
    staff.clock.advance(20 * 60)  # 12 hours after login, however active
    assert (await staff_calls.call("GET", "/staff/v1/me", account=account)).status == 401


async def test_housekeeping_deletes_expired_sessions(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    await staff_calls.enrol_and_login("alice")
    async with staff.dep.store.read() as session:
        [row] = (await session.scalars(select(StaffSession))).all()
    assert (await housekeeping(staff.state))["expired_sessions"] == 0
    staff.clock.advance(31 * 60)
    assert (await housekeeping(staff.state))["expired_sessions"] == 1
    if staff.dep.store.is_sqlite:
        # Gone from the file and from the write-ahead log (secure_delete, then a checkpoint).
        for path in Path(staff.dep.config.data_dir).glob("safepassage.db*"):
            assert row.token_hash not in path.read_bytes(), path.name


async def test_housekeeping_logs_no_activity(
    staff: StaffDeployment, staff_calls: StaffCalls, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expired-session counts every 30 s would date when each handler stopped working."""
    caplog.set_level(logging.DEBUG)
    await staff_calls.enrol_and_login("alice")
    staff.clock.advance(31 * 60)
    monkeypatch.setattr(staff_app, "HOUSEKEEPING_SECONDS", 0.01)
    async with running(staff_app._jobs(staff.state)):
        await asyncio.sleep(0.3)
    async with staff.dep.store.read() as session:
        assert (await session.scalars(select(StaffSession))).all() == []
    assert "expired" not in caplog.text


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not-base64!", "Bearer " + "A" * 43, "Bearer " + "A" * 44],
)
async def test_bad_tokens_are_one_answer(staff: StaffDeployment, staff_calls: StaffCalls, header: str) -> None:
    answer = await staff_calls.call("GET", "/staff/v1/me", headers={"Authorization": header} if header else {})
    assert answer.status == 401
    assert answer.body["error"]["code"] == "unauthorized"
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="staff"'


async def test_logout_ends_only_this_session(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    account = await staff_calls.enrol_and_login("alice")
    other = Account(account.username, account.role, account.password, account.secret, account.last)
    assert (await staff_calls.login(other)).status == 201
    out = await staff_calls.call("POST", "/staff/v1/logout", account=account)
    assert out.status == 204
    assert out.body == b""
    assert (await staff_calls.call("GET", "/staff/v1/me", account=account)).status == 401
    assert (await staff_calls.call("GET", "/staff/v1/me", account=other)).status == 200


async def test_password_change_ends_every_session(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    account = await staff_calls.enrol_and_login("alice")
    other = Account(account.username, account.role, account.password, account.secret, account.last)
    assert (await staff_calls.login(other)).status == 201
    other.last = account.last = max(account.last, other.last)
    new = "a brand new passphrase"
    weak = await staff_calls.call(
        "POST", "/staff/v1/password", account=account, json={"old": PASSWORD, "new": "short", "code": "000000"}
    )
    assert weak.status == 422
    wrong = await staff_calls.call(
        "POST",
        "/staff/v1/password",
        account=account,
        json={"old": "not my password", "new": new, "code": "000000"},
    )
    assert wrong.status == 403
    assert wrong.body["error"]["code"] == "reauth_failed"
    assert (await user(staff, "alice")).failed_logins == 1
    staff.clock.advance(30)
    changed = await staff_calls.call(
        "POST",
        "/staff/v1/password",
        account=account,
        json={"old": PASSWORD, "new": new, "code": account.code(staff.clock())},
    )
    assert changed.status == 204
    for session_holder in (account, other):
        assert (await staff_calls.call("GET", "/staff/v1/me", account=session_holder)).status == 401
    other.last = account.last
    staff.clock.advance(30)
    assert (await staff_calls.login(account)).status == 401
    staff.clock.advance(30)
    account.password = new
    assert (await staff_calls.login(account)).status == 201
    assert "password_change" in [act for _, act, _, _ in await audit(staff)]


async def test_revocation_ends_sessions_and_logins(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    admin = await staff_calls.enrol_and_login("root", "admin")
    alice = await staff_calls.enrol_and_login("alice")
    listed = await staff_calls.call("GET", "/staff/v1/admin/staff", account=admin)
    assert listed.body == {
        "staff": [
            {"username": "alice", "role": "handler", "state": "active"},
            {"username": "root", "role": "admin", "state": "active"},
        ]
    }
    revoked = await staff_calls.call("POST", "/staff/v1/admin/staff/alice/revoke", account=admin)
    assert revoked.status == 200
    assert revoked.body == {"username": "alice", "role": "handler", "state": "revoked"}
    assert (await staff_calls.call("GET", "/staff/v1/me", account=alice)).status == 401
    staff.clock.advance(30)
    assert (await staff_calls.login(alice)).status == 401
    again = await staff_calls.call("POST", "/staff/v1/admin/staff/alice/revoke", account=admin)
    assert again.status == 200
    missing = await staff_calls.call("POST", "/staff/v1/admin/staff/nobody/revoke", account=admin)
    assert missing.status == 404
    assert [(a, act, d) for a, act, _, d in await audit(staff) if act == "revoke"] == [("root", "revoke", "alice")]
    # An admin may re-invite a revoked account (a lost authenticator): a fresh start.
    invited = await staff_calls.call(
        "POST", "/staff/v1/admin/invitations", account=admin, json={"username": "alice", "role": "handler"}
    )
    assert invited.status == 201
    enrolled = await staff_calls.call(
        "POST", "/staff/v1/enroll", json={"invitation": invited.body["invitation"], "password": "new phone new pass"}
    )
    assert enrolled.status == 201
    assert (await user(staff, "alice")).state == "pending"


async def test_invitation_by_admin_is_stored_hashed(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    admin = await staff_calls.enrol_and_login("root", "admin")
    answer = await staff_calls.call(
        "POST", "/staff/v1/admin/invitations", account=admin, json={"username": "frank", "role": "admin"}
    )
    assert answer.status == 201
    assert answer.body["expires"] == int(staff.clock()) + INVITATION_HOURS * 3600
    async with staff.dep.store.read() as session:
        rows = (await session.scalars(select(StaffInvitation).where(StaffInvitation.username == "frank"))).all()
    assert len(rows) == 1
    assert answer.body["invitation"].encode() not in repr(await staff.snapshot()).encode()
    # A second invitation for the same name replaces the first.
    second = await staff_calls.call(
        "POST", "/staff/v1/admin/invitations", account=admin, json={"username": "frank", "role": "admin"}
    )
    stale = await staff_calls.call(
        "POST", "/staff/v1/enroll", json={"invitation": answer.body["invitation"], "password": PASSWORD}
    )
    assert stale.status == 403
    fresh = await staff_calls.call(
        "POST", "/staff/v1/enroll", json={"invitation": second.body["invitation"], "password": PASSWORD}
    )
    assert fresh.status == 201
    assert fresh.body["role"] == "admin"


async def test_confirm_needs_the_right_code_and_is_single_use(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    code = await staff.invitation("gina")
    enrolled = await staff_calls.call("POST", "/staff/v1/enroll", json={"invitation": code, "password": PASSWORD})
    account = Account("gina", "handler", PASSWORD, enrolled.body["totp_secret"])
    wrong = Totp(account.secret).code_at(counter_at(staff.clock()) + 5)
    bad = await staff_calls.call("POST", "/staff/v1/enroll/confirm", json={"invitation": code, "code": wrong})
    assert bad.status == 403
    assert bad.body["error"]["code"] == "code_invalid"
    good = account.code(staff.clock())
    ok = await staff_calls.call("POST", "/staff/v1/enroll/confirm", json={"invitation": code, "code": good})
    assert ok.status == 200
    again = await staff_calls.call(
        "POST", "/staff/v1/enroll/confirm", json={"invitation": code, "code": account.code(staff.clock())}
    )
    assert again.status == 403
    assert again.body["error"]["code"] == "invitation_invalid"
