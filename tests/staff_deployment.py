"""The staff app for tests: real HTTP on another loopback port, on the same store as ``deployment``.

``staff`` serves ``create_staff_app`` next to the public intake of the
``deployment`` fixture (so on SQLite and on PostgreSQL), with an injected
clock that tests move instead of sleeping. ``StaffCalls`` checks every answer
against docs/openapi/staff.yaml and keeps every body it saw, so a test can
look for a canary in all of them.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import update

from safepassage.client.handler_vault import HandlerPaths
from safepassage.client.staff_api import StaffEnrolment
from safepassage.crypto import envelope as E
from safepassage.crypto.directory import Directory
from safepassage.crypto.intake import AttachmentInfo
from safepassage.crypto.keys import SigningKey, VerifyKey
from safepassage.server.context import INTAKE
from safepassage.server.db.models import Contact
from safepassage.server.staff.accounts import create_invitation
from safepassage.server.staff.app import create_staff_app
from safepassage.server.staff.context import STAFF, Staff
from safepassage.server.staff.totp import Totp, TotpSecret, counter_at

from .deployment import Deployment, now_ts
from .helpers import hybrid_key, signing_key
from .intake_calls import Answer, Applicant, Calls
from .openapi import check_response

PASSWORD = "correct horse battery staple"


class FakeClock:
    """Unix seconds that only move when a test says so."""

    def __init__(self, start: float) -> None:
        self.t = float(start)

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class StaffDeployment:
    dep: Deployment
    clock: FakeClock
    base_url: str
    app: web.Application

    @property
    def state(self) -> Staff:
        return self.app[STAFF]

    async def refresh(self) -> None:
        """Both front ends pick up a publication (as their periodic refresh would)."""
        await self.dep.app[INTAKE].refresh()
        await self.state.refresh()

    async def publish(
        self,
        directory: Directory,
        *,
        signers: Sequence[SigningKey] | None = None,
        next_receipt_key: VerifyKey | None = None,
    ) -> None:
        await self.dep.publish(directory, signers=signers, next_receipt_key=next_receipt_key)
        await self.refresh()

    async def invitation(self, username: str, role: str = "handler") -> str:
        code, _ = await create_invitation(
            self.dep.store,
            username=username,
            role=role,
            now=int(self.clock()),
            day=self.state.today(),
            actor="operator",
            audit_key=self.dep.keys.receipt,
        )
        return code

    async def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        return await self.dep.snapshot()


@dataclass
class Account:
    """A staff member: what they know (password) and hold (the TOTP secret in their app)."""

    username: str
    role: str
    password: str
    secret: TotpSecret
    last: int = 0
    token: str | None = None

    def code(self, now: float) -> str:
        """A code the server has not seen yet: the oldest step still in the window after the last one used."""
        counter = max(counter_at(now) - 1, self.last + 1)
        if counter > counter_at(now) + 1:
            raise AssertionError("no fresh code in the window: advance the clock")
        self.last = counter
        return Totp(self.secret).code_at(counter)

    def auth(self) -> dict[str, str]:
        assert self.token is not None
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class StaffCalls:
    base: str
    session: aiohttp.ClientSession
    sd: StaffDeployment
    seen: list[bytes] = field(default_factory=list)

    async def call(
        self, method: str, path: str, *, account: Account | None = None, check: bool = True, **kwargs: Any
    ) -> Answer:
        headers = dict(kwargs.pop("headers", {}) or {})
        if account is not None and account.token is not None:
            headers.setdefault("Authorization", f"Bearer {account.token}")
        async with self.session.request(method, self.base + path, headers=headers, **kwargs) as response:
            raw = await response.read()
            self.seen.append(raw)
            body = json.loads(raw) if response.content_type == "application/json" else raw
            if check:
                check_response("staff", method, path.split("?", maxsplit=1)[0], response.status, body)
            return Answer(response.status, body, dict(response.headers))

    async def enrol(self, username: str, role: str = "handler", password: str = PASSWORD) -> Account:
        code = await self.sd.invitation(username, role)
        answer = await self.call("POST", "/staff/v1/enroll", json={"invitation": code, "password": password})
        assert answer.status == 201, answer.body
        account = Account(username, role, password, TotpSecret(answer.body["totp_secret"]))
        confirmed = await self.call(
            "POST", "/staff/v1/enroll/confirm", json={"invitation": code, "code": account.code(self.sd.clock())}
        )
        assert confirmed.status == 200, confirmed.body
        return account

    def fresh_code(self, account: Account) -> str:
        """A code not used yet; three fit in the window, after that time passes (the fake clock moves)."""
        while account.last >= counter_at(self.sd.clock()) + 1:
            self.sd.clock.advance(30)
        return account.code(self.sd.clock())

    async def login(self, account: Account, *, password: str | None = None, code: str | None = None) -> Answer:
        answer = await self.call(
            "POST",
            "/staff/v1/login",
            json={
                "username": account.username,
                "password": account.password if password is None else password,
                "code": self.fresh_code(account) if code is None else code,
            },
        )
        if answer.status == 201:
            account.token = answer.body["token"]
        return answer

    async def enrol_and_login(self, username: str, role: str = "handler") -> Account:
        account = await self.enrol(username, role)
        answer = await self.login(account)
        assert answer.status == 201, answer.body
        return account


@pytest.fixture
async def staff(deployment: Deployment) -> AsyncIterator[StaffDeployment]:
    clock = FakeClock(now_ts())
    app = create_staff_app(deployment.config, store=deployment.store, clock=clock)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield StaffDeployment(deployment, clock, f"http://{host}:{port}", app)
    finally:
        await runner.cleanup()


@pytest.fixture
async def staff_calls(staff: StaffDeployment) -> AsyncIterator[StaffCalls]:
    async with aiohttp.ClientSession() as session:
        yield StaffCalls(staff.base_url, session, staff)


@pytest.fixture
async def public_calls(deployment: Deployment) -> AsyncIterator[Calls]:
    async with aiohttp.ClientSession() as session:
        yield Calls(deployment.base_url, session)


# --- cases, made through the real public intake ---------------------------------------------------------


def add_handlers(dep: Deployment, *ids: str) -> None:
    """Give the test organisation more handlers (keys only; a directory must still list them)."""
    for hid in ids:
        dep.org.identities.setdefault(hid, signing_key(f"identity-{hid}"))
        dep.org.intake.setdefault(hid, hybrid_key(f"intake-{hid}"))


def roster_directory(dep: Deployment, version: int, roster: dict[str, tuple[str, ...]]) -> Directory:
    start = now_ts() - 3600
    return dep.org.directory(version, handlers=tuple(dep.org.handler(h, p, start=start) for h, p in roster.items()))


async def new_case(
    sd: StaffDeployment,
    intake: Calls,
    *,
    owner: str,
    pool: str = "general",
    blob: bytes | None = None,
    message: str | None = None,
) -> tuple[str, Applicant]:
    """A complete contact submitted through the public API, then assigned to ``owner``."""
    dep = sd.dep
    applicant = Applicant()
    keys = [key for _, key in dep.directory.recipients(pool, now_ts())]
    infos = (AttachmentInfo("notes.bin", "application/octet-stream", len(blob), 1),) if blob is not None else ()
    payload = applicant.contact(pool, attachments=infos) if message is None else applicant.contact(pool, message, infos)
    sealed = E.seal(payload, keys, E.Purpose.CONTACT)
    count = len(infos)
    headers = applicant.submission_headers(sealed.data, pool, count, await intake.pow_header())
    answer = await intake.call(
        "POST", f"/api/v1/contacts?pool={pool}&attachments={count}", data=sealed.data, headers=headers
    )
    assert answer.status == 201, answer.body
    case_id = answer.body["contact"]
    if blob is not None:
        token = answer.body["upload_token"]
        for i, frame in enumerate(sealed.attachment_sealer(0).seal_stream(io.BytesIO(blob))):
            up = await intake.call(
                "PUT",
                f"/api/v1/contacts/{case_id}/attachments/0/chunks/{i}",
                data=frame,
                headers={"Safe-Passage-Upload": token, "Content-Type": "application/octet-stream"},
            )
            assert up.status == 201, up.body
        done = await intake.call("POST", f"/api/v1/contacts/{case_id}/finalise", headers={"Safe-Passage-Upload": token})
        assert done.status == 200, done.body
    async with dep.store.write() as session:
        await session.execute(update(Contact).where(Contact.id == case_id).values(owner=owner))
    return case_id, applicant


async def enrol_with_client(
    sd: StaffDeployment, tmp_path: Path, name: str = "dana", **options: Any
) -> tuple[HandlerPaths, list[str]]:
    """``name`` enrolled by the real handler client (vault at the floor cost) with an invitation
    from ``sd``; returns the vault's paths and the TOTP secrets the server showed (the last is
    the account's). ``options`` go to :func:`safepassage.client.handler.enroll`."""
    from safepassage.client.handler import enroll

    from .handler_env import FLOOR, PASSPHRASE, PASSWORD

    home = tmp_path / name
    home.mkdir(mode=0o700, exist_ok=True)
    paths = HandlerPaths(home / f"{name}.vault")
    secrets: list[str] = []

    def code(answer: StaffEnrolment) -> str:
        secrets.append(answer.totp_secret.reveal())
        return Totp(TotpSecret(secrets[-1])).code_at(counter_at(sd.clock()))

    await enroll(
        staff=sd.base_url,
        invitation=await sd.invitation(name),
        password=PASSWORD,
        vault=paths.vault,
        passphrase=PASSPHRASE,
        intake=sd.dep.base_url,
        org=sd.dep.org.admin_set.fingerprint(),
        totp_code=code,
        **{**FLOOR, **options},
    )
    return paths, secrets
