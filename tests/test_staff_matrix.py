"""The authorisation matrix: every staff endpoint x every kind of caller, asserted as one table.

Callers: nobody logged in; an admin; the handler owning the case; another handler of the
same pool; a handler of another pool; a handler whose account was revoked (its session
taken before the revocation); a handler the current directory no longer lists (its
account still active). Every refused cell must also leave the database as it was.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from safepassage.crypto.staffmsg import IntegrationReceipt

from .intake_calls import Calls
from .staff_deployment import PASSWORD, Account, StaffCalls, StaffDeployment, add_handlers, new_case, roster_directory
from .test_staff_cases import reply_envelope

ACTORS = ("anonymous", "admin", "owner", "same_pool", "other_pool", "revoked", "removed")

EXPECTED = """
endpoint                                         anonymous admin owner same_pool other_pool revoked removed
GET /me                                          401       200   200   200       200        401     200
GET /cases                                       401       403   200   200       200        401     403
GET /case-envelopes                              401       403   200   200       200        401     403
GET /cases/{case}                                401       403   200   404       404        401     403
GET /cases/{case}/envelope                       401       403   200   404       404        401     403
GET /cases/{case}/attachments/0/chunks/0         401       403   200   404       404        401     403
GET /cases/{case}/messages/{message}/envelope    401       403   200   404       404        401     403
POST /cases/{case}/status                        401       403   200   404       404        401     403
POST /cases/{case}/replies                       401       403   201   404       404        401     403
POST /cases/{case}/escalations                   401       403   201   404       404        401     403
POST /cases/{other_case}/handover                401       403   200   404       404        401     403
GET /admin/staff                                 401       200   403   403       403        401     403
POST /admin/invitations                          401       201   403   403       403        401     403
POST /admin/staff/{victim}/revoke                401       200   403   403       403        401     403
GET /admin/audit                                 401       200   403   403       403        401     403
POST /enroll                                     403       403   403   403       403        403     403
POST /enroll/confirm                             403       403   403   403       403        403     403
POST /login                                      401       401   401   401       401        401     401
POST /password                                   401       204   204   204       204        401     204
POST /logout                                     401       204   204   204       204        401     204
"""


def parse_table(text: str) -> dict[str, dict[str, int]]:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    header = lines[0].split()[1:]
    assert tuple(header) == ACTORS
    table = {}
    for line in lines[1:]:
        (*words,) = line.split()
        cells = words[-len(ACTORS) :]
        table[" ".join(words[: -len(ACTORS)])] = dict(zip(ACTORS, map(int, cells), strict=True))
    return table


def render(table: dict[str, dict[str, int]]) -> str:
    width = max(len(k) for k in table) + 1
    out = ["endpoint".ljust(width) + " ".join(a.ljust(10) for a in ACTORS)]
    out += [name.ljust(width) + " ".join(str(row[a]).ljust(10) for a in ACTORS) for name, row in table.items()]
    return "\n".join(out)


@dataclass
class World:
    sd: StaffDeployment
    calls: StaffCalls
    accounts: dict[str, Account]
    ids: dict[str, str]
    applicant: Any


Request = Callable[[World, str], dict[str, Any]]


def _json(body: dict[str, Any]) -> Request:
    return lambda w, actor: {"json": body}


def _reply(w: World, actor: str) -> dict[str, Any]:
    data = reply_envelope(w.sd, w.applicant, w.ids["case"], "alice", "reply")
    return {"data": data, "headers": {"Content-Type": "application/octet-stream"}}


def _receipt(w: World, actor: str) -> dict[str, Any]:
    package = "pkg-" + secrets.token_hex(8)
    receipt = IntegrationReceipt.issue(w.sd.dep.org.integration_signing, package, bytes(32), "2030-01-01")
    return {"json": {"receipt": receipt.to_json()}}


def _invitation(w: World, actor: str) -> dict[str, Any]:
    return {"json": {"username": "new-" + secrets.token_hex(4), "role": "handler"}}


def _password(w: World, actor: str) -> dict[str, Any]:
    account = w.accounts.get(actor)
    if account is None or account.token is None:
        return {"json": {"old": PASSWORD, "new": "a fresh new passphrase", "code": "000000"}}
    return {"json": {"old": account.password, "new": account.password + "!", "code": w.calls.fresh_code(account)}}


def _none(w: World, actor: str) -> dict[str, Any]:
    return {}


ROWS: dict[str, Request] = {
    "GET /me": _none,
    "GET /cases": _none,
    "GET /case-envelopes": _none,
    "GET /cases/{case}": _none,
    "GET /cases/{case}/envelope": _none,
    "GET /cases/{case}/attachments/0/chunks/0": _none,
    "GET /cases/{case}/messages/{message}/envelope": _none,
    "POST /cases/{case}/status": _json({"status": "reviewing"}),
    "POST /cases/{case}/replies": _reply,
    "POST /cases/{case}/escalations": _receipt,
    "POST /cases/{other_case}/handover": _json({"handler": "carol"}),
    "GET /admin/staff": _none,
    "POST /admin/invitations": _invitation,
    "POST /admin/staff/{victim}/revoke": _none,
    "GET /admin/audit": _none,
    "POST /enroll": _json({"invitation": "A" * 43, "password": PASSWORD}),
    "POST /enroll/confirm": _json({"invitation": "A" * 43, "code": "123456"}),
    "POST /login": _json({"username": "nobody", "password": PASSWORD, "code": "123456"}),
    "POST /password": _password,
    "POST /logout": _none,
}
#: Rows that end sessions: each caller that can log in does so afresh just before its cell.
FRESH_SESSION = {"POST /password", "POST /logout"}
ROLE_OF = {"admin": "root", "owner": "alice", "same_pool": "carol", "other_pool": "dave", "revoked": "erin"}


async def build_world(sd: StaffDeployment, calls: StaffCalls, public_calls: Calls) -> World:
    dep = sd.dep
    add_handlers(dep, "dave", "erin")
    roster = {
        "alice": ("general",),
        "bob": ("general", "science"),
        "carol": ("general",),
        "dave": ("science",),
        "erin": ("general",),
    }
    await sd.publish(roster_directory(dep, 2, roster))
    accounts = {
        "admin": await calls.enrol_and_login("root", "admin"),
        "owner": await calls.enrol_and_login("alice"),
        "same_pool": await calls.enrol_and_login("carol"),
        "other_pool": await calls.enrol_and_login("dave"),
        "revoked": await calls.enrol_and_login("erin"),
        "removed": await calls.enrol_and_login("bob"),
    }
    await calls.enrol("victim")
    case_id, applicant = await new_case(sd, public_calls, owner="alice", blob=b"attachment")
    other_case, _ = await new_case(sd, public_calls, owner="alice")
    posted = await calls.call(
        "POST", f"/staff/v1/cases/{case_id}/replies", account=accounts["owner"], **_reply_for(sd, applicant, case_id)
    )
    assert posted.status == 201
    # Revoke erin (its old session is kept to try), then drop bob from the directory.
    revoked = await calls.call("POST", "/staff/v1/admin/staff/erin/revoke", account=accounts["admin"])
    assert revoked.status == 200
    await sd.publish(roster_directory(dep, 3, {k: v for k, v in roster.items() if k != "bob"}))
    # Publication ended bob's session (test_admin_proposals checks that); a new login
    # works, but a handler no longer listed may not touch cases.
    assert (await calls.call("GET", "/staff/v1/me", account=accounts["removed"])).status == 401
    assert (await calls.login(accounts["removed"])).status == 201
    ids = {"case": case_id, "other_case": other_case, "message": posted.body["message"], "victim": "victim"}
    return World(sd, calls, accounts, ids, applicant)


def _reply_for(sd: StaffDeployment, applicant: Any, case_id: str) -> dict[str, Any]:
    data = reply_envelope(sd, applicant, case_id, "alice", "first reply")
    return {"data": data, "headers": {"Content-Type": "application/octet-stream"}}


async def test_authorisation_matrix(staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls) -> None:
    world = await build_world(staff, staff_calls, public_calls)
    expected = parse_table(EXPECTED)
    assert list(expected) == list(ROWS)
    actual: dict[str, dict[str, int]] = {}
    unchanged_failures: list[str] = []
    for row, make in ROWS.items():
        method, template = row.split(" ", 1)
        path = "/staff/v1" + template.format(**world.ids)
        # The cell expected to succeed (and change something) runs last in its row.
        order = sorted(ACTORS, key=lambda a: 200 <= expected[row][a] < 300)
        actual[row] = {}
        for actor in order:
            account = world.accounts.get(actor)
            if row in FRESH_SESSION and account is not None and actor != "revoked":
                assert (await staff_calls.login(account)).status == 201
            request = make(world, actor)
            before = await staff.snapshot()
            answer = await staff_calls.call(method, path, account=account, **request)
            actual[row][actor] = answer.status
            if answer.status >= 400:
                after = await staff.snapshot()
                # An authenticated request may refresh its session's last_seen; nothing else may change.
                before.pop("staff_sessions")
                after.pop("staff_sessions")
                if row == "POST /login":
                    # A failed login is recorded (without the name typed); nothing else changes.
                    earlier = before.pop("audit_log")
                    added = [e for e in after.pop("audit_log") if e not in earlier]
                    before.pop("audit_head")
                    after.pop("audit_head")
                    if [e[4:6] for e in added] != [("-", "login_failed")]:
                        unchanged_failures.append(f"{row} as {actor}: {added}")
                if after != before:
                    unchanged_failures.append(f"{row} as {actor}")
            elif row == "POST /password" and account is not None:
                account.password += "!"
    assert render(actual) == render(expected), "\n" + render(actual)
    assert unchanged_failures == []


async def test_admins_never_see_case_content(
    staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls
) -> None:
    admin = await staff_calls.enrol_and_login("root", "admin")
    case_id, applicant = await new_case(staff, public_calls, owner="alice")
    for path in ("/cases", "/case-envelopes", f"/cases/{case_id}", f"/cases/{case_id}/envelope"):
        answer = await staff_calls.call("GET", "/staff/v1" + path, account=admin)
        assert answer.status == 403
        assert answer.body["error"]["code"] == "forbidden_role"
    listed = await staff_calls.call("GET", "/staff/v1/admin/staff", account=admin)
    assert case_id not in repr(listed.body)
    assert applicant.mailbox_id not in repr(listed.body)


async def test_not_in_directory_and_unknown_case_look_alike_to_others(
    staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls
) -> None:
    """A handler probing ids learns nothing: a colleague's case and a made-up id are the same 404."""
    await staff_calls.enrol_and_login("alice")
    carol = await staff_calls.enrol_and_login("carol")
    case_id, _ = await new_case(staff, public_calls, owner="alice")
    real = await staff_calls.call("GET", f"/staff/v1/cases/{case_id}", account=carol)
    fake = await staff_calls.call("GET", "/staff/v1/cases/AAAAAAAAAAAAAAAAAAAAAA", account=carol)
    assert (real.status, real.body) == (fake.status, fake.body)
    # Nor does paging: carol's pages hold none of alice's cases, whatever the cursor.
    for query in ("", "?limit=1", "?after=2000-01-01.00000000"):
        page = await staff_calls.call("GET", "/staff/v1/case-envelopes" + query, account=carol)
        assert (page.status, page.body["cases"]) == (200, [])
    stranger = await staff_calls.enrol_and_login("zed")  # an account, but never in the directory
    for path in ("/cases", "/case-envelopes"):
        answer = await staff_calls.call("GET", "/staff/v1" + path, account=stranger)
        assert (answer.status, answer.body["error"]["code"]) == (403, "not_in_directory")
