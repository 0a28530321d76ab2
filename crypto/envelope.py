"""Envelope v1 and chunked attachments (docs/protocol.md, sections 4 and 5).

An envelope is what the server stores: a header naming each recipient's key id
with a hybrid (X25519 + ML-KEM-768) wrap of a fresh content key, then the body
sealed with XChaCha20-Poly1305 under a key derived from the content key, with
the whole header as associated data. The plaintext is padded to a size bucket,
so two messages in one bucket for the same number of recipients give envelopes
of exactly the same length.

Attachments are sequences of fixed-size chunks sealed under a chunk key derived
from the same content key, each binding the envelope hash, its attachment
number, its index and a final-chunk flag: chunks cannot be reordered, dropped
from the end, or moved to another envelope without the tag failing.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import BinaryIO, Final

from . import _primitives as P
from . import labels as L
from .encoding import Reader, u8, u16, u32
from .errors import DecryptionFailed, MalformedInput, NotARecipient, UnsupportedVersion
from .keys import HYBRID_PUBLIC_LEN, KEY_ID_LEN, HybridPrivateKey, HybridPublicKey, KeyId

KiB: Final = 1024
MiB: Final = 1024 * KiB

#: Padded body sizes. The plaintext plus its 4-byte length prefix must fit.
BUCKETS: Final = (4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB)
MAX_BODY: Final = BUCKETS[-1] - 4
MAX_RECIPIENTS: Final = 64
ENVELOPE_ID_LEN: Final = 16
CONTENT_KEY_LEN: Final = 32
HEADER_PREFIX_LEN: Final = len(L.ENVELOPE_MAGIC) + 3 + ENVELOPE_ID_LEN  # 23
WRAPPED_KEY_LEN: Final = CONTENT_KEY_LEN + P.AEAD_TAG_LEN  # 48
STANZA_LEN: Final = KEY_ID_LEN + P.X25519_KEY_LEN + P.MLKEM768_CT_LEN + WRAPPED_KEY_LEN  # 1200
COMMITMENT_LEN: Final = 32
ZERO_NONCE: Final = bytes(P.AEAD_NONCE_LEN)

#: Padded plaintext per attachment chunk; every chunk on the wire has the same size.
CHUNK_PLAINTEXT: Final = 1 * MiB
CHUNK_DATA_MAX: Final = CHUNK_PLAINTEXT - 4
CHUNK_HEADER_LEN: Final = len(L.CHUNK_MAGIC) + 2 + 4 + 1  # 11
CHUNK_LEN: Final = CHUNK_HEADER_LEN + CHUNK_PLAINTEXT + P.AEAD_TAG_LEN
MAX_ATTACHMENTS: Final = 64
MAX_CHUNKS: Final = 2**20


class Purpose(enum.IntEnum):
    """What an envelope is for; bound into every wrap and the body tag."""

    CONTACT = 1
    REPLY = 2
    FOLLOW_UP = 3
    ESCALATION = 4


def bucket_for(length: int) -> int:
    """Index of the smallest bucket that holds ``length`` bytes of plaintext."""
    for i, size in enumerate(BUCKETS):
        if length + 4 <= size:
            return i
    raise MalformedInput(f"message longer than the maximum of {MAX_BODY} bytes")


def envelope_length(bucket: int, recipients: int) -> int:
    return HEADER_PREFIX_LEN + STANZA_LEN * recipients + COMMITMENT_LEN + BUCKETS[bucket] + P.AEAD_TAG_LEN


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    """What anyone (the server included) can read from an envelope without a key."""

    purpose: Purpose
    bucket: int
    envelope_id: bytes
    recipient_ids: tuple[bytes, ...]
    length: int

    @property
    def recipients(self) -> tuple[KeyId, ...]:
        return tuple(KeyId(k) for k in self.recipient_ids)

    @property
    def bucket_size(self) -> int:
        return BUCKETS[self.bucket]


def _prefix(purpose: int, bucket: int, count: int, envelope_id: bytes) -> bytes:
    return L.ENVELOPE_MAGIC + u8(purpose) + u8(bucket) + u8(count) + envelope_id


def _combine(ss_m: bytes, ss_x: bytes, ct_m: bytes, ct_x: bytes, pk_x: bytes, kid: KeyId) -> bytes:
    # Like X-Wing, the wrap key is a hash over both shared secrets, both
    # ciphertexts and the recipient's public keys (the key id is SHA-256 over
    # the full X25519 + ML-KEM encoding), so the wrap stays secret while either
    # X25519 or ML-KEM-768 holds, and no ciphertext can be re-targeted.
    return P.sha3_256(L.HYBRID_COMBINER, ss_m, ss_x, ct_m, ct_x, pk_x, kid.raw)


def _derive(content_key: bytes, envelope_id: bytes, label: bytes) -> bytes:
    return P.hkdf_sha256(content_key, salt=envelope_id, info=label, length=P.AEAD_KEY_LEN)


def _commitment(content_key: bytes, envelope_id: bytes, header_without_commitment: bytes) -> bytes:
    # XChaCha20-Poly1305 does not commit to its key: without this MAC a sender
    # could wrap a different content key for each recipient and craft one body
    # that opens, with a valid tag, to a different plaintext for each of them.
    # An HMAC under a key derived from the content key, over the whole header,
    # pins every recipient to the same content key (as age's header MAC does).
    mac_key = _derive(content_key, envelope_id, L.COMMIT_KEY)
    return P.hmac_sha256(mac_key, header_without_commitment)


def _pad(plaintext: bytes, size: int) -> bytes:
    return u32(len(plaintext)) + plaintext + bytes(size - 4 - len(plaintext))


def _unpad(padded: bytes, what: str) -> bytes:
    n = int.from_bytes(padded[:4], "big")
    # The tag already authenticated these bytes, so a bad length or non-zero
    # padding means a broken sender, not an attacker; refuse it all the same so
    # every plaintext has exactly one encoding. (Compared in C: a Python loop
    # over a megabyte of padding would dominate opening a chunk.)
    if n > len(padded) - 4 or padded[4 + n :] != bytes(len(padded) - 4 - n):
        raise DecryptionFailed(f"bad padding in {what}")
    return padded[4 : 4 + n]


class _ContentKey:
    """Holds a content key; its repr never shows it."""

    __slots__ = ("_key", "_sealed_attachments")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._sealed_attachments: set[int] = set()

    def get(self) -> bytes:
        return self._key

    def claim_attachment(self, attachment: int) -> None:
        """Each attachment number gets one sealer: a second would restart at
        chunk 0 with the same key and nonces, reusing the keystream."""
        if attachment in self._sealed_attachments:
            raise MalformedInput(f"attachment {attachment} of this envelope was already sealed")
        self._sealed_attachments.add(attachment)

    def __repr__(self) -> str:
        return "<content key>"


# --- sealing ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class SealedEnvelope:
    """The bytes to send, plus what the sender needs to seal attachments to them."""

    data: bytes
    header: EnvelopeHeader
    _content_key: _ContentKey

    def __repr__(self) -> str:
        return f"SealedEnvelope({len(self.data)} bytes, {len(self.header.recipients)} recipients)"

    @property
    def envelope_hash(self) -> bytes:
        return P.sha256(self.data)

    def attachment_sealer(self, attachment: int) -> ChunkSealer:
        sealer = ChunkSealer(self._content_key, self.header.envelope_id, self.envelope_hash, attachment)
        self._content_key.claim_attachment(attachment)
        return sealer


def seal(
    plaintext: bytes,
    recipients: Sequence[HybridPublicKey],
    purpose: Purpose,
    *,
    min_bucket: int = 0,
) -> SealedEnvelope:
    """Seal ``plaintext`` so that each of ``recipients`` (and nobody else) can open it."""
    if not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise MalformedInput(f"an envelope needs 1 to {MAX_RECIPIENTS} recipients")
    if not 0 <= min_bucket < len(BUCKETS):
        raise MalformedInput("unknown bucket")
    purpose = Purpose(purpose)
    ordered = sorted(recipients, key=lambda k: k.key_id.raw)
    if len({k.key_id for k in ordered}) != len(ordered):
        raise MalformedInput("the same recipient key appears twice")
    bucket = max(bucket_for(len(plaintext)), min_bucket)
    envelope_id = P.random_bytes(ENVELOPE_ID_LEN)
    content_key = P.random_bytes(CONTENT_KEY_LEN)
    prefix = _prefix(purpose, bucket, len(ordered), envelope_id)

    stanzas = [prefix]
    for pk in ordered:
        eph_secret = P.random_bytes(P.X25519_KEY_LEN)
        eph_public = P.x25519_public_from_secret(eph_secret)
        ss_x = P.x25519_shared(eph_secret, pk.x25519)
        ss_m, ct_m = P.mlkem768_encapsulate(pk.mlkem)
        wrap_key = _combine(ss_m, ss_x, ct_m, eph_public, pk.x25519, pk.key_id)
        # The nonce is fixed because each wrap key is fresh and used exactly once.
        wrapped = P.aead_seal(wrap_key, ZERO_NONCE, content_key, L.WRAP_AD + prefix + pk.key_id.raw)
        stanzas.append(pk.key_id.raw + eph_public + ct_m + wrapped)
    header_bytes = b"".join(stanzas)
    header_bytes += _commitment(content_key, envelope_id, header_bytes)

    body_key = _derive(content_key, envelope_id, L.BODY_KEY)
    # Fixed nonce: the body key is derived from a fresh content key and used once.
    body = P.aead_seal(body_key, ZERO_NONCE, _pad(plaintext, BUCKETS[bucket]), header_bytes)
    data = header_bytes + body
    header = EnvelopeHeader(
        purpose=purpose,
        bucket=bucket,
        envelope_id=envelope_id,
        recipient_ids=tuple(k.key_id.raw for k in ordered),
        length=len(data),
    )
    return SealedEnvelope(data, header, _ContentKey(content_key))


# --- parsing and opening -----------------------------------------------------------------


def _parse(data: bytes) -> EnvelopeHeader:
    if not isinstance(data, bytes) or len(data) < HEADER_PREFIX_LEN:
        raise MalformedInput("envelope is truncated")
    r = Reader(data[:HEADER_PREFIX_LEN], "envelope")
    magic = r.take(len(L.ENVELOPE_MAGIC))
    if magic != L.ENVELOPE_MAGIC:
        if magic[:3] == L.ENVELOPE_MAGIC[:3]:
            raise UnsupportedVersion(f"envelope version {magic[3]}")
        raise MalformedInput("not a Safe Passage envelope")
    purpose_raw, bucket, count = r.u8(), r.u8(), r.u8()
    try:
        purpose = Purpose(purpose_raw)
    except ValueError as exc:
        raise MalformedInput("unknown envelope purpose") from exc
    if bucket >= len(BUCKETS):
        raise MalformedInput("unknown size bucket")
    if not 1 <= count <= MAX_RECIPIENTS:
        raise MalformedInput("bad recipient count")
    envelope_id = r.take(ENVELOPE_ID_LEN)
    if len(data) != envelope_length(bucket, count):
        raise MalformedInput("envelope length does not match its bucket")
    starts = range(HEADER_PREFIX_LEN, HEADER_PREFIX_LEN + STANZA_LEN * count, STANZA_LEN)
    kids = tuple(data[i : i + KEY_ID_LEN] for i in starts)
    # Strictly ascending key ids: one canonical order, no duplicate recipient.
    if any(a >= b for a, b in pairwise(kids)):
        raise MalformedInput("recipients not in ascending key-id order")
    return EnvelopeHeader(purpose, bucket, envelope_id, kids, len(data))


def _header_len(header: EnvelopeHeader) -> int:
    return HEADER_PREFIX_LEN + STANZA_LEN * len(header.recipient_ids) + COMMITMENT_LEN


def parse_header(data: bytes) -> EnvelopeHeader:
    """Check an envelope's form (what the server does) without any key."""
    return _parse(data)


@dataclass(frozen=True, slots=True, repr=False)
class OpenedEnvelope:
    header: EnvelopeHeader
    plaintext: bytes
    envelope_hash: bytes
    opened_with: KeyId
    _content_key: _ContentKey

    def __repr__(self) -> str:
        return f"OpenedEnvelope({self.header.purpose.name}, opened with {self.opened_with.short()})"

    def attachment_opener(self, attachment: int) -> ChunkOpener:
        return ChunkOpener(self._content_key, self.header.envelope_id, self.envelope_hash, attachment)


def open_envelope(
    data: bytes,
    keys: Sequence[HybridPrivateKey],
    *,
    expected_purpose: Purpose,
) -> OpenedEnvelope:
    """Open ``data`` with whichever of ``keys`` it was sealed to."""
    header = _parse(data)
    if header.purpose != expected_purpose:
        raise MalformedInput(f"expected a {expected_purpose.name.lower()} envelope")
    by_id = {k.key_id.raw: k for k in keys}
    index = next((i for i, kid in enumerate(header.recipient_ids) if kid in by_id), None)
    if index is None:
        raise NotARecipient()
    key = by_id[header.recipient_ids[index]]
    r = Reader(data, "envelope")
    r.take(HEADER_PREFIX_LEN + STANZA_LEN * index + KEY_ID_LEN)
    ephemeral, mlkem_ct, wrapped = r.take(P.X25519_KEY_LEN), r.take(P.MLKEM768_CT_LEN), r.take(WRAPPED_KEY_LEN)
    prefix = data[:HEADER_PREFIX_LEN]
    ss_x = key.x25519_shared(ephemeral)
    ss_m = key.mlkem_decapsulate(mlkem_ct)
    pk = key.public_key
    wrap_key = _combine(ss_m, ss_x, mlkem_ct, ephemeral, pk.x25519, pk.key_id)
    content_key = P.aead_open(wrap_key, ZERO_NONCE, wrapped, L.WRAP_AD + prefix + pk.key_id.raw)
    header_len = _header_len(header)
    commitment = _commitment(content_key, header.envelope_id, data[: header_len - COMMITMENT_LEN])
    if not P.constant_time_equal(commitment, data[header_len - COMMITMENT_LEN : header_len]):
        raise DecryptionFailed("the header does not commit to this content key")
    body_key = _derive(content_key, header.envelope_id, L.BODY_KEY)
    padded = P.aead_open(body_key, ZERO_NONCE, data[header_len:], data[:header_len])
    return OpenedEnvelope(header, _unpad(padded, "envelope"), P.sha256(data), key.key_id, _ContentKey(content_key))


# --- attachment chunks ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkFrame:
    """The public fields of a chunk, readable without a key."""

    attachment: int
    index: int
    final: bool


def _chunk_frame_header(attachment: int, index: int, final: bool) -> bytes:
    return L.CHUNK_MAGIC + u16(attachment) + u32(index) + u8(1 if final else 0)


def _chunk_nonce(attachment: int, index: int) -> bytes:
    # Unique per (attachment, index) under a chunk key unique to the envelope.
    return u16(attachment) + u32(index) + bytes(P.AEAD_NONCE_LEN - 6)


def parse_chunk_frame(frame: bytes) -> ChunkFrame:
    """Check a chunk's form (what the server does) without any key."""
    if not isinstance(frame, bytes) or len(frame) != CHUNK_LEN:
        raise MalformedInput(f"a chunk must be exactly {CHUNK_LEN} bytes")
    r = Reader(frame[:CHUNK_HEADER_LEN], "chunk")
    if r.take(len(L.CHUNK_MAGIC)) != L.CHUNK_MAGIC:
        raise MalformedInput("not a Safe Passage chunk")
    attachment, index, final = r.u16(), r.u32(), r.u8()
    if attachment >= MAX_ATTACHMENTS or index >= MAX_CHUNKS or final not in (0, 1):
        raise MalformedInput("chunk fields out of range")
    return ChunkFrame(attachment, index, final == 1)


class _ChunkStream:
    def __init__(self, content_key: _ContentKey, envelope_id: bytes, envelope_hash: bytes, attachment: int) -> None:
        if not 0 <= attachment < MAX_ATTACHMENTS:
            raise MalformedInput(f"attachment number must be below {MAX_ATTACHMENTS}")
        self._key = _derive(content_key.get(), envelope_id, L.CHUNK_KEY)
        self._envelope_hash = envelope_hash
        self._attachment = attachment
        self._next = 0
        self._finished = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(attachment={self._attachment}, next={self._next})"

    def _ad(self, frame_header: bytes) -> bytes:
        return L.CHUNK_AD + self._envelope_hash + frame_header

    @property
    def finished(self) -> bool:
        return self._finished


class ChunkSealer(_ChunkStream):
    """Seals one attachment's chunks in order; the last call must say ``final=True``."""

    def seal_chunk(self, data: bytes, *, final: bool) -> bytes:
        if self._finished:
            raise MalformedInput("attachment already finished")
        if len(data) > CHUNK_DATA_MAX or (not final and len(data) != CHUNK_DATA_MAX):
            raise MalformedInput(f"every chunk but the last must carry exactly {CHUNK_DATA_MAX} bytes")
        if self._next >= MAX_CHUNKS:
            raise MalformedInput("attachment has too many chunks")
        frame_header = _chunk_frame_header(self._attachment, self._next, final)
        sealed = P.aead_seal(
            self._key, _chunk_nonce(self._attachment, self._next), _pad(data, CHUNK_PLAINTEXT), self._ad(frame_header)
        )
        self._next += 1
        self._finished = final
        return frame_header + sealed

    def seal_stream(self, source: BinaryIO) -> Iterator[bytes]:
        """Yield sealed chunks for everything ``source`` holds, one chunk in memory at a time."""
        current = _read_full(source, CHUNK_DATA_MAX)
        while True:
            following = _read_full(source, CHUNK_DATA_MAX) if len(current) == CHUNK_DATA_MAX else b""
            final = not following
            yield self.seal_chunk(current, final=final)
            if final:
                return
            current = following


def _read_full(source: BinaryIO, n: int) -> bytes:
    parts = []
    remaining = n
    while remaining:
        part = source.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


class ChunkOpener(_ChunkStream):
    """Opens one attachment's chunks, in order; call :meth:`finish` after the last."""

    def open_chunk(self, frame: bytes) -> bytes:
        fields = parse_chunk_frame(frame)
        if self._finished:
            raise DecryptionFailed("chunk after the final chunk")
        # The frame fields are checked here for a clear message; the tag below
        # would refuse a reordered or moved chunk anyway, because the expected
        # index and attachment are what we bind, not what the frame claims.
        if fields.attachment != self._attachment or fields.index != self._next:
            raise DecryptionFailed("chunk out of order or from another attachment")
        frame_header = _chunk_frame_header(self._attachment, self._next, fields.final)
        padded = P.aead_open(
            self._key,
            _chunk_nonce(self._attachment, self._next),
            frame[CHUNK_HEADER_LEN:],
            self._ad(frame_header),
        )
        data = _unpad(padded, "chunk")
        if not fields.final and len(data) != CHUNK_DATA_MAX:
            raise DecryptionFailed("short chunk before the end")
        self._next += 1
        self._finished = fields.final
        return data

    def finish(self) -> int:
        """Raise unless the final chunk was seen (a truncated attachment); return the chunk count."""
        if not self._finished:
            raise DecryptionFailed("attachment is truncated: its final chunk is missing")
        return self._next


__all__ = [
    "BUCKETS",
    "CHUNK_DATA_MAX",
    "CHUNK_LEN",
    "CHUNK_PLAINTEXT",
    "HYBRID_PUBLIC_LEN",
    "MAX_BODY",
    "MAX_RECIPIENTS",
    "STANZA_LEN",
    "ChunkFrame",
    "ChunkOpener",
    "ChunkSealer",
    "EnvelopeHeader",
    "OpenedEnvelope",
    "Purpose",
    "SealedEnvelope",
    "bucket_for",
    "envelope_length",
    "open_envelope",
    "parse_chunk_frame",
    "parse_header",
    "seal",
]
