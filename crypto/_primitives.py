"""The only module that imports ``nacl`` and ``cryptography``.

Everything above this layer speaks in Safe Passage's typed keys. Functions here
take and return raw bytes, raise our own errors (never a library's), and do no
policy: which label, which key, which nonce is decided by the caller, following
docs/protocol.md. Keeping the primitives in one place means one file to audit
when a library changes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

import nacl.bindings as _sodium
import nacl.exceptions as _nacl_exc
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes as _hashes
from cryptography.hazmat.primitives.asymmetric import mlkem as _mlkem
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import BadSignature, CryptoError, DecryptionFailed, MalformedInput, WrongPassphrase

X25519_KEY_LEN: Final = 32
ED25519_SEED_LEN: Final = 32
ED25519_PUBLIC_LEN: Final = 32
ED25519_SIG_LEN: Final = 64
MLKEM768_SEED_LEN: Final = 64
MLKEM768_PUBLIC_LEN: Final = 1184
MLKEM768_CT_LEN: Final = 1088
SHARED_SECRET_LEN: Final = 32
AEAD_KEY_LEN: Final = 32
AEAD_NONCE_LEN: Final = 24
AEAD_TAG_LEN: Final = 16

__all__ = [
    "AEAD_KEY_LEN",
    "AEAD_NONCE_LEN",
    "AEAD_TAG_LEN",
    "ED25519_PUBLIC_LEN",
    "ED25519_SEED_LEN",
    "ED25519_SIG_LEN",
    "MLKEM768_CT_LEN",
    "MLKEM768_PUBLIC_LEN",
    "MLKEM768_SEED_LEN",
    "SHARED_SECRET_LEN",
    "X25519_KEY_LEN",
    "aead_open",
    "aead_seal",
    "argon2id",
    "constant_time_equal",
    "ed25519_expanded_from_seed",
    "ed25519_public_from_expanded",
    "ed25519_public_from_seed",
    "ed25519_sign",
    "ed25519_verify",
    "hkdf_sha256",
    "hmac_sha256",
    "MlKemPrivate",
    "check_hybrid_public",
    "mlkem768_encapsulate",
    "pwhash_str",
    "pwhash_str_verify",
    "random_bytes",
    "sha256",
    "sha3_256",
    "x25519_public_from_secret",
    "x25519_shared",
]


def random_bytes(n: int) -> bytes:
    return secrets.token_bytes(n)


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


def sha3_256(*parts: bytes) -> bytes:
    h = hashlib.sha3_256()
    for p in parts:
        h.update(p)
    return h.digest()


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=_hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


# --- X25519 ---------------------------------------------------------------


def x25519_public_from_secret(secret: bytes) -> bytes:
    _check_len(secret, X25519_KEY_LEN, "x25519 secret")
    return bytes(_sodium.crypto_scalarmult_base(secret))


def x25519_shared(secret: bytes, public: bytes) -> bytes:
    _check_len(secret, X25519_KEY_LEN, "x25519 secret")
    _check_len(public, X25519_KEY_LEN, "x25519 public key")
    try:
        # libsodium refuses an all-zero result (a small-order public key), which
        # would make the shared secret predictable.
        return bytes(_sodium.crypto_scalarmult(secret, public))
    except _nacl_exc.RuntimeError as exc:
        raise MalformedInput("x25519 public key of small order") from exc


# --- ML-KEM-768 -------------------------------------------------------------


class MlKemPrivate:
    """An ML-KEM-768 decapsulation key, expanded once from its 64-byte seed."""

    __slots__ = ("_key",)

    def __init__(self, seed: bytes) -> None:
        _check_len(seed, MLKEM768_SEED_LEN, "ml-kem seed")
        try:
            self._key = _mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        except UnsupportedAlgorithm as exc:  # pragma: no cover - depends on the wheel
            raise CryptoError("ML-KEM-768 unavailable in this cryptography build") from exc

    def __repr__(self) -> str:
        return "MlKemPrivate(<secret>)"

    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def decapsulate(self, ciphertext: bytes) -> bytes:
        _check_len(ciphertext, MLKEM768_CT_LEN, "ml-kem ciphertext")
        try:
            # ML-KEM decapsulation never fails on a well-sized ciphertext: a forged
            # one yields an unrelated (implicit-rejection) secret, caught later by
            # the AEAD tag.
            return self._key.decapsulate(ciphertext)
        except ValueError as exc:
            raise MalformedInput("ml-kem ciphertext") from exc


def check_hybrid_public(x25519_public: bytes, mlkem_public: bytes) -> None:
    """Refuse an encryption key nobody could seal to: a small-order X25519 point
    or an ML-KEM key that fails the FIPS 203 modulus check."""
    # A small-order point gives an all-zero result for every scalar, which
    # libsodium refuses; the scalar here is arbitrary and public.
    x25519_shared(b"\x01" * X25519_KEY_LEN, x25519_public)
    _check_len(mlkem_public, MLKEM768_PUBLIC_LEN, "ml-kem public key")
    try:
        _mlkem.MLKEM768PublicKey.from_public_bytes(mlkem_public)
    except ValueError:
        raise MalformedInput("ml-kem public key") from None


def mlkem768_encapsulate(public: bytes) -> tuple[bytes, bytes]:
    """Return ``(shared_secret, ciphertext)``."""
    _check_len(public, MLKEM768_PUBLIC_LEN, "ml-kem public key")
    try:
        pk = _mlkem.MLKEM768PublicKey.from_public_bytes(public)
    except ValueError as exc:
        # FIPS 203 modulus check on the encapsulation key failed.
        raise MalformedInput("ml-kem public key") from exc
    ss, ct = pk.encapsulate()
    return ss, ct


# --- Ed25519 ----------------------------------------------------------------


def ed25519_public_from_seed(seed: bytes) -> bytes:
    _check_len(seed, ED25519_SEED_LEN, "ed25519 seed")
    public, _ = _sodium.crypto_sign_seed_keypair(seed)
    return bytes(public)


def ed25519_expanded_from_seed(seed: bytes) -> bytes:
    """The 64-byte expanded secret (clamped scalar || nonce prefix), as Tor stores onion keys."""
    _check_len(seed, ED25519_SEED_LEN, "ed25519 seed")
    h = bytearray(hashlib.sha512(seed).digest())
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return bytes(h)


def ed25519_public_from_expanded(expanded: bytes) -> bytes:
    """The public key of an expanded secret (its first half is the already clamped scalar)."""
    _check_len(expanded, 2 * ED25519_SEED_LEN, "ed25519 expanded secret")
    try:
        return bytes(_sodium.crypto_scalarmult_ed25519_base_noclamp(expanded[:32]))
    except _nacl_exc.RuntimeError as exc:
        raise MalformedInput("ed25519 expanded secret") from exc


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    _check_len(seed, ED25519_SEED_LEN, "ed25519 seed")
    _, secret = _sodium.crypto_sign_seed_keypair(seed)
    signed = _sodium.crypto_sign(message, secret)
    return bytes(signed[:ED25519_SIG_LEN])


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> None:
    """Raise :class:`BadSignature` unless ``signature`` is valid.

    libsodium's verification rejects non-canonical encodings and small-order
    keys, so a signature cannot be malleated into a second valid one.
    """
    _check_len(public, ED25519_PUBLIC_LEN, "ed25519 public key")
    if len(signature) != ED25519_SIG_LEN:
        raise BadSignature("wrong signature length")
    try:
        _sodium.crypto_sign_open(signature + message, public)
    except (_nacl_exc.BadSignatureError, _nacl_exc.ValueError, _nacl_exc.RuntimeError) as exc:
        raise BadSignature() from exc


# --- XChaCha20-Poly1305 -----------------------------------------------------


def aead_seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    _check_len(key, AEAD_KEY_LEN, "aead key")
    _check_len(nonce, AEAD_NONCE_LEN, "aead nonce")
    return bytes(_sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key))


def aead_open(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    _check_len(key, AEAD_KEY_LEN, "aead key")
    _check_len(nonce, AEAD_NONCE_LEN, "aead nonce")
    if len(ciphertext) < AEAD_TAG_LEN:
        raise DecryptionFailed("ciphertext shorter than its tag")
    try:
        return bytes(_sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key))
    except (_nacl_exc.CryptoError, InvalidTag) as exc:
        raise DecryptionFailed() from exc


# --- Argon2id ---------------------------------------------------------------

ARGON2_SALT_LEN: Final = 16


def argon2id(password: bytes, salt: bytes, *, opslimit: int, memlimit: int, length: int) -> bytes:
    _check_len(salt, ARGON2_SALT_LEN, "argon2id salt")
    try:
        return bytes(
            _sodium.crypto_pwhash_alg(length, password, salt, opslimit, memlimit, _sodium.crypto_pwhash_ALG_ARGON2ID13)
        )
    except (_nacl_exc.RuntimeError, MemoryError) as exc:
        # libsodium fails when it cannot allocate `memlimit` bytes; that must
        # surface as our error, not a library one.
        raise CryptoError("not enough memory for Argon2id") from exc


def _check_len(value: bytes, expected: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != expected:
        raise MalformedInput(f"{what} must be {expected} bytes")


# --- Argon2id password strings ----------------------------------------------

PWHASH_STR_MAX: Final = 127


def pwhash_str(password: bytes, *, opslimit: int, memlimit: int) -> bytes:
    """libsodium's self-describing Argon2id string: parameters, a fresh random salt and the hash."""
    try:
        return bytes(_sodium.crypto_pwhash_str_alg(password, opslimit, memlimit, _sodium.crypto_pwhash_ALG_ARGON2ID13))
    except (_nacl_exc.RuntimeError, MemoryError) as exc:
        raise CryptoError("not enough memory for Argon2id") from exc


def pwhash_str_verify(stored: bytes, password: bytes) -> None:
    """Raise :class:`WrongPassphrase` unless ``password`` matches ``stored``.

    libsodium recomputes with the parameters written in ``stored`` and compares
    in constant time; it reports a malformed string the same way as a mismatch.
    """
    if not isinstance(stored, bytes) or not 0 < len(stored) <= PWHASH_STR_MAX:
        raise MalformedInput("password hash has an invalid form")
    try:
        _sodium.crypto_pwhash_str_verify(stored, password)
    except (_nacl_exc.InvalidkeyError, _nacl_exc.ValueError, MemoryError) as exc:
        raise WrongPassphrase() from exc
