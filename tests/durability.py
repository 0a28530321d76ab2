"""Real server processes for the kill -9 tests: start, wait until they answer, SIGKILL, restart.

Each service runs as its operator runs it (``safepassage server run``, ``staff
run``, ``integration run``) in a process of its own, so SIGKILL takes it down
the way a power cut or an OOM kill would: no cleanup handler, no flush, no
goodbye. Every process is bounded in time and stopped by the test.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyotp
from sqlalchemy import update

from safepassage.client.applicant import SentContact, send_contact
from safepassage.client.handler import enroll
from safepassage.client.handler_vault import HandlerPaths
from safepassage.client.intake_api import IntakeClient
from safepassage.client.staff_api import StaffEnrolment
from safepassage.client.trust import fetch_trusted_directory
from safepassage.crypto.directory import Directory, Handler, IntegrationService
from safepassage.crypto.translog import MerkleLog
from safepassage.crypto.vault import Passphrase
from safepassage.server.config import load_config, write_config
from safepassage.server.db import migrate
from safepassage.server.db.engine import Store, make_engine
from safepassage.server.db.models import Contact as ContactRow
from safepassage.server.directory_store import load_published, publish
from safepassage.server.integration.bootstrap import Initialised, init_data_dir, plan_init
from safepassage.server.keys import create_keys, load_keys
from safepassage.server.staff.accounts import create_invitation

from .deployment import now_ts
from .handler_env import FLOOR, PASSPHRASE, PASSWORD, listed
from .helpers import Org

EXE = str(Path(sys.executable).with_name("safepassage"))
#: Settings that keep the stream quick: the cheapest proof of work and limits no test reaches.
FAST = {
    "SAFEPASSAGE_POW_BASE_DIFFICULTY": "1",
    "SAFEPASSAGE_POW_MAX_DIFFICULTY": "1",
    "SAFEPASSAGE_POW_MEMLIMIT_KIB": "1024",
    "SAFEPASSAGE_RATE_LIMIT_PER_MINUTE": "100000",
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


OFFICER = Passphrase("the officer's vault passphrase, for tests")
CANARY = "canary-2f81c4: я шифровальщик посольства"


class World:
    def __init__(self, root: Path, database_url: str, integration_url: str) -> None:
        self.root, self.org = root, Org()
        self.intake = Service("server", root / "server", "/api/v1/directory", env=dict(FAST))
        self.staff = Service("staff", root / "server", "/")
        self.integration = Service("integration", root / "integration", "/")
        plan = plan_init(
            root / "integration",
            org_fingerprint=self.org.admin_set.fingerprint(),
            intake_url=self.intake.url,
            database_url=integration_url,
        )
        self.service: Initialised = init_data_dir(plan, OFFICER)
        server_folder(root, self.org, database_url, self.directory_v1)
        self.url = load_config(root / "server").url
        self.paths = HandlerPaths(root / "dana" / "dana.vault")

    def directory_v1(self, start: int) -> Directory:
        integration = IntegrationService(self.service.signing_key, self.service.encryption_keys)
        return replace(self.org.directory(1, handlers=roster(self.org, start)), integration=integration)

    async def store_do(self, action: Callable[[Store], Awaitable[object]]) -> object:
        store = Store(make_engine(self.url))
        try:
            return await action(store)
        finally:
            await store.close()

    async def enrol_dana(self) -> str:
        code, _ = await self.store_do(  # type: ignore[misc]
            lambda store: create_invitation(
                store,
                username="dana",
                role="handler",
                now=now_ts(),
                day=dt.datetime.now(dt.UTC).date(),
                actor="op",
                audit_key=load_keys(load_config(self.root / "server").keys_dir).receipt,
            )
        )
        (self.root / "dana").mkdir(mode=0o700)
        secret: list[str] = []

        def authenticator(answer: StaffEnrolment) -> str:
            secret.append(answer.totp_secret.reveal())
            return pyotp.TOTP(secret[-1]).now()

        await enroll(
            staff=self.staff.url,
            invitation=code,
            password=PASSWORD,
            vault=self.paths.vault,
            passphrase=PASSPHRASE,
            intake=self.intake.url,
            org=self.org.admin_set.fingerprint(),
            totp_code=authenticator,
            **FLOOR,
        )
        return secret[0]

    async def list_dana(self) -> None:
        """The admins publish version 2 with dana (from her intake-key.json)."""
        receipt = load_keys(load_config(self.root / "server").keys_dir).receipt.verify_key
        first = self.directory_v1(now_ts() - 3600)
        second = replace(first, version=2, handlers=(*first.handlers, listed(self.paths, ("general",))))

        async def go(store: Store) -> None:
            current = await load_published(store)
            assert current is not None
            signed, head = self.org.publication(second, current.log)
            await publish(store, signed, head, org_fingerprint=self.org.admin_set.fingerprint(), receipt_key=receipt)

        await self.store_do(go)

    async def applicant_writes(self, attachment: Path, message: str = CANARY) -> SentContact:
        async with IntakeClient(self.intake.url) as client:
            trusted = await fetch_trusted_directory(client, self.org.admin_set.fingerprint(), None, now_ts())
            sent = await send_contact(
                client, trusted, pool="general", language="ru", message=message, fields={}, attachments=[attachment]
            )

        async def route(store: Store) -> None:
            async with store.write() as session:
                await session.execute(update(ContactRow).where(ContactRow.id == sent.contact_id).values(owner="dana"))

        await self.store_do(route)
        return sent
