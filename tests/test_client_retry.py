"""Connection retries over Tor (client/http.py), against a real SOCKS5 server on loopback.

The SOCKS server here speaks the protocol for real (username/password method,
CONNECT, Tor's extended reply codes) and, when told to, pipes the stream to a
real aiohttp app; each connection follows a script: refuse with a code, never
answer, or connect. Real Tor cannot be made to fail on cue; the Tor tests
(tests/test_tor_e2e.py) run the same code over onions.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from safepassage.client import http
from safepassage.client.errors import OnionAuthRequired, ServerUnreachable
from safepassage.client.transport import Transport

pytestmark = pytest.mark.timeout(60)

OK = "ok"
HANG = "hang"


@dataclass
class Socks:
    """A SOCKS5 server whose n-th connection does ``script[n]`` (the last entry repeats)."""

    target_port: int
    script: list[str | int]
    usernames: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        version, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        if version != 5 or 2 not in methods:
            self.errors.append("the client must offer username/password (circuit isolation)")
            return
        writer.write(b"\x05\x02")
        _, ulen = await reader.readexactly(2)
        username = (await reader.readexactly(ulen)).decode()
        (plen,) = await reader.readexactly(1)
        await reader.readexactly(plen)
        writer.write(b"\x01\x00")
        _, command, _, atyp = await reader.readexactly(4)
        if (command, atyp) != (1, 3):
            self.errors.append("the client must CONNECT by name (the proxy resolves it)")
            return
        (length,) = await reader.readexactly(1)
        await reader.readexactly(length + 2)
        step = self.script[min(len(self.usernames), len(self.script) - 1)]
        self.usernames.append(username)
        if step == HANG:
            await reader.read()  # until the client gives up
            return
        if isinstance(step, int):
            writer.write(bytes([5, step, 0, 1, 0, 0, 0, 0, 0, 0]))
            await writer.drain()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        writer.write(b"\x05\x00\x00\x01" + bytes(4) + struct.pack(">H", 0))
        await writer.drain()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@dataclass
class Target:
    bodies: list[bytes] = field(default_factory=list)
    port: int = 0


@contextlib.asynccontextmanager
async def world(script: list[str | int]) -> AsyncIterator[tuple[Socks, Target]]:
    target = Target()

    async def echo(request: web.Request) -> web.Response:
        target.bodies.append(await request.read())
        return web.json_response({"n": len(target.bodies)})

    async def drop(request: web.Request) -> web.Response:
        target.bodies.append(await request.read())
        assert request.transport is not None
        request.transport.close()  # the request arrived; the answer never does
        await asyncio.sleep(1)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/x/v1/echo", echo)
    app.router.add_post("/x/v1/drop", drop)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    target.port = runner.addresses[0][1]
    socks = Socks(target.port, script)
    server = await asyncio.start_server(socks.handle, "127.0.0.1", 0)
    socks.port = server.sockets[0].getsockname()[1]
    try:
        yield socks, target
    finally:
        server.close()
        await runner.cleanup()
    assert socks.errors == []


async def post(socks: Socks, path: str, *, timeout: aiohttp.ClientTimeout | None = None) -> object:
    # The host is a name so the proxy resolves it (as with onions); the SOCKS server ignores it.
    async with Transport("http://service.example", "/x/v1", socks=f"socks5://127.0.0.1:{socks.port}") as t:
        _, answer = await t.call(
            "POST", t.url(path), expect=(200,), want="json", limit=1000, body=b"sealed-bytes", timeout=timeout
        )
        return answer


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "RETRY_PAUSE", 0.01)


@pytest.mark.parametrize("code", [0x01, 0x04, 0x06, 0xF0, 0xF2, 0xF3, 0xF7])
async def test_a_failed_connection_is_retried_on_a_new_circuit_and_sent_once(code: int) -> None:
    async with world([code, OK]) as (socks, target):
        assert await post(socks, "echo") == {"n": 1}
    assert target.bodies == [b"sealed-bytes"]
    assert len(socks.usernames) == 2
    assert socks.usernames[0] != socks.usernames[1]  # new credentials: Tor builds a new circuit


async def test_a_stuck_connection_is_retried() -> None:
    async with world([HANG, OK]) as (socks, target):
        timeout = aiohttp.ClientTimeout(total=30, sock_connect=0.5, sock_read=10)
        assert await post(socks, "echo", timeout=timeout) == {"n": 1}
    assert target.bodies == [b"sealed-bytes"]
    assert len(set(socks.usernames)) == 2


async def test_retries_are_bounded() -> None:
    async with world([0xF2]) as (socks, target):
        with pytest.raises(ServerUnreachable, match="introduction failed"):
            await post(socks, "echo")
    assert len(socks.usernames) == http.CONNECT_ATTEMPTS
    assert target.bodies == []


@pytest.mark.parametrize("code", [0xF4, 0xF5, 0xF6, 0x07, 0x08])
async def test_failures_a_new_circuit_cannot_change_are_not_retried(code: int) -> None:
    async with world([code, OK]) as (socks, target):
        with pytest.raises((OnionAuthRequired, ServerUnreachable)):
            await post(socks, "echo")
    assert len(socks.usernames) == 1
    assert target.bodies == []


async def test_a_failure_after_the_request_left_is_never_retried() -> None:
    async with world([OK]) as (socks, target):
        with pytest.raises(ServerUnreachable):
            await post(socks, "drop")
    assert target.bodies == [b"sealed-bytes"]  # arrived once, and only once
    assert len(socks.usernames) == 1


async def test_tor_not_running_is_not_retried() -> None:
    async with world([OK]) as (socks, _):
        port = socks.port
    with pytest.raises(ServerUnreachable, match="Tor proxy"):
        async with Transport("http://service.example", "/x/v1", socks=f"socks5://127.0.0.1:{port}") as t:
            await t.call("POST", t.url("echo"), expect=(200,), want="json", limit=1000, body=b"x")


def test_which_failures_are_retried() -> None:
    import aiohttp_socks

    assert http.connect_failed_retryably(aiohttp_socks.ProxyError("x", error_code=0xF3))
    assert not http.connect_failed_retryably(aiohttp_socks.ProxyError("x", error_code=0xF4))
    assert http.connect_failed_retryably(aiohttp_socks.ProxyTimeoutError("x"))
    assert not http.connect_failed_retryably(aiohttp_socks.ProxyConnectionError("x"))
    assert not http.connect_failed_retryably(aiohttp.ServerDisconnectedError())
