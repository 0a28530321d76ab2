"""Rotating the public onion over the private Tor network, with the operator's and the applicant's commands.

The intake runs with ``tor_control`` (health check every second), so the
rotation is picked up the way a running server picks it up: the operator runs
``server onion-rotate``, the next address comes up beside the current one, the
admins sign a directory naming it, an applicant who still has the old address
is moved to the new one by ``safepassage contact send`` (from the verified
directory), and after ``--finish`` with no grace the old address goes down and
its key is destroyed.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from safepassage.client.intake_api import IntakeClient
from safepassage.client.trust import fetch_trusted_directory
from safepassage.server import tor
from safepassage.server.app import create_app
from safepassage.server.cli import publish_public_onion
from safepassage.server.context import INTAKE

from .deployment import Deployment, now_ts
from .test_server_cli import EXE
from .tornet import TorNet

pytestmark = [pytest.mark.timeout(300), pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


def safepassage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=240, check=False)


async def until(what: str, check: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_rotation_followed_by_the_applicant(deployment: Deployment, tor_network: TorNet, tmp_path: Path) -> None:
    dep = deployment
    org = dep.org.admin_set.fingerprint()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = replace(
        dep.config,
        tor_control=f"127.0.0.1:{tor_network.service.control_port}",
        port=sock.getsockname()[1],
        tor_health_seconds=1,
    ).validate()
    app = create_app(config, store=dep.store)
    publish_public_onion(app, config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        publisher = app[tor.ONIONS]
        old = publisher.address("public")
        data = str(config.data_dir)
        assert safepassage("server", "onion-address", "--data", data, "--role", "public").stdout == f"current: {old}\n"

        async def publish(version: int, address: str) -> None:
            start = now_ts() - 3600
            handlers = tuple(dep.org.handler(h, ("general",), start=start) for h in ("alice", "bob", "carol"))
            directory = dep.org.directory(version, handlers=handlers, onions={"public": address})
            await dep.publish(directory, timestamp=1_700_000_100 + version)
            await app[INTAKE].refresh()

        await publish(2, old)
        socks = tor_network.applicant.socks_url()

        # The operator starts the rotation; the running server publishes the next address too.
        started = safepassage("server", "onion-rotate", "--data", data, "--role", "public")
        assert started.returncode == 0, started.stderr
        new = started.stdout.split("Next public address: ")[1].split()[0]
        assert new != old
        await until("the next address published", lambda: "public.next" in publisher.published)
        assert publisher.published["public.next"].address == new
        again = safepassage("server", "onion-rotate", "--data", data, "--role", "public")
        assert again.returncode == 2
        assert "already under way" in again.stderr

        # The admins sign the move; an applicant with the old address is sent to the new one.
        await publish(3, new)
        message = tmp_path / "message.txt"
        message.write_text("canary-rotation-6: moving")
        sent = None
        for _ in range(30):  # the new onion's descriptor may still be spreading: retry (bounded)
            sent = await asyncio.to_thread(
                safepassage,
                "contact", "send", "--server", f"http://{old}", "--org", org, "--socks", socks,
                "--pool", "general", "--message-file", str(message), "--state", str(tmp_path / "state.json"),
            )  # fmt: skip
            if sent.returncode == 0 or "Could not reach" not in sent.stderr:
                break
            await asyncio.sleep(1)
        assert sent is not None
        assert sent.returncode == 0, sent.stderr
        assert f"names {new} for this service; using it" in sent.stderr

        # Finish with no grace: the old address goes down, its key is destroyed.
        finished = safepassage(
            "server", "onion-rotate", "--data", data, "--role", "public", "--finish", "--grace-hours", "0"
        )
        assert finished.returncode == 0, finished.stderr
        await until("the old address taken down", lambda: {p.address for p in publisher.published.values()} == {new})
        assert publisher.address("public") == new
        assert sorted(p.name for p in (config.data_dir / "keys").glob("onion-public*")) == ["onion-public.key"]
        assert safepassage("server", "onion-address", "--data", data, "--role", "public").stdout == f"current: {new}\n"
        # A client of the new address alone is satisfied.
        async with IntakeClient(f"http://{new}", socks=socks) as client:
            trusted = await fetch_trusted_directory(client, org, None, now_ts())
        assert trusted.directory.onions["public"] == new
    finally:
        await runner.cleanup()
    finish_nothing = safepassage("server", "onion-rotate", "--data", data, "--role", "public", "--finish")
    assert finish_nothing.returncode == 2
    assert "no rotation under way" in finish_nothing.stderr
