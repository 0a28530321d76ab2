"""Staff credentials at rest (docs/protocol.md, section 18).

Passwords are stored as libsodium's Argon2id string (RFC 9106, version 0x13):
the parameters and a fresh 16-byte salt travel inside it, so a later change of
parameters still verifies old hashes. The cost (3 passes over 64 MiB) makes a
seized database expensive to brute-force while one login stays well under a
second; the server bounds how many hashes run at once, since each holds 64 MiB.

TOTP secrets cannot be hashed: the server must compute codes from them. They
are sealed with XChaCha20-Poly1305 under a server key kept in its own 0600 file
(``keys/totp.key``), never in the database, so a copy of the database alone
(a backup, a replica, a dump) yields no second factor. The username is bound
into the associated data: a sealed secret moved to another account's row does
not open.
"""

from __future__ import annotations

import unicodedata
from typing import Final, NewType

from . import _primitives as P
from . import labels as L
from .errors import CryptoError, MalformedInput, SafePassageError, WrongPassphrase

#: A staff password as typed. Never logged, never stored, never in an error.
Password = NewType("Password", str)

MIN_STAFF_PASSWORD: Final = 12
MAX_PASSWORD: Final = 256
OPSLIMIT: Final = 3
MEMLIMIT: Final = 64 * 1024 * 1024
HASH_PREFIX: Final = "$argon2id$"
TOTP_KEY_LEN: Final = P.AEAD_KEY_LEN
#: Longest TOTP secret we seal (base32 text); real ones are 32 characters.
MAX_TOTP_SECRET: Final = 128


class WeakPassword(SafePassageError):
    """The password does not meet the requirements."""

    hint = f"Use at least {MIN_STAFF_PASSWORD} characters; a passphrase of several random words is best."
    exit_code = 2


class WrongPassword(CryptoError):
    """The password is wrong."""


def _encode(password: str) -> bytes:
    # NFC, so the same password typed on two keyboards (composed or decomposed
    # accents) is the same bytes. A lone surrogate (possible in JSON) cannot be
    # stored (check_staff_password refuses it) but must not crash a verification.
    return unicodedata.normalize("NFC", password).encode("utf-8", "surrogatepass")


def check_staff_password(password: object) -> Password:
    """Return ``password`` as a :data:`Password` if it is long enough; raise :class:`WeakPassword`."""
    if not isinstance(password, str):
        raise WeakPassword("it must be text")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise WeakPassword("it must be valid Unicode text") from None
    length = len(unicodedata.normalize("NFC", password))
    if length < MIN_STAFF_PASSWORD:
        raise WeakPassword(f"it needs at least {MIN_STAFF_PASSWORD} characters")
    if length > MAX_PASSWORD:
        raise WeakPassword(f"it may have at most {MAX_PASSWORD} characters")
    return Password(password)


def hash_password(password: Password) -> str:
    """The Argon2id string to store for ``password`` (slow on purpose: run it off the event loop)."""
    return P.pwhash_str(_encode(check_staff_password(password)), opslimit=OPSLIMIT, memlimit=MEMLIMIT).decode("ascii")


def verify_password(stored: str, password: str) -> None:
    """Raise :class:`WrongPassword` unless ``password`` matches the stored hash.

    The work is the same whether the password is right or wrong; a caller that
    has no account to check against should verify against a dummy hash so that
    an unknown username costs the same time as a known one.
    """
    if not isinstance(stored, str) or not stored.startswith(HASH_PREFIX) or not stored.isascii():
        raise MalformedInput("password hash has an invalid form")
    # An over-long password still costs the full work: no answer comes back faster for odd input.
    acceptable = len(password) <= MAX_PASSWORD
    try:
        P.pwhash_str_verify(stored.encode("ascii"), _encode(password if acceptable else ""))
    except WrongPassphrase:
        raise WrongPassword() from None
    if not acceptable:
        raise WrongPassword()


class TotpSecretKey:
    """The server's 32-byte key sealing TOTP secrets at rest. Never leaves ``keys/totp.key``."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != TOTP_KEY_LEN:
            raise MalformedInput(f"TOTP key must be {TOTP_KEY_LEN} bytes")
        self._raw = raw

    @classmethod
    def generate(cls) -> TotpSecretKey:
        return cls(P.random_bytes(TOTP_KEY_LEN))

    @classmethod
    def from_bytes(cls, raw: bytes) -> TotpSecretKey:
        return cls(raw)

    def secret_bytes_raw(self) -> bytes:
        """The key itself. Only the server's key file code may call this."""
        return self._raw

    @staticmethod
    def _ad(username: str) -> bytes:
        return L.TOTP_SECRET_AD + b"\x00" + username.encode("utf-8")

    def seal(self, username: str, secret: str) -> bytes:
        """``TOTP_MAGIC || nonce || AEAD(secret)``, bound to ``username``."""
        if not isinstance(secret, str) or not secret.isascii() or not 0 < len(secret) <= MAX_TOTP_SECRET:
            raise MalformedInput("TOTP secret has an invalid form")
        # A random 24-byte nonce: XChaCha20's nonce is long enough that random
        # nonces never collide in practice, so no counter needs to be kept.
        nonce = P.random_bytes(P.AEAD_NONCE_LEN)
        return L.TOTP_MAGIC + nonce + P.aead_seal(self._raw, nonce, secret.encode("ascii"), self._ad(username))

    def open(self, username: str, sealed: bytes) -> str:
        """The secret sealed for ``username``; raise :class:`DecryptionFailed` if altered or moved."""
        head = len(L.TOTP_MAGIC) + P.AEAD_NONCE_LEN
        if not isinstance(sealed, bytes) or len(sealed) < head + P.AEAD_TAG_LEN or not sealed.startswith(L.TOTP_MAGIC):
            raise MalformedInput("sealed TOTP secret has an invalid form")
        nonce = sealed[len(L.TOTP_MAGIC) : head]
        plain = P.aead_open(self._raw, nonce, sealed[head:], self._ad(username))
        try:
            return plain.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedInput("sealed TOTP secret has an invalid form") from None

    def __repr__(self) -> str:
        return "TotpSecretKey(<secret>)"

    __str__ = __repr__


__all__ = [
    "MIN_STAFF_PASSWORD",
    "Password",
    "TotpSecretKey",
    "WeakPassword",
    "WrongPassword",
    "check_staff_password",
    "hash_password",
    "verify_password",
]
