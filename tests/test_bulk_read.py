"""Reading many cases at once: ``GET /staff/v1/case-envelopes`` and ``safepassage handler read-all``.

On SQLite and on PostgreSQL, over real HTTP on loopback to the real staff app
(tests/staff_deployment.py), with contacts written through the real public
intake. The endpoint is checked against docs/openapi/staff.yaml on every
answer; the client flow runs with a real vault and session, page by page.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, update

from safepassage.client.applicant import send_contact
from safepassage.client.cli import main
from safepassage.client.handler import login
from safepassage.client.handler_bulk import read_all
from safepassage.client.handler_vault import HandlerPaths
from safepassage.client.intake_api import IntakeClient
from safepassage.client.trust import fetch_trusted_directory
from safepassage.crypto import envelope as E
from safepassage.crypto.encoding import b64e
from safepassage.server.db.models import Base
from safepassage.server.db.models import Contact as ContactRow
from safepassage.server.staff.totp import Totp, TotpSecret, counter_at

from .deployment import now_ts
from .handler_env import PASSPHRASE, PASSWORD, listed
from .intake_calls import Calls
from .staff_deployment import StaffCalls, StaffDeployment, add_handlers, enrol_with_client, new_case, roster_directory

pytestmark = pytest.mark.timeout(240)

CANARY = "canary-7d21f0: я майор, у меня списки агентов"  # noqa: RUF001 - Cyrillic on purpose
ROSTER = {"alice": ("general",), "bob": ("general", "science"), "carol": ("general",)}
ENDPOINT = "/staff/v1/case-envelopes"


# --- the endpoint, as any client sees it -------------------------------------------------------------------


async def _two_handlers(staff_calls: StaffCalls) -> tuple[object, object]:
    sd = staff_calls.sd
    add_handlers(sd.dep, "dana", "erin")
    await sd.publish(roster_directory(sd.dep, 2, {"alice": ("general",), "dana": ("general",), "erin": ("general",)}))
    dana = await staff_calls.enrol_and_login("dana")
    erin = await staff_calls.enrol_and_login("erin")
    return dana, erin


async def test_pages_hold_only_the_callers_cases(
    staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls
) -> None:
    dana, erin = await _two_handlers(staff_calls)
    mine = {(await new_case(staff, public_calls, owner="dana"))[0] for _ in range(5)}
    theirs = {(await new_case(staff, public_calls, owner="erin"))[0] for _ in range(2)}
    before = await staff.snapshot()

    got: list[dict[str, object]] = []
    pages = 0
    after: str | None = None
    while True:
        query = f"?limit=2&after={after}" if after else "?limit=2"
        answer = await staff_calls.call("GET", ENDPOINT + query, account=dana)  # type: ignore[arg-type]
        assert answer.status == 200, answer.body
        pages += 1
        assert len(answer.body["cases"]) <= 2
        assert answer.body["total"] == (5 if after is None else None)
        got += answer.body["cases"]
        after = answer.body["next"]
        if after is None:
            break
    assert pages == 3
    order = [(c["day"], c["id"]) for c in got]
    assert order == sorted(order)
    assert len(set(order)) == len(order)
    assert {c["id"] for c in got} == mine
    # Each envelope is byte for byte what the single read serves.
    for case in got[:2]:
        single = await staff_calls.call("GET", f"/staff/v1/cases/{case['id']}/envelope", account=dana)  # type: ignore[arg-type]
        assert b64e(single.body) == case["envelope"]
    # erin sees erin's, never dana's, whatever cursor she passes.
    answer = await staff_calls.call("GET", ENDPOINT, account=erin)  # type: ignore[arg-type]
    assert {c["id"] for c in answer.body["cases"]} == theirs
    day = got[0]["day"]
    answer = await staff_calls.call("GET", f"{ENDPOINT}?after={day}.00000000", account=erin)  # type: ignore[arg-type]
    assert {c["id"] for c in answer.body["cases"]} <= theirs
    # Reading changed nothing and wrote no audit entry, like the single read.
    assert await staff.snapshot() == before


@pytest.mark.parametrize(
    "query",
    [
        "?after=nonsense",
        "?after=2026-13-01.abcdefgh",
        "?after=2026-01-01.short",
        "?after=2026-01-01." + "a" * 65,
        "?after=2026-01-01.abc%2Fdefgh",
        "?limit=0",
        "?limit=101",
        "?limit=-1",
        "?limit=ten",
        "?limit=1&limit=2",
        "?status=new",
    ],
)
async def test_bad_cursor_and_limit_are_refused(staff_calls: StaffCalls, query: str) -> None:
    dana, _ = await _two_handlers(staff_calls)
    answer = await staff_calls.call("GET", ENDPOINT + query, account=dana)  # type: ignore[arg-type]
    assert answer.status == 400, answer.body
    assert answer.body["error"]["code"] == "malformed_request"


async def test_sessions_are_checked_like_the_single_read(
    staff: StaffDeployment, staff_calls: StaffCalls, public_calls: Calls
) -> None:
    dana, _ = await _two_handlers(staff_calls)
    await new_case(staff, public_calls, owner="dana")
    assert (await staff_calls.call("GET", ENDPOINT)).status == 401
    bad = {"Authorization": "Bearer " + "A" * 43}
    assert (await staff_calls.call("GET", ENDPOINT, headers=bad)).status == 401
    admin = await staff_calls.enrol_and_login("root-admin", "admin")
    answer = await staff_calls.call("GET", ENDPOINT, account=admin)
    assert (answer.status, answer.body["error"]["code"]) == (403, "forbidden_role")
    assert (await staff_calls.call("GET", ENDPOINT, account=dana)).status == 200  # type: ignore[arg-type]
    # Idle past staff_idle_minutes: the session is over.
    staff.clock.advance(31 * 60)
    answer = await staff_calls.call("GET", ENDPOINT, account=dana)  # type: ignore[arg-type]
    assert (answer.status, answer.body["error"]["code"]) == (401, "unauthorized")


# --- the client: read-all with a real vault ------------------------------------------------------------------


async def _enrolled(sd: StaffDeployment, tmp_path: Path) -> HandlerPaths:
    dep = sd.dep
    paths, secrets = await enrol_with_client(sd, tmp_path)
    start = now_ts() - 3600
    handlers = tuple(dep.org.handler(h, p, start=start) for h, p in ROSTER.items())
    await sd.publish(dep.org.directory(2, handlers=(*handlers, listed(paths, ("general",)))))
    sd.clock.advance(30)
    await login(paths, password=PASSWORD, code=Totp(TotpSecret(secrets[0])).code_at(counter_at(sd.clock())))
    return paths


async def _contact(sd: StaffDeployment, message: str, attachments: tuple[Path, ...] = (), owner: str = "dana") -> str:
    dep = sd.dep
    async with IntakeClient(dep.base_url) as client:
        trusted = await fetch_trusted_directory(client, dep.org.admin_set.fingerprint(), None, now_ts())
        sent = await send_contact(
            client, trusted, pool="general", language="ru", message=message, fields={}, attachments=list(attachments)
        )
    async with dep.store.write() as session:
        await session.execute(update(ContactRow).where(ContactRow.id == sent.contact_id).values(owner=owner))
    return sent.contact_id


async def _corrupt(sd: StaffDeployment, case_id: str) -> None:
    async with sd.dep.store.write() as session:
        envelope = await session.scalar(select(ContactRow.envelope).where(ContactRow.id == case_id))
        assert envelope is not None
        bad = bytearray(envelope)
        bad[-5] ^= 1  # in the body's tag: it no longer authenticates
        await session.execute(update(ContactRow).where(ContactRow.id == case_id).values(envelope=bytes(bad)))


async def _all_rows(sd: StaffDeployment) -> bytes:
    out = b""
    async with sd.dep.store.read() as session:
        for table in Base.metadata.sorted_tables:
            for row in (await session.execute(select(table))).all():
                out += repr(tuple(row)).encode()
    return out


async def test_read_all_writes_every_case_and_names_the_bad_one(
    staff: StaffDeployment, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    paths = await _enrolled(staff, tmp_path)
    blob = os.urandom(E.CHUNK_DATA_MAX + 99)
    attachment = tmp_path / "lists.pdf"
    attachment.write_bytes(blob)
    plain = [await _contact(staff, f"{CANARY} #{i}") for i in range(4)]
    with_file = await _contact(staff, f"{CANARY} with a file", (attachment,))
    bad = await _contact(staff, f"{CANARY} corrupt")
    await _corrupt(staff, bad)
    # A case of another handler is not dana's to read.
    await _contact(staff, "someone else's", owner="alice")

    seen: list[tuple[int, int | None]] = []
    out = tmp_path / "out"
    done = await read_all(paths, PASSPHRASE, out, page_size=2, progress=lambda d, t: seen.append((d, t)))

    assert [f.case_id for f in done.failed] == [bad]
    assert "authenticat" in done.failed[0].problem or "decrypt" in done.failed[0].problem.lower()
    assert CANARY not in done.failed[0].problem
    assert {case_id for case_id, _ in done.written} == {*plain, with_file}
    assert seen[-1] == (6, 6)
    assert [d for d, _ in seen] == list(range(1, 7))
    for i, case_id in enumerate(plain):
        text = (out / f"{case_id}.txt").read_text(encoding="utf-8")
        assert f"  | {CANARY} #{i}" in text
        assert "the applicant's mailbox signature over the whole contact verifies" in text
    assert (out / with_file / "lists.pdf").read_bytes() == blob
    assert not (out / f"{bad}.txt").exists()
    # Nothing half-written: no temporary left, and the folder is private.
    assert not [p for p in out.rglob("*") if p.name.startswith(".safepassage-")]
    assert (out.stat().st_mode & 0o777) == 0o700

    # A second run never overwrites: each case gets "ID (2).txt".
    again = await read_all(paths, PASSPHRASE, out)
    assert {p.name for _, p in again.written} >= {f"{plain[0]} (2).txt"}
    assert (out / f"{plain[0]}.txt").read_text(encoding="utf-8") == (out / f"{plain[0]} (2).txt").read_text(
        encoding="utf-8"
    )

    assert CANARY not in caplog.text
    assert CANARY.encode() not in await _all_rows(staff)


async def test_read_all_command(
    staff: StaffDeployment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    paths = await _enrolled(staff, tmp_path)
    good = [await _contact(staff, f"{CANARY} {i}") for i in range(3)]
    bad = await _contact(staff, f"{CANARY} bad")
    await _corrupt(staff, bad)
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(str(PASSPHRASE))
    passphrase_file.chmod(0o600)
    out = tmp_path / "cases"
    args = ["handler", "read-all", "--out", str(out), "--vault", str(paths.vault)]
    args += ["--passphrase-file", str(passphrase_file)]
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # noqa: SIM115 - closed with the test
    code = await asyncio.to_thread(main, args)
    stdout, stderr = capsys.readouterr()
    assert code == 3, stderr
    assert f"error: case {bad}:" in stderr
    assert "Traceback" not in stderr
    assert "Wrote 3 case(s)" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{c}.txt" for c in good)
    for text in (stdout, stderr, caplog.text):
        assert CANARY not in text
        assert str(PASSPHRASE) not in text
