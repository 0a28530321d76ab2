"""No staff secret at rest in the clear: a canary password and TOTP secret never appear in the
database (the SQLite file and its WAL, or any PostgreSQL row), the logs, or any answer but the
one enrolment answer that hands the secret to its owner."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest

from .staff_deployment import Account, StaffCalls, StaffDeployment

CANARY_PASSWORD = "canary-pw Ω-9d1e-staff"
CANARY_NEW = "canary-new-pw Ж-77aa"


def needles(*texts: str) -> list[bytes]:
    out = []
    for t in texts:
        out += [t.encode("utf-8"), t.encode("utf-16-le")]
    return out


async def test_canary_credentials_stay_secret(
    staff: StaffDeployment, staff_calls: StaffCalls, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    code = await staff.invitation("alice")
    enrolled = await staff_calls.call(
        "POST", "/staff/v1/enroll", json={"invitation": code, "password": CANARY_PASSWORD}
    )
    assert enrolled.status == 201
    handed_out = len(staff_calls.seen)  # the one answer allowed to carry the secret
    secret = enrolled.body["totp_secret"]
    account = Account("alice", "handler", CANARY_PASSWORD, secret)
    confirmed = await staff_calls.call(
        "POST", "/staff/v1/enroll/confirm", json={"invitation": code, "code": account.code(staff.clock())}
    )
    assert confirmed.status == 200
    assert (await staff_calls.login(account)).status == 201
    # Failures that carry the canaries where they do not belong.
    await staff_calls.login(account, password=CANARY_PASSWORD + "x", code="000000")
    await staff_calls.call(
        "POST", "/staff/v1/login", json={"username": CANARY_PASSWORD, "password": secret, "code": "000000"}
    )
    await staff_calls.call("POST", "/staff/v1/login", json={"username": "alice", "password": CANARY_PASSWORD})
    await staff_calls.call("POST", "/staff/v1/enroll", json={"invitation": secret, "password": CANARY_PASSWORD})
    await staff_calls.call(
        "POST", "/staff/v1/password", account=account, json={"old": CANARY_PASSWORD, "new": "short", "code": "1"}
    )
    changed = await staff_calls.call(
        "POST",
        "/staff/v1/password",
        account=account,
        json={"old": CANARY_PASSWORD, "new": CANARY_NEW, "code": staff_calls.fresh_code(account)},
    )
    assert changed.status == 204
    account.password = CANARY_NEW
    assert (await staff_calls.login(account)).status == 201
    await staff_calls.call("POST", "/staff/v1/logout", account=account)

    raw_secret = base64.b32decode(secret + "=" * (-len(secret) % 8))
    forbidden = [*needles(CANARY_PASSWORD, CANARY_NEW, secret, code), raw_secret]
    snapshot = repr(await staff.snapshot()).encode()
    for n in forbidden:
        assert n not in snapshot
    # The SQLite file and its write-ahead log (PostgreSQL: the rows above are what it holds).
    for path in Path(staff.dep.config.data_dir).rglob("*"):
        if path.is_file() and path.suffix != ".key":
            blob = path.read_bytes()
            assert not any(n in blob for n in forbidden), path
    for text in (CANARY_PASSWORD, CANARY_NEW, secret, code):
        assert text not in caplog.text
    answers = staff_calls.seen[: handed_out - 1] + staff_calls.seen[handed_out:]
    for body in answers:
        assert not any(n in body for n in forbidden), body
    # The session token is not stored either (only its hash).
    assert account.token is not None
    assert account.token.encode() not in snapshot
