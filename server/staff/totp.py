"""A small TOTP wrapper (RFC 6238; docs/protocol.md, section 18.2).

What authenticator apps implement: HMAC-SHA-1, 30-second steps, 6 digits. A
code is accepted for the current step or one step either side (clock drift
and typing time), and :meth:`Totp.verify` returns the step it matched so the
caller can store it as the account's last accepted counter *in the database*
(not in memory: several front ends share one database) and refuse any code
whose step is not later. No code is ever accepted twice.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from typing import Final, NewType

import pyotp

from safepassage.crypto.errors import MalformedInput, SafePassageError

#: A TOTP shared secret as unpadded base32 text. Never logged, never in an error.
TotpSecret = NewType("TotpSecret", str)

STEP: Final = 30
DIGITS: Final = 6
#: Steps accepted either side of the current one.
WINDOW: Final = 1
#: 160 bits, the HMAC-SHA-1 output size that RFC 4226 recommends for secrets.
SECRET_BYTES: Final = 20
ISSUER: Final = "Safe Passage"


class InvalidCode(SafePassageError):
    """The one-time code is wrong, expired or already used."""

    hint = "Wait for the next code in your authenticator app and try again."
    exit_code = 2


def new_secret() -> TotpSecret:
    return TotpSecret(base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("="))


def check_secret(secret: str) -> TotpSecret:
    """``secret`` as a :data:`TotpSecret` if it is base32 of at least 160 bits."""
    if not isinstance(secret, str) or not secret.isascii() or not 0 < len(secret) <= 128:
        raise MalformedInput("TOTP secret must be base32 text")
    try:
        raw = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8), casefold=False)
    except (binascii.Error, ValueError):
        raise MalformedInput("TOTP secret must be base32 text") from None
    if len(raw) < SECRET_BYTES:
        raise MalformedInput(f"TOTP secret must carry at least {SECRET_BYTES * 8} bits")
    return TotpSecret(secret)


def counter_at(now: float) -> int:
    return int(now) // STEP


class Totp:
    """One account's code generator. ``digits`` other than 6 is for RFC 6238's own test vectors."""

    __slots__ = ("_otp",)

    def __init__(self, secret: TotpSecret, *, digits: int = DIGITS) -> None:
        self._otp = pyotp.TOTP(check_secret(secret), digits=digits, digest=hashlib.sha1, interval=STEP)

    def __repr__(self) -> str:
        return "Totp(<secret>)"

    def code_at(self, counter: int) -> str:
        return self._otp.generate_otp(counter)

    def now(self, now: float) -> str:
        return self.code_at(counter_at(now))

    def verify(self, code: str, *, now: float, last_counter: int) -> int:
        """The step ``code`` belongs to; raise :class:`InvalidCode` unless it is within
        ``WINDOW`` steps of ``now`` and later than ``last_counter``."""
        if not isinstance(code, str) or len(code) != self._otp.digits or not code.isascii() or not code.isdigit():
            raise InvalidCode()
        current = counter_at(now)
        matched: int | None = None
        # Every candidate is compared, in constant time, whatever matched first.
        for counter in range(max(0, current - WINDOW), current + WINDOW + 1):
            if hmac.compare_digest(self.code_at(counter), code) and counter > last_counter:
                matched = counter
        if matched is None:
            raise InvalidCode()
        return matched

    def provisioning_uri(self, username: str) -> str:
        """The ``otpauth://totp/`` URI an authenticator app enrols from (as a QR code or by hand)."""
        return self._otp.provisioning_uri(name=username, issuer_name=ISSUER)


__all__ = ["DIGITS", "STEP", "WINDOW", "InvalidCode", "Totp", "TotpSecret", "check_secret", "counter_at", "new_secret"]
