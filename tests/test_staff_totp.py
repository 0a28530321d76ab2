"""The TOTP wrapper: RFC 6238's own vectors, the window, replay, secrets."""

from __future__ import annotations

import base64
import contextlib
from urllib.parse import parse_qs, urlparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safepassage.crypto.errors import MalformedInput
from safepassage.server.staff.totp import (
    SECRET_BYTES,
    InvalidCode,
    Totp,
    TotpSecret,
    check_secret,
    counter_at,
    new_secret,
)

# RFC 6238, appendix B: SHA-1, 8 digits, the ASCII secret "12345678901234567890", T0 = 0, X = 30.
RFC_SECRET = TotpSecret(base64.b32encode(b"12345678901234567890").decode())
RFC_SHA1_VECTORS = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]


@pytest.mark.parametrize(("t", "expected"), RFC_SHA1_VECTORS)
def test_rfc6238_sha1_vectors(t: int, expected: str) -> None:
    totp = Totp(RFC_SECRET, digits=8)
    assert totp.now(t) == expected
    # verify() returns the step the code belongs to: the caller stores it.
    assert totp.verify(expected, now=t, last_counter=-1) == t // 30


def test_window_is_one_step_either_side() -> None:
    totp = Totp(RFC_SECRET)
    now = 1_700_000_015
    c = counter_at(now)
    for offset in (-1, 0, 1):
        assert totp.verify(totp.code_at(c + offset), now=now, last_counter=0) == c + offset
    for offset in (-3, -2, 2, 3):
        code = totp.code_at(c + offset)
        if code in {totp.code_at(c + o) for o in (-1, 0, 1)}:
            continue  # a one-in-a-million collision would make this case meaningless
        with pytest.raises(InvalidCode):
            totp.verify(code, now=now, last_counter=0)


def test_a_code_is_never_accepted_twice() -> None:
    totp = Totp(new_secret())
    now = 1_700_000_000
    code = totp.now(now)
    counter = totp.verify(code, now=now, last_counter=0)
    with pytest.raises(InvalidCode):
        totp.verify(code, now=now, last_counter=counter)
    # Nor an older one still inside the window.
    with pytest.raises(InvalidCode):
        totp.verify(totp.code_at(counter - 1), now=now, last_counter=counter)
    # The next step's code is fine.
    assert totp.verify(totp.code_at(counter + 1), now=now + 30, last_counter=counter) == counter + 1


@pytest.mark.parametrize(
    "code", ["", "12345", "1234567", "12345a", "\uff11\uff12\uff13\uff14\uff15\uff16", " 123456", None, 123456]
)
def test_malformed_codes_are_refused(code: object) -> None:
    with pytest.raises(InvalidCode):
        Totp(RFC_SECRET).verify(code, now=1_700_000_000, last_counter=0)  # type: ignore[arg-type]


def test_new_secrets_carry_160_bits_and_differ() -> None:
    secrets_ = {new_secret() for _ in range(50)}
    assert len(secrets_) == 50
    for s in secrets_:
        assert len(base64.b32decode(s + "=" * (-len(s) % 8))) == SECRET_BYTES
        assert check_secret(s) == s


def test_short_or_malformed_secrets_are_refused() -> None:
    short = base64.b32encode(b"x" * 19).decode()
    for bad in (short, "not base32!", "", "A" * 200):
        with pytest.raises(MalformedInput):
            check_secret(bad)


def test_otpauth_uri_is_what_authenticator_apps_read() -> None:
    secret = new_secret()
    uri = Totp(secret).provisioning_uri("alice")
    parsed = urlparse(uri)
    assert (parsed.scheme, parsed.netloc) == ("otpauth", "totp")
    assert parsed.path == "/Safe%20Passage:alice"
    query = parse_qs(parsed.query)
    assert query["secret"] == [secret]
    assert query["issuer"] == ["Safe Passage"]
    # Defaults apps assume (SHA1, 6 digits, 30 s) are what we use.
    assert query.get("algorithm", ["SHA1"]) == ["SHA1"]
    assert query.get("digits", ["6"]) == ["6"]
    assert query.get("period", ["30"]) == ["30"]


def test_repr_hides_the_secret() -> None:
    secret = new_secret()
    assert secret not in repr(Totp(secret))


@given(st.text(max_size=200))
def test_check_secret_raises_only_malformed_input(text: str) -> None:
    with contextlib.suppress(MalformedInput):
        check_secret(text)


@given(st.text(max_size=12))
def test_verify_raises_only_invalid_code(text: str) -> None:
    with contextlib.suppress(InvalidCode):
        Totp(RFC_SECRET).verify(text, now=1_700_000_000, last_counter=0)
