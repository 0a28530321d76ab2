"""Kill -9 in the middle of a handler's replies (staff app) and escalations (integration service).

Everything runs as an operator runs it: ``safepassage server run``, ``staff
run`` and ``integration run`` in processes of their own, on SQLite and on
PostgreSQL (the integration service on a database of its own). The handler
``dana`` enrols with the real client, the admins list her, an applicant writes
with an attachment, and then:

* dana replies again and again; once some replies were acknowledged the staff
  process gets SIGKILL. After a restart every acknowledged reply is stored with
  the hash dana's client sealed, the applicant's client opens and verifies it,
  and every stored reply has its audit event (one transaction: both or neither);
* dana escalates the case again and again (each a new package with its
  attachment); once some receipts came back the integration service gets
  SIGKILL. After a restart every receipted package is complete and the
  officer's keys open and verify it; every escalation the staff app recorded
  has its complete package; an interrupted package is pending with a gap-free
  run of chunks (resumable until its window closes), never marked complete.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pyotp
import pytest
from sqlalchemy import select, text

from safepassage.client.applicant import check_mailbox
from safepassage.client.handler import Escalated, SentReply, escalate, login, reply
from safepassage.client.intake_api import IntakeClient
from safepassage.client.officer import complete_package, read_package
from safepassage.client.trust import fetch_trusted_directory
from safepassage.crypto import envelope as E
from safepassage.crypto.errors import SafePassageError
from safepassage.server.db.engine import Store, make_engine
from safepassage.server.db.models import AuditLogEntry, EscalationRecord, Message
from safepassage.server.integration.app import delete_expired_packages
from safepassage.server.integration.config import load_integration_config
from safepassage.server.integration.directory import IntakeDirectorySource
from safepassage.server.integration.keys import open_officer_keys
from safepassage.server.integration.models import Package, PackageChunk

from .deployment import now_ts
from .durability import OFFICER, Service, World, stop_all
from .handler_env import PASSPHRASE, PASSWORD
from .integration_service import integration_database

pytestmark = pytest.mark.timeout(280)

CANARY = "canary-2f81c4: я шифровальщик посольства"
ACKED_BEFORE_KILL = 4


async def _until_killed(
    attempt: Callable[[int], Awaitable[object]], service: Service, acked: list[object], rounds: int = 40
) -> int:
    """Call ``attempt`` in a loop; SIGKILL ``service`` at a random moment after a few acknowledgements."""
    failed = 0
    killing = asyncio.Event()

    async def killer() -> None:
        while len(acked) < ACKED_BEFORE_KILL:
            await asyncio.sleep(0.005)
        await asyncio.sleep(random.uniform(0, 0.3))
        killing.set()
        await asyncio.to_thread(service.kill)

    kill = asyncio.create_task(killer())
    for n in range(rounds):
        try:
            acked.append(await attempt(n))
        except (SafePassageError, aiohttp.ClientError, ConnectionError):
            # Only the kill may make an attempt fail.
            assert killing.is_set(), "an attempt failed before the kill"
            failed += 1
            break
    await asyncio.wait_for(kill, timeout=30)
    return failed


async def test_replies_and_escalations_survive_sigkill(
    tmp_path: Path, database_url: str, request: pytest.FixtureRequest
) -> None:
    with integration_database(request, database_url) as integration_url:
        world = await asyncio.to_thread(World, tmp_path, database_url, integration_url)
        services = [world.intake, world.staff, world.integration]
        try:
            await _scenario(world, tmp_path)
        finally:
            await asyncio.to_thread(stop_all, services)


async def _scenario(world: World, tmp_path: Path) -> None:
    intake, staff, integration = world.intake, world.staff, world.integration
    await asyncio.to_thread(intake.start)
    await asyncio.to_thread(staff.start)
    secret = await world.enrol_dana()
    await world.list_dana()
    # Restarted so both serve version 2 at once (a running server picks it up within 30 s).
    for service in (intake, staff):
        await asyncio.to_thread(service.stop)
        await asyncio.to_thread(service.start)
    await asyncio.to_thread(integration.start)
    await login(world.paths, password=PASSWORD, code=pyotp.TOTP(secret).at(int(time.time()) + 30))
    attachment = tmp_path / "cipher-table.bin"
    attachment.write_bytes(bytes(range(256)) * 300)
    sent = await world.applicant_writes(attachment)
    case = sent.contact_id  # type: ignore[attr-defined]

    # --- replies, staff app killed ---------------------------------------------------------------------
    replies: list[object] = []
    texts = [f"reply {n}: мы вас слышим" for n in range(40)]

    async def one_reply(n: int) -> SentReply:
        return await reply(world.paths, PASSPHRASE, case, texts[n])

    assert await _until_killed(one_reply, staff, replies) == 1
    assert staff.proc is not None
    assert staff.proc.returncode == -9
    await asyncio.to_thread(staff.start)
    acked = [r for r in replies if isinstance(r, SentReply)]
    assert len(acked) >= ACKED_BEFORE_KILL

    async def stored_replies(store: Store) -> tuple[list[Message], list[AuditLogEntry]]:
        async with store.read() as session:
            if store.is_sqlite:
                assert (await session.execute(text("PRAGMA integrity_check"))).scalar() == "ok"
            messages = (await session.scalars(select(Message).where(Message.kind == "reply"))).all()
            chain = (await session.scalars(select(AuditLogEntry).order_by(AuditLogEntry.seq))).all()
        # The hash-chained audit log is unbroken by the kill: numbers without gaps, each entry linked to the last.
        assert [e.seq for e in chain] == list(range(chain[0].seq, chain[0].seq + len(chain)))
        assert all(b.prev_hash == a.entry_hash for a, b in itertools.pairwise(chain))
        return list(messages), [e for e in chain if e.action == "reply"]

    messages, events = await world.store_do(stored_replies)  # type: ignore[misc]
    by_id = {m.id: m for m in messages}
    for r in acked:
        assert r.message_id in by_id, f"acknowledged reply {r.message_id} is missing"
        assert by_id[r.message_id].envelope_hash == r.envelope_hash
        assert by_id[r.message_id].seq == r.seq
    # Reply and audit event are one transaction: every stored reply has exactly its event.
    assert sorted(e.detail for e in events) == sorted(f"message {m}" for m in by_id)
    async with IntakeClient(intake.url) as client:
        trusted = await fetch_trusted_directory(client, world.org.admin_set.fingerprint(), None, now_ts())
        read = await check_mailbox(client, trusted, sent.codename)  # type: ignore[attr-defined]
    assert all(r.handler_id == "dana" for r in read), "a stored reply does not open or verify"
    got = [r.text for r in read]
    assert got[: len(acked)] == texts[: len(acked)]
    assert set(got) <= set(texts)
    assert len(got) == len(by_id)

    # --- escalations, integration service killed -----------------------------------------------------
    packages: list[object] = []

    async def one_escalation(n: int) -> Escalated:
        return await escalate(world.paths, PASSPHRASE, case, f"assessment {n}", integration=integration.url)

    assert await _until_killed(one_escalation, integration, packages) == 1
    assert integration.proc is not None
    assert integration.proc.returncode == -9
    await asyncio.to_thread(integration.start)
    escalated = [p for p in packages if isinstance(p, Escalated)]
    assert len(escalated) >= ACKED_BEFORE_KILL
    await _check_packages(world, escalated)


async def _check_packages(world: World, escalated: list[Escalated]) -> None:
    config = load_integration_config(world.root / "integration")
    store = Store(make_engine(config.url))
    try:
        async with store.read() as session:
            if store.is_sqlite:
                assert (await session.execute(text("PRAGMA integrity_check"))).scalar() == "ok"
            rows = {p.id: p for p in (await session.scalars(select(Package))).all()}
            chunks: dict[str, list[PackageChunk]] = {}
            for c in (await session.scalars(select(PackageChunk))).all():
                chunks.setdefault(c.package_id, []).append(c)
        recorded = await world.store_do(
            _escalation_records  # the staff app's side: which receipts it kept
        )
        keys = await asyncio.to_thread(open_officer_keys, config.vault_path, OFFICER)
        directory = await IntakeDirectorySource(config, remember=False).fetch()
        assert set(chunks) <= set(rows)
        for e in escalated:
            assert e.package_id in recorded, "a receipted escalation is not recorded by the staff app"
        for package_id in recorded:  # type: ignore[attr-defined]
            assert rows[package_id].state == "complete"
        for n, (package_id, row) in enumerate(sorted(rows.items())):
            parts = sorted(chunks.get(package_id, []), key=lambda c: (c.attachment, c.index))
            if row.state == "complete":
                package = await complete_package(store, package_id)
                opened = await read_package(store, package, keys, directory, world.root / f"read-{n}")
                assert opened.handler_id == "dana"
                assert CANARY in (world.root / f"read-{n}" / "case.txt").read_text(encoding="utf-8")
            else:
                # Interrupted by the kill: never receipted, a gap-free run of chunks, none final but the last.
                assert package_id not in {e.package_id for e in escalated}
                assert [c.index for c in parts] == list(range(len(parts)))
                assert not any(c.final for c in parts[:-1])
                for c in parts:
                    E.parse_chunk_frame(c.frame)
        assert {e.package_id for e in escalated} <= {p for p, r in rows.items() if r.state == "complete"}
        # An interrupted package goes when its upload window closes (the service's housekeeping,
        # run as of then), with its chunks; the complete ones stay.
        later = now_ts() + 3600 * (config.upload_window_hours + 1)
        pending = {p for p, r in rows.items() if r.state == "pending"}
        assert await delete_expired_packages(store, later) == len(pending)
        async with store.read() as session:
            left = {p.id: p.state for p in (await session.scalars(select(Package))).all()}
            left_chunks = {c.package_id for c in (await session.scalars(select(PackageChunk))).all()}
        assert set(left.values()) <= {"complete"}
        assert set(left) == set(rows) - pending
        assert left_chunks <= set(left)
    finally:
        await store.close()


async def _escalation_records(store: Store) -> set[str]:
    async with store.read() as session:
        return set((await session.scalars(select(EscalationRecord.package_id))).all())
