"""Contacts accepted per second by the real intake server, against a bare aiohttp baseline.

Run with ``python -m bench.intake --store sqlite`` (``make bench`` runs it on both stores).
Both servers run as separate processes on loopback; this process sends the same
pre-built submissions (smallest bucket, three recipients) over 64 keep-alive
connections to each, interleaved round by round, and prints the median rate of
each and their ratio. The baseline reads the same body and answers 201.

The proof of work is solved beforehand at difficulty 1 so the run measures the
server: the server's cost per submission (one Argon2id evaluation at the
deployed 2 MiB) does not depend on the difficulty, which only sets the
applicant's cost. That server-side share is measured and printed separately.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import aiohttp

from bench.pgdb import bench_database
from safepassage.crypto import envelope as E
from safepassage.crypto import pow as W
from safepassage.crypto.codename import derive_applicant_keys, generate_codename
from safepassage.crypto.encoding import b64e
from safepassage.crypto.intake import Contact, sign_submission
from safepassage.crypto.translog import MerkleLog
from safepassage.server.config import ServerConfig
from safepassage.server.db import migrate
from safepassage.server.db.engine import Store, make_engine
from safepassage.server.directory_store import publish
from safepassage.server.keys import create_keys
from tests.helpers import Org

BASELINE = """
import sys
from aiohttp import web
async def handle(request):
    await request.read()
    return web.json_response({"ok": True}, status=201)
app = web.Application(client_max_size=2 * 1024 * 1024)
app.router.add_post("/api/v1/contacts", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _setup(data_dir: Path, database_url: str) -> tuple[Org, list[bytes]]:
    org = Org()
    config = replace(
        ServerConfig(data_dir=data_dir), database_url=database_url, org_fingerprint=org.admin_set.fingerprint()
    ).validate()
    keys = create_keys(config.keys_dir)
    org.receipt = keys.receipt
    migrate.upgrade(config.url)
    start = int(time.time()) - 60
    directory = org.directory(1, handlers=tuple(org.handler(h, ("general",), start=start) for h in org.handler_ids))
    signed, head = org.publication(directory, MerkleLog())

    async def go() -> None:
        store = Store(make_engine(config.url))
        await publish(store, signed, head, org_fingerprint=config.org_fingerprint, receipt_key=keys.receipt.verify_key)
        await store.close()

    asyncio.run(go())
    return org, [k.public_key.public_bytes_raw() for k in (org.intake[h] for h in org.handler_ids)]


def _build(args: tuple[list[bytes], str]) -> tuple[bytes, dict[str, str]]:
    """One submission: envelope and headers, minus the proof of work (added later)."""
    from safepassage.crypto.keys import HybridPublicKey

    raw_keys, _ = args
    keys = derive_applicant_keys(generate_codename(), opslimit=1, memlimit=8 * 1024 * 1024)
    payload = Contact(
        "general", "ru", "x" * 200, {}, (), keys.reply_key.public_key, keys.mailbox_key.verify_key, "cli"
    ).seal_payload(keys.mailbox_key)
    data = E.seal(payload, [HybridPublicKey(k) for k in raw_keys], E.Purpose.CONTACT).data
    sig = sign_submission(keys.mailbox_key, kind="contact", pool="general", attachments=0, envelope=data)
    return data, {
        "Content-Type": "application/octet-stream",
        "Safe-Passage-Mailbox-Key": b64e(keys.mailbox_key.verify_key.public_bytes_raw()),
        "Safe-Passage-Signature": b64e(sig),
    }


async def _challenges(base: str, n: int) -> list[str]:
    out = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.post(base + "/api/v1/pow") as r:
                challenge = W.Challenge.from_text((await r.json())["challenge"])
            out.append(f"{challenge.to_text()}.{W.solve(challenge)}")
    return out


async def _fire(base: str, jobs: list[tuple[bytes, dict[str, str]]], concurrency: int) -> tuple[float, int]:
    queue: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    ok = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal ok
            while not queue.empty():
                data, headers = queue.get_nowait()
                async with session.post(base + "/api/v1/contacts?pool=general", data=data, headers=headers) as r:
                    await r.read()
                    ok += r.status == 201

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(jobs) / (time.perf_counter() - start), ok


def _wait(base: str) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/api/v1/pow", data=b"", timeout=2)  # noqa: S310
            return
        except OSError as exc:
            if getattr(exc, "code", None):
                return
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--database-url", help="a PostgreSQL database to create the bench's own beside (bench/pgdb.py)")
    parser.add_argument("--per-round", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        data_dir = Path(tmp) / "srv"
        data_dir.mkdir(mode=0o700)
        # PostgreSQL: a database of its own, dropped at the end.
        url = stack.enter_context(bench_database(args.database_url)) if args.store == "postgresql" else ""
        _, raw_keys = _setup(data_dir, url)
        total = args.per_round * args.rounds
        with ProcessPoolExecutor() as pool:
            built = list(pool.map(_build, [(raw_keys, "")] * total, chunksize=20))
        port, base_port = _port(), _port()
        env = dict(
            os.environ,
            SAFEPASSAGE_POW_BASE_DIFFICULTY="1",
            SAFEPASSAGE_POW_MAX_DIFFICULTY="1",
            SAFEPASSAGE_RATE_LIMIT_PER_MINUTE="1000000",
        )
        if url:
            env["SAFEPASSAGE_DATABASE_URL"] = url
        exe = str(Path(sys.executable).with_name("safepassage"))
        server = subprocess.Popen(  # noqa: S603 - our own command with fixed arguments
            [exe, "server", "run", "--data", str(data_dir), "--port", str(port)], env=env, stderr=subprocess.DEVNULL
        )
        bare = subprocess.Popen([sys.executable, "-c", BASELINE, str(base_port)])  # noqa: S603
        try:
            base, bare_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{base_port}"
            _wait(base)
            time.sleep(1)
            pows = asyncio.run(_challenges(base, total))
            jobs = [(d, {**h, "Safe-Passage-PoW": p}) for (d, h), p in zip(built, pows, strict=True)]
            rates, bare_rates, oks, cpu = _rounds(args, jobs, (base, server.pid), (bare_base, bare.pid))
        finally:
            server.terminate()
            bare.terminate()
            server.wait()
            bare.wait()
    _report(args.store, total, oks, args.concurrency, rates, bare_rates)
    # CPU per request does not depend on what else the shared machine is doing, unlike rates.
    per = {k: v / total * 1000 for k, v in cpu.items()}
    print(
        f"server CPU per request: intake {per['intake']:.2f} ms, baseline {per['baseline']:.2f} ms "
        f"(baseline/intake {per['baseline'] / per['intake']:.3f}: the ratio one dedicated core would allow)"
    )


def _rounds(
    args: argparse.Namespace, jobs: list[tuple[bytes, dict[str, str]]], intake: tuple[str, int], bare: tuple[str, int]
) -> tuple[list[float], list[float], int, dict[str, float]]:
    """Interleaved rounds: the baseline, then the intake, on the same submissions; rates and CPU used."""
    rates, bare_rates, oks = [], [], 0
    cpu = {"intake": 0.0, "baseline": 0.0}
    for i in range(args.rounds):
        chunk = jobs[i * args.per_round : (i + 1) * args.per_round]
        before = _cpu_seconds(bare[1])
        bare_rates.append(asyncio.run(_fire(bare[0], chunk, args.concurrency))[0])
        cpu["baseline"] += _cpu_seconds(bare[1]) - before
        before = _cpu_seconds(intake[1])
        rate, ok = asyncio.run(_fire(intake[0], chunk, args.concurrency))
        cpu["intake"] += _cpu_seconds(intake[1]) - before
        rates.append(rate)
        oks += ok
    return rates, bare_rates, oks, cpu


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process and its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _report(store: str, total: int, oks: int, concurrency: int, rates: list[float], bare: list[float]) -> None:
    pow_cost = _pow_verify_cost()
    ratios = [r / b for r, b in zip(rates, bare, strict=True)]
    med = statistics.median

    def runs(values: list[float]) -> str:
        return ", ".join(f"{v:,.0f}" for v in values)

    print(f"store: {store}; {total} submissions, {oks} accepted (201); {concurrency} connections")
    print(f"intake:   median {med(rates):,.0f}/s  (rounds: {runs(rates)})")
    print(f"baseline: median {med(bare):,.0f}/s  (rounds: {runs(bare)})")
    print(
        f"ratio:    median {med(ratios):.3f}  (min {min(ratios):.3f}, max {max(ratios):.3f}; "
        f"target >= 0.25: {'met' if med(ratios) >= 0.25 else 'MISSED'})"
    )
    print(
        f"PoW verification: {pow_cost * 1000:.2f} ms per submission, "
        f"{pow_cost * med(rates):.0%} of one core at the intake's median rate"
    )


def _pow_verify_cost() -> float:
    key = W.PowKey.generate()
    challenge = W.issue_challenge(key, difficulty=0, now=int(time.time()))
    text = challenge.to_text()
    start = time.perf_counter()
    for _ in range(50):
        W.verify_solution(key, text, 0, now=int(time.time()))
    return (time.perf_counter() - start) / 50


if __name__ == "__main__":
    main()
