"""Proof of work (docs/protocol.md, section 12): real Argon2id at the floor cost (1 MiB, 1 pass)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safepassage.crypto import _primitives as P
from safepassage.crypto import labels as L
from safepassage.crypto.encoding import b64e
from safepassage.crypto.errors import MalformedInput, PowRejected, SafePassageError, UnsupportedVersion
from safepassage.crypto.pow import (
    CHALLENGE_LEN,
    MAX_LIFETIME,
    MAX_MEMLIMIT_KIB,
    MIN_MEMLIMIT_KIB,
    Challenge,
    PowKey,
    VerifiedPow,
    check_challenge,
    issue_challenge,
    solve,
    verify_solution,
    verify_work,
)

NOW = 1_800_000_000
FAST = {"memlimit_kib": MIN_MEMLIMIT_KIB, "opslimit": 1}
KEY = PowKey.from_bytes(bytes(range(32)))


def _issue(difficulty: int = 4, *, now: int = NOW, lifetime: int = 600, key: PowKey = KEY) -> Challenge:
    return issue_challenge(key, difficulty=difficulty, now=now, lifetime=lifetime, **FAST)


@pytest.fixture(scope="module")
def solved() -> tuple[str, int]:
    challenge = _issue()
    return challenge.to_text(), solve(challenge)


def _spec_mac(key: PowKey, unsigned: bytes) -> bytes:
    return P.hmac_sha256(key.secret_bytes_raw(), b"safepassage/v1/pow-mac" + unsigned)


def _forge(challenge: Challenge, key: PowKey = KEY, **changes: Any) -> str:
    """Re-sign a changed challenge with the server key, as only the server could."""
    changed = dataclasses.replace(challenge, **changes)
    return dataclasses.replace(changed, mac=_spec_mac(key, changed.mac_input())).to_text()


# --- layout and construction, read independently from the spec ----------------------------------


def test_layout_matches_the_spec() -> None:
    c = issue_challenge(KEY, difficulty=7, now=NOW, lifetime=90, memlimit_kib=2048, opslimit=2)
    raw = c.to_bytes()
    assert len(raw) == CHALLENGE_LEN == 66
    assert raw[:4] == b"SPW\x01"
    assert raw[4:20] == c.nonce
    assert int.from_bytes(raw[20:28], "big") == NOW + 90 == c.expires
    assert raw[28] == 7
    assert int.from_bytes(raw[29:33], "big") == 2048
    assert raw[33] == 2
    assert raw[34:] == _spec_mac(KEY, raw[:34]) == c.mac
    assert c.to_text() == b64e(raw)
    assert len(c.to_text()) == 88
    assert Challenge.from_text(c.to_text()) == c


def test_work_hash_matches_the_spec(solved: tuple[str, int]) -> None:
    text, counter = solved
    raw = Challenge.from_text(text).to_bytes()
    salt = P.sha256(b"safepassage/v1/pow-salt")[:16]
    digest = P.argon2id(
        b"safepassage/v1/pow" + raw + counter.to_bytes(8, "big"), salt, opslimit=1, memlimit=1024 * 1024, length=32
    )
    assert digest[0] >> 4 == 0  # difficulty 4: four leading zero bits


def test_labels_are_the_ones_in_labels_py() -> None:
    assert L.POW_MAGIC == b"SPW\x01"
    assert L.POW_INPUT == b"safepassage/v1/pow"
    assert L.POW_SALT == b"safepassage/v1/pow-salt"
    assert L.POW_MAC == b"safepassage/v1/pow-mac"


# --- solve and verify -----------------------------------------------------------------------------


def test_solve_and_verify(solved: tuple[str, int]) -> None:
    text, counter = solved
    result = verify_solution(KEY, text, counter, now=NOW)
    challenge = Challenge.from_text(text)
    assert result == VerifiedPow(nonce=challenge.nonce, expires=NOW + 600)


def test_two_step_verification_gives_the_same_result(solved: tuple[str, int]) -> None:
    text, counter = solved
    checked = check_challenge(KEY, text, now=NOW)
    assert verify_work(checked, counter) == verify_solution(KEY, text, counter, now=NOW)


def test_replay_verifies_again_with_the_same_nonce(solved: tuple[str, int]) -> None:
    # This module cannot know a nonce was spent; the server's database must.
    text, counter = solved
    first = verify_solution(KEY, text, counter, now=NOW)
    second = verify_solution(KEY, text, counter, now=NOW + 1)
    assert first.nonce == second.nonce
    spent: set[bytes] = {first.nonce}
    assert second.nonce in spent


def test_difficulty_zero_accepts_counter_zero() -> None:
    challenge = _issue(0)
    assert solve(challenge) == 0
    verify_solution(KEY, challenge.to_text(), 0, now=NOW)


def test_every_counter_below_the_solution_is_insufficient() -> None:
    challenge = _issue(5)
    while (counter := solve(challenge)) == 0:
        challenge = _issue(5)
    for wrong in range(min(counter, 8)):
        with pytest.raises(PowRejected) as info:
            verify_solution(KEY, challenge.to_text(), wrong, now=NOW)
        assert info.value.detail == "insufficient work"


def test_nonces_are_fresh() -> None:
    assert len({_issue().nonce for _ in range(20)}) == 20


def test_progress_and_max_attempts() -> None:
    seen: list[int] = []
    challenge = _issue(24)
    with pytest.raises(PowRejected):
        solve(challenge, max_attempts=3, progress=seen.append)
    assert seen == [1, 2, 3]
    with pytest.raises(PowRejected):
        solve(challenge, max_attempts=0)
    with pytest.raises(ValueError, match="max_attempts"):
        solve(challenge, max_attempts=-1)


def test_solve_reports_progress_until_success() -> None:
    seen: list[int] = []
    counter = solve(_issue(3), progress=seen.append)
    assert seen == list(range(1, counter + 2))


# --- refusals -------------------------------------------------------------------------------------


def test_tampered_mac(solved: tuple[str, int]) -> None:
    text, counter = solved
    challenge = Challenge.from_text(text)
    bad = dataclasses.replace(challenge, mac=bytes(32)).to_text()
    with pytest.raises(PowRejected) as info:
        verify_solution(KEY, bad, counter, now=NOW)
    assert info.value.detail == "bad mac"


def test_lowered_difficulty_breaks_the_mac() -> None:
    challenge = _issue(20)
    easier = dataclasses.replace(challenge, difficulty=0).to_text()
    with pytest.raises(PowRejected) as info:
        verify_solution(KEY, easier, 0, now=NOW)
    assert info.value.detail == "bad mac"


def test_other_server_key(solved: tuple[str, int]) -> None:
    text, counter = solved
    with pytest.raises(PowRejected) as info:
        verify_solution(PowKey.generate(), text, counter, now=NOW)
    assert info.value.detail == "bad mac"


def test_expiry(solved: tuple[str, int]) -> None:
    text, counter = solved
    verify_solution(KEY, text, counter, now=NOW + 599)
    for late in (NOW + 600, NOW + 10_000):
        with pytest.raises(PowRejected) as info:
            verify_solution(KEY, text, counter, now=late)
        assert info.value.detail == "expired"


def test_expiry_too_far_ahead_is_refused() -> None:
    challenge = _issue(0, lifetime=MAX_LIFETIME)
    verify_solution(KEY, challenge.to_text(), 0, now=NOW)
    with pytest.raises(PowRejected) as info:
        verify_solution(KEY, challenge.to_text(), 0, now=NOW - 1)
    assert info.value.detail == "expiry too far ahead"


@pytest.mark.parametrize(
    "changes",
    [
        {"difficulty": 25},
        {"difficulty": 255},
        {"memlimit_kib": MIN_MEMLIMIT_KIB - 1},
        {"memlimit_kib": MAX_MEMLIMIT_KIB + 1},
        {"memlimit_kib": 2**32 - 1},
        {"opslimit": 0},
        {"opslimit": 5},
    ],
)
def test_bounds_on_verify_and_solve(changes: dict[str, Any]) -> None:
    # Correctly MACed (a misconfigured or compromised server): still refused, and
    # refused before any Argon2id work, so 4 TiB of memory is never asked for.
    text = _forge(_issue(0), **changes)
    with pytest.raises(PowRejected) as info:
        verify_solution(KEY, text, 0, now=NOW)
    assert info.value.detail == "parameters out of bounds"
    with pytest.raises(PowRejected):
        solve(Challenge.from_text(text))


def test_mac_is_checked_before_bounds_and_expiry() -> None:
    text = _forge(_issue(0), key=PowKey.generate(), memlimit_kib=2**32 - 1, expires=1)
    with pytest.raises(PowRejected) as info:
        verify_solution(KEY, text, 0, now=NOW)
    assert info.value.detail == "bad mac"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"difficulty": 25},
        {"difficulty": -1},
        {"difficulty": True},
        {"memlimit_kib": MIN_MEMLIMIT_KIB - 1},
        {"memlimit_kib": MAX_MEMLIMIT_KIB + 1},
        {"opslimit": 0},
        {"opslimit": 5},
        {"lifetime": 0},
        {"lifetime": MAX_LIFETIME + 1},
        {"now": -1},
        {"now": 2**64},
    ],
)
def test_bounds_on_issue(kwargs: dict[str, int]) -> None:
    args = {"difficulty": 4, "now": NOW, "lifetime": 600, **FAST, **kwargs}
    with pytest.raises(ValueError, match=r"\w"):
        issue_challenge(KEY, **args)


def test_bounds_on_issue_edges() -> None:
    issue_challenge(KEY, difficulty=24, now=0, lifetime=1, memlimit_kib=MAX_MEMLIMIT_KIB, opslimit=4)
    issue_challenge(KEY, difficulty=0, now=NOW, lifetime=MAX_LIFETIME, memlimit_kib=MIN_MEMLIMIT_KIB, opslimit=1)


@pytest.mark.parametrize("counter", [-1, 2**64, True, "5", 1.0])
def test_malformed_counter(solved: tuple[str, int], counter: object) -> None:
    with pytest.raises(MalformedInput):
        verify_solution(KEY, solved[0], counter, now=NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", MalformedInput),
        ("A" * 87, MalformedInput),
        ("A" * 90, MalformedInput),
        ("A" * 10_000, MalformedInput),
        ("!" * 88, MalformedInput),
        (b64e(b"SPW\x01" + bytes(62)) + "=", MalformedInput),
        (b64e(b"SPW\x02" + bytes(62)), UnsupportedVersion),
        (b64e(b"SPE\x01" + bytes(62)), MalformedInput),
        (b64e(b"SPW\x01" + bytes(61)), MalformedInput),
        (b64e(b"SPW\x01" + bytes(63)), MalformedInput),
    ],
)
def test_malformed_text(text: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        verify_solution(KEY, text, 0, now=NOW)


def test_non_text_challenge() -> None:
    with pytest.raises(MalformedInput):
        verify_solution(KEY, b"bytes", 0, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(MalformedInput):
        Challenge.from_bytes("text")  # type: ignore[arg-type]


def test_challenge_fields_are_checked() -> None:
    good = _issue()
    for changes in ({"nonce": b"short"}, {"mac": b""}, {"expires": -1}, {"difficulty": 256}, {"opslimit": 256}):
        with pytest.raises(MalformedInput):
            dataclasses.replace(good, **changes)


@settings(max_examples=80, deadline=None)
@given(position=st.integers(0, CHALLENGE_LEN - 1), mask=st.integers(1, 255))
def test_any_flipped_challenge_byte_is_refused(solved: tuple[str, int], position: int, mask: int) -> None:
    text, counter = solved
    raw = bytearray(Challenge.from_text(text).to_bytes())
    raw[position] ^= mask
    with pytest.raises((PowRejected, MalformedInput)) as info:
        verify_solution(KEY, b64e(bytes(raw)), counter, now=NOW)
    assert isinstance(info.value, SafePassageError)
    if position >= 4:
        assert info.value.detail == "bad mac"


@settings(max_examples=80, deadline=None)
@given(position=st.integers(0, 87), char=st.characters(codec="ascii"))
def test_any_changed_text_character_is_refused(solved: tuple[str, int], position: int, char: str) -> None:
    text, counter = solved
    changed = text[:position] + char + text[position + 1 :]
    if changed == text:
        return
    with pytest.raises((PowRejected, MalformedInput)):
        verify_solution(KEY, changed, counter, now=NOW)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=120) | st.binary(max_size=80).map(b64e))
def test_arbitrary_text_raises_only_our_errors(text: str) -> None:
    with pytest.raises((PowRejected, MalformedInput)):
        verify_solution(KEY, text, 0, now=NOW)


# --- the key --------------------------------------------------------------------------------------


def test_key_never_shows_its_bytes(solved: tuple[str, int]) -> None:
    secret = bytes(range(32))
    key = PowKey.from_bytes(secret)
    for text in (repr(key), str(key), f"{key}", repr([key])):
        assert secret.hex() not in text
        assert b64e(secret) not in text
        assert "<secret>" in text
    assert key.secret_bytes_raw() == secret
    text, counter = solved
    bad_text = dataclasses.replace(Challenge.from_text(text), mac=bytes(32)).to_text()
    for attempt in (lambda: verify_solution(key, bad_text, counter, now=NOW), lambda: PowKey.from_bytes(secret[:31])):
        with pytest.raises(SafePassageError) as info:
            attempt()
        assert secret.hex() not in str(info.value)
        assert secret[:31].hex() not in repr(info.value)


@pytest.mark.parametrize("raw", [b"", bytes(31), bytes(33), "x" * 32])
def test_key_length(raw: bytes) -> None:
    with pytest.raises(MalformedInput):
        PowKey.from_bytes(raw)


def test_generated_keys_differ() -> None:
    assert PowKey.generate().secret_bytes_raw() != PowKey.generate().secret_bytes_raw()


# --- mailbox nonces (protocol 15.4) ------------------------------------------------------------

MAILBOX = bytes(range(32))


def test_mailbox_nonce_layout_and_check() -> None:
    nonce = KEY.mailbox_nonce(MAILBOX, NOW + 300)
    assert len(nonce) == 32
    assert nonce[12:16] == (NOW + 300).to_bytes(4, "big")
    mac = P.hmac_sha256(bytes(range(32)), L.MAILBOX_NONCE_MAC + b"\x20" + MAILBOX + nonce[:16])[:16]
    assert nonce[16:] == mac  # the layout the spec gives, computed independently
    assert KEY.check_mailbox_nonce(MAILBOX, nonce, NOW) == NOW + 300
    assert KEY.mailbox_nonce(MAILBOX, NOW + 300) != nonce  # fresh random part


def test_mailbox_nonce_refusals() -> None:
    nonce = KEY.mailbox_nonce(MAILBOX, NOW + 300)
    with pytest.raises(PowRejected, match="expired"):
        KEY.check_mailbox_nonce(MAILBOX, nonce, NOW + 300)
    with pytest.raises(PowRejected, match="not issued"):
        KEY.check_mailbox_nonce(bytes(32), nonce, NOW)  # another mailbox
    with pytest.raises(PowRejected, match="not issued"):
        PowKey.generate().check_mailbox_nonce(MAILBOX, nonce, NOW)  # another server
    with pytest.raises(MalformedInput):
        KEY.check_mailbox_nonce(MAILBOX, nonce[:31], NOW)
    with pytest.raises(MalformedInput):
        KEY.mailbox_nonce(MAILBOX, 2**32)
    # A proof-of-work challenge's bytes never pass for a mailbox nonce (own label).
    challenge = _issue()
    with pytest.raises((PowRejected, MalformedInput)):
        KEY.check_mailbox_nonce(MAILBOX, challenge.to_bytes()[:32], NOW)


@given(st.integers(0, 31), st.integers(1, 255))
def test_any_changed_mailbox_nonce_byte_is_refused(pos: int, flip: int) -> None:
    nonce = bytearray(KEY.mailbox_nonce(MAILBOX, NOW + 300))
    nonce[pos] ^= flip
    with pytest.raises(PowRejected):
        KEY.check_mailbox_nonce(MAILBOX, bytes(nonce), NOW)
