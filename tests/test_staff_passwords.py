"""Staff credentials at rest: Argon2id password strings and sealed TOTP secrets (protocol 18)."""

from __future__ import annotations

import pytest

from safepassage.crypto import labels as L
from safepassage.crypto.errors import DecryptionFailed, MalformedInput
from safepassage.crypto.passwords import (
    MEMLIMIT,
    OPSLIMIT,
    TotpSecretKey,
    WeakPassword,
    WrongPassword,
    check_staff_password,
    hash_password,
    verify_password,
)

CANARY_PASSWORD = "canary-pw Пароль 7f3e"


def test_hash_is_argon2id_with_the_specified_cost_and_verifies() -> None:
    stored = hash_password(check_staff_password(CANARY_PASSWORD))
    assert stored.startswith(f"$argon2id$v=19$m={MEMLIMIT // 1024},t={OPSLIMIT},p=1$")
    assert CANARY_PASSWORD not in stored
    verify_password(stored, CANARY_PASSWORD)
    # A fresh salt every time.
    assert hash_password(check_staff_password(CANARY_PASSWORD)) != stored


def test_wrong_password_raises() -> None:
    stored = hash_password(check_staff_password(CANARY_PASSWORD))
    for wrong in (CANARY_PASSWORD + " ", CANARY_PASSWORD.upper(), "", "x" * 5000, "\ud800" * 20):
        with pytest.raises(WrongPassword) as info:
            verify_password(stored, wrong)
        assert CANARY_PASSWORD not in str(info.value)


def test_unicode_is_normalised() -> None:
    composed, decomposed = "caf\u00e9-password-1", "cafe\u0301-password-1"
    verify_password(hash_password(check_staff_password(composed)), decomposed)


@pytest.mark.parametrize("bad", ["", "short", "elevenchars", "x" * 257, "\ud800" * 12, 12345678901234])
def test_weak_or_invalid_passwords_are_refused(bad: object) -> None:
    with pytest.raises(WeakPassword) as info:
        check_staff_password(bad)
    assert str(bad) not in str(info.value) or str(bad) == ""


def test_twelve_characters_is_enough() -> None:
    assert check_staff_password("twelve chars") == "twelve chars"


def test_malformed_stored_hash() -> None:
    with pytest.raises(MalformedInput):
        verify_password("$2b$12$bcrypt-is-not-ours", CANARY_PASSWORD)
    with pytest.raises(WrongPassword):
        verify_password("$argon2id$v=19$m=65536,t=3,p=1$garbage", CANARY_PASSWORD)


def test_totp_secret_sealed_bound_and_authenticated() -> None:
    key = TotpSecretKey.generate()
    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    sealed = key.seal("alice", secret)
    assert sealed.startswith(L.TOTP_MAGIC)
    assert secret.encode() not in sealed
    assert key.open("alice", sealed) == secret
    # Moved to another account's row: refused.
    with pytest.raises(DecryptionFailed):
        key.open("mallory", sealed)
    # Altered: refused.
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(DecryptionFailed):
        key.open("alice", flipped)
    # Another server's key: refused.
    with pytest.raises(DecryptionFailed):
        TotpSecretKey.generate().open("alice", sealed)
    for garbage in (b"", b"SPT\x01", b"XXXX" + sealed[4:]):
        with pytest.raises(MalformedInput):
            key.open("alice", garbage)


def test_totp_key_never_shows_itself() -> None:
    key = TotpSecretKey.generate()
    raw = key.secret_bytes_raw()
    assert raw.hex() not in repr(key)
    assert "secret" in repr(key)
    assert TotpSecretKey.from_bytes(raw).open("a", key.seal("a", "ABC")) == "ABC"
    with pytest.raises(MalformedInput):
        TotpSecretKey(b"short")
