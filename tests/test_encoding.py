"""Canonical JSON, base64url and binary framing (section 2)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safepassage.crypto.encoding import MAX_SAFE_INT, Reader, b64d, b64e, canonical_json, parse_canonical_json
from safepassage.crypto.errors import MalformedInput

json_values = st.recursive(
    st.booleans()
    | st.integers(-MAX_SAFE_INT, MAX_SAFE_INT)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_canonical_round_trip(value: object) -> None:
    data = canonical_json(value)  # type: ignore[arg-type]
    assert parse_canonical_json(data, max_len=1 << 20) == value
    assert canonical_json(parse_canonical_json(data, max_len=1 << 20)) == data


@given(json_values)
def test_non_canonical_spellings_are_refused(value: object) -> None:
    pretty = json.dumps(value, indent=1, ensure_ascii=True).encode()
    if pretty != canonical_json(value):  # type: ignore[arg-type]
        with pytest.raises(MalformedInput):
            parse_canonical_json(pretty, max_len=1 << 20)


@pytest.mark.parametrize(
    "text",
    [
        b'{"a":1,"a":2}',
        b'{"b":1,"a":2}',
        b"1.0",
        b"1e3",
        b"NaN",
        b"null",
        b'"\\ud800"',
        b"\xef\xbb\xbf1",
        b'{"a":1} ',
        b"9007199254740992",
        b"[" * 40 + b"]" * 40,
        b"\xff",
    ],
)
def test_hostile_json_is_refused(text: bytes) -> None:
    with pytest.raises(MalformedInput):
        parse_canonical_json(text, max_len=1 << 20)


def test_size_limit() -> None:
    with pytest.raises(MalformedInput):
        parse_canonical_json(b'"' + b"a" * 100 + b'"', max_len=50)


@given(st.binary(max_size=64))
def test_b64_round_trip(data: bytes) -> None:
    assert b64d(b64e(data)) == data


@pytest.mark.parametrize("text", ["AA==", "A", "AB", "+/", "AAB", "é"])
def test_b64_strictness(text: str) -> None:
    # "AB" has unused low bits set (the canonical form of b"\x00" is "AA").
    with pytest.raises(MalformedInput):
        b64d(text)


def test_reader_bounds() -> None:
    r = Reader(b"\x00\x01\x02", "thing")
    assert r.u16() == 1
    with pytest.raises(MalformedInput):
        r.u16()
    with pytest.raises(MalformedInput):
        Reader(b"\x00\x00", "thing").end()
