"""A handler's work through the staff API, end to end with the public intake, on SQLite and PostgreSQL:
listing, downloading and opening sealed cases, replying (the applicant's mailbox fetch returns it),
status, handover and escalation receipts."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json

from sqlalchemy import select

from safepassage.client.case_text import follow_up_lines
from safepassage.client.handler import FollowUpView
from safepassage.crypto import envelope as E
from safepassage.crypto.encoding import b64d, b64e
from safepassage.crypto.intake import Contact, FollowUp, sign_mailbox_auth, sign_submission
from safepassage.crypto.staffmsg import IntegrationReceipt, Reply
from safepassage.server.db.models import AuditLogEntry, EscalationRecord, Message
from safepassage.server.db.models import Contact as ContactRow

from .deployment import now_ts
from .helpers import signing_key
from .intake_calls import Applicant, Calls
from .staff_deployment import Account, StaffCalls, StaffDeployment, new_case


async def fetch_mailbox(public_calls: Calls, applicant: Applicant) -> list[dict[str, object]]:
    challenge = await public_calls.call("POST", f"/api/v1/mailboxes/{applicant.mailbox_id}/challenge")
    nonce = b64d(challenge.body["nonce"])
    answer = await public_calls.call(
        "POST",
        f"/api/v1/mailboxes/{applicant.mailbox_id}/fetch",
        json={"nonce": b64e(nonce), "signature": b64e(sign_mailbox_auth(applicant.keys.mailbox_key, nonce))},
    )
    assert answer.status == 200, answer.body
    messages: list[dict[str, object]] = answer.body["messages"]
    return messages


async def follow_up(public_calls: Calls, sd: StaffDeployment, applicant: Applicant, case_id: str, text: str) -> None:
    payload = FollowUp(case_id, text, applicant.keys.mailbox_key.verify_key).seal_payload(applicant.keys.mailbox_key)
    keys = [key for _, key in sd.dep.directory.recipients("general", now_ts())]
    sealed = E.seal(payload, keys, E.Purpose.FOLLOW_UP)
    sig = sign_submission(
        applicant.keys.mailbox_key,
        kind="follow-up",
        pool="general",
        attachments=0,
        envelope=sealed.data,
        contact_id=case_id,
    )
    answer = await public_calls.call(
        "POST",
        f"/api/v1/mailboxes/{applicant.mailbox_id}/follow-ups?contact={case_id}",
        data=sealed.data,
        headers={
            "Content-Type": "application/octet-stream",
            "Safe-Passage-PoW": await public_calls.pow_header(),
            "Safe-Passage-Signature": b64e(sig),
        },
    )
    assert answer.status == 201, answer.body


def reply_envelope(sd: StaffDeployment, applicant: Applicant, case_id: str, handler: str, text: str) -> bytes:
    payload = Reply(case_id, handler, text).seal_payload(sd.dep.org.identities[handler])
    return E.seal(payload, [applicant.keys.reply_key.public_key], E.Purpose.REPLY).data


def receipt_for(sd: StaffDeployment, package: str, *, key: str = "integration") -> dict[str, object]:
    signer = sd.dep.org.integration_signing if key == "integration" else signing_key(key)
    receipt = IntegrationReceipt.issue(signer, package, hashlib.sha256(package.encode()).digest(), "2030-01-02")
    return dict(receipt.to_json())


async def test_list_filter_and_page(staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls) -> None:
    alice = await staff_calls.enrol_and_login("alice")
    bob = await staff_calls.enrol_and_login("bob")
    mine = {(await new_case(staff, public_calls, owner="alice"))[0] for _ in range(5)}
    science, _ = await new_case(staff, public_calls, owner="alice", pool="science")
    mine.add(science)
    theirs, _ = await new_case(staff, public_calls, owner="bob")
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=2" + (f"&after={cursor}" if cursor else "")
        page = await staff_calls.call("GET", "/staff/v1/cases" + query, account=alice)
        assert page.status == 200
        assert len(page.body["cases"]) <= 2
        seen += [c["id"] for c in page.body["cases"]]
        cursor = page.body["next"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(mine)
    assert len(seen) == len(set(seen))
    one = next(c for c in page.body["cases"])
    assert set(one) == {
        "id",
        "pool",
        "day",
        "bucket",
        "status",
        "attachments",
        "server_sealed",
        "mailbox",
        "follow_ups",
    }
    only_science = await staff_calls.call("GET", "/staff/v1/cases?pool=science", account=alice)
    assert [c["id"] for c in only_science.body["cases"]] == [science]
    assert (await staff_calls.call("GET", "/staff/v1/cases?status=closed", account=alice)).body["cases"] == []
    bobs = await staff_calls.call("GET", "/staff/v1/cases", account=bob)
    assert [c["id"] for c in bobs.body["cases"]] == [theirs]
    assert bobs.body["next"] is None


async def test_the_list_counts_each_case_s_own_follow_ups(
    staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls
) -> None:
    """Counted per page (docs/benchmarks.md): every page, not only the first, carries its cases' counts;
    replies and other handlers' follow-ups are not counted."""
    alice = await staff_calls.enrol_and_login("alice")
    quiet, _ = await new_case(staff, public_calls, owner="alice")
    busy, applicant = await new_case(staff, public_calls, owner="alice")
    other, other_applicant = await new_case(staff, public_calls, owner="bob")
    for text in ("one", "two"):
        await follow_up(public_calls, staff, applicant, busy, text)
    await follow_up(public_calls, staff, other_applicant, other, "not alice's")
    reply = reply_envelope(staff, applicant, busy, "alice", "Received.")
    answer = await staff_calls.call(
        "POST",
        f"/staff/v1/cases/{busy}/replies",
        account=alice,
        data=reply,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert answer.status == 201, answer.body
    counts: dict[str, int] = {}
    cursor = None
    while True:
        page = await staff_calls.call(
            "GET", "/staff/v1/cases?limit=1" + (f"&after={cursor}" if cursor else ""), account=alice
        )
        assert page.status == 200
        counts.update({c["id"]: c["follow_ups"] for c in page.body["cases"]})
        cursor = page.body["next"]
        if cursor is None:
            break
    assert counts == {quiet: 0, busy: 2}


async def test_the_handler_is_told_which_follow_ups_the_server_sealed(
    staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls
) -> None:
    """A follow-up sent from the return page without JavaScript is stored with ``server_sealed``
    (tests/test_web_pages.py); both case views carry it per message, so the handler knows the
    server saw that text."""
    alice = await staff_calls.enrol_and_login("alice")
    case, applicant = await new_case(staff, public_calls, owner="alice")
    await follow_up(public_calls, staff, applicant, case, "from the command line")
    await follow_up(public_calls, staff, applicant, case, "from the web page")
    async with staff.dep.store.write() as session:
        web = (await session.scalars(select(Message).where(Message.contact_id == case).order_by(Message.seq))).all()[-1]
        web.server_sealed = True
    detail = await staff_calls.call("GET", f"/staff/v1/cases/{case}", account=alice)
    bulk = await staff_calls.call("GET", "/staff/v1/case-envelopes", account=alice)
    for messages in (detail.body["messages"], bulk.body["cases"][0]["messages"]):
        assert [(m["kind"], m["server_sealed"]) for m in messages] == [("follow-up", False), ("follow-up", True)]


def test_a_server_sealed_follow_up_is_marked_in_the_case_text() -> None:
    view = FollowUpView("m1", "2026-11-28", "hello", b"", None, server_sealed=True)
    plain = dataclasses.replace(view, server_sealed=False)
    mark = "sealed by the server: sent from the web page without JavaScript"
    assert any(mark in line for line in follow_up_lines(view))
    assert not any(mark in line for line in follow_up_lines(plain))


async def test_open_reply_and_the_applicant_reads_it(
    staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls
) -> None:
    alice = await staff_calls.enrol_and_login("alice")
    blob = b"scan of a passport page"
    case_id, applicant = await new_case(staff, public_calls, owner="alice", blob=blob)
    await follow_up(public_calls, staff, applicant, case_id, "Also: Thursday works.")
    detail = await staff_calls.call("GET", f"/staff/v1/cases/{case_id}", account=alice)
    assert detail.status == 200
    assert detail.body["attachments"] == 1
    assert detail.body["follow_ups"] == 1
    assert detail.body["mailbox"] == applicant.mailbox_id
    assert detail.body["status"] == "new"
    [fu] = detail.body["messages"]
    assert fu["kind"] == "follow-up"

    # The handler's own key opens what the server hands out; the server never could.
    envelope = await staff_calls.call("GET", f"/staff/v1/cases/{case_id}/envelope", account=alice)
    assert envelope.headers["Content-Type"] == "application/octet-stream"
    opened = E.open_envelope(envelope.body, [staff.dep.org.intake["alice"]], expected_purpose=E.Purpose.CONTACT)
    contact = Contact.open_payload(opened.plaintext)
    assert contact.mailbox_key.key_id.hex() == detail.body["mailbox"]
    chunk = await staff_calls.call("GET", f"/staff/v1/cases/{case_id}/attachments/0/chunks/0", account=alice)
    assert opened.attachment_opener(0).open_chunk(chunk.body) == blob
    missing = await staff_calls.call("GET", f"/staff/v1/cases/{case_id}/attachments/0/chunks/1", account=alice)
    assert missing.status == 404
    fu_env = await staff_calls.call("GET", f"/staff/v1/cases/{case_id}/messages/{fu['id']}/envelope", account=alice)
    fu_open = E.open_envelope(fu_env.body, [staff.dep.org.intake["alice"]], expected_purpose=E.Purpose.FOLLOW_UP)
    assert FollowUp.open_payload(fu_open.plaintext).message == "Also: Thursday works."

    data = reply_envelope(staff, applicant, case_id, "alice", "We read you. Stay safe.")
    posted = await staff_calls.call(
        "POST",
        f"/staff/v1/cases/{case_id}/replies",
        account=alice,
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert posted.status == 201, posted.body
    assert posted.body["seq"] == 2  # after the follow-up, in the same mailbox
    after = await staff_calls.call("GET", f"/staff/v1/cases/{case_id}", account=alice)
    assert after.body["status"] == "replied"
    assert [(m["kind"], m["seq"]) for m in after.body["messages"]] == [("follow-up", 1), ("reply", 2)]

    [message] = await fetch_mailbox(public_calls, applicant)
    assert message["id"] == posted.body["message"]
    assert message["contact"] == case_id
    got = E.open_envelope(b64d(str(message["envelope"])), [applicant.keys.reply_key], expected_purpose=E.Purpose.REPLY)
    reply = Reply.open_payload(got.plaintext, staff.dep.directory)
    assert (reply.handler_id, reply.message) == ("alice", "We read you. Stay safe.")

    # A reply keeps a later status: closed stays closed.
    closed = await staff_calls.call(
        "POST", f"/staff/v1/cases/{case_id}/status", account=alice, json={"status": "closed"}
    )
    assert closed.status == 200
    assert closed.body["status"] == "closed"
    second = await staff_calls.call(
        "POST",
        f"/staff/v1/cases/{case_id}/replies",
        account=alice,
        data=reply_envelope(staff, applicant, case_id, "alice", "One more thing."),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert second.body["seq"] == 3
    assert (await staff_calls.call("GET", f"/staff/v1/cases/{case_id}", account=alice)).body["status"] == "closed"


async def test_status_values(staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls) -> None:
    alice = await staff_calls.enrol_and_login("alice")
    case_id, _ = await new_case(staff, public_calls, owner="alice")
    for status in ("reviewing", "rejected", "new", "escalated", "closed", "replied"):
        answer = await staff_calls.call(
            "POST", f"/staff/v1/cases/{case_id}/status", account=alice, json={"status": status}
        )
        assert answer.status == 200
        assert answer.body["status"] == status
    listed = await staff_calls.call("GET", "/staff/v1/cases?status=replied", account=alice)
    assert [c["id"] for c in listed.body["cases"]] == [case_id]


async def test_handover_rules(staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls) -> None:
    admin = await staff_calls.enrol_and_login("root", "admin")
    alice = await staff_calls.enrol_and_login("alice")
    bob = await staff_calls.enrol_and_login("bob")
    carol = await staff_calls.enrol_and_login("carol")
    case_id, _ = await new_case(staff, public_calls, owner="alice")
    science, _ = await new_case(staff, public_calls, owner="bob", pool="science")

    async def hand(account: Account, case: str, target: str) -> tuple[int, str]:
        answer = await staff_calls.call(
            "POST", f"/staff/v1/cases/{case}/handover", account=account, json={"handler": target}
        )
        return answer.status, (answer.body.get("error", {}).get("code", "") if answer.status != 200 else "")

    before = await staff.snapshot()
    assert await hand(alice, case_id, "alice") == (422, "invalid_handover_target")  # oneself
    assert await hand(alice, case_id, "zed") == (422, "invalid_handover_target")  # not in the directory
    assert await hand(alice, case_id, "root") == (422, "invalid_handover_target")  # an admin
    assert await hand(bob, science, "alice") == (422, "invalid_handover_target")  # not in the science pool
    assert await staff.snapshot() == before
    # Listed but revoked here: refused.
    await staff_calls.call("POST", "/staff/v1/admin/staff/carol/revoke", account=admin)
    assert await hand(alice, case_id, "carol") == (422, "invalid_handover_target")
    del carol
    assert await hand(alice, case_id, "bob") == (200, "")
    assert (await staff_calls.call("GET", f"/staff/v1/cases/{case_id}", account=alice)).status == 404
    assert (await staff_calls.call("GET", f"/staff/v1/cases/{case_id}", account=bob)).status == 200
    assert await hand(alice, case_id, "bob") == (404, "not_found")
    async with staff.dep.store.read() as session:
        row = await session.get(ContactRow, case_id)
    assert row is not None
    assert row.owner == "bob"


async def test_escalation_receipts(staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls) -> None:
    alice = await staff_calls.enrol_and_login("alice")
    case_id, _ = await new_case(staff, public_calls, owner="alice")
    path = f"/staff/v1/cases/{case_id}/escalations"
    before = await staff.snapshot()
    forged = await staff_calls.call(
        "POST", path, account=alice, json={"receipt": receipt_for(staff, "pkg-forged-1", key="mallory")}
    )
    assert forged.status == 422
    assert forged.body["error"]["code"] == "receipt_invalid"
    tampered = receipt_for(staff, "pkg-0001-abcd")
    tampered["day"] = "2030-01-03"
    assert (await staff_calls.call("POST", path, account=alice, json={"receipt": tampered})).status == 422
    for bad in ({}, {"package": "x"}, "receipt", [1], {**receipt_for(staff, "pkg-0001-abcd"), "extra": 1}):
        malformed = await staff_calls.call("POST", path, account=alice, json={"receipt": bad})
        assert malformed.status == 400, bad
        assert malformed.body["error"]["code"] == "malformed_receipt"
    assert await staff.snapshot() == before

    good = receipt_for(staff, "pkg-0001-abcd")
    recorded = await staff_calls.call("POST", path, account=alice, json={"receipt": good})
    assert recorded.status == 201, recorded.body
    assert recorded.body["package"] == "pkg-0001-abcd"
    detail = await staff_calls.call("GET", f"/staff/v1/cases/{case_id}", account=alice)
    assert detail.body["status"] == "escalated"
    assert detail.body["escalations"] == [{"package": "pkg-0001-abcd", "day": recorded.body["day"]}]
    again = await staff_calls.call("POST", path, account=alice, json={"receipt": good})
    assert again.status == 409
    assert again.body["error"]["code"] == "already_recorded"
    async with staff.dep.store.read() as session:
        [stored] = (await session.scalars(select(EscalationRecord))).all()
    assert IntegrationReceipt.from_json(json.loads(stored.receipt)).package_id == "pkg-0001-abcd"
    assert stored.handler == "alice"


async def test_every_case_change_is_audited_without_content(
    staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls
) -> None:
    alice = await staff_calls.enrol_and_login("alice")
    await staff_calls.enrol_and_login("bob")
    case_id, applicant = await new_case(staff, public_calls, owner="alice")
    base = f"/staff/v1/cases/{case_id}"
    await staff_calls.call("POST", base + "/status", account=alice, json={"status": "reviewing"})
    secret_words = "canary-reply-3c1: meet at the bridge"
    posted = await staff_calls.call(
        "POST",
        base + "/replies",
        account=alice,
        data=reply_envelope(staff, applicant, case_id, "alice", secret_words),
        headers={"Content-Type": "application/octet-stream"},
    )
    await staff_calls.call(
        "POST", base + "/escalations", account=alice, json={"receipt": receipt_for(staff, "pkg-audit-01")}
    )
    await staff_calls.call("POST", base + "/handover", account=alice, json={"handler": "bob"})
    async with staff.dep.store.read() as session:
        rows = (
            await session.scalars(
                select(AuditLogEntry).where(AuditLogEntry.case_id == case_id).order_by(AuditLogEntry.seq)
            )
        ).all()
    assert [(r.actor, r.action, r.detail) for r in rows] == [
        ("alice", "status", "reviewing"),
        ("alice", "reply", f"message {posted.body['message']}"),
        ("alice", "escalation", "package pkg-audit-01"),
        ("alice", "handover", "to bob"),
    ]
    assert all(r.day == staff.state.today() for r in rows)
    assert "canary-reply" not in repr(await staff.snapshot())


async def test_concurrent_replies_and_follow_ups_take_distinct_sequence_numbers(
    staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls
) -> None:
    """Replies and follow-ups share one sequence per mailbox; the applicant pages replies by it, so
    two messages with one number could hide one of them. Both writers lock the mailbox row."""
    alice = await staff_calls.enrol_and_login("alice")
    case_id, applicant = await new_case(staff, public_calls, owner="alice")

    async def one_reply(i: int) -> None:
        posted = await staff_calls.call(
            "POST",
            f"/staff/v1/cases/{case_id}/replies",
            account=alice,
            data=reply_envelope(staff, applicant, case_id, "alice", f"reply {i}"),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert posted.status == 201, posted.body

    await asyncio.gather(
        *(one_reply(i) for i in range(8)),
        *(follow_up(public_calls, staff, applicant, case_id, f"more {i}") for i in range(4)),
    )
    detail = await staff_calls.call("GET", f"/staff/v1/cases/{case_id}", account=alice)
    assert sorted(m["seq"] for m in detail.body["messages"]) == list(range(1, 13))
    assert len(await fetch_mailbox(public_calls, applicant)) == 8
