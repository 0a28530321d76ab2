"""The whole flow over real onion services on the private Tor network.

The public intake, the staff app and the integration service each publish
their own onion through the service tor with the same wiring ``server run``,
``staff run`` and ``integration run`` use (``publish_*_onion``). The applicant
uses a tor with no client keys; the handler a tor whose ClientOnionAuthDir
holds its key, which the staff server admitted from the invitation. The
directory names the three onions; every client checks the address it reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from aiohttp import web
from sqlalchemy import select, update

from safepassage.client.applicant import check_mailbox, send_contact
from safepassage.client.errors import OnionAuthRequired, OnionMismatch, ServerUnreachable
from safepassage.client.handler import enroll, escalate, inbox, login, read_case, reply
from safepassage.client.handler_vault import HandlerPaths
from safepassage.client.intake_api import IntakeClient
from safepassage.client.onion import OnionClientKey
from safepassage.client.staff_api import StaffEnrolment
from safepassage.client.transport import Transport
from safepassage.client.trust import fetch_trusted_directory
from safepassage.crypto import envelope as E
from safepassage.crypto.directory import Directory
from safepassage.server import tor
from safepassage.server.app import create_app
from safepassage.server.cli import publish_public_onion
from safepassage.server.context import INTAKE
from safepassage.server.db.models import Base, EscalationRecord
from safepassage.server.db.models import Contact as ContactRow
from safepassage.server.integration.app import create_integration_app
from safepassage.server.integration.config import publish_integration_onion
from safepassage.server.integration.context import INTEGRATION
from safepassage.server.integration.models import IntegrationBase, Package
from safepassage.server.staff import onion_clients
from safepassage.server.staff.accounts import create_invitation
from safepassage.server.staff.app import create_staff_app
from safepassage.server.staff.cli import publish_staff_onion
from safepassage.server.staff.context import STAFF
from safepassage.server.staff.totp import Totp, TotpSecret, counter_at

from .deployment import Deployment, now_ts
from .handler_env import FLOOR, PASSPHRASE, PASSWORD, listed
from .integration_service import Integration
from .staff_deployment import FakeClock
from .tornet import TorNet

pytestmark = [pytest.mark.timeout(300), pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

CANARY = "canary-tor-41c9: я майор, списки при мне"
NOTE = "canary-tor-note-7: verified in person"
ROSTER = {"alice": ("general",), "bob": ("general", "science"), "carol": ("general",)}
#: The test's measurements, printed at the end (pytest -s) and used by the report.
TIMINGS: dict[str, float] = {}


@dataclass
class Onions:
    dep: Deployment
    net: TorNet
    clock: FakeClock
    public: str
    staff: str
    integration: str
    integration_app: web.Application
    staff_app: web.Application
    public_port: int
    public_app: web.Application
    #: dana's invitation code (made with her onion key, before the staff onion came up)
    invitation: str

    async def publish(self, directory: Directory, timestamp: int) -> None:
        """Publish, and have our front ends pick it up now (their housekeeping would within 30 s)."""
        await self.dep.publish(directory, timestamp=timestamp)
        await self.public_app[INTAKE].refresh()
        await self.dep.app[INTAKE].refresh()  # where the integration service reads the directory
        await self.staff_app[STAFF].refresh()
        await self.integration_app[INTEGRATION].keeper.refresh()

    def url(self, role: str) -> str:
        return f"http://{getattr(self, role)}"


def _listening() -> socket.socket:
    """A bound socket, kept until the app serves on it (a port number alone could be taken meanwhile)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


async def _serve(app: web.Application, sock: socket.socket, stack: contextlib.AsyncExitStack) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()  # cleanup_ctx runs here: the onion is published before we accept
    stack.push_async_callback(runner.cleanup)
    await web.SockSite(runner, sock).start()


@contextlib.asynccontextmanager
async def onion_apps(
    dep: Deployment, integration: Integration, net: TorNet, handler_key: OnionClientKey
) -> AsyncIterator[Onions]:
    control = f"127.0.0.1:{net.service.control_port}"
    socks = {name: _listening() for name in ("public", "staff", "integration")}
    config = replace(
        dep.config,
        tor_control=control,
        port=socks["public"].getsockname()[1],
        staff_port=socks["staff"].getsockname()[1],
        onion_pow=1,
        onion_pow_queue_rate=50,
        onion_pow_queue_burst=500,
        tor_health_seconds=1,
    ).validate()
    clock = FakeClock(now_ts())
    # The invitation carries dana's onion key, as `staff invite --onion-key` stores it: the
    # staff onion admits a key only while its invitation is live (or the account is active).
    invitation, _ = await create_invitation(
        dep.store,
        username="dana",
        role="handler",
        now=int(clock()),
        day=dt.datetime.fromtimestamp(clock(), dt.UTC).date(),
        actor="operator",
        audit_key=dep.keys.receipt,
    )
    onion_clients.register(config.onion_clients_dir, "dana", tor.ClientKey.parse(handler_key.public_base32()))
    icfg = replace(
        integration.config, tor_control=control, port=socks["integration"].getsockname()[1], tor_health_seconds=1
    ).validate()
    icfg.onion_clients_dir.mkdir(mode=0o700)
    shutil.copy(config.onion_clients_dir / "dana.auth", icfg.onion_clients_dir / "dana.auth")
    async with contextlib.AsyncExitStack() as stack:
        public_app = create_app(config, store=dep.store)
        publish_public_onion(public_app, config)
        staff_app = create_staff_app(config, store=dep.store, clock=clock)
        publish_staff_onion(staff_app, config, store=dep.store)
        integration_app = create_integration_app(icfg, store=integration.store)
        publish_integration_onion(integration_app, icfg)
        await _serve(public_app, socks["public"], stack)
        await _serve(staff_app, socks["staff"], stack)
        await _serve(integration_app, socks["integration"], stack)
        yield Onions(
            dep,
            net,
            clock,
            public_app[tor.ONIONS].address("public"),
            staff_app[tor.ONIONS].address("staff"),
            integration_app[tor.ONIONS].address("integration"),
            integration_app,
            staff_app,
            config.port,
            public_app,
            invitation,
        )


async def _retry(make: object, *, seconds: float = 90.0) -> object:
    """The first request to a fresh onion may fail while its descriptor spreads: retry, bounded."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await make()  # type: ignore[operator]
        except OnionAuthRequired:
            raise
        except ServerUnreachable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)


async def test_applicant_handler_and_escalation_over_onions(
    deployment: Deployment, integration: Integration, tor_network: TorNet, tmp_path: Path
) -> None:
    dep = deployment
    org = dep.org.admin_set.fingerprint()
    home = tmp_path / "dana"
    home.mkdir(mode=0o700)
    paths = HandlerPaths(home / "dana.vault")
    handler_key, _ = OnionClientKey.load_or_create(paths.onion_key)
    applicant_socks = tor_network.applicant.socks_url()
    handler_socks = tor_network.handler.socks_url()

    async with onion_apps(dep, integration, tor_network, handler_key) as o:
        start = now_ts() - 3600
        handlers = tuple(dep.org.handler(h, p, start=start) for h, p in ROSTER.items())
        onions = {"public": o.public, "staff": o.staff, "integration": o.integration}
        await o.publish(dep.org.directory(2, handlers=handlers, onions=onions), 1_700_000_150)
        for role in ("staff", "integration"):
            handler_key.install(tor_network.handler_auth_dir, getattr(o, role), f"safepassage-{role}")
        tor_network.reload_handler_auth()

        # --- the applicant, over the public onion ---
        blob = os.urandom(E.CHUNK_DATA_MAX + 777)
        attachment = tmp_path / "list.pdf"
        attachment.write_bytes(blob)

        async def first_directory() -> object:
            async with IntakeClient(o.url("public"), socks=applicant_socks) as client:
                return await fetch_trusted_directory(client, org, None, now_ts())

        started = time.monotonic()
        await _retry(first_directory)
        TIMINGS["first_directory_fetch_s"] = time.monotonic() - started
        async with IntakeClient(o.url("public"), socks=applicant_socks) as client:
            started = time.monotonic()
            trusted = await fetch_trusted_directory(client, org, None, now_ts())
            TIMINGS["warm_directory_fetch_s"] = time.monotonic() - started
            assert trusted.directory.onions == onions

        # --- a client without a key cannot even reach the staff onion ---
        async def staff_without_key() -> object:
            async with Transport(o.url("staff"), "/staff/v1", socks=applicant_socks) as t:
                return await t.call("GET", t.url("cases"), expect=(200,), want="json", limit=1000)

        with pytest.raises(OnionAuthRequired):
            await _retry(staff_without_key)

        # --- the handler, over the staff onion with its client key ---
        secrets: list[str] = []

        def code(answer: StaffEnrolment) -> str:
            secrets.append(answer.totp_secret.reveal())
            return Totp(TotpSecret(secrets[-1])).code_at(counter_at(o.clock()))

        async def enrol() -> object:
            return await enroll(
                staff=o.url("staff"),
                invitation=o.invitation,
                password=PASSWORD,
                vault=paths.vault,
                passphrase=PASSPHRASE,
                intake=o.url("public"),
                org=org,
                totp_code=code,
                socks=handler_socks,
                **FLOOR,
            )

        await _retry(enrol)
        await o.publish(
            dep.org.directory(3, handlers=(*handlers, listed(paths, ("general",))), onions=onions), 1_700_000_200
        )
        async with IntakeClient(o.url("public"), socks=applicant_socks) as client:
            trusted = await fetch_trusted_directory(client, org, None, now_ts())
            started = time.monotonic()
            sent = await send_contact(
                client,
                trusted,
                pool="general",
                language="ru",
                message=CANARY,
                fields={"role": "major"},
                attachments=[attachment],
            )
            TIMINGS["contact_with_attachment_s"] = time.monotonic() - started
        async with dep.store.write() as session:
            await session.execute(update(ContactRow).where(ContactRow.id == sent.contact_id).values(owner="dana"))

        o.clock.advance(30)
        totp = Totp(TotpSecret(secrets[0])).code_at(counter_at(o.clock()))
        await login(paths, password=PASSWORD, code=totp, socks=handler_socks)
        [case] = await inbox(paths, socks=handler_socks)
        assert case.case_id == sent.contact_id
        reading = await read_case(paths, PASSPHRASE, case.case_id, tmp_path / "out", socks=handler_socks)
        assert reading.contact.message == CANARY
        assert (tmp_path / "out" / "list.pdf").read_bytes() == blob
        posted = await reply(paths, PASSPHRASE, case.case_id, "Принято.", socks=handler_socks)

        async def escalation() -> object:
            return await escalate(
                paths, PASSPHRASE, case.case_id, NOTE, integration=o.url("integration"), socks=handler_socks
            )

        done = await _retry(escalation)
        async with dep.store.read() as session:
            assert await session.get(EscalationRecord, done.package_id) is not None  # type: ignore[attr-defined]
        async with integration.store.read() as session:
            package = await session.get(Package, done.package_id)  # type: ignore[attr-defined]
        assert package is not None
        assert package.state == "complete"

        # --- the applicant reads the reply over the public onion ---
        async with IntakeClient(o.url("public"), socks=applicant_socks) as client:
            trusted = await fetch_trusted_directory(client, org, None, now_ts())
            [got] = await check_mailbox(client, trusted, sent.codename)
        assert (got.message_id, got.text) == (posted.message_id, "Принято.")

        # --- an address the directory does not name (a phishing copy of the site) is refused ---
        copy = tor.OnionPublisher(
            tor.ControlTarget.parse(f"127.0.0.1:{tor_network.service.control_port}").connect,
            [
                tor.public_spec(
                    tmp_path / "phish.key", "127.0.0.1", o.public_port, pow_defense=False, queue_rate=1, queue_burst=1
                )
            ],
        )
        try:
            phish = (await asyncio.to_thread(copy.publish, await_publication=True))["public"].address

            async def via_copy() -> object:
                async with IntakeClient(f"http://{phish}", socks=applicant_socks) as client:
                    return await fetch_trusted_directory(client, org, None, now_ts())

            with pytest.raises(OnionMismatch, match=o.public):
                await _retry(via_copy)
            # The same copy offered to the handler as "the staff onion": refused before a password or
            # TOTP code goes anywhere (the check reads the verified directory over the public onion).
            with pytest.raises(OnionMismatch, match=o.staff):
                await login(paths, password=PASSWORD, code="000000", staff=f"http://{phish}", socks=handler_socks)
        finally:
            await asyncio.to_thread(copy.close)

    # Nothing readable in either database.
    for text in (CANARY, NOTE, "Принято"):
        needle = text.encode()
        for store, meta in ((dep.store, Base.metadata), (integration.store, IntegrationBase.metadata)):
            async with store.read() as session:
                for table in meta.sorted_tables:
                    for row in (await session.execute(select(table))).all():
                        assert needle not in repr(tuple(row)).encode()
    print("\nonion timings:", {k: round(v, 3) for k, v in TIMINGS.items()})
