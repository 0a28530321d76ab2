"""Checking the server's audit log as an admin (docs/protocol.md, section 20.4).

:func:`verify_audit_log` pages through ``GET /admin/audit`` and checks every
entry against the receipt keys the admins themselves signed into directories
(so a server cannot vouch for itself with a key nobody vetted). It does not
stop at the first problem: an admin needs to know *what* was done to the log,
so every finding names its kind and the sequence numbers concerned.

What each kind means, in the terms of a seized or subverted server:

* ``gap``: entries are missing (rows deleted from the middle).
* ``edited``: an entry's content no longer matches the hash recorded for it.
* ``broken_link``: an entry does not name the hash of the entry before it
  (one was replaced, or the chain was spliced).
* ``reordered``: a genuine entry sits at another place than the one it was
  signed for.
* ``bad_signature``: the named receipt key did not sign the entry.
* ``unknown_key``: the entry names a key that is not a receipt key of any
  directory the admins signed (a re-signed history).
* ``truncated``: the log ends before the server's own head or before a head
  this admin saw earlier (entries removed from the end).
* ``rewritten``: the entry at a head this admin saw earlier has another hash
  now (the history since then was replaced).
* ``duplicate``: two entries claim the same place.
* ``malformed``: an entry is not in the documented form at all.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Final

from safepassage.crypto.audit import GENESIS_PREV, AuditEntry
from safepassage.crypto.directory import Directory
from safepassage.crypto.encoding import JsonObject, b64e
from safepassage.crypto.errors import BadSignature, MalformedInput, SafePassageError
from safepassage.crypto.keys import KeyId, VerifyKey

from .errors import ProtocolViolation, UsageError, untrusted_text
from .staff_api import MAX_AUDIT_PAGE, StaffClient

#: At most this many findings are listed one by one; the rest are counted.
MAX_LISTED: Final = 50


class FindingKind(enum.StrEnum):
    GAP = "gap"
    EDITED = "edited"
    BROKEN_LINK = "broken_link"
    REORDERED = "reordered"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    TRUNCATED = "truncated"
    REWRITTEN = "rewritten"
    DUPLICATE = "duplicate"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    #: The sequence number concerned (the first one, for a range).
    seq: int
    detail: str


@dataclass(frozen=True, slots=True)
class AuditHeadRef:
    """A point in the log an admin can remember and pass back as ``last_seen``."""

    seq: int
    hash: bytes

    def __repr__(self) -> str:
        return f"AuditHeadRef({self.seq}, {b64e(self.hash)[:12]}...)"


@dataclass(frozen=True, slots=True)
class AuditReport:
    entries: int
    #: The newest entry, when the whole log verified; remember it for the next check.
    head: AuditHeadRef | None
    findings: tuple[Finding, ...]
    #: Key ids of the receipt keys that signed the entries that verified.
    signers: frozenset[KeyId] = field(default_factory=frozenset)

    @property
    def ok(self) -> bool:
        return not self.findings

    def kinds(self) -> set[FindingKind]:
        return {f.kind for f in self.findings}

    def raise_for_findings(self) -> None:
        if self.findings:
            raise AuditLogTampered(
                f"{len(self.findings)} problem(s), first: {self.findings[0].kind} at seq {self.findings[0].seq}"
            )


class AuditLogTampered(SafePassageError):
    """The audit log does not verify: entries were removed, changed, reordered or signed by an unknown key."""

    hint = "Keep a copy of this report, do not trust the server's account of what staff did, and tell the other admins."
    exit_code = 3


@dataclass(slots=True)
class _Item:
    served: int
    entry: AuditEntry
    #: The sequence number the entry was signed for, once known.
    signed: int | None = None


async def fetch_audit_log(
    staff: StaffClient, *, page_size: int = MAX_AUDIT_PAGE
) -> tuple[list[JsonObject], int, bytes]:
    """Every entry the server serves, in order, and its head (from the last page)."""
    entries: list[JsonObject] = []
    after = 0
    while True:
        page = await staff.audit_page(after=after, limit=page_size)
        for raw in page.entries:
            seq = raw["seq"]
            if not isinstance(seq, int) or seq <= after:
                # The API contract, not the data: seq is the table's key and pages go forward.
                raise ProtocolViolation("the audit log page is not in increasing sequence order")
            after = seq
            entries.append(raw)
        if len(page.entries) < page_size:
            return entries, page.head_seq, page.head_hash


def receipt_keys_of(directories: Iterable[Directory]) -> list[VerifyKey]:
    """Every receipt key named by ``directories`` (verified ones, e.g. the whole transparency log), once each.

    Entries name the key that signed them, so after a receipt-key rotation the
    old entries still verify against the key of the directories of their time.
    """
    out: list[VerifyKey] = []
    for directory in directories:
        if directory.receipt_key not in out:
            out.append(directory.receipt_key)
    return out


async def verify_audit_log(
    staff: StaffClient, receipt_keys: Iterable[VerifyKey], *, last_seen: AuditHeadRef | None = None
) -> AuditReport:
    """Fetch the whole audit log and check it; see :func:`check_audit_entries`."""
    raw, head_seq, head_hash = await fetch_audit_log(staff)
    return check_audit_entries(raw, receipt_keys, head_seq=head_seq, head_hash=head_hash, last_seen=last_seen)


def check_audit_entries(
    raw: list[JsonObject],
    receipt_keys: Iterable[VerifyKey],
    *,
    head_seq: int,
    head_hash: bytes,
    last_seen: AuditHeadRef | None = None,
) -> AuditReport:
    """Check entries as served (in served order) against ``receipt_keys``; report every problem found."""
    keys = {k.key_id: k for k in receipt_keys}
    if not keys:
        # Without keys every entry would look forged: a caller's mistake, not a finding.
        raise UsageError("give the receipt keys of the signed directories to check the audit log against")
    findings: list[Finding] = []
    items: list[_Item] = []
    #: Places taken by entries too damaged to read: reported as malformed, not also as a gap.
    unreadable: set[int] = set()
    for obj in raw:
        seq_value = obj.get("seq")
        served = seq_value if isinstance(seq_value, int) else 0
        try:
            entry = AuditEntry.from_json(obj)
        except MalformedInput:
            findings.append(Finding(FindingKind.MALFORMED, served, "not a well-formed audit entry"))
            unreadable.add(served)
            continue
        items.append(_Item(entry.body.seq, entry))

    _place(items, findings)
    signers = _check_signatures(items, keys, findings)
    by_place = _index(items, findings)
    _check_links(items, by_place, findings)
    last = max((it.signed or it.served for it in items), default=0)
    served_max = max([it.served for it in items] + [*unreadable, 0])
    last = max(last, served_max)
    _check_gaps(by_place, unreadable, last, findings)
    _check_tail(served_max, by_place, head_seq, head_hash, last_seen, findings)

    findings.sort(key=lambda f: (f.seq, f.kind.value))
    head = None
    if not findings and items:
        newest = items[-1]
        head = AuditHeadRef(newest.served, newest.entry.hash)
    return AuditReport(len(raw), head, tuple(findings), frozenset(signers))


def _place(items: list[_Item], findings: list[Finding]) -> None:
    """Decide the place each entry was signed for: where it is, or, for a moved genuine entry, after its predecessor.

    Entries whose hash matches where they stand are placed first; then, from
    every placed entry, the entries naming it as ``prev`` are tried one place
    after it. Each entry is tried once per placed predecessor, so a log reordered
    wholesale still takes linear time.
    """
    successors: dict[bytes, list[_Item]] = {}
    for it in items:
        successors.setdefault(it.entry.body.prev, []).append(it)
        if it.entry.hash_matches():
            it.signed = it.served
    # (predecessor hash, the place after it) for the genesis and every entry already placed.
    queue: deque[tuple[bytes, int]] = deque([(GENESIS_PREV, 1)])
    queue.extend((it.entry.hash, it.signed + 1) for it in items if it.signed is not None)
    while queue:
        prev, candidate = queue.popleft()
        for it in successors.get(prev, ()):
            if it.signed is not None or candidate == it.served:
                continue
            moved = AuditEntry(replace(it.entry.body, seq=candidate), it.entry.hash, it.entry.signature)
            if moved.hash_matches():
                it.entry, it.signed = moved, candidate
                findings.append(
                    Finding(
                        FindingKind.REORDERED, it.served, f"stored as entry {it.served} but signed as entry {candidate}"
                    )
                )
                queue.append((it.entry.hash, candidate + 1))
    for it in items:
        if it.signed is None:
            findings.append(
                Finding(FindingKind.EDITED, it.served, "its content does not match the hash recorded for it")
            )


def _check_signatures(items: list[_Item], keys: dict[KeyId, VerifyKey], findings: list[Finding]) -> set[KeyId]:
    signers: set[KeyId] = set()
    for it in items:
        if it.signed is None:
            continue  # an edited body cannot carry the original signature; already reported
        key = keys.get(it.entry.body.key_id)
        if key is None:
            findings.append(
                Finding(
                    FindingKind.UNKNOWN_KEY,
                    it.served,
                    f"signed by key {it.entry.body.key_id.short()}..., not a receipt key of any signed directory",
                )
            )
            continue
        try:
            it.entry.verify(key)
        except BadSignature:
            findings.append(Finding(FindingKind.BAD_SIGNATURE, it.served, "the signature does not verify"))
            continue
        signers.add(key.key_id)
    return signers


def _index(items: list[_Item], findings: list[Finding]) -> dict[int, _Item]:
    by_place: dict[int, _Item] = {}
    for it in items:
        place = it.signed if it.signed is not None else it.served
        if place in by_place:
            findings.append(Finding(FindingKind.DUPLICATE, it.served, f"a second entry claims place {place}"))
            continue
        by_place[place] = it
    return by_place


def _check_links(items: list[_Item], by_place: dict[int, _Item], findings: list[Finding]) -> None:
    for it in items:
        place = it.signed if it.signed is not None else it.served
        if place == 1:
            expected: bytes | None = GENESIS_PREV
        else:
            before = by_place.get(place - 1)
            # A missing predecessor is a gap, reported once, not also a broken link.
            expected = before.entry.hash if before is not None else None
        if expected is not None and it.entry.body.prev != expected:
            findings.append(
                Finding(FindingKind.BROKEN_LINK, it.served, f"does not link to the entry before it ({place - 1})")
            )


def _check_gaps(by_place: dict[int, _Item], unreadable: set[int], last: int, findings: list[Finding]) -> None:
    seq = 1
    while seq <= last:
        if seq in by_place or seq in unreadable:
            seq += 1
            continue
        end = seq
        while end + 1 <= last and end + 1 not in by_place and end + 1 not in unreadable:
            end += 1
        what = f"entry {seq} is missing" if end == seq else f"entries {seq} to {end} are missing"
        findings.append(Finding(FindingKind.GAP, seq, what))
        seq = end + 1


def _check_tail(
    served_max: int,
    by_place: dict[int, _Item],
    head_seq: int,
    head_hash: bytes,
    last_seen: AuditHeadRef | None,
    findings: list[Finding],
) -> None:
    if head_seq > served_max:
        findings.append(
            Finding(
                FindingKind.TRUNCATED,
                served_max + 1,
                f"the log ends at entry {served_max} but the server's own head names entry {head_seq}",
            )
        )
    elif head_seq in by_place and by_place[head_seq].entry.hash != head_hash:
        findings.append(Finding(FindingKind.REWRITTEN, head_seq, "the server's head names another hash for this entry"))
    if last_seen is None:
        return
    if last_seen.seq > served_max:
        findings.append(
            Finding(
                FindingKind.TRUNCATED,
                served_max + 1,
                f"the log ends at entry {served_max} but you saw it reach entry {last_seen.seq}",
            )
        )
        return
    seen = by_place.get(last_seen.seq)
    if seen is not None and seen.entry.hash != last_seen.hash:
        findings.append(
            Finding(
                FindingKind.REWRITTEN,
                last_seen.seq,
                "this entry has another hash than when you last checked: the history was replaced",
            )
        )


def describe_audit_report(report: AuditReport) -> str:
    """A few lines for a terminal; text that came from the server is made safe to print."""
    lines = []
    if report.ok:
        lines.append(f"Audit log verified: {report.entries} entries, every hash, link and signature checks out.")
        if report.head is not None:
            lines.append(f"Newest entry: {report.head.seq}, hash {b64e(report.head.hash)}")
            lines.append("Keep these two values: the next check can then tell whether entries were removed.")
        lines.append(f"Signed by {len(report.signers)} receipt key(s) from the signed directories.")
        return "\n".join(lines)
    lines.append(f"AUDIT LOG DOES NOT VERIFY: {len(report.findings)} problem(s) in {report.entries} entries.")
    for finding in report.findings[:MAX_LISTED]:
        lines.append(f"  seq {finding.seq}: {finding.kind.value}: {untrusted_text(finding.detail)}")
    if len(report.findings) > MAX_LISTED:
        lines.append(f"  ... and {len(report.findings) - MAX_LISTED} more")
    return "\n".join(lines)


__all__ = [
    "AuditHeadRef",
    "AuditLogTampered",
    "AuditReport",
    "Finding",
    "FindingKind",
    "check_audit_entries",
    "describe_audit_report",
    "fetch_audit_log",
    "receipt_keys_of",
    "verify_audit_log",
]
