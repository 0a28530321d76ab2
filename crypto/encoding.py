"""Byte framing, base64url and canonical JSON (docs/protocol.md, section 2).

Signed documents (directory, tree heads, receipts) are canonical JSON: one and
only one byte string per value, so a signature covers exactly what a reader
parses and two honest encoders never disagree. The decoder accepts only input
that re-encodes to the same bytes; anything else is :class:`MalformedInput`.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Mapping, Sequence
from typing import Final, TypeAlias

from .errors import MalformedInput

JsonValue: TypeAlias = str | int | bool | list["JsonValue"] | dict[str, "JsonValue"]
JsonObject = dict[str, JsonValue]

# Integers must survive a round trip through an IEEE double (JavaScript clients).
MAX_SAFE_INT: Final = 2**53 - 1


# --- base64url ----------------------------------------------------------------


def b64e(data: bytes) -> str:
    """Unpadded base64url (RFC 4648 section 5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str, *, length: int | None = None, what: str = "base64 field") -> bytes:
    """Decode unpadded base64url; reject padding, other alphabets and non-canonical tails."""
    if not isinstance(text, str) or not text.isascii() or "=" in text:
        raise MalformedInput(what)
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedInput(what) from exc
    # Unused low bits in the last character make several strings decode to the
    # same bytes; only the canonical one is accepted.
    if b64e(data) != text:
        raise MalformedInput(what)
    if length is not None and len(data) != length:
        raise MalformedInput(f"{what} must decode to {length} bytes")
    return data


# --- canonical JSON -------------------------------------------------------------


def canonical_json(value: JsonValue) -> bytes:
    """Encode ``value`` canonically: sorted keys, no whitespace, UTF-8, ints only."""
    _check_value(value, depth=0)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


#: Containers nested at most this deep (a top-level object or list is depth 1).
MAX_DEPTH: Final = 16


def _check_value(value: object, depth: int) -> None:
    if depth >= MAX_DEPTH and isinstance(value, list | dict):
        raise MalformedInput("JSON nested too deeply")
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise MalformedInput("JSON integer out of range")
        return
    if isinstance(value, str):
        _check_str(value)
        return
    if isinstance(value, list):
        for item in value:
            _check_value(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise MalformedInput("JSON object key must be a string")
            _check_str(key)
            _check_value(item, depth + 1)
        return
    raise MalformedInput(f"JSON value of type {type(value).__name__} not allowed")


def _check_str(text: str) -> None:
    # Lone surrogates cannot be encoded as UTF-8 and would make two readers disagree.
    # Strict UTF-8 encoding refuses exactly the surrogate code points; both checks run in C
    # (a Python loop over the characters was most of the cost of opening a contact).
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedInput("JSON string with a lone surrogate") from None


def _no_duplicates(pairs: list[tuple[str, JsonValue]]) -> JsonObject:
    out: JsonObject = {}
    for key, value in pairs:
        if key in out:
            raise MalformedInput("JSON object with a duplicate key")
        out[key] = value
    return out


def _bounded_int(text: str) -> int:
    # Checked on the digits, before int() builds a number from thousands of them.
    if len(text.lstrip("-")) > 16:
        raise MalformedInput("JSON integer out of range")
    return int(text)


def _no_float(text: str) -> JsonValue:
    raise MalformedInput("JSON number must be an integer")


def parse_canonical_json(data: bytes, *, max_len: int) -> JsonValue:
    """Parse ``data``, accepting only the canonical encoding of a value."""
    if not isinstance(data, bytes):
        raise MalformedInput("JSON input must be bytes")
    if len(data) > max_len:
        raise MalformedInput(f"JSON document larger than {max_len} bytes")
    value: JsonValue | None = None
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_int=_bounded_int,
            parse_float=_no_float,
            parse_constant=_no_float,
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError):
        # Raised outside this block, so no chained exception keeps the input
        # (which may be decrypted plaintext) in its .doc or .object.
        value = None
    if value is None:
        raise MalformedInput("not valid JSON")
    if canonical_json(value) != data:
        raise MalformedInput("JSON is not in canonical form")
    return value


# --- typed access to parsed JSON -------------------------------------------------


def get_obj(obj: Mapping[str, JsonValue], key: str) -> JsonObject:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise MalformedInput(f"field {key!r} must be an object")
    return value


def get_list(obj: Mapping[str, JsonValue], key: str) -> list[JsonValue]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise MalformedInput(f"field {key!r} must be a list")
    return value


def get_str(obj: Mapping[str, JsonValue], key: str, *, max_len: int = 256) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or len(value) > max_len:
        raise MalformedInput(f"field {key!r} must be a string of at most {max_len} characters")
    return value


def get_int(obj: Mapping[str, JsonValue], key: str, *, minimum: int = 0, maximum: int = MAX_SAFE_INT) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise MalformedInput(f"field {key!r} must be an integer in [{minimum}, {maximum}]")
    return value


def get_bytes(obj: Mapping[str, JsonValue], key: str, *, length: int | None = None) -> bytes:
    return b64d(get_str(obj, key, max_len=8192), length=length, what=f"field {key!r}")


def as_obj(value: JsonValue, what: str) -> JsonObject:
    if not isinstance(value, dict):
        raise MalformedInput(f"{what} must be an object")
    return value


def require_keys(obj: Mapping[str, JsonValue], keys: Sequence[str], what: str) -> None:
    """Reject unknown or missing fields: a signed document means exactly what it says."""
    if set(obj) != set(keys):
        raise MalformedInput(f"{what} must have exactly the fields {sorted(keys)}")


# --- binary framing ------------------------------------------------------------------


class Reader:
    """Reads big-endian fixed-width fields and raises :class:`MalformedInput` on any shortfall."""

    def __init__(self, data: bytes, what: str) -> None:
        if not isinstance(data, bytes):
            raise MalformedInput(f"{what} must be bytes")
        self._data = data
        self._pos = 0
        self._what = what

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise MalformedInput(f"{self._what} is truncated")
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self.take(8))[0]
        return value

    @property
    def position(self) -> int:
        return self._pos

    def rest(self) -> bytes:
        return self.take(len(self._data) - self._pos)

    def end(self) -> None:
        if self._pos != len(self._data):
            raise MalformedInput(f"{self._what} has trailing bytes")


def u8(n: int) -> bytes:
    return struct.pack(">B", n)


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)
