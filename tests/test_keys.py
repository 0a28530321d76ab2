"""Typed keys, key ids, fingerprints and domain-separated signatures (section 3 and 6.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safepassage.crypto import labels as L
from safepassage.crypto.errors import BadSignature, MalformedInput
from safepassage.crypto.keys import HybridPrivateKey, HybridPublicKey, KeyId, SigningKey, VerifyKey

from .helpers import hybrid_key, signing_key


def test_key_ids_differ_by_type_and_key() -> None:
    a, b = signing_key("a"), signing_key("b")
    assert a.verify_key.key_id != b.verify_key.key_id
    assert len(a.verify_key.key_id.raw) == 32
    assert KeyId.from_hex(a.verify_key.key_id.hex()) == a.verify_key.key_id


def test_fingerprint_shape() -> None:
    fp = hybrid_key("x").public_key.fingerprint()
    groups = fp.split(" ")
    assert len(groups) == 10
    assert all(len(g) == 5 and g.isdigit() for g in groups)
    assert fp != hybrid_key("y").public_key.fingerprint()


def test_signature_is_bound_to_its_purpose() -> None:
    key = signing_key("signer")
    sig = key.sign(L.SIG_RECEIPT, b"message")
    key.verify_key.verify(L.SIG_RECEIPT, b"message", sig)
    with pytest.raises(BadSignature):
        key.verify_key.verify(L.SIG_DIRECTORY, b"message", sig)
    with pytest.raises(BadSignature):
        key.verify_key.verify(L.SIG_RECEIPT, b"messagf", sig)
    with pytest.raises(BadSignature):
        signing_key("other").verify_key.verify(L.SIG_RECEIPT, b"message", sig)


@given(st.binary(min_size=64, max_size=64))
def test_random_signatures_fail(sig: bytes) -> None:
    with pytest.raises(BadSignature):
        signing_key("signer").verify_key.verify(L.SIG_RECEIPT, b"m", sig)


def test_wrong_lengths_are_malformed() -> None:
    with pytest.raises(MalformedInput):
        VerifyKey(b"short")
    with pytest.raises(MalformedInput):
        SigningKey(b"\x00" * 31)
    with pytest.raises(MalformedInput):
        HybridPublicKey(b"\x00" * 1215)
    with pytest.raises(MalformedInput):
        HybridPrivateKey(b"\x00" * 95)
    with pytest.raises(MalformedInput):
        KeyId.from_hex("AB" * 32)


def test_bad_signature_length() -> None:
    with pytest.raises(BadSignature):
        signing_key("s").verify_key.verify(L.SIG_RECEIPT, b"m", b"\x00" * 63)


def test_private_key_round_trip_and_repr() -> None:
    key = HybridPrivateKey.generate()
    again = HybridPrivateKey.from_private_bytes(key.private_bytes_raw())
    assert again.public_key == key.public_key
    secret_hex = key.private_bytes_raw().hex()
    assert secret_hex[:12] not in repr(key)
    sk = SigningKey.generate()
    assert sk.seed_bytes_raw().hex()[:12] not in repr(sk)
    assert "secret" in repr(sk)
