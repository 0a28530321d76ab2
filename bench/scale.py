"""Inbox page and submit latency with 1,000,000 stored contacts on PostgreSQL, against the same with 1,000.

Run with ``make bench`` (or ``python -m bench.scale``). One run, one database:
the intake (``safepassage server run``) and the staff app (``safepassage staff
run``) serve it from their own processes; this process loads 1,000 contacts,
measures, bulk-loads up to the large count with ``INSERT ... SELECT
generate_series`` (rows shaped like real ones, spread over three handlers and
a year of days; envelopes are 64-byte placeholders, since neither measured
query reads them and 4 GB of envelopes would only cost load time), runs
VACUUM (ANALYZE) and CHECKPOINT (as after the small load), and measures again.
Measured, sequentially, ``--samples`` times each:

* inbox: ``GET /staff/v1/cases`` (the first page) as a handler owning a third of the cases;
* submit: ``POST /api/v1/contacts`` with a sealed contact and a solved proof of work
  (difficulty 1: the server's Argon2id cost does not depend on the difficulty).

It prints p50 and p99 of each at both sizes and the p99 ratio (target <= 1.5).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import aiohttp
import asyncpg
import pyotp

from bench.intake import _build, _challenges, _port, _setup, _wait
from bench.pgdb import bench_database

HANDLERS = ("alice", "bob", "carol")
PASSWORD = "a benchmark password, long enough"  # noqa: S105 - a throwaway account in a throwaway database


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _bulk_load(dsn: str, start: int, end: int) -> None:
    """Contacts ``start`` .. ``end - 1`` (and one mailbox each), as complete cases in pool general."""
    conn = await asyncpg.connect(dsn)
    try:
        step = 200_000
        for lo in range(start, end, step):
            hi = min(end, lo + step)
            # One transaction per batch: the intake's housekeeping deletes mailboxes without a
            # contact, and would take a batch's mailboxes between the two inserts.
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO mailboxes (id, public_key, created_day) "
                    "SELECT lpad(to_hex(g), 64, '0'), decode(lpad(to_hex(g), 64, '0'), 'hex'), "
                    "DATE '2025-01-01' + (g % 365)::int FROM generate_series($1::bigint, $2::bigint) g",
                    lo,
                    hi - 1,
                )
                await conn.execute(
                    "INSERT INTO contacts (id, mailbox_id, pool, owner, day, bucket, state, status, status_day, "
                    "attachments, server_sealed, envelope, envelope_hash) "
                    "SELECT 'b' || lpad(to_hex(g), 15, '0'), lpad(to_hex(g), 64, '0'), 'general', "
                    "(ARRAY['alice','bob','carol'])[1 + g % 3], DATE '2025-01-01' + (g % 365)::int, 0, 'complete', "
                    "(ARRAY['new','reviewing','replied','closed'])[1 + (g / 3) % 4], "
                    "DATE '2025-01-01' + (g % 365)::int, 0, false, "
                    "decode(repeat('00', 64), 'hex'), sha256(int8send(g)) "
                    "FROM generate_series($1::bigint, $2::bigint) g",
                    lo,
                    hi - 1,
                )
        # Settle what the load left behind before measuring. A database that grew to this size
        # over months was vacuumed and checkpointed long ago; right after a bulk load, autovacuum
        # of the fresh rows and the checkpoint that writes their pages out would otherwise run
        # during the measurement, at either size.
        await conn.execute("VACUUM (ANALYZE)")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def _session(staff: str, dsn: str, data_dir: Path) -> str:
    """Enrol alice as a handler through the staff API and log in; return the bearer token."""
    exe = str(Path(sys.executable).with_name("safepassage"))
    out = subprocess.run(  # noqa: S603 - our own command
        [exe, "staff", "invite", "--data", str(data_dir), "--user", "alice", "--role", "handler"],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, SAFEPASSAGE_DATABASE_URL=dsn),
    ).stdout
    code = out.splitlines()[1].strip()  # the line after "Invitation for ..."
    async with aiohttp.ClientSession() as http:
        async with http.post(staff + "/staff/v1/enroll", json={"invitation": code, "password": PASSWORD}) as r:
            secret = (await r.json())["totp_secret"]
        totp = pyotp.TOTP(secret)
        async with http.post(staff + "/staff/v1/enroll/confirm", json={"invitation": code, "code": totp.now()}) as r:
            if r.status != 200:
                raise RuntimeError(await r.text())
        login = {"username": "alice", "password": PASSWORD, "code": totp.at(int(time.time()) + 30)}
        async with http.post(staff + "/staff/v1/login", json=login) as r:
            if r.status != 201:
                raise RuntimeError(await r.text())
            return str((await r.json())["token"])


Jobs = list[tuple[bytes, dict[str, str]]]


async def _measure(intake: str, staff: str, token: str, jobs: Jobs) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"inbox": [], "submit": []}
    async with aiohttp.ClientSession() as http:
        for data, headers in jobs:
            start = time.perf_counter()
            async with http.get(staff + "/staff/v1/cases", headers={"Authorization": f"Bearer {token}"}) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"inbox answered {r.status}")
            out["inbox"].append(time.perf_counter() - start)
            start = time.perf_counter()
            async with http.post(intake + "/api/v1/contacts?pool=general", data=data, headers=headers) as r:
                await r.read()
                if r.status != 201:
                    raise RuntimeError(f"submit answered {r.status}")
            out["submit"].append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", help="a PostgreSQL database to create the bench's own beside (bench/pgdb.py)")
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    with bench_database(args.database_url) as url:
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        try:
            results = _run(args, url, dsn, procs)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait()
    _report(args.small, args.large, results)


def _run(
    args: argparse.Namespace, url: str, dsn: str, procs: list[subprocess.Popen[bytes]]
) -> dict[int, tuple[dict[str, list[float]], float]]:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "srv"
        data_dir.mkdir(mode=0o700)
        _, raw_keys = _setup(data_dir, url)
        with ProcessPoolExecutor() as pool:
            built = list(pool.map(_build, [(raw_keys, "")] * (2 * args.samples), chunksize=20))
        env = dict(
            os.environ,
            SAFEPASSAGE_DATABASE_URL=url,
            SAFEPASSAGE_POW_BASE_DIFFICULTY="1",
            SAFEPASSAGE_POW_MAX_DIFFICULTY="1",
            SAFEPASSAGE_RATE_LIMIT_PER_MINUTE="1000000",
        )
        exe = str(Path(sys.executable).with_name("safepassage"))
        port, staff_port = _port(), _port()
        for cmd in (["server", "run", "--port", str(port)], ["staff", "run", "--port", str(staff_port)]):
            procs.append(
                subprocess.Popen(  # noqa: S603 - our own command with fixed arguments
                    [exe, cmd[0], cmd[1], "--data", str(data_dir), *cmd[2:]], env=env, stderr=subprocess.DEVNULL
                )
            )
        intake, staff = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{staff_port}"
        _wait(intake)
        _wait_any(staff)
        token = asyncio.run(_session(staff, url, data_dir))
        pows = asyncio.run(_challenges(intake, len(built)))
        jobs = [(d, {**h, "Safe-Passage-PoW": p}) for (d, h), p in zip(built, pows, strict=True)]
        results = {}
        for size, chunk in ((args.small, jobs[: args.samples]), (args.large, jobs[args.samples :])):
            loaded = time.perf_counter()
            current = asyncio.run(_count(dsn))
            asyncio.run(_bulk_load(dsn, current, size))
            took = time.perf_counter() - loaded
            asyncio.run(_measure(intake, staff, token, chunk[:10]))  # warm up
            results[size] = (asyncio.run(_measure(intake, staff, token, chunk[10:])), took)
    return results


async def _count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM contacts"))
    finally:
        await conn.close()


def _wait_any(base: str) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/staff/v1/me", timeout=2)  # noqa: S310
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("staff app did not start")


def _report(small: int, large: int, results: dict[int, tuple[dict[str, list[float]], float]]) -> None:
    for what in ("inbox", "submit"):
        a, b = results[small][0][what], results[large][0][what]
        ratio = _pct(b, 0.99) / _pct(a, 0.99)
        print(
            f"{what:7s} p50/p99 ms: {small:,} contacts {statistics.median(a) * 1000:.1f}/{_pct(a, 0.99) * 1000:.1f}; "
            f"{large:,} contacts {statistics.median(b) * 1000:.1f}/{_pct(b, 0.99) * 1000:.1f}; "
            f"p99 ratio {ratio:.2f} (target <= 1.5: {'met' if ratio <= 1.5 else 'MISSED'})"
        )
    print(f"bulk load to {large:,} contacts: {results[large][1]:.0f} s")


if __name__ == "__main__":
    main()
