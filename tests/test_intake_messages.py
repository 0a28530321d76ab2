"""Contact and follow-up payloads, submission and mailbox signatures (section 15)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safepassage.crypto.encoding import canonical_json, parse_canonical_json
from safepassage.crypto.envelope import CHUNK_DATA_MAX
from safepassage.crypto.errors import BadSignature, MalformedInput, SafePassageError
from safepassage.crypto.intake import (
    AttachmentInfo,
    Contact,
    FollowUp,
    attachment_chunk_count,
    sign_mailbox_auth,
    sign_submission,
    verify_mailbox_auth,
    verify_submission,
)

from .helpers import hybrid_key, signing_key

MAILBOX = signing_key("applicant-mailbox")
CONTACT = Contact(
    pool="general",
    language="ru",
    message="Я офицер. canary-4e1d",
    fields={"role": "officer", "urgency": "weeks"},
    attachments=(AttachmentInfo("plan.pdf", "application/pdf", 10, 1),),
    reply_key=hybrid_key("applicant-reply").public_key,
    mailbox_key=MAILBOX.verify_key,
    origin="cli",
)


def test_contact_round_trip() -> None:
    payload = CONTACT.seal_payload(MAILBOX)
    assert Contact.open_payload(payload) == CONTACT


def test_contact_signed_by_other_key_is_refused() -> None:
    with pytest.raises(MalformedInput):
        CONTACT.seal_payload(signing_key("other"))
    # A payload whose mailbox key was swapped after signing fails verification.
    outer = parse_canonical_json(CONTACT.seal_payload(MAILBOX), max_len=1 << 20)
    assert isinstance(outer, dict)
    other = replace(CONTACT, mailbox_key=signing_key("other").verify_key)
    outer["contact"] = other.to_json()
    with pytest.raises(BadSignature):
        Contact.open_payload(canonical_json(outer))


def test_contact_repr_hides_words() -> None:
    assert "canary" not in repr(CONTACT)
    assert "officer" not in repr(CONTACT)


def test_contact_field_rules() -> None:
    with pytest.raises(MalformedInput):
        replace(CONTACT, fields={"password": "x"}).seal_payload(MAILBOX)
    with pytest.raises(MalformedInput):
        replace(CONTACT, language="russian").seal_payload(MAILBOX)


PAYLOAD = CONTACT.seal_payload(MAILBOX)


@given(st.integers(0, len(PAYLOAD) - 1), st.integers(1, 255))
def test_any_byte_change_raises_our_error(pos: int, flip: int) -> None:
    mutated = bytearray(PAYLOAD)
    mutated[pos] ^= flip
    with pytest.raises(SafePassageError):
        Contact.open_payload(bytes(mutated))


def test_follow_up_round_trip_and_tamper() -> None:
    follow = FollowUp("c_abcdefgh", "more detail", MAILBOX.verify_key)
    payload = follow.seal_payload(MAILBOX)
    assert FollowUp.open_payload(payload) == follow
    with pytest.raises(SafePassageError):
        FollowUp.open_payload(payload.replace(b"more", b"less"))


def test_submission_signature_binds_every_field() -> None:
    envelope = b"E" * 100
    sig = sign_submission(MAILBOX, kind="contact", pool="general", attachments=1, envelope=envelope)
    verify_submission(MAILBOX.verify_key, sig, kind="contact", pool="general", attachments=1, envelope=envelope)
    for changes in (
        {"kind": "follow-up", "contact_id": "c_abcdefgh"},
        {"pool": "science"},
        {"attachments": 2},
        {"envelope": envelope + b"x"},
    ):
        args = {"kind": "contact", "pool": "general", "attachments": 1, "envelope": envelope, "contact_id": ""}
        args.update(changes)  # type: ignore[arg-type]
        with pytest.raises(BadSignature):
            verify_submission(MAILBOX.verify_key, sig, **args)  # type: ignore[arg-type]


def test_submission_kind_and_contact_must_agree() -> None:
    with pytest.raises(MalformedInput):
        sign_submission(MAILBOX, kind="contact", pool="general", attachments=0, envelope=b"e", contact_id="c_abcdefgh")
    with pytest.raises(MalformedInput):
        sign_submission(MAILBOX, kind="follow-up", pool="general", attachments=0, envelope=b"e")


def test_mailbox_auth() -> None:
    nonce = bytes(range(32))
    sig = sign_mailbox_auth(MAILBOX, nonce)
    verify_mailbox_auth(MAILBOX.verify_key, nonce, sig)
    with pytest.raises(BadSignature):
        verify_mailbox_auth(MAILBOX.verify_key, bytes(32), sig)
    with pytest.raises(BadSignature):
        verify_mailbox_auth(signing_key("x").verify_key, nonce, sig)
    with pytest.raises(MalformedInput):
        sign_mailbox_auth(MAILBOX, b"short")


@pytest.mark.parametrize(
    ("size", "chunks"), [(0, 1), (1, 1), (CHUNK_DATA_MAX, 1), (CHUNK_DATA_MAX + 1, 2), (3 * CHUNK_DATA_MAX, 3)]
)
def test_chunk_count(size: int, chunks: int) -> None:
    assert attachment_chunk_count(size) == chunks
