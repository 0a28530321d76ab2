"""The M-of-N directory ceremony through the real staff and intake apps (protocol 19).

Threshold edges (M-1 signatures, a duplicate, a non-admin, a removed admin, a
replayed old proposal), a rogue handler added by one admin alone never
receiving a contact, revocation ending sessions and moving open cases to a
handler who can read them, and a stale proposal refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from sqlalchemy import select

from safepassage.client.applicant import send_contact
from safepassage.client.intake_api import IntakeClient
from safepassage.client.trust import fetch_trusted_directory
from safepassage.crypto import envelope as E
from safepassage.crypto import labels as L
from safepassage.crypto.directory import Directory
from safepassage.crypto.errors import MalformedInput
from safepassage.crypto.keys import SigningKey
from safepassage.crypto.threshold import KeySet, Signature
from safepassage.crypto.translog import TreeHead
from safepassage.server.context import INTAKE
from safepassage.server.db.models import Contact
from safepassage.server.keys import RECEIPT_NEXT_FILE, ReceiptKeyPending, create_next_receipt_key, load_keys

from .deployment import now_ts
from .helpers import signing_key
from .intake_calls import Applicant, Calls
from .staff_deployment import Account, StaffCalls, StaffDeployment, add_handlers, new_case, roster_directory

pytestmark = pytest.mark.timeout(240)

ROSTER = {"alice": ("general",), "bob": ("general", "science"), "carol": ("general",)}
BASE = "/staff/v1/admin/proposals"


async def _admin(calls: StaffCalls) -> Account:
    return await calls.enrol_and_login("root-admin", "admin")


async def _propose(calls: StaffCalls, admin: Account, directory: Directory) -> dict[str, Any]:
    answer = await calls.call("POST", BASE, account=admin, json={"directory": directory.to_json()})
    assert answer.status == 201, answer.body
    return answer.body  # type: ignore[no-any-return]


def _dir_sig(key: SigningKey, directory: Directory) -> dict[str, Any]:
    return Signature.make(key, L.SIG_DIRECTORY, directory.signed_bytes()).to_json()


async def _sign(calls: StaffCalls, admin: Account, pid: str, sig: dict[str, Any], status: int = 200) -> Any:
    answer = await calls.call("POST", f"{BASE}/{pid}/signatures", account=admin, json={"signature": sig})
    assert answer.status == status, answer.body
    return answer.body


async def _head(calls: StaffCalls, admin: Account, pid: str) -> TreeHead:
    answer = await calls.call("GET", f"{BASE}/{pid}", account=admin)
    assert answer.status == 200, answer.body
    assert answer.body["state"] == "head", answer.body
    return TreeHead.from_json(answer.body["head"])


async def _publish(calls: StaffCalls, admin: Account, pid: str, status: int = 200) -> Any:
    answer = await calls.call("POST", f"{BASE}/{pid}/publish", account=admin, json={})
    assert answer.status == status, answer.body
    return answer.body


async def _ceremony(calls: StaffCalls, admin: Account, directory: Directory, signers: list[SigningKey]) -> Any:
    pid = (await _propose(calls, admin, directory))["id"]
    for key in signers:
        await _sign(calls, admin, pid, _dir_sig(key, directory))
    head = await _head(calls, admin, pid)
    for key in signers:
        await _sign(calls, admin, pid, Signature.make(key, L.SIG_TREE_HEAD, head.signed_bytes()).to_json())
    return await _publish(calls, admin, pid)


async def _served(sd: StaffDeployment) -> Directory:
    await sd.refresh()
    async with IntakeClient(sd.dep.base_url) as client:
        trusted = await fetch_trusted_directory(client, sd.dep.org.admin_set.fingerprint(), None, now_ts())
    return trusted.directory


async def test_two_of_three_with_every_threshold_edge(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    dep = staff.dep
    admin = await _admin(staff_calls)
    a0, a1, a2 = dep.org.admins
    add_handlers(dep, "dave")
    v2 = roster_directory(dep, 2, {**ROSTER, "dave": ("general",)})
    proposal = await _propose(staff_calls, admin, v2)
    pid = proposal["id"]
    assert proposal["state"] == "signing"
    assert proposal["version"] == 2

    # One admin, twice: still one signature; publishing is refused.
    await _sign(staff_calls, admin, pid, _dir_sig(a0, v2))
    body = await _sign(staff_calls, admin, pid, _dir_sig(a0, v2))
    assert body["signers"] == [a0.verify_key.key_id.hex()]
    assert body["state"] == "signing"
    assert (await _publish(staff_calls, admin, pid, 409))["error"]["code"] == "not_ready"
    # A key outside the admin set, and an admin's signature over other bytes, do not count.
    outsider = signing_key("not-an-admin")
    assert (await _sign(staff_calls, admin, pid, _dir_sig(outsider, v2), 422))["error"]["code"] == "not_an_admin"
    other = roster_directory(dep, 2, ROSTER)
    assert (await _sign(staff_calls, admin, pid, _dir_sig(a1, other), 422))["error"]["code"] == "bad_signature"
    # A tree-head signature in the directory round is a bad signature too (purposes differ).
    wrong_purpose = Signature.make(a1, L.SIG_TREE_HEAD, v2.signed_bytes()).to_json()
    assert (await _sign(staff_calls, admin, pid, wrong_purpose, 422))["error"]["code"] == "bad_signature"

    # The second admin: the directory is frozen with the head of the log it extends.
    body = await _sign(staff_calls, admin, pid, _dir_sig(a1, v2))
    assert body["state"] == "head"
    head = await _head(staff_calls, admin, pid)
    assert head.size == 2
    await _sign(staff_calls, admin, pid, Signature.make(a0, L.SIG_TREE_HEAD, head.signed_bytes()).to_json())
    assert (await _publish(staff_calls, admin, pid, 409))["error"]["code"] == "not_ready"
    await _sign(staff_calls, admin, pid, Signature.make(a2, L.SIG_TREE_HEAD, head.signed_bytes()).to_json())
    published = await _publish(staff_calls, admin, pid)
    assert published["version"] == 2
    assert published["size"] == 2
    assert published["removed_handlers"] == []

    served = await _served(staff)
    assert served.version == 2
    assert "dave" in {h.handler_id for h in served.handlers}
    # Replays: the published proposal, and a new proposal for an old version.
    assert (await _publish(staff_calls, admin, pid, 409))["error"]["code"] == "proposal_closed"
    answer = await staff_calls.call("POST", BASE, account=admin, json={"directory": v2.to_json()})
    assert answer.status == 422
    assert answer.body["error"]["code"] == "wrong_version"


async def test_rogue_handler_signed_by_one_admin_never_receives_a_contact(
    staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls
) -> None:
    dep = staff.dep
    admin = await _admin(staff_calls)
    add_handlers(dep, "rogue")
    rogue_dir = roster_directory(dep, 2, {**ROSTER, "rogue": ("general",)})
    pid = (await _propose(staff_calls, admin, rogue_dir))["id"]
    await _sign(staff_calls, admin, pid, _dir_sig(dep.org.admins[0], rogue_dir))
    assert (await _publish(staff_calls, admin, pid, 409))["error"]["code"] == "not_ready"

    await staff.refresh()
    # Real applicants, as the client does it: the served directory, verified, and the contact
    # routed by the server (no owner chosen here).
    async with IntakeClient(dep.base_url) as client:
        trusted = await fetch_trusted_directory(client, dep.org.admin_set.fingerprint(), None, now_ts())
        assert trusted.directory.version == 1
        assert "rogue" not in {h.handler_id for h in trusted.directory.handlers}
        sent = [
            await send_contact(client, trusted, pool="general", language="en", message="x", fields={}, attachments=[])
            for _ in range(6)
        ]
    rogue_key = dep.org.intake["rogue"].public_key.key_id
    async with dep.store.read() as session:
        rows = (await session.execute(select(Contact.id, Contact.owner, Contact.envelope))).all()
    assert sorted(r.id for r in rows) == sorted(s.contact_id for s in sent)
    assert {r.owner for r in rows} <= {"alice", "bob", "carol"}
    assert len({r.owner for r in rows}) > 1  # routed among the listed handlers, not pinned to one
    for row in rows:
        assert rogue_key not in E.parse_header(row.envelope).recipients
    # The rogue enrols (an invitation is all one admin needs) and still sees nothing.
    rogue = await staff_calls.enrol_and_login("rogue")
    for path in ("/cases", "/case-envelopes"):
        answer = await staff_calls.call("GET", "/staff/v1" + path, account=rogue)
        assert (answer.status, answer.body["error"]["code"]) == (403, "not_in_directory")
    # The server also refuses an envelope sealed to the rogue key as well.
    intake = [k for _, k in dep.directory.recipients("general", now_ts())]
    sealed = E.seal(b"x", [*intake, dep.org.intake["rogue"].public_key], E.Purpose.CONTACT)
    applicant = Applicant()
    headers = applicant.submission_headers(sealed.data, "general", 0, await public_calls.pow_header())
    answer = await public_calls.call("POST", "/api/v1/contacts?pool=general", data=sealed.data, headers=headers)
    assert answer.status == 422
    assert answer.body["error"]["code"] == "recipients_mismatch"


async def test_revocation_ends_sessions_and_moves_cases_to_a_reader(
    staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls
) -> None:
    dep = staff.dep
    admin = await _admin(staff_calls)
    carol = await staff_calls.enrol_and_login("carol")
    case_id, _ = await new_case(staff, public_calls, owner="carol")
    assert (await staff_calls.call("GET", "/staff/v1/cases", account=carol)).status == 200

    without_carol = roster_directory(dep, 2, {k: v for k, v in ROSTER.items() if k != "carol"})
    published = await _ceremony(staff_calls, admin, without_carol, dep.org.admins[:2])
    assert published["removed_handlers"] == ["carol"]
    assert published["ended_sessions"] == 1
    assert published["moved_cases"] == 1
    assert published["stranded_cases"] == 0
    assert (await staff_calls.call("GET", "/staff/v1/cases", account=carol)).status == 401
    async with dep.store.read() as session:
        owner = await session.scalar(select(Contact.owner).where(Contact.id == case_id))
    assert owner in {"alice", "bob"}


async def test_a_contact_routed_by_the_directory_before_a_revocation_is_refused(
    staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls
) -> None:
    """A front end that has not yet noticed a publication (it looks every 2 s) must not give a new
    case to the handler that publication removed: the publication moved that handler's open cases
    in its own transaction, and would never move this one."""
    dep = staff.dep
    intake = dep.app[INTAKE]
    admin = await _admin(staff_calls)
    await intake.refresh()
    before = intake.published()
    assert "carol" in {h.handler_id for h, _ in before.directory.recipients("general", now_ts())}
    without_carol = roster_directory(dep, 2, {k: v for k, v in ROSTER.items() if k != "carol"})
    await _ceremony(staff_calls, admin, without_carol, dep.org.admins[:2])
    intake._published = before  # as on a front end whose next look is still to come
    applicant = Applicant()
    keys = [key for _, key in before.directory.recipients("general", now_ts())]
    sealed = E.seal(applicant.contact("general"), keys, E.Purpose.CONTACT)
    headers = applicant.submission_headers(sealed.data, "general", 0, await public_calls.pow_header())
    path = "/api/v1/contacts?pool=general&attachments=0"
    answer = await public_calls.call("POST", path, data=sealed.data, headers=headers)
    # 409 from the check in the submission's transaction; 422 only if the periodic look got
    # there first (the envelope is sealed to carol, who is no longer listed).
    assert (answer.status, answer.body["error"]["code"]) in {(409, "directory_changed"), (422, "recipients_mismatch")}
    assert intake.published().index == before.index + 1  # the refusal loaded the new directory
    async with dep.store.read() as session:
        assert (await session.scalars(select(Contact.owner))).all() == []
    # Sealed again to the current keys, the contact goes to a handler still listed.
    applicant = Applicant()
    keys = [key for _, key in without_carol.recipients("general", now_ts())]
    sealed = E.seal(applicant.contact("general"), keys, E.Purpose.CONTACT)
    headers = applicant.submission_headers(sealed.data, "general", 0, await public_calls.pow_header())
    again = await public_calls.call("POST", path, data=sealed.data, headers=headers)
    assert again.status == 201, again.body
    async with dep.store.read() as session:
        owner = await session.scalar(select(Contact.owner).where(Contact.id == again.body["contact"]))
    assert owner in {"alice", "bob"}


async def test_a_proposal_overtaken_by_another_is_stale(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    dep = staff.dep
    admin = await _admin(staff_calls)
    first = roster_directory(dep, 2, ROSTER)
    second = roster_directory(dep, 2, {k: v for k, v in ROSTER.items() if k != "bob"})
    late = (await _propose(staff_calls, admin, second))["id"]
    await _ceremony(staff_calls, admin, first, dep.org.admins[:2])
    body = await _sign(staff_calls, admin, late, _dir_sig(dep.org.admins[0], second), 409)
    assert body["error"]["code"] == "stale_proposal"
    # Marked stale by the publication itself (not left open to fill the slots).
    listed = await staff_calls.call("GET", BASE, account=admin)
    assert listed.body["proposals"] == []
    detail = await staff_calls.call("GET", f"{BASE}/{late}", account=admin)
    assert detail.body["state"] == "stale"


async def test_one_admin_cannot_fill_every_proposal_slot(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    dep = staff.dep
    planted = await _admin(staff_calls)
    other = await staff_calls.enrol_and_login("second-admin", "admin")
    directory = roster_directory(dep, 2, ROSTER)
    for _ in range(4):
        await _propose(staff_calls, planted, directory)
    answer = await staff_calls.call("POST", BASE, account=planted, json={"directory": directory.to_json()})
    assert answer.status == 429
    assert answer.body["error"]["code"] == "too_many_proposals"
    # Another admin can still propose, and a publication frees every slot of the old version.
    await _ceremony(staff_calls, other, directory, dep.org.admins[:2])
    assert (await staff_calls.call("GET", BASE, account=planted)).body["proposals"] == []
    await _propose(staff_calls, planted, roster_directory(dep, 3, ROSTER))


async def test_admin_set_change_needs_old_and_new_and_a_removed_admin_no_longer_counts(
    staff: StaffDeployment, staff_calls: StaffCalls
) -> None:
    dep = staff.dep
    admin = await _admin(staff_calls)
    a0, a1, a2 = dep.org.admins
    newcomer = signing_key("admin-new")
    # Replace a2 by a newcomer, 2 of 3: two old admins approve, and the newcomer must accept.
    new_set = KeySet((a0.verify_key, a1.verify_key, newcomer.verify_key), 2)
    base = roster_directory(dep, 2, ROSTER)
    v2 = Directory(
        version=2,
        issued=base.issued,
        organisation=base.organisation,
        admins=new_set,
        pools=base.pools,
        handlers=base.handlers,
        integration=base.integration,
        receipt_key=base.receipt_key,
    )
    pid = (await _propose(staff_calls, admin, v2))["id"]
    await _sign(staff_calls, admin, pid, _dir_sig(a2, v2))  # old admin: counts for the old set only
    await _sign(staff_calls, admin, pid, _dir_sig(newcomer, v2))  # new set: 1 of 2
    body = await _sign(staff_calls, admin, pid, _dir_sig(a0, v2))  # old set 2 of 3, new set 2 of 3
    assert body["state"] == "head"
    head = await _head(staff_calls, admin, pid)
    # The head is signed by the NEW set: the removed admin's head signature is refused.
    sig = Signature.make(a2, L.SIG_TREE_HEAD, head.signed_bytes()).to_json()
    assert (await _sign(staff_calls, admin, pid, sig, 422))["error"]["code"] == "not_an_admin"
    for key in (a0, newcomer):
        await _sign(staff_calls, admin, pid, Signature.make(key, L.SIG_TREE_HEAD, head.signed_bytes()).to_json())
    await _publish(staff_calls, admin, pid)
    # Version 3: the removed admin's directory signature no longer counts at all.
    v3 = roster_directory(dep, 3, ROSTER)
    v3 = Directory(**{f: getattr(v3, f) for f in v3.__dataclass_fields__} | {"admins": new_set})
    pid3 = (await _propose(staff_calls, admin, v3))["id"]
    assert (await _sign(staff_calls, admin, pid3, _dir_sig(a2, v3), 422))["error"]["code"] == "not_an_admin"
    served = await _served(staff)
    assert served.admins == new_set
    # A client that pinned the original organisation walks the chain and sends a contact.
    async with IntakeClient(dep.base_url) as client:
        trusted = await fetch_trusted_directory(client, dep.org.admin_set.fingerprint(), None, now_ts())
        sent = await send_contact(
            client, trusted, pool="general", language="ru", message="x", fields={}, attachments=[]
        )
    assert sent.receipt.day


async def test_only_admins_may_propose(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    alice = await staff_calls.enrol_and_login("alice")
    answer = await staff_calls.call(
        "POST", BASE, account=alice, json={"directory": roster_directory(staff.dep, 2, ROSTER).to_json()}
    )
    assert answer.status == 403
    admin = await _admin(staff_calls)
    for body in ({"directory": {"version": 2}}, {"directory": "x"}, {"other": 1}):
        answer = await staff_calls.call("POST", BASE, account=admin, json=body)
        assert answer.status == 400, body
    async with staff.dep.store.read() as session:
        from safepassage.server.db.models import DirectoryProposal

        assert (await session.execute(select(DirectoryProposal))).all() == []


async def test_receipt_key_rotation_switches_once_published(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    dep = staff.dep
    admin = await _admin(staff_calls)
    keys_dir = dep.config.keys_dir
    old = dep.keys.receipt.verify_key
    waiting = create_next_receipt_key(keys_dir).verify_key
    with pytest.raises(ReceiptKeyPending):
        create_next_receipt_key(keys_dir)
    # A directory naming a key the server does not hold is refused at once.
    stranger = dataclasses.replace(roster_directory(dep, 2, ROSTER), receipt_key=signing_key("nobody").verify_key)
    answer = await staff_calls.call("POST", BASE, account=admin, json={"directory": stranger.to_json()})
    assert answer.status == 422
    assert answer.body["error"]["code"] == "wrong_receipt_key"

    rotated = dataclasses.replace(roster_directory(dep, 2, ROSTER), receipt_key=waiting)
    await _ceremony(staff_calls, admin, rotated, dep.org.admins[:2])
    await staff.refresh()
    assert dep.app[INTAKE].keys.receipt.verify_key == waiting
    assert staff.state.receipt_key == waiting
    assert not (keys_dir / RECEIPT_NEXT_FILE).exists()
    assert load_keys(keys_dir).receipt.verify_key == waiting  # the old key's file is gone
    assert old != waiting

    # A full contact: the client checks the receipt against the new directory's key.
    async with IntakeClient(dep.base_url) as client:
        trusted = await fetch_trusted_directory(client, dep.org.admin_set.fingerprint(), None, now_ts())
        assert trusted.directory.receipt_key == waiting
        sent = await send_contact(
            client, trusted, pool="general", language="ru", message="after rotation", fields={}, attachments=[]
        )
    assert sent.receipt.day


@pytest.mark.parametrize("name", ["x\r\x1b[2K\x1b[8m", "bob\u202e", "a\x00b"])
async def test_display_text_that_could_hide_a_line_is_refused(
    staff: StaffDeployment, staff_calls: StaffCalls, name: str
) -> None:
    dep = staff.dep
    admin = await _admin(staff_calls)
    add_handlers(dep, "zz-rogue")
    honest = roster_directory(dep, 2, {**ROSTER, "zz-rogue": ("general",)})
    body = honest.to_json()
    for handler in body["handlers"]:  # type: ignore[union-attr]
        if handler["id"] == "zz-rogue":  # type: ignore[index]
            handler["name"] = name  # type: ignore[index]
    answer = await staff_calls.call("POST", BASE, account=admin, json={"directory": body})
    assert answer.status == 400
    assert answer.body["error"]["code"] == "malformed_directory"
    with pytest.raises(MalformedInput):
        Directory.from_json(body)


async def test_cases_are_not_moved_to_handlers_who_destroyed_the_key(
    staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls
) -> None:
    dep = staff.dep
    admin = await _admin(staff_calls)
    case_id, _ = await new_case(staff, public_calls, owner="carol")
    # Nine days on, every seven-day key of then is past its window and the grace period:
    # the other handlers' clients have destroyed them, so nobody but carol could read the case.
    staff.clock.advance(9 * 86400)
    admin.token = None
    assert (await staff_calls.login(admin)).status == 201
    without_carol = roster_directory(dep, 2, {k: v for k, v in ROSTER.items() if k != "carol"})
    published = await _ceremony(staff_calls, admin, without_carol, dep.org.admins[:2])
    assert published["moved_cases"] == 0
    assert published["stranded_cases"] == 1
    async with dep.store.read() as session:
        assert await session.scalar(select(Contact.owner).where(Contact.id == case_id)) == "carol"
