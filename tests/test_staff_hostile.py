"""Hostile input to the staff API: every request below is answered with its documented 4xx and
leaves every table exactly as it was (on SQLite and PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from safepassage.crypto import envelope as E
from safepassage.server.security import HEADERS
from safepassage.server.staff.cases import MAX_REPLY

from .helpers import hybrid_key
from .intake_calls import Calls
from .staff_deployment import PASSWORD, Account, StaffCalls, StaffDeployment, new_case

JSON = {"Content-Type": "application/json"}
OCTET = {"Content-Type": "application/octet-stream"}


@dataclass
class Setup:
    admin: Account
    alice: Account
    case: str
    applicant: Any


@pytest.fixture
async def setup(staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls) -> Setup:
    admin = await staff_calls.enrol_and_login("root", "admin")
    alice = await staff_calls.enrol_and_login("alice")
    case_id, applicant = await new_case(staff, public_calls, owner="alice")
    return Setup(admin, alice, case_id, applicant)


async def refused(
    sd: StaffDeployment, calls: StaffCalls, status: int, code: str, method: str, path: str, **kwargs: Any
) -> None:
    before = await sd.snapshot()
    answer = await calls.call(method, "/staff/v1" + path, **kwargs)
    assert answer.status == status, (path, answer.body)
    assert answer.body["error"]["code"] == code, (path, answer.body)
    for name, value in HEADERS.items():
        assert answer.headers.get(name) == value
    assert await sd.snapshot() == before, path


async def test_malformed_json_bodies(staff: StaffDeployment, staff_calls: StaffCalls, setup: Setup) -> None:
    deep = b"[" * 3000 + b"]" * 3000
    bodies = [
        b"{not json",
        b"",
        b"[1, 2]",
        b'"a string"',
        b"\xff\xfe{}",
        deep[:4000],
        b'{"status": "reviewing", "extra": 1}',
        b'{"status": 5}',
        b'{"status": null}',
        b'{"status": ""}',
        b'{"status": "deleted"}',
        b"{}",
    ]
    for body in bodies:
        await refused(
            staff,
            staff_calls,
            400,
            "malformed_request",
            "POST",
            f"/cases/{setup.case}/status",
            account=setup.alice,
            data=body,
            headers=JSON,
        )
    for path, body in (
        ("/login", b'{"username": "alice", "password": "x"}'),
        ("/login", b'{"username": ["alice"], "password": "x", "code": "123456"}'),
        ("/enroll", b'{"invitation": 1, "password": "x"}'),
        ("/admin/invitations", b'{"username": "Bad Name", "role": "handler"}'),
        ("/admin/invitations", b'{"username": "ok", "role": "root"}'),
        (f"/cases/{setup.case}/handover", b'{"handler": "../alice"}'),
        (f"/cases/{setup.case}/escalations", b'{"receipt": "x", "more": 1}'),
    ):
        account = setup.admin if path.startswith("/admin") else setup.alice
        await refused(
            staff, staff_calls, 400, "malformed_request", "POST", path, account=account, data=body, headers=JSON
        )


async def test_wrong_content_type(staff: StaffDeployment, staff_calls: StaffCalls, setup: Setup) -> None:
    for path, account in (
        ("/login", None),
        ("/enroll", None),
        (f"/cases/{setup.case}/status", setup.alice),
        ("/admin/invitations", setup.admin),
    ):
        await refused(
            staff,
            staff_calls,
            415,
            "unsupported_media_type",
            "POST",
            path,
            account=account,
            data=b'{"status": "closed"}',
            headers={"Content-Type": "text/plain"},
        )
    await refused(
        staff,
        staff_calls,
        415,
        "unsupported_media_type",
        "POST",
        f"/cases/{setup.case}/replies",
        account=setup.alice,
        json={"envelope": "x"},
    )


async def test_oversized_bodies(staff: StaffDeployment, staff_calls: StaffCalls, setup: Setup) -> None:
    big_json = b'{"status": "' + b"a" * 5000 + b'"}'
    await refused(
        staff,
        staff_calls,
        413,
        "payload_too_large",
        "POST",
        f"/cases/{setup.case}/status",
        account=setup.alice,
        data=big_json,
        headers=JSON,
    )
    await refused(staff, staff_calls, 413, "payload_too_large", "POST", "/login", data=big_json, headers=JSON)

    async def chunked() -> Any:  # no Content-Length: the server must count
        for _ in range(MAX_REPLY // 65536 + 2):
            yield b"\x00" * 65536

    await refused(
        staff,
        staff_calls,
        413,
        "payload_too_large",
        "POST",
        f"/cases/{setup.case}/replies",
        account=setup.alice,
        data=b"\x00" * (MAX_REPLY + 1),
        headers=OCTET,
    )
    await refused(
        staff,
        staff_calls,
        413,
        "payload_too_large",
        "POST",
        f"/cases/{setup.case}/replies",
        account=setup.alice,
        data=chunked(),
        headers=OCTET,
    )


async def test_bad_ids_and_query(staff: StaffDeployment, staff_calls: StaffCalls, setup: Setup) -> None:
    for bad in ("short", "a" * 65, "bad%20id!", "x%00yyyyyyyy", "%2Fetc%2Fpasswd"):
        await refused(staff, staff_calls, 400, "malformed_request", "GET", f"/cases/{bad}", account=setup.alice)
        await refused(
            staff, staff_calls, 400, "malformed_request", "GET", f"/cases/{bad}/envelope", account=setup.alice
        )
    # Dot segments are resolved before routing: they land on no route at all.
    for bad in ("..", "%2e%2e"):
        before = await staff.snapshot()
        answer = await staff_calls.call("GET", f"/staff/v1/cases/{bad}", account=setup.alice, check=False)
        assert (answer.status, answer.body["error"]["code"]) == (404, "not_found")
        assert await staff.snapshot() == before
    for attachment, index in (("x", "0"), ("64", "0"), ("0", "-1"), ("0", "99999999999")):
        await refused(
            staff,
            staff_calls,
            400,
            "malformed_request",
            "GET",
            f"/cases/{setup.case}/attachments/{attachment}/chunks/{index}",
            account=setup.alice,
        )
    await refused(
        staff,
        staff_calls,
        400,
        "malformed_request",
        "GET",
        f"/cases/{setup.case}/messages/bad!/envelope",
        account=setup.alice,
    )
    await refused(staff, staff_calls, 400, "malformed_request", "POST", "/admin/staff/Bad!/revoke", account=setup.admin)
    for query in (
        "limit=0",
        "limit=201",
        "limit=abc",
        "limit=1&limit=2",
        "status=deleted",
        "pool=Not_A_Pool",
        "after=garbage",
        "after=2024-13-45.AAAAAAAAAAAA",
        "owner=bob",
    ):
        await refused(staff, staff_calls, 400, "malformed_request", "GET", f"/cases?{query}", account=setup.alice)


async def test_bad_reply_envelopes(staff: StaffDeployment, staff_calls: StaffCalls, setup: Setup) -> None:
    reply_key = setup.applicant.keys.reply_key.public_key
    good = E.seal(b"hello", [reply_key], E.Purpose.REPLY).data
    contact = E.seal(b"hello", [reply_key], E.Purpose.CONTACT).data
    two = E.seal(b"hello", [reply_key, hybrid_key("someone").public_key], E.Purpose.REPLY).data
    path = f"/cases/{setup.case}/replies"
    for data, status, code in (
        (b"garbage", 400, "malformed_envelope"),
        (b"", 400, "malformed_envelope"),
        (good[:-1], 400, "malformed_envelope"),
        (good + b"\x00", 400, "malformed_envelope"),
        (contact, 400, "wrong_purpose"),
        (two, 422, "recipients_mismatch"),
    ):
        await refused(staff, staff_calls, status, code, "POST", path, account=setup.alice, data=data, headers=OCTET)


async def test_odd_credentials_never_crash_login(staff: StaffDeployment, staff_calls: StaffCalls, setup: Setup) -> None:
    for body in (
        {"username": "alice", "password": "\ud800" * 20, "code": "123456"},
        {"username": "alice", "password": "x" * 1024, "code": "123456"},
        {"username": "\u0000", "password": PASSWORD, "code": "123456"},
        {"username": "alice", "password": PASSWORD, "code": "\uff11\uff12\uff13\uff14\uff15\uff16"},
    ):
        answer = await staff_calls.call("POST", "/staff/v1/login", json=body)
        assert answer.status == 401, body
    # Too long for the wire: refused before any work.
    too_long = await staff_calls.call(
        "POST", "/staff/v1/login", json={"username": "alice", "password": "x" * 1025, "code": "123456"}
    )
    assert too_long.status == 400


async def test_unknown_paths_and_methods(staff: StaffDeployment, staff_calls: StaffCalls, setup: Setup) -> None:
    missing = await staff_calls.call("GET", "/staff/v1/nothing", account=setup.alice, check=False)
    assert missing.status == 404
    assert missing.body["error"]["code"] == "not_found"
    wrong = await staff_calls.call("DELETE", f"/staff/v1/cases/{setup.case}", account=setup.alice, check=False)
    assert wrong.status == 405
    assert wrong.body["error"]["code"] == "method_not_allowed"
    for name, value in HEADERS.items():
        assert wrong.headers.get(name) == value
    assert wrong.headers["Server"] == "safepassage"
