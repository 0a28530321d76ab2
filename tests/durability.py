"""Real server processes for the kill -9 tests: start, wait until they answer, SIGKILL, restart.

Each service runs as its operator runs it (``safepassage server run``, ``staff
run``, ``integration run``) in a process of its own, so SIGKILL takes it down
the way a power cut or an OOM kill would: no cleanup handler, no flush, no
goodbye. Every process is bounded in time and stopped by the test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from safepassage.crypto.directory import Directory, Handler
from safepassage.crypto.translog import MerkleLog
from safepassage.server.config import load_config, write_config
from safepassage.server.db import migrate
from safepassage.server.db.engine import Store, make_engine
from safepassage.server.directory_store import publish
from safepassage.server.keys import create_keys

from .deployment import now_ts
from .helpers import Org

EXE = str(Path(sys.executable).with_name("safepassage"))
#: Settings that keep the stream quick: the cheapest proof of work and limits no test reaches.
FAST = {
    "SAFEPASSAGE_POW_BASE_DIFFICULTY": "1",
    "SAFEPASSAGE_POW_MAX_DIFFICULTY": "1",
    "SAFEPASSAGE_POW_MEMLIMIT_KIB": "1024",
    "SAFEPASSAGE_RATE_LIMIT_PER_MINUTE": "100000",
    "SAFEPASSAGE_CHALLENGE_LIMIT_PER_MINUTE": "100000",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Service:
    """One ``safepassage <group> run`` process on a fixed loopback port (kept across restarts)."""

    group: str
    data_dir: Path
    probe: str  # a path that answers (any HTTP status) once the app serves
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        self.log = self.data_dir.parent / f"{self.group}-{self.port}-{self.starts}.log"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [EXE, self.group, "run", "--data", str(self.data_dir), "--port", str(self.port)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, **self.env},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.group} exited: {self.log.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(self.url + self.probe, timeout=2):  # noqa: S310 - loopback, our URL
                    return
            except urllib.error.HTTPError:
                return  # it answered: serving
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise AssertionError(f"{self.group} did not answer within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: no cleanup runs in the server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""


def roster(org: Org, start: int) -> tuple[Handler, ...]:
    return tuple(org.handler(h, ("general",), start=start) for h in org.handler_ids)


def server_folder(root: Path, org: Org, database_url: str, directory: Callable[[int], Directory] | None = None) -> Path:
    """A data folder as ``server init`` leaves it, with directory version 1 published (handlers valid now)."""
    data = root / "server"
    data.mkdir(mode=0o700)
    values: dict[str, str | int] = {"org_fingerprint": org.admin_set.fingerprint()}
    if database_url:
        values["database_url"] = database_url
    write_config(data, **values)
    config = load_config(data)
    keys = create_keys(config.keys_dir)
    org.receipt = keys.receipt
    migrate.upgrade(config.url)
    start = now_ts() - 3600
    first = (directory or (lambda start: org.directory(1, handlers=roster(org, start))))(start)
    signed, head = org.publication(first, MerkleLog())

    async def go() -> None:
        store = Store(make_engine(config.url))
        try:
            await publish(
                store, signed, head, org_fingerprint=config.org_fingerprint, receipt_key=keys.receipt.verify_key
            )
        finally:
            await store.close()

    asyncio.run(go())
    return data


def stop_all(services: Sequence[Service]) -> None:
    for service in services:
        service.stop()
