"""A real PostgreSQL for tests.

In order: ``SAFEPASSAGE_TEST_PG`` (an asyncpg DSN), the server this machine kind
starts at 127.0.0.1:5432 (database ``test``, trust auth), or a throwaway cluster
made with Debian's ``initdb`` under a temporary folder. Each test database is
created fresh and dropped afterwards. With ``CI=true`` a missing PostgreSQL is
a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    admin_db: str

    def dsn(self, db: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{db}"

    def url(self, db: str) -> str:
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{db}"


async def _probe(dsn: str) -> bool:
    try:
        conn = await asyncio.wait_for(asyncpg.connect(dsn), timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


def run_sync(coro):  # type: ignore[no-untyped-def]
    """Run a coroutine to completion from sync code, even under a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@contextlib.contextmanager
def _throwaway_cluster() -> Iterator[PgServer]:
    bindir = _pg_bin()
    if bindir is None:
        raise RuntimeError("no PostgreSQL binaries (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="sp-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses to run as root; Debian's package creates this user.
        shutil.chown(root, user="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = root / "data"
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        [*as_user, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root), "-h", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = PgServer("127.0.0.1", port, "postgres", "postgres")
    try:
        deadline = time.monotonic() + 30
        while not run_sync(_probe(server.dsn("postgres"))):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("throwaway PostgreSQL did not start")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def reachable_server() -> Iterator[PgServer]:
    """``SAFEPASSAGE_TEST_PG`` if set, else the server at 127.0.0.1:5432, else a throwaway cluster
    started here (Debian's initdb) and stopped at the end. Raises when none can be had."""
    dsn = os.environ.get("SAFEPASSAGE_TEST_PG")
    if dsn:
        from urllib.parse import urlparse

        u = urlparse(dsn)
        yield PgServer(u.hostname or "127.0.0.1", u.port or 5432, u.username or "postgres", u.path.lstrip("/"))
        return
    local = PgServer("127.0.0.1", 5432, "postgres", "test")
    if run_sync(_probe(local.dsn("test"))):
        yield local
        return
    with _throwaway_cluster() as server:
        yield server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        with reachable_server() as server:
            yield server
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and could not be started: {exc}")
        pytest.skip(f"no PostgreSQL here: {exc}")


async def _create_db(server: PgServer, name: str) -> None:
    admin = await asyncpg.connect(server.dsn(server.admin_db))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def _drop_db(server: PgServer, name: str) -> None:
    admin = await asyncpg.connect(server.dsn(server.admin_db))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.contextmanager
def fresh_database(server: PgServer) -> Iterator[str]:
    """A new, empty database, dropped afterwards; yields its SQLAlchemy URL."""
    name = f"sp_test_{uuid.uuid4().hex[:12]}"
    run_sync(_create_db(server, name))
    try:
        yield server.url(name)
    finally:
        run_sync(_drop_db(server, name))
