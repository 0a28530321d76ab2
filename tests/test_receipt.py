"""Server receipts (section 10)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safepassage.crypto.errors import BadSignature, MalformedInput, SafePassageError
from safepassage.crypto.receipt import Receipt

from .helpers import signing_key

KEY = signing_key("receipt")
HASH = bytes(range(32))


def test_issue_and_verify() -> None:
    receipt = Receipt.issue(KEY, "c_0123456789", HASH, "2026-11-28")
    again = Receipt.from_bytes(receipt.to_bytes())
    assert again == receipt
    again.verify(KEY.verify_key, envelope_hash=HASH)


def test_wrong_key_or_envelope() -> None:
    receipt = Receipt.issue(KEY, "c_0123456789", HASH, "2026-11-28")
    with pytest.raises(BadSignature):
        receipt.verify(signing_key("other").verify_key, envelope_hash=HASH)
    with pytest.raises(BadSignature):
        receipt.verify(KEY.verify_key, envelope_hash=bytes(32))


def test_bad_fields() -> None:
    with pytest.raises(MalformedInput):
        Receipt.issue(KEY, "bad id!", HASH, "2026-11-28")
    with pytest.raises(MalformedInput):
        Receipt.issue(KEY, "c_0123456789", HASH, "28.11.2026")


DATA = Receipt.issue(KEY, "c_0123456789", HASH, "2026-11-28").to_bytes()


@given(st.integers(0, len(DATA) - 1), st.integers(1, 255))
def test_any_byte_change_fails(pos: int, flip: int) -> None:
    mutated = bytearray(DATA)
    mutated[pos] ^= flip
    with pytest.raises(SafePassageError):
        Receipt.from_bytes(bytes(mutated)).verify(KEY.verify_key, envelope_hash=HASH)
