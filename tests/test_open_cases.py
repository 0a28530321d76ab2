"""Routing's open-case counters (``open_cases``, kept by triggers from migration 0006) equal a fresh
COUNT after every way a case changes, on SQLite and PostgreSQL: each kind of statement on
``contacts``, concurrent writers, the migration's backfill, and the case lifecycle through the APIs."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from dataclasses import replace
from pathlib import Path

from sqlalchemy import delete, insert, inspect, select, text, update

from safepassage.server.db import migrate
from safepassage.server.db.engine import Store, make_engine
from safepassage.server.db.models import Contact, Mailbox
from safepassage.server.routing import choose_owner

from .deployment import assert_open_cases_counted
from .intake_calls import Calls
from .staff_deployment import StaffCalls, StaffDeployment, new_case, roster_directory
from .test_retention import _escalate, _run, _set_status, _with_policy

TRIGGERS = {"trg_contacts_open_cases_insert", "trg_contacts_open_cases_update", "trg_contacts_open_cases_delete"}
STATUSES = ("new", "reviewing", "replied", "escalated", "rejected", "closed")
DAY = dt.date(2026, 1, 1)
_ids = itertools.count()


def _url(tmp_path: Path, database_url: str) -> str:
    return database_url or f"sqlite+aiosqlite:///{tmp_path / 'counters.db'}"


def _contact(
    mailbox: str, *, pool: str = "general", owner: str = "alice", state: str = "complete", status: str = "new"
) -> dict[str, object]:
    return {
        "id": f"c{next(_ids):08d}",
        "mailbox_id": mailbox,
        "pool": pool,
        "owner": owner,
        "day": DAY,
        "bucket": 0,
        "state": state,
        "status": status,
        "status_day": DAY,
        "attachments": 0,
        "server_sealed": False,
        "envelope": b"\x00" * 8,
        "envelope_hash": b"\x00" * 32,
    }


async def _mailbox(store: Store, name: str) -> str:
    mailbox_id = name.ljust(64, "0")
    async with store.write() as session:
        session.add(Mailbox(id=mailbox_id, public_key=b"\x01" * 32, created_day=DAY))
    return mailbox_id


async def _triggers(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                query = "SELECT tgname FROM pg_trigger WHERE tgrelid = 'contacts'::regclass AND NOT tgisinternal"
            else:
                query = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'contacts'"
            return {row[0] for row in (await conn.execute(text(query))).all()}
    finally:
        await engine.dispose()


def test_head_has_the_counter_triggers(tmp_path: Path, database_url: str) -> None:
    """A later migration that rebuilds ``contacts`` (SQLite batch mode) must recreate them."""
    url = _url(tmp_path, database_url)
    migrate.upgrade(url)
    assert asyncio.run(_triggers(url)) >= TRIGGERS
    migrate.downgrade(url, "0005")
    assert asyncio.run(_triggers(url)) & TRIGGERS == set()


def test_the_migration_backfills_the_counters(tmp_path: Path, database_url: str) -> None:
    url = _url(tmp_path, database_url)
    migrate.upgrade(url, "0005")

    async def seed() -> None:
        store = Store(make_engine(url))
        try:
            mailbox = await _mailbox(store, "seed")
            rows = [
                _contact(mailbox, pool=pool, owner=owner, state=state, status=status)
                for pool, owner in (("general", "alice"), ("general", "bob"), ("science", "bob"))
                for state in ("pending", "complete")
                for status in STATUSES
            ]
            rows += [_contact(mailbox, owner="alice", status="reviewing") for _ in range(4)]
            async with store.write() as session:
                await session.execute(insert(Contact), rows)
        finally:
            await store.close()

    async def counted() -> dict[tuple[str, str], int]:
        store = Store(make_engine(url))
        try:
            return await assert_open_cases_counted(store)
        finally:
            await store.close()

    asyncio.run(seed())
    migrate.upgrade(url, "0006")
    # Three open statuses of complete contacts per (pool, owner), plus alice's four.
    assert asyncio.run(counted()) == {("general", "alice"): 7, ("general", "bob"): 3, ("science", "bob"): 3}
    migrate.downgrade(url, "0005")
    assert "open_cases" not in asyncio.run(_tables(url))
    migrate.upgrade(url)
    assert asyncio.run(counted())[("general", "alice")] == 7


async def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_every_kind_of_change_keeps_the_counters(tmp_path: Path, database_url: str) -> None:
    url = _url(tmp_path, database_url)
    await asyncio.to_thread(migrate.upgrade, url)
    store = Store(make_engine(url))
    try:
        one, two = await _mailbox(store, "one"), await _mailbox(store, "two")

        async def write(*statements: object) -> dict[tuple[str, str], int]:
            async with store.write() as session:
                for statement in statements:
                    if isinstance(statement, list):
                        await session.execute(insert(Contact), statement)
                    else:
                        await session.execute(statement)  # type: ignore[call-overload]
            return await assert_open_cases_counted(store)

        # Created: one row per statement, and many rows in one statement.
        first = _contact(one)
        assert await write([first]) == {("general", "alice"): 1}
        pending = _contact(one, state="pending")
        batch = [_contact(two, owner="bob", status=s) for s in STATUSES] + [pending]
        assert await write(batch) == {("general", "alice"): 1, ("general", "bob"): 3}
        # Finalised: a pending contact becomes complete.
        where = Contact.id == pending["id"]
        assert await write(update(Contact).where(where).values(state="complete")) == {
            ("general", "alice"): 2,
            ("general", "bob"): 3,
        }
        # Every status to every other status, on one case.
        for old, new in itertools.permutations(STATUSES, 2):
            await write(update(Contact).where(where).values(status=old))
            counts = await write(update(Contact).where(where).values(status=new))
            assert counts[("general", "alice")] == 1 + (new in ("new", "reviewing", "replied"))
        # Handed over (owner) and moved (pool); and a change of neither (a status_day) changes nothing.
        await write(update(Contact).where(where).values(status="new"))
        assert await write(update(Contact).where(where).values(owner="bob")) == {
            ("general", "alice"): 1,
            ("general", "bob"): 4,
        }
        assert await write(update(Contact).where(where).values(pool="science", owner="carol")) == {
            ("general", "alice"): 1,
            ("general", "bob"): 3,
            ("science", "carol"): 1,
        }
        assert await write(update(Contact).where(where).values(status_day=DAY + dt.timedelta(days=1))) == {
            ("general", "alice"): 1,
            ("general", "bob"): 3,
            ("science", "carol"): 1,
        }
        # Many rows in one update, both ways (a handover of everything, then closing everything of bob's).
        assert await write(update(Contact).where(Contact.owner == "alice").values(owner="bob")) == {
            ("general", "bob"): 4,
            ("science", "carol"): 1,
        }
        assert await write(update(Contact).where(Contact.owner == "bob").values(status="closed")) == {
            ("science", "carol"): 1
        }
        await write(update(Contact).where(Contact.mailbox_id == two).values(status="reviewing"))
        # Deleted: one row, and a mailbox whose ON DELETE CASCADE takes its contacts.
        assert await write(delete(Contact).where(where)) == {("general", "bob"): 6}
        assert await write(delete(Mailbox).where(Mailbox.id == two)) == {}
        assert await write(delete(Contact)) == {}
        # Rolled back with the change it counted.
        try:
            async with store.write() as session:
                await session.execute(insert(Contact), [_contact(one)])
                raise RuntimeError("abort")
        except RuntimeError:
            pass
        assert await assert_open_cases_counted(store) == {}
    finally:
        await store.close()


async def test_concurrent_writers_keep_the_counters(tmp_path: Path, database_url: str) -> None:
    """On PostgreSQL these transactions run at once; each counter upsert waits for the row's lock."""
    url = _url(tmp_path, database_url)
    await asyncio.to_thread(migrate.upgrade, url)
    store = Store(make_engine(url))
    try:
        mailbox = await _mailbox(store, "busy")

        async def worker(n: int) -> None:
            row = _contact(mailbox, owner=("alice", "bob")[n % 2])
            async with store.write() as session:
                await session.execute(insert(Contact), [row])
            async with store.write() as session:
                await session.execute(
                    update(Contact).where(Contact.id == row["id"]).values(owner=("bob", "carol")[n % 2])
                )
            if n % 3 == 0:
                async with store.write() as session:
                    await session.execute(update(Contact).where(Contact.id == row["id"]).values(status="closed"))

        await asyncio.gather(*(worker(n) for n in range(60)))
        assert await assert_open_cases_counted(store) == {("general", "bob"): 20, ("general", "carol"): 20}
    finally:
        await store.close()


async def test_the_case_lifecycle_through_the_apis_keeps_the_counters(
    staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls
) -> None:
    store = staff.dep.store

    async def counted() -> dict[tuple[str, str], int]:
        return await assert_open_cases_counted(store)

    async def routed(candidates: tuple[str, ...] = ("alice", "bob", "carol")) -> str:
        async with store.read() as session:
            return await choose_owner(session, "general", candidates)

    await _with_policy(staff, {"retention_case_days": 30})
    alice = await staff_calls.enrol_and_login("alice")
    await staff_calls.enrol_and_login("bob")  # an active account: a handover target
    carol = await staff_calls.enrol_and_login("carol")
    # Created (and finalised, with an attachment), then given to an owner.
    first, _ = await new_case(staff, public_calls, owner="alice")
    second, _ = await new_case(staff, public_calls, owner="alice", blob=b"\x02" * 5_000)
    third, _ = await new_case(staff, public_calls, owner="bob")
    assert await counted() == {("general", "alice"): 2, ("general", "bob"): 1}
    # Routing reads the counters: carol holds none, so a new case goes to her.
    assert await routed() == "carol"
    assert await routed(("alice", "bob")) == "bob"
    # Status changes: reviewing stays open, closed leaves, reopened comes back, escalated leaves.
    await _set_status(staff_calls, alice, first, "reviewing")
    assert await counted() == {("general", "alice"): 2, ("general", "bob"): 1}
    await _set_status(staff_calls, alice, first, "closed")
    assert await counted() == {("general", "alice"): 1, ("general", "bob"): 1}
    await _set_status(staff_calls, alice, first, "new")
    assert await counted() == {("general", "alice"): 2, ("general", "bob"): 1}
    await _escalate(staff, staff_calls, alice, second, "pkg-counter-1")
    assert await counted() == {("general", "alice"): 1, ("general", "bob"): 1}
    # Handed over: alice's open case becomes bob's.
    answer = await staff_calls.call("POST", f"/staff/v1/cases/{first}/handover", account=alice, json={"handler": "bob"})
    assert answer.status == 200, answer.body
    assert await counted() == {("general", "bob"): 2}
    assert await routed(("alice", "bob")) == "alice"
    # Revoked: a directory without bob moves his open cases to the pool's other readers.
    without_bob = roster_directory(
        staff.dep, staff.dep.directory.version + 1, {"alice": ("general",), "carol": ("general",)}
    )
    await staff.publish(replace(without_bob, policy={"intake_key_days": 7, "retention_case_days": 30}))
    async with store.read() as session:
        owners = set((await session.scalars(select(Contact.owner).where(Contact.id.in_([first, third])))).all())
    assert owners <= {"alice", "carol"}
    counts = await counted()
    assert sum(counts.values()) == 2
    assert ("general", "bob") not in counts
    # Closed through the API and deleted by retention: the case leaves the count when it is
    # closed; the deletion of closed cases changes no counter.
    async with store.read() as session:
        owner = await session.scalar(select(Contact.owner).where(Contact.id == third))
    await _set_status(staff_calls, alice if owner == "alice" else carol, third, "closed")
    before = await counted()
    assert sum(before.values()) == 1
    assert (await _run(staff, 31)).cases == 2  # the escalated case and the closed one
    assert await counted() == before
