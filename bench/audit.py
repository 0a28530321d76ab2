"""What the signed hash chain costs: appends per second and entries verified per second.

Run with ``python -m bench.audit --store sqlite`` (or ``--store postgresql``, on a database of
its own: bench/pgdb.py). Not an issue-8 row: it prints figures without a target.

* Appends: each transaction writes one audit entry, as every staff action does.
  The chained, signed append (:func:`safepassage.server.audit.append_audit`) is
  timed against a baseline measured in the same run: one plain ``INSERT`` of a
  row of the same columns into a scratch table, which is what the unchained
  audit table cost. Sequentially, and with 32 transactions at once (on SQLite
  the store's write lock serialises them anyway).
* Verification: :func:`safepassage.client.audit.check_audit_entries` over a
  chain, against parsing the same entries without checking them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import text

from bench.pgdb import bench_database
from safepassage.client.audit import check_audit_entries
from safepassage.crypto.audit import GENESIS_PREV, AuditBody, AuditEntry
from safepassage.crypto.keys import SigningKey
from safepassage.server.audit import append_audit
from safepassage.server.db import migrate
from safepassage.server.db.engine import Store, make_engine

DAY = dt.date(2026, 11, 28)
SCRATCH = (
    "CREATE TABLE bench_plain (id INTEGER PRIMARY KEY, day DATE NOT NULL, actor VARCHAR(64) NOT NULL, "
    "action VARCHAR(32) NOT NULL, case_id VARCHAR(32), detail VARCHAR(200) NOT NULL)"
)


async def _rate(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await one(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


async def _appends(store: Store, n: int, rounds: int) -> None:
    key = SigningKey.generate()
    async with store.write() as session:
        await session.execute(text(SCRATCH))
    next_id = iter(range(1, 10**9))

    async def plain(i: int) -> None:
        async with store.write() as session:
            await session.execute(
                text("INSERT INTO bench_plain VALUES (:id, :day, 'alice', 'status', 'c_0123456789', :detail)"),
                {"id": next(next_id), "day": DAY, "detail": f"closed {i}"},
            )

    async def chained(i: int) -> None:
        async with store.write() as session:
            await append_audit(
                session, key, day=DAY, actor="alice", action="status", case_id="c_0123456789", detail=f"closed {i}"
            )

    for concurrency in (1, 32):
        base, chain = [], []
        for _ in range(rounds):
            base.append(await _rate(n, concurrency, plain))
            chain.append(await _rate(n, concurrency, chained))
        b, c = statistics.median(base), statistics.median(chain)
        print(
            f"  appends, {concurrency:>2} at once: plain insert {b:8.0f}/s   signed chain {c:8.0f}/s   "
            f"ratio chain/plain {c / b:.2f}"
        )


def _verification(n: int, rounds: int) -> None:
    key = SigningKey.generate()
    entries, prev = [], GENESIS_PREV
    for seq in range(1, n + 1):
        body = AuditBody(
            seq=seq,
            prev=prev,
            day="2026-11-28",
            actor="alice",
            action="status",
            case="c_0123",
            detail="closed",
            key_id=key.verify_key.key_id,
        )
        entry = AuditEntry.make(key, body)
        entries.append(dict(entry.to_json()))
        prev = entry.hash
    parse, check = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for raw in entries:
            AuditEntry.from_json(raw)
        parse.append(n / (time.perf_counter() - start))
        start = time.perf_counter()
        report = check_audit_entries(entries, [key.verify_key], head_seq=n, head_hash=prev)  # type: ignore[arg-type]
        check.append(n / (time.perf_counter() - start))
        if not report.ok:
            raise SystemExit("the benchmark chain did not verify")
    p, c = statistics.median(parse), statistics.median(check)
    print(f"  verification of {n} entries: parse only {p:8.0f}/s   full check {c:8.0f}/s   ratio {c / p:.2f}")


async def main_async(store_kind: str, url: str, n: int, rounds: int) -> None:
    await asyncio.to_thread(migrate.upgrade, url)
    store = Store(make_engine(url))
    try:
        print(
            f"audit log on {store_kind}, {n} transactions per measurement, median of {rounds} "
            "(informational: no target)"
        )
        await _appends(store, n, rounds)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.store == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main_async(args.store, f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", args.n, args.rounds))
    else:
        with bench_database(None) as url:
            asyncio.run(main_async(args.store, url, args.n, args.rounds))
    _verification(5000, args.rounds)


if __name__ == "__main__":
    main()
