"""A real integration service for tests, beside a real intake (tests/deployment.py).

``integration`` builds a data folder the way ``integration init`` does (config,
a 0600 signing key, a migrated database of its own: SQLite in the folder, or a
second fresh PostgreSQL database when the intake runs on PostgreSQL), and
serves ``create_integration_app`` on 127.0.0.1. The service fetches and
verifies the directory from the running intake, as in production.

``build_package`` makes what a handler's client delivers: an applicant's signed
contact with a follow-up and a handler's reply, wrapped in a signed escalation,
sealed to the directory's integration keys, attachments as chunk frames, and
the delivery signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import io
import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select

from safepassage.crypto import envelope as E
from safepassage.crypto.directory import Directory
from safepassage.crypto.encoding import b64e
from safepassage.crypto.intake import AttachmentInfo, FollowUp, attachment_chunk_count
from safepassage.crypto.keys import HybridPublicKey, SigningKey
from safepassage.crypto.staffmsg import Escalation, Reply, sign_delivery
from safepassage.server.config import write_config
from safepassage.server.context import INTAKE
from safepassage.server.db.engine import Store, make_engine
from safepassage.server.integration import create_integration_app, migrate
from safepassage.server.integration.config import IntegrationConfig, load_integration_config
from safepassage.server.integration.context import INTEGRATION, IntegrationService
from safepassage.server.integration.directory import DirectorySource
from safepassage.server.integration.keys import save_signing_key
from safepassage.server.integration.models import IntegrationBase

from .deployment import Deployment
from .helpers import Org
from .intake_calls import Answer, Applicant, Calls
from .pg import PgServer, fresh_database

CANARY = "canary-3b9e41: я инженер на объекте и готов передать чертежи"
ASSESSMENT = "Credible: details match two earlier cases. Urgent."


@dataclass
class BuiltPackage:
    package_id: str
    handler: str
    contact_id: str
    sealed: E.SealedEnvelope
    frames: list[list[bytes]]
    signature: bytes
    files: list[bytes]
    names: list[str]

    @property
    def envelope(self) -> bytes:
        return self.sealed.data

    def headers(self, **changes: str) -> dict[str, str]:
        headers = {
            "Content-Type": "application/octet-stream",
            "Safe-Passage-Handler": self.handler,
            "Safe-Passage-Package": self.package_id,
            "Safe-Passage-Signature": b64e(self.signature),
        }
        headers.update(changes)
        return {k: v for k, v in headers.items() if v}


def new_id() -> str:
    return secrets.token_urlsafe(12)


def build_package(
    org: Org,
    directory: Directory,
    *,
    handler: str = "alice",
    files: Sequence[bytes] = (),
    names: Sequence[str] | None = None,
    message: str = CANARY,
    package_id: str | None = None,
    purpose: E.Purpose = E.Purpose.ESCALATION,
    recipients: Sequence[HybridPublicKey] | None = None,
    delivery_signer: SigningKey | None = None,
    escalation_signer: str | None = None,
    escalation_handler: str | None = None,
) -> BuiltPackage:
    applicant = Applicant()
    contact_id = new_id()
    package_id = package_id or new_id()
    names = list(names) if names is not None else [f"file-{i}.bin" for i in range(len(files))]
    infos = tuple(
        AttachmentInfo(name, "application/octet-stream", len(data), attachment_chunk_count(len(data)))
        for name, data in zip(names, files, strict=True)
    )
    contact = applicant.contact(pool="general", message=message, attachments=infos)
    mailbox = applicant.keys.mailbox_key
    follow_up = FollowUp(contact_id, f"follow-up: {message}", mailbox.verify_key).seal_payload(mailbox)
    signer_id = escalation_signer or handler
    reply = Reply(contact_id, signer_id, "We read you. Stay where you are.").seal_payload(org.identities[signer_id])
    escalation = Escalation(
        package_id=package_id,
        contact_id=contact_id,
        handler_id=escalation_handler or signer_id,
        pool="general",
        day=dt.datetime.now(dt.UTC).date().isoformat(),
        contact=contact,
        follow_ups=(follow_up,),
        replies=(reply,),
        assessment=ASSESSMENT,
    ).seal_payload(org.identities[signer_id])
    sealed = E.seal(escalation, list(recipients or directory.integration.encryption_keys), purpose)
    frames = [list(sealed.attachment_sealer(i).seal_stream(io.BytesIO(data))) for i, data in enumerate(files)]
    signature = sign_delivery(
        delivery_signer or org.identities[handler],
        handler_id=handler,
        package_id=package_id,
        envelope=sealed.data,
        attachments=len(files),
    )
    return BuiltPackage(package_id, handler, contact_id, sealed, frames, signature, list(files), names)


@dataclass
class Integration:
    deployment: Deployment
    config: IntegrationConfig
    store: Store
    app: web.Application
    base_url: str
    session: aiohttp.ClientSession
    calls: Calls = field(init=False)

    def __post_init__(self) -> None:
        self.calls = Calls(self.base_url, self.session, api="integration")

    @property
    def org(self) -> Org:
        return self.deployment.org

    @property
    def service(self) -> IntegrationService:
        return self.app[INTEGRATION]

    async def publish(self, directory: Directory) -> None:
        """The admins publish ``directory``; the intake serves it and the service's next refresh sees it."""
        await self.deployment.publish(directory)
        await self.deployment.app[INTAKE].refresh()
        await self.service.keeper.refresh()

    def package(self, **kwargs: Any) -> BuiltPackage:
        return build_package(self.org, self.deployment.directory, **kwargs)

    async def post(
        self, pkg: BuiltPackage, *, body: bytes | None = None, attachments: int | None = None, **headers: str
    ) -> Answer:
        n = len(pkg.frames) if attachments is None else attachments
        return await self.calls.call(
            "POST",
            f"/integration/v1/packages?attachments={n}",
            data=pkg.envelope if body is None else body,
            headers=pkg.headers(**headers),
        )

    async def put_chunk(
        self, pkg: BuiltPackage, token: str, attachment: int, index: int, frame: bytes | None = None
    ) -> Answer:
        return await self.calls.call(
            "PUT",
            f"/integration/v1/packages/{pkg.package_id}/attachments/{attachment}/chunks/{index}",
            data=pkg.frames[attachment][index] if frame is None else frame,
            headers={"Content-Type": "application/octet-stream", "Safe-Passage-Upload": token},
        )

    async def finalise(self, pkg: BuiltPackage, token: str) -> Answer:
        return await self.calls.call(
            "POST", f"/integration/v1/packages/{pkg.package_id}/finalise", headers={"Safe-Passage-Upload": token}
        )

    async def deliver(self, pkg: BuiltPackage) -> dict[str, Any]:
        """The whole delivery; returns the receipt JSON."""
        answer = await self.post(pkg)
        assert answer.status == 201, answer.body
        if not pkg.frames:
            assert answer.body["status"] == "complete"
            return dict(answer.body["receipt"])
        token = answer.body["upload_token"]
        for a, frames in enumerate(pkg.frames):
            for i in range(len(frames)):
                chunk = await self.put_chunk(pkg, token, a, i)
                assert chunk.status == 201, chunk.body
        done = await self.finalise(pkg, token)
        assert done.status == 200, done.body
        return dict(done.body["receipt"])

    async def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table of the service's database."""
        out: dict[str, list[tuple[Any, ...]]] = {}
        async with self.store.read() as session:
            for table in IntegrationBase.metadata.sorted_tables:
                rows = (await session.execute(select(table))).all()
                out[table.name] = sorted((tuple(r) for r in rows), key=repr)
        return out


@contextlib.contextmanager
def integration_database(request: pytest.FixtureRequest, database_url: str) -> Iterator[str]:
    """The service's own database: "" (SQLite in its folder), or a second PostgreSQL database."""
    if not database_url:
        yield ""
        return
    server: PgServer = request.getfixturevalue("pg_server")
    with fresh_database(server) as url:
        yield url


@contextlib.asynccontextmanager
async def serving(
    config: IntegrationConfig, deployment: Deployment, *, source: DirectorySource | None = None
) -> AsyncIterator[Integration]:
    store = Store(make_engine(config.url))
    app = create_integration_app(config, store=store, directory_source=source)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as session:
            yield Integration(deployment, config, store, app, f"http://{host}:{port}", session)
    finally:
        await runner.cleanup()
        await store.close()


@contextlib.asynccontextmanager
async def own_service(
    deployment: Deployment,
    database_url: str,
    data_dir: Path,
    request: pytest.FixtureRequest,
    source: DirectorySource | None = None,
    **changes: Any,
) -> AsyncIterator[Integration]:
    """A service with a fresh data folder and database, serving until the block ends."""
    data_dir.mkdir(mode=0o700)
    with integration_database(request, database_url) as url:
        # config.toml as init writes it, so the commands (run, inbox, read) find the same settings.
        settings = {"org_fingerprint": deployment.org.admin_set.fingerprint(), "intake_url": deployment.base_url}
        write_config(data_dir, **settings, **({"database_url": url} if url else {}))
        config = load_integration_config(data_dir, **changes)
        # The test organisation's fixed integration signing key, as the directory lists it.
        save_signing_key(config.keys_dir, deployment.org.integration_signing)
        await asyncio.to_thread(migrate.upgrade, config.url)
        async with serving(config, deployment, source=source) as service:
            yield service


@pytest.fixture
async def integration(
    deployment: Deployment, database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Integration]:
    async with own_service(deployment, database_url, tmp_path / "integration", request) as service:
        yield service


@pytest.fixture
def start_service(
    deployment: Deployment, database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[..., contextlib.AbstractAsyncContextManager[Integration]]:
    """``async with start_service(source, **settings) as integration``: a service set up as the test needs."""
    return functools.partial(own_service, deployment, database_url, tmp_path / "integration", request)
