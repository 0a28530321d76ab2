"""HTTP transport for the staff and integration clients, with the intake client's rules.

The same policy as :class:`~safepassage.client.intake_api.IntakeClient`: one
:class:`Transport` is one network identity. Over Tor it uses its own random
SOCKS username and password, so Tor's default ``IsolateSOCKSAuth`` gives it a
circuit of its own (a handler's staff session and its intake or integration
traffic do not share a circuit); names are resolved by the proxy. Without
``--socks`` only a loopback server may be reached. Bodies are bounded before
they are read, JSON is parsed strictly (:func:`~safepassage.client.wire.parse_json`),
refusals become :class:`ServerRefused`, network failures
:class:`ServerUnreachable`. Nothing is logged, and no header value (tokens,
signatures) ever appears in an error.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from types import TracebackType
from typing import Final, Literal

import aiohttp
from yarl import URL

from safepassage.crypto.encoding import JsonObject, JsonValue

from .errors import DirectConnectionRefused, ProtocolViolation, UsageError
from .http import TIMEOUT, HttpIdentity, network_errors
from .intake_api import LIMIT_ERROR, _check_json_response, _read_bounded
from .proxy import SocksProxy, is_loopback
from .wire import parse_json, refusal

Want = Literal["json", "bytes", "empty"]


def service_base(server: str, prefix: str) -> URL:
    """``http(s)://host[:port][/path]`` with the API prefix appended; nothing else accepted."""
    try:
        url = URL(server)
    except (ValueError, TypeError) as exc:
        raise UsageError("the server address is not a URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise UsageError("the server address must start with http:// or https:// and name a host")
    if url.user or url.password or url.query_string or url.fragment:
        raise UsageError("the server address must not contain a user name, query or fragment")
    return url.with_path(url.path.rstrip("/") + prefix)


class Transport:
    """One network identity talking to one service. Use as ``async with``."""

    def __init__(self, server: str, prefix: str, *, socks: str | None = None, allow_direct: bool = False) -> None:
        self._base = service_base(server, prefix)
        self._proxy = SocksProxy.parse(socks) if socks is not None else None
        if self._proxy is None and not allow_direct and not is_loopback(self._base.host or ""):
            raise DirectConnectionRefused()
        self._http = HttpIdentity(self._proxy)

    def __repr__(self) -> str:
        via = f"socks {self._proxy.host}:{self._proxy.port}" if self._proxy else "direct"
        return f"{type(self).__name__}({self._base.host}, {via})"

    @property
    def base(self) -> URL:
        return self._base

    async def __aenter__(self) -> Transport:
        self._http.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._http.close()

    def url(self, *segments: str) -> URL:
        # Every segment is validated by the caller (ids, integers), so none needs quoting.
        return self._base.with_path("/".join((self._base.path, *segments)))

    async def call(
        self,
        method: str,
        url: URL,
        *,
        expect: Collection[int],
        want: Want,
        limit: int,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json_body: JsonValue | None = None,
        body: bytes | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> tuple[int, JsonObject | bytes | None]:
        """Send one request; return the status and the body as ``want`` says (strictly checked)."""
        if not self._http.is_open:
            raise RuntimeError(f"use {type(self).__name__} as 'async with'")
        accept = "application/json" if want != "bytes" else "application/octet-stream, application/json"
        request_headers = {"Accept": accept, **(headers or {})}
        data = body
        if json_body is not None:
            data = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            request_headers["Content-Type"] = "application/json"
        elif body is not None:
            request_headers["Content-Type"] = "application/octet-stream"
        with network_errors():
            response = await self._http.send(
                method, url, params=params, headers=request_headers, data=data, timeout=timeout or TIMEOUT
            )
            async with response:
                status = response.status
                if 200 <= status < 300:
                    raw = await _read_bounded(response, limit)
                    _check_success(response, want, raw)
                elif status >= 400:
                    raw = await _read_bounded(response, LIMIT_ERROR, error=True)
                else:
                    raise ProtocolViolation(f"unexpected HTTP status {status}")
                json_content = response.content_type == "application/json"
        if status >= 400:
            raise refusal(status, raw if json_content else b"")
        if status not in expect:
            raise ProtocolViolation(f"unexpected HTTP status {status}")
        if want == "json":
            return status, parse_json(raw)
        if want == "bytes":
            return status, raw
        return status, None


def _check_success(response: aiohttp.ClientResponse, want: Want, raw: bytes) -> None:
    if response.status == 204:
        if raw:
            raise ProtocolViolation("a 204 answer must have no body")
        if want != "empty":
            raise ProtocolViolation("the answer has no body")
        return
    if want == "json":
        _check_json_response(response)
    elif want == "bytes":
        if response.content_type != "application/octet-stream":
            raise ProtocolViolation("the answer is not binary data")
        if response.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise ProtocolViolation("the answer is compressed although this client asked for no compression")


def expect_json(answer: tuple[int, JsonObject | bytes | None]) -> JsonObject:
    body = answer[1]
    if not isinstance(body, dict):
        raise ProtocolViolation("the answer is not a JSON object")
    return body


def expect_bytes(answer: tuple[int, JsonObject | bytes | None]) -> bytes:
    body = answer[1]
    if not isinstance(body, bytes):
        raise ProtocolViolation("the answer is not binary data")
    return body


#: Generic upper bound for small JSON answers.
LIMIT_SMALL: Final = 2 * 1024 * 1024

__all__ = ["LIMIT_SMALL", "Transport", "expect_bytes", "expect_json", "service_base"]
