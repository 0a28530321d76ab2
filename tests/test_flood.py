"""A bounded flood from local processes; a real applicant still gets through within 5 seconds.

The intake runs as ``safepassage server run`` with its deployed limits (rate
caps, quotas, Argon2id at 2 MiB per proof of work) and a base difficulty of 8
bits, lower than the deployed 10 so the applicant's own proof of work fits the
5-second budget on this 2-core machine shared with the flood processes. Five
flood processes (tests/flood.py: bogus envelopes, unsolved and replayed proofs
of work, slow bodies, many parallel 1 MiB uploads) run for ``FLOOD_SECONDS``
(20 here; ``make soak`` sets 300). During the flood:

* an applicant (the real client: directory with proofs, proof of work, seal,
  submit, receipt check) sends a contact every few seconds; each is accepted
  within 5 seconds;
* the server's resident memory is sampled; its growth stays under 96 MiB;

and afterwards nothing the flood sent is stored: the contacts and mailboxes
are exactly the applicant's (spent challenges stay, by design, until they
expire: docs/protocol.md 12.5).

The flood asks for about 200 challenges a second here, so within the 20-second
run it stays below the deployed global challenge cap (6,000 a minute). Past
that point (``make soak`` reaches it after about 30 seconds) real applicants
get 429 until the flood stops: a known open problem, recorded by the strict
xfail test at the end of this file.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select

from safepassage.client.applicant import send_contact
from safepassage.client.intake_api import IntakeClient
from safepassage.client.trust import fetch_trusted_directory
from safepassage.server.config import load_config
from safepassage.server.db.engine import Store, make_engine
from safepassage.server.db.models import Chunk, Contact, Mailbox

from .deployment import Deployment, now_ts
from .durability import Service, server_folder
from .helpers import Org

FLOOD_SECONDS = float(os.environ.get("SAFEPASSAGE_FLOOD_SECONDS", "20"))
KINDS = ("bogus", "unsolved", "replay", "slow", "uploads")
BUDGET_SECONDS = 5.0
MEMORY_GROWTH_MIB = 96

pytestmark = pytest.mark.timeout(int(FLOOD_SECONDS) + 240)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _applicant(url: str, fingerprint: str) -> float:
    start = time.monotonic()
    async with IntakeClient(url) as client:
        trusted = await fetch_trusted_directory(client, fingerprint, None, now_ts())
        await send_contact(
            client, trusted, pool="general", language="en", message="a real applicant", fields={}, attachments=[]
        )
    return time.monotonic() - start


async def test_flood_leaves_room_for_a_real_applicant(tmp_path: Path) -> None:
    org = Org()
    data = await asyncio.to_thread(server_folder, tmp_path, org, "")
    env = {"SAFEPASSAGE_POW_BASE_DIFFICULTY": "8"}
    service = Service("server", data, "/api/v1/directory", env=env)
    await asyncio.to_thread(service.start)
    assert service.proc is not None
    pid = service.proc.pid
    floods: list[asyncio.subprocess.Process] = []
    try:
        await asyncio.sleep(1)
        idle = rss_mib(pid)
        baseline = await _applicant(service.url, org.admin_set.fingerprint())  # before the flood
        for kind in KINDS:
            floods.append(
                await asyncio.create_subprocess_exec(
                    # Niced: the flood stands for machines of the adversary's own; here it shares
                    # two cores with the server and the applicant, whose proof of work would
                    # otherwise be measured against the flood's CPU, not the server's answer.
                    "nice",
                    "-n",
                    "10",
                    sys.executable,
                    "-m",
                    "tests.flood",
                    kind,
                    service.url,
                    str(FLOOD_SECONDS),
                    cwd=str(Path(__file__).resolve().parents[1]),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
            )
        peak = idle
        times: list[float] = []
        end = time.monotonic() + FLOOD_SECONDS
        await asyncio.sleep(min(3.0, FLOOD_SECONDS / 4))  # let the flood build up
        while time.monotonic() < end - BUDGET_SECONDS:
            sending = asyncio.create_task(_applicant(service.url, org.admin_set.fingerprint()))
            while not sending.done():
                peak = max(peak, rss_mib(pid))
                await asyncio.sleep(0.1)
            times.append(sending.result())
            for _ in range(10):
                peak = max(peak, rss_mib(pid))
                await asyncio.sleep(0.1)
        reports = []
        for proc in floods:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
            assert proc.returncode == 0, err.decode()
            reports.append(json.loads(out.decode().strip().splitlines()[-1]))
        assert service.proc.poll() is None, "the server died under the flood"
    finally:
        for proc in floods:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await asyncio.to_thread(service.stop)

    summary = dict(zip(KINDS, reports, strict=True))
    print(f"\nflood {FLOOD_SECONDS:.0f} s: {json.dumps(summary, sort_keys=True)}")
    print(
        f"applicant: before {baseline:.2f} s; during: {len(times)} contacts, median {statistics.median(times):.2f} s, "
        f"max {max(times):.2f} s; server RSS idle {idle:.0f} MiB, peak {peak:.0f} MiB"
    )
    assert sum(v for r in reports for k, v in r.items() if not k.endswith(" s")) > 500, "the flood did not get going"
    assert len(times) >= 2
    assert max(times) < BUDGET_SECONDS, times
    assert peak - idle < MEMORY_GROWTH_MIB, (idle, peak)

    store = Store(make_engine(load_config(data).url))
    try:
        async with store.read() as session:
            contacts = await session.scalar(select(func.count()).select_from(Contact))
            mailboxes = await session.scalar(select(func.count()).select_from(Mailbox))
            chunks = await session.scalar(select(func.count()).select_from(Chunk))
    finally:
        await store.close()
    # The applicant's contacts (one before the flood, the rest during it) and nothing else.
    assert contacts == len(times) + 1
    assert mailboxes == len(times) + 1
    assert chunks == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.xfail(
    strict=True,
    reason=(
        "KNOWN OPEN: the global cap on proof-of-work challenges (challenge_limit_per_minute) "
        "is one budget for everybody, and behind Tor nobody can be told apart, so whoever asks "
        "fastest takes it: a flood of free /pow requests locks real applicants out (429) for as "
        "long as it lasts. The cap bounds the Argon2id checks unsolved submissions cost the "
        "server, so it cannot simply go; the fix is to make each check cost the sender something "
        "first (a cheap hash pre-check on the counter, a protocol change). When it is fixed this "
        "test passes and strict xfail turns that into a failure: remove the marker then."
    ),
)
async def test_a_challenge_flood_does_not_lock_out_applicants(deployment: Deployment) -> None:
    limit = deployment.config.challenge_limit_per_minute
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as http:

        async def ask() -> int:
            async with http.post(deployment.base_url + "/api/v1/pow") as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(ask() for _ in range(limit + 50)))
        assert statuses.count(201) == limit  # the flood took the whole minute's budget
        # A real applicant now asks for a challenge.
        assert await ask() == 201
