"""Typed keys, key ids and human-readable fingerprints (docs/protocol.md, section 3).

Keys are objects, never loose bytes: build them with ``generate()`` or
``from_*_bytes()``; raw bytes leave only through a method that says so. Secret
keys never show their bytes in ``repr``.

Signing always names a purpose (a ``SIG_*`` label): the bytes signed are
``SIGNATURE || purpose || 0x00 || message``, so a signature made for one kind of
document can never be replayed as another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from . import _primitives as P
from . import labels as L
from .errors import MalformedInput

KEY_ID_LEN: Final = 32
HYBRID_PUBLIC_LEN: Final = P.X25519_KEY_LEN + P.MLKEM768_PUBLIC_LEN  # 1216
HYBRID_PRIVATE_LEN: Final = P.X25519_KEY_LEN + P.MLKEM768_SEED_LEN  # 96
SIGNATURE_LEN: Final = P.ED25519_SIG_LEN
FINGERPRINT_GROUPS: Final = 10


@dataclass(frozen=True, slots=True)
class KeyId:
    """SHA-256 over a typed public key; names a key in envelopes and documents."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != KEY_ID_LEN:
            raise MalformedInput(f"key id must be {KEY_ID_LEN} bytes")

    @classmethod
    def from_hex(cls, text: str) -> KeyId:
        if not isinstance(text, str) or len(text) != 2 * KEY_ID_LEN or text != text.lower():
            raise MalformedInput("key id must be 64 lowercase hex digits")
        try:
            return cls(bytes.fromhex(text))
        except ValueError as exc:
            raise MalformedInput("key id must be 64 lowercase hex digits") from exc

    def hex(self) -> str:
        return self.raw.hex()

    def short(self) -> str:
        return self.raw[:6].hex()

    def __repr__(self) -> str:
        return f"KeyId({self.short()}...)"


def _key_id(key_type: bytes, public: bytes) -> KeyId:
    return KeyId(P.sha256(L.KEY_ID, b"\x00", key_type, b"\x00", public))


def fingerprint_of(label: bytes, key_type: bytes, public: bytes) -> str:
    """Ten groups of five decimal digits (about 166 bits), easy to read aloud in any language."""
    digest = P.sha256(label, b"\x00", key_type, b"\x00", public)
    groups = [f"{int.from_bytes(digest[3 * i : 3 * i + 3], 'big') % 100_000:05d}" for i in range(FINGERPRINT_GROUPS)]
    return " ".join(groups)


def _sig_message(purpose: bytes, message: bytes) -> bytes:
    if not purpose or b"\x00" in purpose:
        raise ValueError("signature purpose must be a non-empty label without NUL")
    return L.SIGNATURE + purpose + b"\x00" + message


class VerifyKey:
    """An Ed25519 public key."""

    __slots__ = ("_id", "_raw")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != P.ED25519_PUBLIC_LEN:
            raise MalformedInput("ed25519 public key must be 32 bytes")
        self._raw = raw
        self._id = _key_id(L.KEY_TYPE_ED25519, raw)

    @classmethod
    def from_public_bytes(cls, raw: bytes) -> VerifyKey:
        return cls(raw)

    def public_bytes_raw(self) -> bytes:
        return self._raw

    @property
    def key_id(self) -> KeyId:
        return self._id

    def fingerprint(self) -> str:
        return fingerprint_of(L.FINGERPRINT, L.KEY_TYPE_ED25519, self._raw)

    def verify(self, purpose: bytes, message: bytes, signature: bytes) -> None:
        """Raise :class:`~safepassage.crypto.errors.BadSignature` unless valid."""
        P.ed25519_verify(self._raw, _sig_message(purpose, message), signature)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"VerifyKey({self._id.short()}...)"


class SigningKey:
    """An Ed25519 private key (kept as its 32-byte seed)."""

    __slots__ = ("_seed", "_verify_key")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != P.ED25519_SEED_LEN:
            raise MalformedInput("ed25519 seed must be 32 bytes")
        self._seed = seed
        self._verify_key = VerifyKey(P.ed25519_public_from_seed(seed))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(P.random_bytes(P.ED25519_SEED_LEN))

    @classmethod
    def from_seed_bytes(cls, seed: bytes) -> SigningKey:
        return cls(seed)

    def seed_bytes_raw(self) -> bytes:
        """The secret seed. Only the vault and key derivation may call this."""
        return self._seed

    @property
    def verify_key(self) -> VerifyKey:
        return self._verify_key

    def sign(self, purpose: bytes, message: bytes) -> bytes:
        return P.ed25519_sign(self._seed, _sig_message(purpose, message))

    def __repr__(self) -> str:
        return f"SigningKey(<secret>, public={self._verify_key.key_id.short()}...)"


class HybridPublicKey:
    """An X25519 + ML-KEM-768 encryption key: ``x25519_pk (32) || mlkem_ek (1184)``."""

    __slots__ = ("_id", "_raw")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != HYBRID_PUBLIC_LEN:
            raise MalformedInput(f"hybrid public key must be {HYBRID_PUBLIC_LEN} bytes")
        # Checked once here, so a key in a directory is always one we can seal
        # to: a rogue handler cannot publish a key that makes sealing to its
        # pool fail for everyone.
        P.check_hybrid_public(raw[: P.X25519_KEY_LEN], raw[P.X25519_KEY_LEN :])
        self._raw = raw
        self._id = _key_id(L.KEY_TYPE_HYBRID, raw)

    @classmethod
    def from_public_bytes(cls, raw: bytes) -> HybridPublicKey:
        return cls(raw)

    def public_bytes_raw(self) -> bytes:
        return self._raw

    @property
    def x25519(self) -> bytes:
        return self._raw[: P.X25519_KEY_LEN]

    @property
    def mlkem(self) -> bytes:
        return self._raw[P.X25519_KEY_LEN :]

    @property
    def key_id(self) -> KeyId:
        return self._id

    def fingerprint(self) -> str:
        return fingerprint_of(L.FINGERPRINT, L.KEY_TYPE_HYBRID, self._raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HybridPublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"HybridPublicKey({self._id.short()}...)"


class HybridPrivateKey:
    """An X25519 secret and an ML-KEM-768 seed: ``x25519_sk (32) || mlkem_seed (64)``."""

    __slots__ = ("_mlkem", "_public", "_raw")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != HYBRID_PRIVATE_LEN:
            raise MalformedInput(f"hybrid private key must be {HYBRID_PRIVATE_LEN} bytes")
        self._raw = raw
        self._mlkem = P.MlKemPrivate(raw[P.X25519_KEY_LEN :])
        x_pub = P.x25519_public_from_secret(raw[: P.X25519_KEY_LEN])
        self._public = HybridPublicKey(x_pub + self._mlkem.public_bytes())

    @classmethod
    def generate(cls) -> HybridPrivateKey:
        return cls(P.random_bytes(HYBRID_PRIVATE_LEN))

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> HybridPrivateKey:
        return cls(raw)

    def private_bytes_raw(self) -> bytes:
        """The secret key material. Only the vault and key derivation may call this."""
        return self._raw

    @property
    def public_key(self) -> HybridPublicKey:
        return self._public

    @property
    def key_id(self) -> KeyId:
        return self._public.key_id

    def x25519_shared(self, ephemeral_public: bytes) -> bytes:
        return P.x25519_shared(self._raw[: P.X25519_KEY_LEN], ephemeral_public)

    def mlkem_decapsulate(self, ciphertext: bytes) -> bytes:
        return self._mlkem.decapsulate(ciphertext)

    def __repr__(self) -> str:
        return f"HybridPrivateKey(<secret>, public={self._public.key_id.short()}...)"
