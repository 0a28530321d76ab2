"""Audit entries and the verifier without a server: parsing, edge cases of the report (section 20)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safepassage.client.audit import AuditHeadRef, FindingKind, check_audit_entries, describe_audit_report
from safepassage.client.errors import ProtocolViolation
from safepassage.client.staff_api import audit_page
from safepassage.crypto.audit import GENESIS_PREV, AuditBody, AuditEntry
from safepassage.crypto.encoding import b64e
from safepassage.crypto.errors import MalformedInput

from .helpers import signing_key

KEY = signing_key("audit-unit-server")


def chain(n: int, key: Any = KEY, start_prev: bytes = GENESIS_PREV) -> list[AuditEntry]:
    out: list[AuditEntry] = []
    prev = start_prev
    for seq in range(1, n + 1):
        body = AuditBody(
            seq=seq,
            prev=prev,
            day="2026-11-28",
            actor="alice",
            action="status",
            case="c_0123456789",
            detail=f"step {seq}",
            key_id=key.verify_key.key_id,
        )
        entry = AuditEntry.make(key, body)
        out.append(entry)
        prev = entry.hash
    return out


def wire(entries: list[AuditEntry]) -> list[dict[str, Any]]:
    return [dict(e.to_json()) for e in entries]


def check(raw: list[dict[str, Any]], head: int | None = None, **kwargs: Any):  # type: ignore[no-untyped-def]
    entries = [AuditEntry.from_json(r) for r in raw if isinstance(r.get("key"), str) and len(r["key"]) == 64]
    last = entries[-1] if entries else None
    head_seq = head if head is not None else (last.body.seq if last else 0)
    head_hash = last.hash if last else GENESIS_PREV
    return check_audit_entries(raw, [KEY.verify_key], head_seq=head_seq, head_hash=head_hash, **kwargs)


def test_entry_round_trip_and_field_limits() -> None:
    [entry] = chain(1)
    assert AuditEntry.from_json(entry.to_json()) == entry
    assert entry.to_json()["seq"] == 1
    assert "type" not in entry.to_json()
    for change in (
        {"seq": 0},
        {"prev": b"\x00" * 31},
        {"day": "2026-02-30"},
        {"actor": ""},
        {"actor": "x" * 65},
        {"action": "Login"},
        {"case": "c" * 33},
        {"detail": "d" * 201},
    ):
        with pytest.raises(MalformedInput):
            dataclasses.replace(entry.body, **change)  # type: ignore[arg-type]
    other = signing_key("audit-unit-other")
    with pytest.raises(MalformedInput):
        AuditEntry.make(other, entry.body)  # the body names the server's key


def test_an_empty_log_verifies_and_a_remembered_head_catches_it_emptied() -> None:
    assert check([]).ok
    report = check([], last_seen=AuditHeadRef(3, b"\x01" * 32))
    assert [(f.kind, f.seq) for f in report.findings] == [(FindingKind.TRUNCATED, 1)]


def test_a_gap_is_reported_once_as_a_range() -> None:
    raw = wire(chain(8))
    del raw[2:5]
    report = check(raw)
    assert [(f.kind, f.seq, f.detail) for f in report.findings] == [(FindingKind.GAP, 3, "entries 3 to 5 are missing")]


def test_a_copied_entry_and_a_spliced_chain_are_named() -> None:
    raw = wire(chain(4))
    # Row 3 overwritten with a copy of entry 2: a genuine entry, in a place already taken.
    copied = [*raw[:2], {**raw[1], "seq": 3}, raw[3]]
    found = {(f.kind, f.seq) for f in check(copied).findings}
    assert found == {(FindingKind.REORDERED, 3), (FindingKind.DUPLICATE, 3), (FindingKind.GAP, 3)}
    # Entry 3 taken from another, validly signed chain.
    spliced = [*raw[:2], wire(chain(3, start_prev=b"\x09" * 32))[2], raw[3]]
    found = {(f.kind, f.seq) for f in check(spliced).findings}
    assert found == {(FindingKind.BROKEN_LINK, 3), (FindingKind.BROKEN_LINK, 4)}


def test_a_server_head_with_another_hash_is_rewritten() -> None:
    entries = chain(3)
    report = check_audit_entries(wire(entries), [KEY.verify_key], head_seq=3, head_hash=b"\x05" * 32)
    assert [(f.kind, f.seq) for f in report.findings] == [(FindingKind.REWRITTEN, 3)]


def test_report_text_is_safe_to_print() -> None:
    raw = wire(chain(2))
    raw[1]["detail"] = "\x1b[2J\u202eerror: all good"
    text = describe_audit_report(check(raw))
    assert "\x1b" not in text
    assert "\u202e" not in text
    assert "seq 2: edited" in text
    many = wire(chain(60))
    for r in many:
        r["sig"] = b64e(b"\x00" * 64)
    text = describe_audit_report(check(many))
    assert "... and 10 more" in text


def test_page_shape_is_checked_but_bad_entries_are_kept_as_evidence() -> None:
    good = {"entries": [{"seq": 1, "anything": True}], "head": {"seq": 1, "hash": b64e(bytes(32))}}
    page = audit_page(json.loads(json.dumps(good)), 10)
    assert page.entries == ({"seq": 1, "anything": True},)
    for bad in (
        {"entries": [], "head": {"seq": 0, "hash": b64e(bytes(32))}, "extra": 1},
        {"entries": [{"no_seq": 1}], "head": {"seq": 0, "hash": b64e(bytes(32))}},
        {"entries": [{"seq": 1}] * 11, "head": {"seq": 0, "hash": b64e(bytes(32))}},
        {"entries": [], "head": {"seq": 0, "hash": "short"}},
    ):
        with pytest.raises(ProtocolViolation):
            audit_page(bad, 10)  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(
    st.fixed_dictionaries(
        {},
        optional=dict.fromkeys(
            ("seq", "prev", "day", "actor", "action", "case", "detail", "key", "hash", "sig"), json_values
        ),
    )
)
def test_parsing_any_json_raises_only_malformed_input(value: dict[str, Any]) -> None:
    try:
        AuditEntry.from_json(value)
    except MalformedInput:
        return


@given(st.integers(min_value=0, max_value=5), st.sampled_from(["detail", "sig", "prev", "drop", "swap"]))
def test_any_single_tampering_is_reported(position: int, how: str) -> None:
    raw = wire(chain(6))
    if how == "detail":
        raw[position]["detail"] += "!"
    elif how == "sig":
        raw[position]["sig"] = b64e(bytes(64))
    elif how == "prev":
        raw[position]["prev"] = b64e(b"\x07" * 32)
    elif how == "drop":
        del raw[position]
    else:
        other = (position + 1) % 6
        raw[position]["seq"], raw[other]["seq"] = raw[other]["seq"], raw[position]["seq"]
        raw.sort(key=lambda r: r["seq"])
    report = check(raw, head=6)
    assert not report.ok
    assert report.head is None


def test_a_wholly_reversed_log_is_placed_in_linear_time() -> None:
    entries = chain(2000)
    raw = wire(entries)
    seqs = [r["seq"] for r in raw]
    for r, seq in zip(raw, reversed(seqs), strict=True):
        r["seq"] = seq
    raw.sort(key=lambda r: r["seq"])
    report = check(raw, head=2000)
    kinds = report.kinds()
    assert kinds == {FindingKind.REORDERED, FindingKind.REWRITTEN}
    assert sum(f.kind is FindingKind.REORDERED for f in report.findings) == 2000


def test_checking_needs_receipt_keys() -> None:
    from safepassage.client.errors import UsageError

    with pytest.raises(UsageError):
        check_audit_entries(wire(chain(1)), [], head_seq=1, head_hash=bytes(32))


def test_receipt_keys_come_from_every_directory_once() -> None:
    from dataclasses import replace as dc_replace

    from safepassage.client.audit import receipt_keys_of

    from .helpers import Org

    org = Org()
    first = org.directory(1)
    rotated = dc_replace(org.directory(2), receipt_key=KEY.verify_key)
    keys = receipt_keys_of([first, org.directory(2), rotated])
    assert keys == [org.receipt.verify_key, KEY.verify_key]
