"""A real intake server for tests: real files, a real database, real HTTP on loopback.

``deployment`` builds a data folder the way ``server init`` does (config, 0600
key files, migrated database), has the test organisation's admins publish a
directory naming the server's receipt key, and serves ``create_app`` on an
ephemeral 127.0.0.1 port. It runs once on SQLite and once on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import func, select

from safepassage.crypto.directory import Directory
from safepassage.crypto.keys import SigningKey, VerifyKey
from safepassage.crypto.translog import MerkleLog
from safepassage.server.app import create_app
from safepassage.server.config import ServerConfig
from safepassage.server.db import migrate
from safepassage.server.db.engine import Store, make_engine
from safepassage.server.db.models import Base, Contact, OpenCaseCount
from safepassage.server.directory_store import Published, publish
from safepassage.server.keys import ServerKeys, create_keys
from safepassage.server.routing import OPEN_STATUSES

from .helpers import Org
from .pg import PgServer, fresh_database


@dataclass
class Deployment:
    org: Org
    config: ServerConfig
    keys: ServerKeys
    store: Store
    base_url: str
    published: Published
    app: web.Application

    @property
    def directory(self) -> Directory:
        return self.published.directory

    async def publish(
        self,
        directory: Directory,
        *,
        timestamp: int = 1_700_000_100,
        signers: Sequence[SigningKey] | None = None,
        next_receipt_key: VerifyKey | None = None,
    ) -> Published:
        signed, head = self.org.publication(directory, self.published.log, timestamp=timestamp, signers=signers)
        self.published = await publish(
            self.store,
            signed,
            head,
            org_fingerprint=self.config.org_fingerprint,
            receipt_key=self.keys.receipt.verify_key,
            next_receipt_key=next_receipt_key,
        )
        return self.published

    async def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, for checking that a refused request changed nothing.

        Anti-replay bookkeeping is left out: a proof-of-work challenge is spent
        before its work is checked (docs/protocol.md 12.5), so a refused
        submission may leave its spent nonce behind, by design.
        """
        out: dict[str, list[tuple[Any, ...]]] = {}
        async with self.store.read() as session:
            for table in Base.metadata.sorted_tables:
                if table.name in ("spent_challenges", "mailbox_nonces"):
                    continue
                rows = (await session.execute(select(table))).all()
                out[table.name] = sorted((tuple(r) for r in rows), key=repr)
        return out


async def open_case_counts(store: Store) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """The triggers' open-case counters (rows at zero left out) and a fresh COUNT of the same."""
    async with store.read() as session:
        counters = {
            (pool, owner): int(cases)
            for pool, owner, cases in (
                await session.execute(select(OpenCaseCount.pool, OpenCaseCount.owner, OpenCaseCount.cases))
            ).all()
            if cases != 0
        }
        counted = {
            (pool, owner): int(n)
            for pool, owner, n in (
                await session.execute(
                    select(Contact.pool, Contact.owner, func.count())
                    .where(Contact.state == "complete", Contact.status.in_(OPEN_STATUSES))
                    .group_by(Contact.pool, Contact.owner)
                )
            ).all()
        }
    return counters, counted


async def assert_open_cases_counted(store: Store) -> dict[tuple[str, str], int]:
    """Fail unless every open-case counter equals a fresh COUNT; return the count."""
    counters, counted = await open_case_counts(store)
    assert counters == counted, f"open-case counters {counters} != counted {counted}"
    return counted


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield ""
        return
    server: PgServer = request.getfixturevalue("pg_server")
    with fresh_database(server) as url:
        yield url


def now_ts() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp())


@pytest.fixture
async def deployment(tmp_path: Path, database_url: str) -> AsyncIterator[Deployment]:
    data_dir = tmp_path / "server"
    data_dir.mkdir(mode=0o700)
    org = Org()
    # Intake keys valid around now, so the server's own clock finds them current.
    start = now_ts() - 3600
    config = replace(
        ServerConfig(data_dir=data_dir),
        database_url=database_url,
        org_fingerprint=org.admin_set.fingerprint(),
        pow_base_difficulty=1,
        pow_memlimit_kib=1024,
        mailbox_daily_quota=5,
        max_contact_bytes=3 * 1_048_603,
    ).validate()
    keys = create_keys(config.keys_dir)
    org.receipt = keys.receipt
    await asyncio.to_thread(migrate.upgrade, config.url)
    store = Store(make_engine(config.url))
    directory = org.directory(1, handlers=tuple(org.handler(h, p, start=start) for h, p in _ROSTER))
    signed, head = org.publication(directory, MerkleLog())
    published = await publish(
        store, signed, head, org_fingerprint=config.org_fingerprint, receipt_key=keys.receipt.verify_key
    )
    app = create_app(config, store=store)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Deployment(org, config, keys, store, f"http://{host}:{port}", published, app)
        # Whatever the test did to cases, the routing counters must still equal a fresh count.
        await assert_open_cases_counted(store)
    finally:
        await runner.cleanup()
        await store.close()


_ROSTER = (("alice", ("general",)), ("bob", ("general", "science")), ("carol", ("general",)))
