"""The PostgreSQL database a benchmark runs on: its own, created for the run and dropped after.

With ``--database-url URL`` (an existing database the benchmark may create others
beside), that server; otherwise the server the test suite uses (``SAFEPASSAGE_TEST_PG``,
then 127.0.0.1:5432, then a throwaway cluster started with Debian's ``initdb`` and
stopped at the end), so ``make bench`` runs on a fresh machine too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import urlparse

from tests.pg import PgServer, fresh_database, reachable_server


@contextlib.contextmanager
def bench_database(admin_url: str | None) -> Iterator[str]:
    """Yield the SQLAlchemy URL of a new, empty database; drop it afterwards."""
    if admin_url:
        u = urlparse(admin_url.replace("postgresql+asyncpg://", "postgresql://"))
        server = PgServer(u.hostname or "127.0.0.1", u.port or 5432, u.username or "postgres", u.path.lstrip("/"))
        with fresh_database(server) as url:
            yield url
        return
    with reachable_server() as server, fresh_database(server) as url:
        yield url
