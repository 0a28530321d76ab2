"""server/tor.py and client/onion.py: units without tor, then real onions on the private network.

The real tests publish through the ``service`` tor of the session's private
network (``tor_network``) and reach the onion through the ``applicant`` tor
(no client keys) or the ``handler`` tor (a ClientOnionAuthDir).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import stem.control
from aiohttp import web

from safepassage.client.errors import OnionAuthRequired, OnionMismatch, ServerUnreachable
from safepassage.client.onion import OnionClientKey, check_onion, proxy_failure
from safepassage.client.transport import Transport
from safepassage.crypto.errors import InsecureFile
from safepassage.server import tor
from safepassage.server.config import ConfigError, ServerConfig

from .helpers import Org
from .tornet import TorNet, TorNetError, check_torrc, free_port

pytestmark = pytest.mark.timeout(240)

ONION = "a" * 56 + ".onion"


# --- without tor -----------------------------------------------------------------------------------


def test_test_tor_refuses_a_torrc_that_could_reach_the_public_network() -> None:
    good = "TestingTorNetwork 1\nUseDefaultFallbackDirs 0\nDirAuthority a orport=1 v3ident=X 127.0.0.1:2 Y\n"
    check_torrc(good)
    for missing in ("TestingTorNetwork", "UseDefaultFallbackDirs", "DirAuthority"):
        bad = "\n".join(line for line in good.splitlines() if not line.startswith(missing))
        with pytest.raises(TorNetError, match=missing):
            check_torrc(bad)


def test_client_key_parsing() -> None:
    public = OnionClientKey.generate().public_base32()
    assert len(public) == 52
    key = tor.ClientKey.parse(public)
    assert tor.ClientKey.parse(public.lower()) == key
    assert tor.ClientKey.parse(f"descriptor:x25519:{public}\n") == key
    assert key.auth_line() == f"descriptor:x25519:{public}"
    for bad in ("", public[:-1], public + "A", public[:-1] + "1", "descriptor:x25519:" + public[:-2], "x" * 52):
        with pytest.raises(tor.InvalidClientKey):
            tor.ClientKey.parse(bad)


def test_add_onion_command_carries_pow_and_every_client_key(tmp_path: Path) -> None:
    keys = [tor.ClientKey.parse(OnionClientKey.generate().public_base32()) for _ in range(3)]
    public = tor.public_spec(tmp_path / "k", "127.0.0.1", 8080, pow_defense=True, queue_rate=5, queue_burst=50)
    line = public.command(None)
    assert line.startswith("ADD_ONION NEW:ED25519-V3 ")
    assert "Port=80,127.0.0.1:8080" in line
    assert "PoWDefensesEnabled=1 PoWQueueRate=5 PoWQueueBurst=50" in line
    assert "V3Auth" not in line
    assert "ClientAuthV3" not in line
    staff = tor.OnionSpec("staff", tmp_path / "k", "127.0.0.1", 8081, client_keys=(*keys, keys[0]))
    line = staff.command(None)
    assert "Flags=V3Auth" in line
    assert "PoW" not in line
    assert [p for p in line.split() if p.startswith("ClientAuthV3=")] == [
        f"ClientAuthV3={k.base32}" for k in sorted(keys)
    ]
    with pytest.raises(ValueError, match="burst"):
        tor.public_spec(tmp_path / "k", "127.0.0.1", 1, pow_defense=True, queue_rate=10, queue_burst=5)
    with pytest.raises(ValueError, match="role"):
        tor.OnionSpec("other", tmp_path / "k", "127.0.0.1", 1)


def test_onion_key_file_is_private_and_never_printed(tmp_path: Path) -> None:
    text = "ED25519-V3:" + "A" * 86 + "=="
    key = tor.OnionKey(text)
    assert text not in repr(key)
    assert "A" * 10 not in repr(key)
    path = tmp_path / "keys" / "onion-public.key"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    loaded = tor.OnionKey.load(path)
    assert loaded is not None
    assert loaded.reveal() == text
    assert tor.OnionKey.load(tmp_path / "missing") is None
    os.chmod(path, 0o644)
    with pytest.raises(InsecureFile):
        tor.OnionKey.load(path)
    with pytest.raises(Exception, match="onion key"):
        tor.OnionKey("ED25519-V3:short")


def test_control_target_only_on_loopback_or_a_socket() -> None:
    assert tor.ControlTarget.parse("127.0.0.1:9051").port == 9051
    assert tor.ControlTarget.parse("unix:/run/tor/control").socket_path == "/run/tor/control"
    for bad in ("10.0.0.1:9051", "tor.example:9051", "127.0.0.1:0", "127.0.0.1", "unix:relative", "9051"):
        with pytest.raises(tor.TorError):
            tor.ControlTarget.parse(bad)
    for field, value in (("tor_control", "192.168.1.1:9051"), ("onion_pow", 2), ("onion_pow_queue_burst", 1)):
        with pytest.raises(ConfigError):
            ServerConfig(data_dir=Path("/nonexistent"), **{field: value}).validate()  # type: ignore[arg-type]
    ServerConfig(data_dir=Path("/nonexistent"), tor_control="launch").validate()


def test_unreachable_control_port_is_our_error() -> None:
    with pytest.raises(tor.TorUnreachable):
        tor.ControlTarget.parse("127.0.0.1:1").connect()


def test_missing_password_file_is_our_error(tmp_path: Path) -> None:
    with pytest.raises(tor.TorAuthFailed):
        tor.ControlTarget.parse("127.0.0.1:1", str(tmp_path / "nope")).password()


def test_tor_socks_errors_become_clear_client_errors() -> None:
    # aiohttp-socks reports tor's extended codes only in its message text.
    assert isinstance(proxy_failure(None, "Invalid reply code: 0XF4"), OnionAuthRequired)
    assert isinstance(proxy_failure(None, "Invalid reply code: 0XF5"), OnionAuthRequired)
    gone = proxy_failure(None, "Invalid reply code: 0XF0")
    assert type(gone) is ServerUnreachable
    assert "descriptor was not found" in gone.message
    assert "error 1" in proxy_failure(1, "General SOCKS server failure").message


def test_onion_address_checked_against_the_directory() -> None:
    org = Org()
    directory = org.directory(1, onions={"public": ONION})
    check_onion(f"http://{ONION}", directory, "public")
    check_onion("http://127.0.0.1:8080", directory, "public")  # not an onion: tests and the demo
    with pytest.raises(OnionMismatch, match=ONION):
        check_onion(f"http://{'b' * 56}.onion", directory, "public")
    with pytest.raises(OnionMismatch, match="no staff onion"):
        check_onion(f"http://{ONION}", directory, "staff")


class _FakePublisher:
    """Counts the health loop's calls; stands in for tor in :func:`tor.onion_context`."""

    def __init__(self) -> None:
        self.checks = 0
        self.client_sets: list[tuple[str, tuple[tor.ClientKey, ...]]] = []
        self.second_round = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def preset_clients(self, role: str, keys: tuple[tor.ClientKey, ...]) -> None:
        pass

    def publish(self) -> dict[str, tor.Published]:
        return {}

    def set_clients(self, role: str, keys: tuple[tor.ClientKey, ...]) -> bool:
        self.client_sets.append((role, keys))
        return False

    def check(self) -> bool:
        self.checks += 1
        self._loop.call_soon_threadsafe(self.second_round.set)
        return False

    def close(self) -> None:
        pass


async def test_health_loop_survives_any_error_and_logs_only_its_type(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="safepassage.server.tor")
    publisher = _FakePublisher()
    key = tor.ClientKey.parse(OnionClientKey.generate().public_base32())
    calls = 0

    async def source() -> tuple[tor.ClientKey, ...]:
        nonlocal calls
        calls += 1
        if calls == 2:  # the first health round (call 1 is the start-up preset)
            raise RuntimeError("canary-secret")
        return (key,)

    ctx = tor.onion_context(publisher, health_seconds=0, clients={"staff": source})  # type: ignore[arg-type]
    running = ctx(web.Application())
    await anext(running)
    try:
        await asyncio.wait_for(publisher.second_round.wait(), 10)
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await anext(running)
    assert calls >= 3
    assert publisher.checks >= 1
    assert ("staff", (key,)) in publisher.client_sets
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failures
    assert "RuntimeError" in failures[0].getMessage()
    assert "canary-secret" not in caplog.text


def test_client_key_file_and_tor_auth_line(tmp_path: Path) -> None:
    key, new = OnionClientKey.load_or_create(tmp_path / "v.onion-key")
    assert new
    assert stat.S_IMODE((tmp_path / "v.onion-key").stat().st_mode) == 0o600
    again, new = OnionClientKey.load_or_create(tmp_path / "v.onion-key")
    assert not new
    assert again.public_base32() == key.public_base32()
    line = key.auth_private_line(ONION)
    host, kind, algo, secret = line.split(":")
    assert (host, kind, algo) == ("a" * 56, "descriptor", "x25519")
    assert len(secret) == 52
    assert secret not in repr(key)
    assert secret != key.public_base32()
    auth = tmp_path / "auth"
    auth.mkdir()
    path = key.install(auth, ONION, "safepassage-staff")
    assert path.read_text() == line + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- real onions on the private network ------------------------------------------------------------


@contextlib.asynccontextmanager
async def little_site() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "onion"})

    app = web.Application()
    app.router.add_get("/t/hello", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def fetch(address: str, socks: str, *, attempts_for: float = 90.0) -> float:
    """GET /hello over Tor; retry while the descriptor spreads (bounded). Returns the last request's seconds."""
    deadline = time.monotonic() + attempts_for
    while True:
        started = time.monotonic()
        try:
            async with Transport(f"http://{address}", "/t", socks=socks) as t:
                _, body = await t.call("GET", t.url("hello"), expect=(200,), want="json", limit=1000)
            assert body == {"hello": "onion"}
            return time.monotonic() - started
        except OnionAuthRequired:
            raise
        except ServerUnreachable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def service_publisher(net: TorNet, *specs: tor.OnionSpec) -> tor.OnionPublisher:
    return tor.OnionPublisher(tor.ControlTarget.parse(f"127.0.0.1:{net.service.control_port}").connect, specs)


async def test_public_onion_with_pow_is_reachable_and_keeps_its_address(tor_network: TorNet, tmp_path: Path) -> None:
    key_path = tmp_path / "keys" / "onion-public.key"
    async with little_site() as port:
        spec = tor.public_spec(key_path, "127.0.0.1", port, pow_defense=True, queue_rate=20, queue_burst=200)
        publisher = service_publisher(tor_network, spec)
        try:
            published = await asyncio.to_thread(publisher.publish, await_publication=True)
            address = published["public"].address
            assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
            first = await fetch(address, tor_network.applicant.socks_url())
            warm = await fetch(address, tor_network.applicant.socks_url())
            assert first < 60
            assert warm < 30
            assert publisher.healthy()
        finally:
            await asyncio.to_thread(publisher.close)
        assert not publisher.healthy()
        # The same key file gives the same address after a restart.
        again = service_publisher(tor_network, spec)
        try:
            republished = await asyncio.to_thread(again.publish)
            assert republished["public"].address == address
        finally:
            await asyncio.to_thread(again.close)


async def test_onion_key_never_reaches_a_log(
    tor_network: TorNet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(1)  # everything, as a handler without a level would get it
    # As if an operator turned on stem's own tracing (a handler on its logger): stem then
    # logs every control command, ADD_ONION and its key included, unless we stop it.
    stem_logger = logging.getLogger("stem")
    stem_logger.addHandler(caplog.handler)
    key = tor.OnionKey.generate()
    key.save(tmp_path / "onion-public.key")
    spec = tor.public_spec(tmp_path / "onion-public.key", "127.0.0.1", 9, pow_defense=True, queue_rate=1, queue_burst=1)
    publisher = service_publisher(tor_network, spec)
    try:
        published = await asyncio.to_thread(publisher.publish)
        assert published["public"].address == key.address()
    finally:
        await asyncio.to_thread(publisher.close)
        stem_logger.removeHandler(caplog.handler)
    secret = key.reveal().split(":", 1)[1]
    assert caplog.records  # our own info lines are there
    for record in caplog.records:
        assert secret[:20] not in record.getMessage()
    assert secret[:20] not in caplog.text


async def test_staff_onion_admits_only_clients_with_a_key(tor_network: TorNet, tmp_path: Path) -> None:
    handler_key = OnionClientKey.generate()
    other = OnionClientKey.generate()
    keys = tuple(tor.ClientKey.parse(k.public_base32()) for k in (handler_key, other))
    async with little_site() as port:
        spec = tor.OnionSpec("staff", tmp_path / "onion-staff.key", "127.0.0.1", port, client_keys=keys)
        publisher = service_publisher(tor_network, spec)
        try:
            address = (await asyncio.to_thread(publisher.publish, await_publication=True))["staff"].address
            handler_key.install(tor_network.handler_auth_dir, address, "staff-test")
            tor_network.reload_handler_auth()
            await fetch(address, tor_network.handler.socks_url())
            # The applicant's tor has no key: tor answers 0xF4, the client says what is missing.
            with pytest.raises(OnionAuthRequired):
                await fetch(address, tor_network.applicant.socks_url(), attempts_for=60)
        finally:
            await asyncio.to_thread(publisher.close)


async def test_health_check_publishes_again_after_tor_lost_the_service(tor_network: TorNet, tmp_path: Path) -> None:
    async with little_site() as port:
        spec = tor.public_spec(
            tmp_path / "onion-public.key", "127.0.0.1", port, pow_defense=False, queue_rate=1, queue_burst=1
        )
        publisher = service_publisher(tor_network, spec)
        try:
            published = await asyncio.to_thread(publisher.publish, await_publication=True)
            service_id = published["public"].service_id
            assert not await asyncio.to_thread(publisher.check)
            # The service vanishes from tor while the control connection stays up (onions are
            # per connection, so only ours can remove it; a real tor restart: test_server_launches_its_own_tor).
            controller = publisher._controller
            assert controller is not None
            controller.remove_ephemeral_hidden_service(service_id)
            assert service_id not in controller.get_info("onions/current", "").split()
            assert not publisher.healthy()
            assert await asyncio.to_thread(publisher.check)
            assert service_id in controller.get_info("onions/current", "").split()
            assert publisher.healthy()
            # A tor that has not cached the old descriptor (new introduction points) reaches it at once.
            await fetch(published["public"].address, tor_network.handler.socks_url())
        finally:
            await asyncio.to_thread(publisher.close)


async def test_a_broken_control_connection_is_reconnected(tor_network: TorNet, tmp_path: Path) -> None:
    connections: list[stem.control.Controller] = []
    target = tor.ControlTarget.parse(f"127.0.0.1:{tor_network.service.control_port}")

    def connect() -> stem.control.Controller:
        connections.append(target.connect())
        return connections[-1]

    async with little_site() as port:
        spec = tor.public_spec(
            tmp_path / "onion-public.key", "127.0.0.1", port, pow_defense=False, queue_rate=1, queue_burst=1
        )
        publisher = tor.OnionPublisher(connect, [spec])
        try:
            first = await asyncio.to_thread(publisher.publish)
            connections[0].close()  # tor takes our ephemeral service down with the connection
            assert not publisher.healthy()
            assert await asyncio.to_thread(publisher.check)
            assert len(connections) == 2
            assert publisher.published["public"] == first["public"]
            assert publisher.healthy()
        finally:
            await asyncio.to_thread(publisher.close)


async def test_server_launches_its_own_tor(tor_network: TorNet, tmp_path: Path) -> None:
    """``tor_control = "launch"``: the process starts a private tor and publishes through it."""
    data = tmp_path / "server"
    data.mkdir(mode=0o700)
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "onion"})

    app.router.add_get("/t/hello", hello)
    runner = web.AppRunner(app, access_log=None)
    port = free_port()
    spec = tor.public_spec(
        data / "keys" / "onion-public.key", "127.0.0.1", port, pow_defense=True, queue_rate=10, queue_burst=100
    )
    publisher = tor.attach(
        app, tor.TorSettings("launch", "", data, 30), [spec], launch_options=tor_network.network_options()
    )
    await runner.setup()  # runs cleanup_ctx: launches tor and publishes
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        address = publisher.address("public")
        assert stat.S_IMODE((data / "tor").stat().st_mode) == 0o700
        await fetch(address, tor_network.applicant.socks_url())
        # Tor dies (crash, OOM kill, upgrade): the health check starts a new one, same address.
        pids = _tor_pids(data / "tor")
        assert len(pids) == 1
        os.kill(pids[0], signal.SIGKILL)
        await asyncio.to_thread(_wait_gone, pids[0])
        assert not publisher.healthy()
        assert await asyncio.to_thread(publisher.check)
        assert publisher.address("public") == address
        assert _tor_pids(data / "tor") not in ([], pids)
        await fetch(address, tor_network.applicant.socks_url())
    finally:
        await runner.cleanup()
    assert not publisher.healthy()
    # The tor it launched is gone with it.
    assert _tor_pids(data / "tor") == []


def _tor_pids(data_dir: Path) -> list[int]:
    """Live tor processes started with ``data_dir`` (zombies do not count)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z" and str(data_dir / "torrc").encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
    return pids


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state == "Z":
            return
        time.sleep(0.05)
    raise AssertionError("tor did not exit")
