"""Replies, escalation packages, deliveries and integration receipts (sections 16 and 17)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safepassage.crypto.errors import BadSignature, MalformedInput, SafePassageError
from safepassage.crypto.staffmsg import Escalation, IntegrationReceipt, Reply, sign_delivery, verify_delivery

from .helpers import Org, signing_key

ORG = Org()
DIRECTORY = ORG.directory()
ALICE = ORG.identities["alice"]


def test_reply_round_trip_and_author_check() -> None:
    reply = Reply("c_0123456789", "alice", "Мы вас слышим.")
    payload = reply.seal_payload(ALICE)
    assert Reply.open_payload(payload, DIRECTORY) == reply
    # Signed by bob's key but claiming alice: refused.
    forged = Reply("c_0123456789", "alice", "Come to this address.").seal_payload(ORG.identities["bob"])
    with pytest.raises(BadSignature):
        Reply.open_payload(forged, DIRECTORY)
    # A handler not in the directory (revoked, or invented by the server): refused.
    ghost = Reply("c_0123456789", "mallory", "hello").seal_payload(signing_key("mallory"))
    with pytest.raises(BadSignature):
        Reply.open_payload(ghost, DIRECTORY)
    assert "Мы" not in repr(reply)


PAYLOAD = Reply("c_0123456789", "alice", "text").seal_payload(ALICE)


@given(st.integers(0, len(PAYLOAD) - 1), st.integers(1, 255))
def test_reply_any_byte_change_fails(pos: int, flip: int) -> None:
    mutated = bytearray(PAYLOAD)
    mutated[pos] ^= flip
    with pytest.raises(SafePassageError):
        Reply.open_payload(bytes(mutated), DIRECTORY)


def test_escalation_round_trip_and_tamper() -> None:
    package = Escalation(
        package_id="p_0123456789",
        contact_id="c_0123456789",
        handler_id="alice",
        pool="general",
        day="2026-11-28",
        contact=b'{"contact":{}}',
        follow_ups=(b"f1",),
        replies=(b"r1", b"r2"),
        assessment="Credible; urgent.",
    )
    payload = package.seal_payload(ALICE)
    assert Escalation.open_payload(payload, DIRECTORY) == package
    with pytest.raises(SafePassageError):
        Escalation.open_payload(payload.replace(b"urgent", b"ignore"), DIRECTORY)
    with pytest.raises(BadSignature):
        Escalation.open_payload(package.seal_payload(ORG.identities["bob"]), DIRECTORY)


def test_delivery_binds_handler_package_envelope_and_attachments() -> None:
    sig = sign_delivery(ALICE, handler_id="alice", package_id="p_0123456789", envelope=b"E", attachments=1)
    verify_delivery(DIRECTORY, sig, handler_id="alice", package_id="p_0123456789", envelope=b"E", attachments=1)
    for changed in (
        {"handler_id": "bob"},
        {"package_id": "p_9876543210"},
        {"envelope": b"F"},
        {"attachments": 2},
    ):
        args = {"handler_id": "alice", "package_id": "p_0123456789", "envelope": b"E", "attachments": 1, **changed}
        with pytest.raises(BadSignature):
            verify_delivery(DIRECTORY, sig, **args)  # type: ignore[arg-type]


def test_integration_receipt() -> None:
    receipt = IntegrationReceipt.issue(ORG.integration_signing, "p_0123456789", bytes(32), "2026-11-28")
    again = IntegrationReceipt.from_json(receipt.to_json())
    again.verify(DIRECTORY, envelope_hash=bytes(32))
    with pytest.raises(BadSignature):
        again.verify(DIRECTORY, envelope_hash=bytes(31) + b"\x01")
    other = IntegrationReceipt.issue(signing_key("not-integration"), "p_0123456789", bytes(32), "2026-11-28")
    with pytest.raises(BadSignature):
        other.verify(DIRECTORY, envelope_hash=bytes(32))
    with pytest.raises(MalformedInput):
        IntegrationReceipt.issue(ORG.integration_signing, "bad id", bytes(32), "2026-11-28")
