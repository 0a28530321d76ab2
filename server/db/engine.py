"""Async engines for SQLite (embedded default) and PostgreSQL (production).

SQLite is opened in WAL mode with ``synchronous=FULL`` (a commit that returned
is on disk: a receipt means durable), foreign keys on, and ``secure_delete``
so deleted rows are overwritten rather than left in free pages. SQLite has one
writer at a time, so writes go through :class:`Store`'s lock instead of
failing with "database is locked" under concurrency.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in (
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=FULL",
        "PRAGMA foreign_keys=ON",
        "PRAGMA secure_delete=ON",
        "PRAGMA busy_timeout=30000",
    ):
        cursor.execute(pragma)
    cursor.close()


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30}, pool_size=16, max_overflow=16)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


class Store:
    """The engine, a session factory, and the write discipline for this backend."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._write_lock = asyncio.Lock()
        self._sync: sessionmaker[Session] | None = None
        self._sync_engine: Engine | None = None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session in one transaction, committed on success and rolled back on any error."""
        if self.is_sqlite:
            async with self._write_lock, self.sessions.begin() as session:
                yield session
        else:
            async with self.sessions.begin() as session:
                yield session

    async def transaction(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one write transaction, committed if it returns and rolled back if it raises.

        On SQLite the whole transaction runs in one worker-thread hop on a
        plain (sync) connection to the same file, under the same write lock and
        pragmas: aiosqlite would hop to its thread and back for every
        statement, and the hot write paths spent most of their time in those
        hops while holding the one writer lock. On PostgreSQL writers run
        concurrently, so ``work`` runs through the async session.
        """
        if self.is_sqlite:
            async with self._write_lock:
                return await asyncio.to_thread(self._sync_transaction, work)
        async with self.sessions.begin() as session:
            return await session.run_sync(work)

    def _sync_transaction(self, work: Callable[[Session], T]) -> T:
        if self._sync is None:
            # One connection is enough: the write lock lets one transaction in at a time.
            url = self.engine.url.set(drivername="sqlite+pysqlite")
            engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=1)
            event.listen(engine, "connect", _sqlite_pragmas)
            self._sync_engine = engine
            self._sync = sessionmaker(engine, expire_on_commit=False)
        with self._sync.begin() as session:
            return work(session)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    async def checkpoint(self) -> None:
        """After deletions: SQLite keeps deleted rows in its write-ahead log until
        it is checkpointed; truncate it so they are gone from disk too."""
        if self.is_sqlite:
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    async def close(self) -> None:
        if self._sync_engine is not None:
            await asyncio.to_thread(self._sync_engine.dispose)
        await self.engine.dispose()
