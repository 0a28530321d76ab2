"""The signed, hash-chained audit log against the real staff app, on SQLite and PostgreSQL.

Every tampering a seized server could attempt on the stored rows (deleting,
editing, reordering, re-signing with another key, cutting the tail) is done
with SQL on the real database, and the admin's verification must name it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

import pytest
from sqlalchemy import delete, func, select, update

from safepassage.client.audit import (
    AuditHeadRef,
    AuditLogTampered,
    FindingKind,
    describe_audit_report,
    verify_audit_log,
)
from safepassage.client.errors import ServerRefused
from safepassage.client.staff_api import SessionToken, StaffClient
from safepassage.crypto import labels as L
from safepassage.crypto.audit import GENESIS_PREV, AuditBody, AuditEntry
from safepassage.crypto.errors import BadSignature
from safepassage.crypto.keys import SigningKey
from safepassage.server.audit import append_audit
from safepassage.server.db.engine import Store, make_engine
from safepassage.server.db.models import AuditHead, AuditLogEntry

from .staff_deployment import Account, StaffCalls, StaffDeployment


async def _rows(sd: StaffDeployment) -> list[AuditLogEntry]:
    async with sd.dep.store.read() as session:
        return list((await session.scalars(select(AuditLogEntry).order_by(AuditLogEntry.seq))).all())


def _client(sd: StaffDeployment, account: Account) -> StaffClient:
    assert account.token is not None
    return StaffClient(sd.base_url, allow_direct=True, token=SessionToken(account.token))


async def _admin_and_log(sd: StaffDeployment, calls: StaffCalls) -> Account:
    """An admin and a handler enrolled and logged in: 8 entries, the last the handler's login."""
    root = await calls.enrol_and_login("root", "admin")
    await calls.enrol_and_login("alice")
    return root


async def _verify(sd: StaffDeployment, admin: Account, **kwargs: object):  # type: ignore[no-untyped-def]
    async with _client(sd, admin) as client:
        return await verify_audit_log(client, [sd.dep.keys.receipt.verify_key], **kwargs)  # type: ignore[arg-type]


# --- the untouched chain ----------------------------------------------------------------------------


async def test_a_normal_chain_verifies_and_names_its_head(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    root = await _admin_and_log(staff, staff_calls)
    rows = await _rows(staff)
    assert [r.seq for r in rows] == list(range(1, 9))
    assert [(r.actor, r.action) for r in rows] == [
        ("operator", "invite"),
        ("root", "enroll"),
        ("root", "enroll_confirmed"),
        ("root", "login"),
        ("operator", "invite"),
        ("alice", "enroll"),
        ("alice", "enroll_confirmed"),
        ("alice", "login"),
    ]
    assert rows[0].prev_hash == GENESIS_PREV
    assert all(b.prev_hash == a.entry_hash for a, b in itertools.pairwise(rows))
    report = await _verify(staff, root)
    assert report.ok, report.findings
    assert report.entries == 8
    assert report.head == AuditHeadRef(8, rows[-1].entry_hash)
    assert report.signers == {staff.dep.keys.receipt.verify_key.key_id}
    assert "Audit log verified: 8 entries" in describe_audit_report(report)
    # Checking again against the head remembered from the first check still passes.
    again = await _verify(staff, root, last_seen=report.head)
    assert again.ok
    # The signature is an audit signature, never a receipt.
    entry = AuditEntry.from_json(_wire_of(rows[0]))
    entry.verify(staff.dep.keys.receipt.verify_key)
    with pytest.raises(BadSignature):
        staff.dep.keys.receipt.verify_key.verify(L.SIG_RECEIPT, entry.body.signed_bytes(), entry.signature)


def _wire_of(row: AuditLogEntry) -> dict[str, object]:
    from safepassage.server.staff.audit_api import wire

    return wire(row)


async def test_paging_returns_every_entry_once(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    root = await _admin_and_log(staff, staff_calls)
    first = await staff_calls.call("GET", "/staff/v1/admin/audit?limit=3", account=root)
    assert first.status == 200
    assert [e["seq"] for e in first.body["entries"]] == [1, 2, 3]
    assert first.body["head"]["seq"] == 8
    rest = await staff_calls.call("GET", "/staff/v1/admin/audit?after=3&limit=500", account=root)
    assert [e["seq"] for e in rest.body["entries"]] == [4, 5, 6, 7, 8]
    past = await staff_calls.call("GET", "/staff/v1/admin/audit?after=8", account=root)
    assert past.body["entries"] == []
    async with _client(staff, root) as client:
        page = await client.audit_page(after=6, limit=1)
        assert [e["seq"] for e in page.entries] == [7]
        from safepassage.client.audit import fetch_audit_log

        entries, head_seq, _ = await fetch_audit_log(client, page_size=2)
        assert [e["seq"] for e in entries] == list(range(1, 9))
        assert head_seq == 8


@pytest.mark.parametrize(
    "query",
    ["?limit=0", "?limit=501", "?limit=x", "?after=-1", "?after=1e3", "?after=99999999999999999"],
)
async def test_bad_paging_parameters_are_refused(staff: StaffDeployment, staff_calls: StaffCalls, query: str) -> None:
    root = await staff_calls.enrol_and_login("root", "admin")
    answer = await staff_calls.call("GET", "/staff/v1/admin/audit" + query, account=root)
    assert answer.status == 400
    assert answer.body["error"]["code"] == "malformed_request"


async def test_only_admins_read_the_audit_log(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    alice = await staff_calls.enrol_and_login("alice")
    refused = await staff_calls.call("GET", "/staff/v1/admin/audit", account=alice)
    assert refused.status == 403
    assert refused.body["error"]["code"] == "forbidden_role"
    anonymous = await staff_calls.call("GET", "/staff/v1/admin/audit")
    assert anonymous.status == 401
    async with _client(staff, alice) as client:
        with pytest.raises(ServerRefused):
            await client.audit_page()


# --- tampering, each named ----------------------------------------------------------------------------


async def _delete_row(sd: StaffDeployment) -> None:
    async with sd.dep.store.write() as session:
        await session.execute(delete(AuditLogEntry).where(AuditLogEntry.seq == 4))


async def _edit_detail(sd: StaffDeployment) -> None:
    async with sd.dep.store.write() as session:
        await session.execute(update(AuditLogEntry).where(AuditLogEntry.seq == 5).values(detail="bob as admin"))


async def _edit_detail_and_hash(sd: StaffDeployment) -> None:
    """An editor who also recomputes the entry's hash (but cannot sign)."""
    rows = await _rows(sd)
    row = rows[4]
    body = AuditBody(
        seq=row.seq,
        prev=row.prev_hash,
        day=row.day.isoformat(),
        actor=row.actor,
        action=row.action,
        case=row.case_id,
        detail="bob as admin",
        key_id=sd.dep.keys.receipt.verify_key.key_id,
    )
    async with sd.dep.store.write() as session:
        await session.execute(
            update(AuditLogEntry)
            .where(AuditLogEntry.seq == 5)
            .values(detail="bob as admin", entry_hash=body.entry_hash())
        )


async def _reorder(sd: StaffDeployment) -> None:
    async with sd.dep.store.write() as session:
        await session.execute(update(AuditLogEntry).where(AuditLogEntry.seq == 5).values(seq=-1))
        await session.execute(update(AuditLogEntry).where(AuditLogEntry.seq == 6).values(seq=5))
        await session.execute(update(AuditLogEntry).where(AuditLogEntry.seq == -1).values(seq=6))


async def _resign_with_another_key(sd: StaffDeployment) -> None:
    """A seized server's operator rewrites entry 5 and signs it with a key of their own."""
    forger = SigningKey.generate()
    row = (await _rows(sd))[4]
    body = AuditBody(
        seq=row.seq,
        prev=row.prev_hash,
        day=row.day.isoformat(),
        actor=row.actor,
        action=row.action,
        case=row.case_id,
        detail="bob as admin",
        key_id=forger.verify_key.key_id,
    )
    forged = AuditEntry.make(forger, body)
    async with sd.dep.store.write() as session:
        await session.execute(
            update(AuditLogEntry)
            .where(AuditLogEntry.seq == 5)
            .values(
                detail="bob as admin",
                entry_hash=forged.hash,
                key_id=forger.verify_key.key_id.hex(),
                signature=forged.signature,
            )
        )


async def _flip_signature(sd: StaffDeployment) -> None:
    row = (await _rows(sd))[2]
    bad = bytes([row.signature[0] ^ 1]) + row.signature[1:]
    async with sd.dep.store.write() as session:
        await session.execute(update(AuditLogEntry).where(AuditLogEntry.seq == 3).values(signature=bad))


async def _cut_tail_leave_head(sd: StaffDeployment) -> None:
    async with sd.dep.store.write() as session:
        await session.execute(delete(AuditLogEntry).where(AuditLogEntry.seq >= 7))


async def _malformed_key(sd: StaffDeployment) -> None:
    async with sd.dep.store.write() as session:
        await session.execute(update(AuditLogEntry).where(AuditLogEntry.seq == 2).values(key_id="not-hex"))


TAMPERING = {
    "deleted row": (_delete_row, {(FindingKind.GAP, 4)}),
    "edited detail": (_edit_detail, {(FindingKind.EDITED, 5)}),
    "edited detail with its hash recomputed": (
        _edit_detail_and_hash,
        {(FindingKind.BAD_SIGNATURE, 5), (FindingKind.BROKEN_LINK, 6)},
    ),
    "two rows swapped": (_reorder, {(FindingKind.REORDERED, 5), (FindingKind.REORDERED, 6)}),
    "re-signed with another key": (
        _resign_with_another_key,
        {(FindingKind.UNKNOWN_KEY, 5), (FindingKind.BROKEN_LINK, 6)},
    ),
    "signature altered": (_flip_signature, {(FindingKind.BAD_SIGNATURE, 3)}),
    "tail cut, head left": (_cut_tail_leave_head, {(FindingKind.TRUNCATED, 7)}),
    "malformed row": (_malformed_key, {(FindingKind.MALFORMED, 2)}),
}


@pytest.mark.parametrize("name", list(TAMPERING))
async def test_tampering_is_detected_and_named(staff: StaffDeployment, staff_calls: StaffCalls, name: str) -> None:
    root = await _admin_and_log(staff, staff_calls)
    tamper, expected = TAMPERING[name]
    await tamper(staff)
    report = await _verify(staff, root)
    assert not report.ok
    assert report.head is None
    assert {(f.kind, f.seq) for f in report.findings} == expected
    text = describe_audit_report(report)
    assert text.startswith("AUDIT LOG DOES NOT VERIFY")
    for kind, seq in expected:
        assert f"seq {seq}: {kind.value}" in text
    with pytest.raises(AuditLogTampered):
        report.raise_for_findings()


async def test_a_cut_tail_is_caught_against_the_remembered_head(
    staff: StaffDeployment, staff_calls: StaffCalls
) -> None:
    """The careful forger deletes the newest entries and moves the head back: only a remembered head shows it."""
    root = await _admin_and_log(staff, staff_calls)
    remembered = (await _verify(staff, root)).head
    assert remembered is not None
    rows = await _rows(staff)
    async with staff.dep.store.write() as session:
        await session.execute(delete(AuditLogEntry).where(AuditLogEntry.seq >= 7))
        await session.execute(update(AuditHead).values(seq=6, entry_hash=rows[5].entry_hash))
    assert (await _verify(staff, root)).ok  # consistent on its own ...
    report = await _verify(staff, root, last_seen=remembered)  # ... but not against what the admin saw
    assert {(f.kind, f.seq) for f in report.findings} == {(FindingKind.TRUNCATED, 7)}
    assert "you saw it reach entry 9" not in describe_audit_report(report)
    assert "you saw it reach entry 8" in describe_audit_report(report)


async def test_a_rewritten_history_is_caught_against_the_remembered_head(
    staff: StaffDeployment, staff_calls: StaffCalls
) -> None:
    root = await _admin_and_log(staff, staff_calls)
    report = await _verify(staff, root)
    assert report.head is not None
    other = dataclasses.replace(report.head, hash=bytes(32))
    rewritten = await _verify(staff, root, last_seen=other)
    assert {(f.kind, f.seq) for f in rewritten.findings} == {(FindingKind.REWRITTEN, 8)}


async def test_entries_signed_before_a_receipt_key_rotation_still_verify(
    staff: StaffDeployment, staff_calls: StaffCalls
) -> None:
    """Each entry names its key, so the old key (from an older directory) verifies the old entries."""
    root = await _admin_and_log(staff, staff_calls)
    old_key = staff.dep.keys.receipt
    new_key = SigningKey.generate()
    async with staff.dep.store.write() as session:
        await append_audit(session, new_key, day=staff.state.today(), actor="root", action="rotation_test")
    both = await _verify_with(staff, root, [old_key.verify_key, new_key.verify_key])
    assert both.ok
    assert both.entries == 9
    only_old = await _verify_with(staff, root, [old_key.verify_key])
    assert {(f.kind, f.seq) for f in only_old.findings} == {(FindingKind.UNKNOWN_KEY, 9)}


async def _verify_with(sd: StaffDeployment, admin: Account, keys: list):  # type: ignore[no-untyped-def,type-arg]
    async with _client(sd, admin) as client:
        return await verify_audit_log(client, keys)


# --- concurrency ------------------------------------------------------------------------------------


async def test_concurrent_appends_from_two_front_ends_keep_one_chain(
    staff: StaffDeployment, staff_calls: StaffCalls
) -> None:
    """Appends from two engines (two front ends on one database), many at once, never fork the chain."""
    root = await staff_calls.enrol_and_login("root", "admin")
    key = staff.dep.keys.receipt
    other = Store(make_engine(staff.dep.config.url))
    stores = [staff.dep.store, other]

    async def one(i: int) -> None:
        async with stores[i % 2].write() as session:
            await append_audit(session, key, day=staff.state.today(), actor="root", action="concurrency", detail=str(i))

    try:
        await asyncio.gather(*(one(i) for i in range(40)))
    finally:
        await other.close()
    rows = await _rows(staff)
    assert [r.seq for r in rows] == list(range(1, 45))
    assert sorted(int(r.detail) for r in rows if r.action == "concurrency") == list(range(40))
    async with staff.dep.store.read() as session:
        head = (await session.execute(select(AuditHead.seq, AuditHead.entry_hash))).one()
        count = await session.scalar(select(func.count()).select_from(AuditHead))
    assert count == 1
    assert head == (44, rows[-1].entry_hash)
    report = await _verify(staff, root)
    assert report.ok, report.findings


async def test_a_failed_change_leaves_no_audit_entry(staff: StaffDeployment, staff_calls: StaffCalls) -> None:
    """The entry is in the change's transaction: a rolled-back change takes its entry (and head move) with it."""
    await staff_calls.enrol_and_login("root", "admin")
    before = await _rows(staff)

    class Boom(Exception):
        pass

    async def change_that_fails() -> None:
        async with staff.dep.store.write() as session:
            await append_audit(session, staff.dep.keys.receipt, day=staff.state.today(), actor="root", action="x")
            raise Boom

    with pytest.raises(Boom):
        await change_that_fails()
    assert [r.seq for r in await _rows(staff)] == [r.seq for r in before]
    async with staff.dep.store.read() as session:
        assert (await session.scalar(select(AuditHead.seq))) == len(before)
