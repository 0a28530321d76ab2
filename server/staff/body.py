"""Reading the staff API's JSON bodies and path segments strictly.

A body is one JSON object with exactly the documented members, each of its
documented type and bounded length; anything else is a 4xx before any work
is done. Error messages name the member, never echo its value (it may be a
password or a one-time code).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from aiohttp import web

from safepassage.crypto.encoding import JsonObject, JsonValue

from ..errors import ApiError, bad_request

JSON = "application/json"
#: Largest JSON body the staff API accepts; the biggest is an integration receipt (about 300 bytes).
MAX_JSON = 4096

USERNAME = re.compile(r"[a-z][a-z0-9-]{0,63}")
ROLES = ("handler", "admin")
_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


async def read_json(
    request: web.Request, members: Sequence[str], *, limit: int = MAX_JSON, optional: Sequence[str] = ()
) -> JsonObject:
    """The body as a JSON object with exactly ``members``, plus any of ``optional``."""
    if request.content_type != JSON:
        raise ApiError(415, "unsupported_media_type", f"Send the body as {JSON}.")
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"The body may be at most {limit} bytes.")
    # read(n) may return less than n before the end: read until the end or past the limit.
    raw = b""
    while len(raw) <= limit:
        part = await request.content.read(limit + 1 - len(raw))
        if not part:
            break
        raw += part
    if len(raw) > limit:
        raise ApiError(413, "payload_too_large", f"The body may be at most {limit} bytes.")
    try:
        value: JsonValue = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad_request("The body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise bad_request("The body must be a JSON object.")
    if not set(members) <= set(value) <= set(members) | set(optional):
        raise bad_request("The body must have exactly the members " + ", ".join(sorted(members)) + ".")
    return value


def string(body: JsonObject, name: str, *, max_len: int = 256) -> str:
    value = body[name]
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise bad_request(f"'{name}' must be a string of 1 to {max_len} characters.")
    return value


def username(value: str, what: str = "username") -> str:
    if not USERNAME.fullmatch(value):
        raise bad_request(f"Malformed {what}: [a-z][a-z0-9-]{{0,63}}.")
    return value


def role(value: str) -> str:
    if value not in ROLES:
        raise bad_request("'role' must be 'handler' or 'admin'.")
    return value


def path_id(request: web.Request, name: str) -> str:
    raw = request.match_info[name]
    if not _ID.fullmatch(raw):
        raise bad_request(f"Malformed {name.replace('_', ' ')}.")
    return raw
