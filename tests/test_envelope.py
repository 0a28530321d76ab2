"""Envelope v1 and attachment chunks (docs/protocol.md, sections 4 and 5)."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safepassage.crypto import envelope as E
from safepassage.crypto.errors import (
    DecryptionFailed,
    MalformedInput,
    NotARecipient,
    SafePassageError,
    UnsupportedVersion,
)
from safepassage.crypto.keys import HybridPrivateKey

KEYS = [HybridPrivateKey.generate() for _ in range(5)]
PUBLIC = [k.public_key for k in KEYS]


def test_round_trip_for_every_recipient() -> None:
    sealed = E.seal(b"I want to leave.", PUBLIC[:3], E.Purpose.CONTACT)
    for key in KEYS[:3]:
        opened = E.open_envelope(sealed.data, [key], expected_purpose=E.Purpose.CONTACT)
        assert opened.plaintext == b"I want to leave."
        assert opened.opened_with == key.key_id
        assert opened.envelope_hash == sealed.envelope_hash


def test_header_is_readable_without_keys_and_sorted() -> None:
    sealed = E.seal(b"x", PUBLIC[:4], E.Purpose.REPLY)
    header = E.parse_header(sealed.data)
    assert header.purpose is E.Purpose.REPLY
    assert header.bucket == 0
    assert list(header.recipients) == sorted((k.key_id for k in PUBLIC[:4]), key=lambda k: k.raw)
    assert header.length == len(sealed.data) == E.envelope_length(0, 4)


def test_non_recipient_cannot_open() -> None:
    sealed = E.seal(b"secret", PUBLIC[:2], E.Purpose.CONTACT)
    with pytest.raises(NotARecipient):
        E.open_envelope(sealed.data, [KEYS[4]], expected_purpose=E.Purpose.CONTACT)


def test_expected_purpose_is_enforced() -> None:
    sealed = E.seal(b"reply", PUBLIC[:1], E.Purpose.REPLY)
    with pytest.raises(MalformedInput):
        E.open_envelope(sealed.data, [KEYS[0]], expected_purpose=E.Purpose.CONTACT)


@pytest.mark.parametrize("bucket", range(len(E.BUCKETS)))
def test_equal_length_within_a_bucket(bucket: int) -> None:
    low = 0 if bucket == 0 else E.BUCKETS[bucket - 1] - 3
    high = E.BUCKETS[bucket] - 4
    a = E.seal(b"a" * low, PUBLIC[:2], E.Purpose.CONTACT)
    b = E.seal(b"b" * high, PUBLIC[:2], E.Purpose.CONTACT)
    assert a.header.bucket == b.header.bucket == bucket
    assert len(a.data) == len(b.data) == E.envelope_length(bucket, 2)


@given(st.integers(0, E.BUCKETS[1] - 4), st.integers(0, E.BUCKETS[1] - 4))
def test_equal_lengths_property(n: int, m: int) -> None:
    a = E.seal(bytes(n), PUBLIC[:1], E.Purpose.CONTACT)
    b = E.seal(bytes(m), PUBLIC[:1], E.Purpose.CONTACT)
    assert (len(a.data) == len(b.data)) == (a.header.bucket == b.header.bucket)


def test_too_long_and_bad_arguments() -> None:
    with pytest.raises(MalformedInput):
        E.seal(bytes(E.MAX_BODY + 1), PUBLIC[:1], E.Purpose.CONTACT)
    with pytest.raises(MalformedInput):
        E.seal(b"x", [], E.Purpose.CONTACT)
    with pytest.raises(MalformedInput):
        E.seal(b"x", [PUBLIC[0], PUBLIC[0]], E.Purpose.CONTACT)
    assert len(E.seal(bytes(E.MAX_BODY), PUBLIC[:1], E.Purpose.CONTACT).data) == E.envelope_length(4, 1)


def test_min_bucket_pads_further() -> None:
    sealed = E.seal(b"short", PUBLIC[:1], E.Purpose.CONTACT, min_bucket=2)
    assert sealed.header.bucket == 2
    assert E.open_envelope(sealed.data, KEYS[:1], expected_purpose=E.Purpose.CONTACT).plaintext == b"short"


SMALL = E.seal("Я хочу уйти. canary-7f3a".encode(), PUBLIC[:2], E.Purpose.CONTACT)


@given(st.data())
def test_any_byte_change_raises_our_error(data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(SMALL.data) - 1))
    flip = data.draw(st.integers(1, 255))
    mutated = bytearray(SMALL.data)
    mutated[pos] ^= flip
    with pytest.raises(SafePassageError):
        E.open_envelope(bytes(mutated), KEYS[:2], expected_purpose=E.Purpose.CONTACT)


@given(st.integers(0, len(SMALL.data) - 1))
def test_truncation_raises_our_error(cut: int) -> None:
    with pytest.raises(MalformedInput):
        E.open_envelope(SMALL.data[:cut], KEYS[:1], expected_purpose=E.Purpose.CONTACT)


@given(st.binary(max_size=3000))
def test_garbage_raises_our_error(blob: bytes) -> None:
    with pytest.raises(SafePassageError):
        E.open_envelope(blob, KEYS[:1], expected_purpose=E.Purpose.CONTACT)


def test_future_version_is_named() -> None:
    data = bytearray(SMALL.data)
    data[3] = 2
    with pytest.raises(UnsupportedVersion):
        E.parse_header(bytes(data))


def test_swapping_stanzas_between_envelopes_fails() -> None:
    other = E.seal(b"other", PUBLIC[:2], E.Purpose.CONTACT)
    # Same layout; take the first stanza from the other envelope.
    start, end = E.HEADER_PREFIX_LEN, E.HEADER_PREFIX_LEN + E.STANZA_LEN
    spliced = SMALL.data[:start] + other.data[start:end] + SMALL.data[end:]
    for key in KEYS[:2]:
        with pytest.raises(SafePassageError):
            E.open_envelope(spliced, [key], expected_purpose=E.Purpose.CONTACT)


# --- chunks ----------------------------------------------------------------------


def _attachment(size: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(size))


def test_chunks_round_trip_through_streams() -> None:
    data = _attachment(2 * E.CHUNK_DATA_MAX + 5)
    sealed = E.seal(b"see attachment", PUBLIC[:1], E.Purpose.CONTACT)
    frames = list(sealed.attachment_sealer(0).seal_stream(io.BytesIO(data)))
    assert len(frames) == 3
    assert {len(f) for f in frames} == {E.CHUNK_LEN}
    assert [E.parse_chunk_frame(f).final for f in frames] == [False, False, True]
    opener = E.open_envelope(sealed.data, KEYS[:1], expected_purpose=E.Purpose.CONTACT).attachment_opener(0)
    assert b"".join(opener.open_chunk(f) for f in frames) == data
    assert opener.finish() == 3


@pytest.mark.parametrize("size", [0, 1, E.CHUNK_DATA_MAX])
def test_chunk_edge_sizes(size: int) -> None:
    sealed = E.seal(b"x", PUBLIC[:1], E.Purpose.CONTACT)
    frames = list(sealed.attachment_sealer(1).seal_stream(io.BytesIO(_attachment(size))))
    assert len(frames) == 1
    opener = E.open_envelope(sealed.data, KEYS[:1], expected_purpose=E.Purpose.CONTACT).attachment_opener(1)
    assert opener.open_chunk(frames[0]) == _attachment(size)
    opener.finish()


@pytest.fixture(scope="module")
def two_chunks() -> tuple[E.SealedEnvelope, list[bytes]]:
    sealed = E.seal(b"two chunks", PUBLIC[:1], E.Purpose.CONTACT)
    frames = list(sealed.attachment_sealer(0).seal_stream(io.BytesIO(_attachment(E.CHUNK_DATA_MAX + 10))))
    return sealed, frames


def _opener(sealed: E.SealedEnvelope, attachment: int = 0) -> E.ChunkOpener:
    return E.open_envelope(sealed.data, KEYS[:1], expected_purpose=E.Purpose.CONTACT).attachment_opener(attachment)


def test_reordered_chunks_fail(two_chunks: tuple[E.SealedEnvelope, list[bytes]]) -> None:
    sealed, frames = two_chunks
    with pytest.raises(DecryptionFailed):
        _opener(sealed).open_chunk(frames[1])


def test_renumbered_chunk_fails(two_chunks: tuple[E.SealedEnvelope, list[bytes]]) -> None:
    sealed, frames = two_chunks
    # Claim the second chunk is chunk 0: the frame says 0, but the tag binds index 1.
    forged = frames[1][:6] + (0).to_bytes(4, "big") + frames[1][10:]
    with pytest.raises(DecryptionFailed):
        _opener(sealed).open_chunk(forged)


def test_truncated_attachment_fails(two_chunks: tuple[E.SealedEnvelope, list[bytes]]) -> None:
    sealed, frames = two_chunks
    opener = _opener(sealed)
    opener.open_chunk(frames[0])
    with pytest.raises(DecryptionFailed):
        opener.finish()


def test_false_final_flag_fails(two_chunks: tuple[E.SealedEnvelope, list[bytes]]) -> None:
    sealed, frames = two_chunks
    forged = frames[0][:10] + b"\x01" + frames[0][11:]
    with pytest.raises(DecryptionFailed):
        _opener(sealed).open_chunk(forged)


def test_chunk_after_final_fails(two_chunks: tuple[E.SealedEnvelope, list[bytes]]) -> None:
    sealed, frames = two_chunks
    opener = _opener(sealed)
    opener.open_chunk(frames[0])
    opener.open_chunk(frames[1])
    with pytest.raises(DecryptionFailed):
        opener.open_chunk(frames[1])


def test_chunk_from_another_attachment_fails(two_chunks: tuple[E.SealedEnvelope, list[bytes]]) -> None:
    sealed, frames = two_chunks
    with pytest.raises(DecryptionFailed):
        _opener(sealed, attachment=1).open_chunk(frames[0])


def test_chunk_spliced_from_another_envelope_fails(two_chunks: tuple[E.SealedEnvelope, list[bytes]]) -> None:
    _, frames = two_chunks
    other = E.seal(b"two chunks", PUBLIC[:1], E.Purpose.CONTACT)
    with pytest.raises(DecryptionFailed):
        _opener(other).open_chunk(frames[0])


def test_chunk_bit_flip_fails(two_chunks: tuple[E.SealedEnvelope, list[bytes]]) -> None:
    sealed, frames = two_chunks
    for pos in (11, 5000, len(frames[0]) - 1):
        mutated = bytearray(frames[0])
        mutated[pos] ^= 0x40
        with pytest.raises(DecryptionFailed):
            _opener(sealed).open_chunk(bytes(mutated))


@given(st.binary(max_size=64))
def test_chunk_frame_garbage(blob: bytes) -> None:
    with pytest.raises(MalformedInput):
        E.parse_chunk_frame(blob)


def test_sealer_refuses_misuse() -> None:
    sealer = E.seal(b"x", PUBLIC[:1], E.Purpose.CONTACT).attachment_sealer(0)
    with pytest.raises(MalformedInput):
        sealer.seal_chunk(b"short but not final", final=False)
    sealer.seal_chunk(b"", final=True)
    with pytest.raises(MalformedInput):
        sealer.seal_chunk(b"", final=True)


@pytest.mark.parametrize(
    "bad_pad",
    [
        lambda m, size: len(m).to_bytes(4, "big") + m + b"\x01" + bytes(size - 5 - len(m)),
        lambda m, size: (size - 3).to_bytes(4, "big") + m + bytes(size - 4 - len(m)),
    ],
    ids=["non-zero padding", "length beyond bucket"],
)
def test_bad_padding_is_refused(monkeypatch: pytest.MonkeyPatch, bad_pad: object) -> None:
    # A sender with the content key can put anything under the tag; the reader
    # must still accept only the one canonical padding (section 4.2).
    monkeypatch.setattr(E, "_pad", bad_pad)
    sealed = E.seal(b"padded", PUBLIC[:1], E.Purpose.CONTACT)
    monkeypatch.undo()
    with pytest.raises(DecryptionFailed):
        E.open_envelope(sealed.data, KEYS[:1], expected_purpose=E.Purpose.CONTACT)


def test_secrets_do_not_show_in_repr() -> None:
    sealed = E.seal(b"canary-plaintext", PUBLIC[:1], E.Purpose.CONTACT)
    opened = E.open_envelope(sealed.data, KEYS[:1], expected_purpose=E.Purpose.CONTACT)
    secrets_hex = [
        KEYS[0].private_bytes_raw().hex(),
        sealed._content_key.get().hex(),
    ]
    for obj in (sealed, opened, KEYS[0], opened.attachment_opener(0), sealed.header, opened.header):
        text = repr(obj)
        assert "canary" not in text
        for secret in secrets_hex:
            for i in range(0, len(secret) - 8, 8):
                assert secret[i : i + 8] not in text
