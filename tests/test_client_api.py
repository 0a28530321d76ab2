"""The intake HTTP client: transport rules, strict parsing, refusals, and the Tor (SOCKS5) path.

A real aiohttp server on 127.0.0.1 plays the intake (:mod:`tests.fake_intake`);
a tiny SOCKS5 proxy written here plays Tor, so the test can see what a proxy
sees: the host name it is asked to reach (names must be resolved by the proxy,
never locally) and the credentials each client uses (stream isolation).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from safepassage.client import intake_api
from safepassage.client.errors import (
    DirectConnectionRefused,
    ProtocolViolation,
    ResponseTooLarge,
    ServerRefused,
    ServerUnreachable,
    TorUnreachable,
    UsageError,
    untrusted_text,
)
from safepassage.client.intake_api import USER_AGENT, IntakeClient, SocksProxy, UploadToken, api_base, parse_json

from .fake_intake import FakeIntake, honest_view
from .helpers import Org

ORG = Org()
VIEW = honest_view([ORG.signed(ORG.directory())], ORG.admins[:2])
ONION = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz2345.onion"


def run(fake: FakeIntake, action: Callable[[IntakeClient], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with fake.running() as url, IntakeClient(url) as client:
            return await action(client)

    return asyncio.run(go())


def answer(value: object, status: int = 200, **kwargs: Any) -> Callable[[web.Request], web.StreamResponse]:
    return lambda request: web.json_response(value, status=status, **kwargs)


def raw(body: bytes, status: int = 200, content_type: str = "application/json") -> Callable[..., web.Response]:
    return lambda request: web.Response(body=body, status=status, content_type=content_type)


# --- addresses and policy ----------------------------------------------------------------------------


def test_no_direct_connection_to_a_non_loopback_server() -> None:
    with pytest.raises(DirectConnectionRefused) as info:
        IntakeClient(f"http://{ONION}")
    assert "--socks" in info.value.hint
    assert info.value.exit_code == 2
    IntakeClient("http://127.0.0.1:8080")
    IntakeClient("http://[::1]:8080")
    IntakeClient("http://localhost:8080")
    IntakeClient(f"http://{ONION}", allow_direct=True)
    IntakeClient(f"http://{ONION}", socks="socks5://127.0.0.1:9050")


@pytest.mark.parametrize(
    "url", ["ftp://x.onion", "http://", "http://user:pw@x.onion", "http://x.onion/?a=1", "http://x.onion/#f", "x"]
)
def test_bad_server_addresses(url: str) -> None:
    with pytest.raises(UsageError):
        api_base(url)


def test_api_base_appends_the_prefix() -> None:
    assert str(api_base(f"http://{ONION}")) == f"http://{ONION}/api/v1"
    assert str(api_base(f"http://{ONION}/")) == f"http://{ONION}/api/v1"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9050", "socks5://127.0.0.1", "socks5://u:p@127.0.0.1:9050", "socks4://127.0.0.1:9050"],
)
def test_bad_socks_addresses(url: str) -> None:
    with pytest.raises(UsageError):
        SocksProxy.parse(url)


def test_socks5h_is_accepted() -> None:
    assert SocksProxy.parse("socks5h://127.0.0.1:9150") == SocksProxy("127.0.0.1", 9150)


# --- what goes over the wire ----------------------------------------------------------------------


def test_fixed_headers_and_no_cookies() -> None:
    fake = FakeIntake(VIEW)
    seen: list[dict[str, str]] = []

    def directory(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        response = web.json_response({"entries": []})
        response.set_cookie("track", "me")
        return response

    fake.override["/log/entries"] = directory

    async def twice(client: IntakeClient) -> None:
        for _ in range(2):
            with pytest.raises(ProtocolViolation):
                await client.get_log_entries(0, 1)

    run(fake, twice)
    assert len(seen) == 2
    for headers in seen:
        assert headers["User-Agent"] == USER_AGENT
        assert headers["Accept-Encoding"] == "identity"
    assert "Cookie" not in seen[1]


def test_redirects_are_not_followed() -> None:
    fake = FakeIntake(VIEW)
    fake.override["/pow"] = lambda request: web.Response(status=302, headers={"Location": "/api/v1/directory"})
    with pytest.raises(ProtocolViolation, match="302"):
        run(fake, lambda c: c.new_challenge())
    assert [p for _, p, _ in fake.requests] == ["/api/v1/pow"]


# --- refusals --------------------------------------------------------------------------------------


def test_refusal_carries_code_and_cleaned_message() -> None:
    fake = FakeIntake(VIEW)
    nasty = "Bad \x1b[31mred\x1b[0m \u202eevil\u202c\nerror: fake line " + "x" * 5000
    fake.override["/pow"] = answer({"error": {"code": "pow_invalid", "message": nasty}}, status=403)
    with pytest.raises(ServerRefused) as info:
        run(fake, lambda c: c.new_challenge())
    exc = info.value
    assert exc.status == 403
    assert exc.code == "pow_invalid"
    assert exc.exit_code == 6
    for bad in ("\x1b", "\u202e", "\u202c", "\n"):
        assert bad not in exc.message
    assert len(exc.server_message) <= 200
    assert "new proof-of-work" in exc.hint


@pytest.mark.parametrize(
    ("status", "body", "hint"),
    [
        (500, b"<html>oops</html>", "temporary"),
        (429, b'{"error":{"code":"rate_limited","message":"Slow down."}}', "busy"),
        (404, b'{"error":{"code":"NOT VALID","message":"x"}}', "Nothing"),
        (400, b'{"error":{"code":"x","message":"y"},"extra":1}', "Nothing"),
    ],
)
def test_refusals_without_the_documented_body(status: int, body: bytes, hint: str) -> None:
    fake = FakeIntake(VIEW)
    fake.override["/pow"] = raw(body, status)
    with pytest.raises(ServerRefused) as info:
        run(fake, lambda c: c.new_challenge())
    assert info.value.status == status
    assert hint in info.value.hint
    assert "oops" not in info.value.message


def test_untrusted_text() -> None:
    assert untrusted_text("a\tb\r\nc\x00d\u200be") == "a b cde"
    assert untrusted_text("x" * 300, 10) == "x" * 9 + "…"


# --- strict parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1]",
        b'{"a":1,"a":2}',
        b'{"a":1.5}',
        b'{"a":NaN}',
        b'{"a":1e3}',
        b'{"a":' + b"9" * 17 + b"}",
        b'{"a":"\\ud800"}',
        b"\xff",
        b"[" * 40 + b"]" * 40,
    ],
)
def test_parse_json_is_strict(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        parse_json(body)


def test_answer_that_is_not_json_content() -> None:
    fake = FakeIntake(VIEW)
    fake.override["/pow"] = raw(b'{"challenge":"x"}', 201, "text/html")
    with pytest.raises(ProtocolViolation, match="not JSON"):
        run(fake, lambda c: c.new_challenge())


def test_unexpected_members_are_refused() -> None:
    fake = FakeIntake(VIEW)
    fake.override["/log/entries"] = answer({"entries": [], "extra": True})
    with pytest.raises(ProtocolViolation):
        run(fake, lambda c: c.get_log_entries(0, 1))


def test_challenge_whose_fields_disagree() -> None:
    fake = FakeIntake(VIEW)

    async def go(client: IntakeClient) -> None:
        good = await client.new_challenge()
        fake.override["/pow"] = answer(
            {"challenge": good.text, "difficulty": 0, "memlimit_kib": 1024, "opslimit": 1, "expires": 1}, status=201
        )
        with pytest.raises(ProtocolViolation, match="do not match"):
            await client.new_challenge()

    run(fake, go)


def test_proofs_must_be_hex() -> None:
    fake = FakeIntake(VIEW)
    body = {
        "directory": {},
        "tree_head": VIEW.head.to_json(),
        "index": 0,
        "inclusion": ["AAAA"],
        "consistency": [],
    }
    fake.override["/directory"] = answer(body)
    with pytest.raises(ProtocolViolation):
        run(fake, lambda c: c.get_directory())


def test_submit_answer_must_be_consistent() -> None:
    fake = FakeIntake(VIEW)
    fake.override["/contacts"] = answer({"contact": "abcdefgh", "status": "complete"}, status=201)
    key = ORG.admins[0].verify_key
    with pytest.raises(ProtocolViolation, match="receipt"):
        run(fake, lambda c: c.submit_contact(b"x", "general", 0, "a.0", key, bytes(64)))
    fake.override["/contacts"] = answer(
        {"contact": "abcdefgh", "status": "pending", "upload_token": "a\nb"}, status=201
    )
    with pytest.raises(ProtocolViolation):
        run(fake, lambda c: c.submit_contact(b"x", "general", 1, "a.0", key, bytes(64)))


def test_upload_token_is_never_shown() -> None:
    token = UploadToken("s3cret-token-value")
    assert "s3cret" not in repr(token)
    assert "s3cret" not in str(token)


# --- limits and failures -----------------------------------------------------------------------------


def test_declared_body_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake_api, "LIMIT_DEFAULT", 64)
    with pytest.raises(ResponseTooLarge):
        run(FakeIntake(VIEW), lambda c: c.new_challenge())


def test_streamed_body_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake_api, "LIMIT_DEFAULT", 1000)
    fake = FakeIntake(VIEW)

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=201, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"a":"')
        for _ in range(100):
            await response.write(b"x" * 100)
        return response

    fake.override["/pow"] = endless
    with pytest.raises(ResponseTooLarge):
        run(fake, lambda c: c.new_challenge())


def test_unreachable_server() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def go() -> None:
        async with IntakeClient(f"http://127.0.0.1:{port}") as client:
            await client.new_challenge()

    with pytest.raises(ServerUnreachable) as info:
        asyncio.run(go())
    assert info.value.exit_code == 7


def test_timeout_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake_api, "TIMEOUT", aiohttp.ClientTimeout(total=0.2))
    fake = FakeIntake(VIEW)

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1)
        return web.json_response({})

    fake.override["/pow"] = slow
    with pytest.raises(ServerUnreachable, match="timed out"):
        run(fake, lambda c: c.new_challenge())


def test_argument_checks_before_any_request() -> None:
    fake = FakeIntake(VIEW)
    key = ORG.admins[0].verify_key
    token = UploadToken("t")
    checks = [
        lambda c: c.get_log_entries(3, 3),
        lambda c: c.get_log_entries(0, 65),
        lambda c: c.submit_contact(b"x", "Bad Pool", 0, "a.0", key, bytes(64)),
        lambda c: c.submit_contact(b"x", "general", 0, "a.0\r\nX-Evil: 1", key, bytes(64)),
        lambda c: c.upload_chunk("../../etc", 0, 0, b"x", token),
        lambda c: c.finalise("short", token),
    ]
    for check in checks:
        with pytest.raises(UsageError):
            run(fake, check)
    assert fake.requests == []


# --- Tor ---------------------------------------------------------------------------------------------


class FakeSocks:
    """A SOCKS5 proxy (RFC 1928, user/password auth RFC 1929) that forwards everything to one port."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.credentials: list[tuple[bytes, bytes]] = []
        self.targets: list[tuple[int, str, int]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, n = await reader.readexactly(2)
        methods = await reader.readexactly(n)
        if 2 in methods:
            writer.write(b"\x05\x02")
            _, ulen = await reader.readexactly(2)
            user = await reader.readexactly(ulen)
            plen = (await reader.readexactly(1))[0]
            self.credentials.append((user, await reader.readexactly(plen)))
            writer.write(b"\x01\x00")
        else:
            writer.write(b"\x05\x00")
        _, _, _, atyp = await reader.readexactly(4)
        if atyp == 3:
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
        else:
            host = socket.inet_ntoa(await reader.readexactly(4))
        port = int.from_bytes(await reader.readexactly(2), "big")
        self.targets.append((atyp, host, port))
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        writer.write(b"\x05\x00\x00\x01" + bytes(6))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[int]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            server.close()


def test_through_socks_names_are_resolved_by_the_proxy_and_circuits_isolated() -> None:
    fake = FakeIntake(VIEW)

    async def go() -> FakeSocks:
        async with fake.running() as url:
            socks = FakeSocks(int(url.rsplit(":", 1)[1]))
            async with socks.running() as port:
                for _ in range(2):
                    async with IntakeClient(f"http://{ONION}", socks=f"socks5://127.0.0.1:{port}") as client:
                        answer = await client.get_directory()
                        assert answer.tree_head == VIEW.head
        return socks

    socks = asyncio.run(go())
    # The onion name went to the proxy as a name (address type 3), never resolved here.
    assert socks.targets == [(3, ONION, 80), (3, ONION, 80)]
    # Each client authenticated with its own random credentials: Tor isolates them.
    assert len(socks.credentials) == 2
    assert socks.credentials[0] != socks.credentials[1]
    for user, password in socks.credentials:
        assert len(user) == 32
        assert len(password) == 32


def test_tor_not_running() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def go() -> None:
        async with IntakeClient(f"http://{ONION}", socks=f"socks5://127.0.0.1:{port}") as client:
            await client.get_directory()

    with pytest.raises(TorUnreachable) as info:
        asyncio.run(go())
    assert "9150" in info.value.hint
