"""``safepassage demo``: the whole flow on this machine, over real HTTP on loopback, on SQLite.

A DEMONSTRATION: every key here is fresh and thrown away, the passphrases are
written next to their vaults (labelled DEMO ONLY), and everything runs in one
process on 127.0.0.1. It uses the real library functions and the real apps:

* three admins (2 of 3 must sign) keep their signing keys in vaults and sign
  the directory and the tree heads of its log;
* ``server init`` and ``integration init`` make the server's and the
  integration service's folders, keys and databases;
* two handlers enrol with invitations and TOTP, and are listed in the "general" pool;
* an applicant sends a contact with an attachment; the owner handler logs in,
  reads and replies; the applicant reads the reply with the codename; the
  handler escalates; the integration officer reads the package;
* finally: what the server holds for the case, and that neither the server's
  nor the integration service's folder holds the applicant's text.

Each party keeps its state in its own subfolder of the work folder:
``server/``, ``integration/``, ``handlers/<name>/``, ``admins/<name>/``, ``applicant/``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, TypeVar

import click
import pyotp
from aiohttp import web
from sqlalchemy import func, select

from safepassage.crypto.directory import (
    Handler,
    IntegrationService,
    Pool,
)
from safepassage.crypto.keys import VerifyKey
from safepassage.crypto.privatefile import write_private
from safepassage.crypto.threshold import KeySet
from safepassage.crypto.vault import MIN_MEMLIMIT, MIN_OPSLIMIT, Passphrase
from safepassage.server.app import create_app
from safepassage.server.cli import publish_public_onion
from safepassage.server.config import ServerConfig, load_config, write_config
from safepassage.server.context import INTAKE
from safepassage.server.db import migrate
from safepassage.server.db.engine import Store, make_engine
from safepassage.server.db.models import Chunk
from safepassage.server.db.models import Contact as ContactRow
from safepassage.server.integration import create_integration_app
from safepassage.server.integration.bootstrap import init_data_dir, plan_init
from safepassage.server.integration.config import (
    IntegrationConfig,
    load_integration_config,
    publish_integration_onion,
)
from safepassage.server.integration.directory import IntakeDirectorySource
from safepassage.server.integration.keys import open_officer_keys
from safepassage.server.keys import create_keys
from safepassage.server.staff.accounts import create_invitation
from safepassage.server.staff.app import create_staff_app
from safepassage.server.staff.cli import publish_staff_onion
from safepassage.server.staff.context import STAFF
from safepassage.server.staff.onion_clients import register
from safepassage.server.tor import ClientKey, OnionKey, write_client_key
from safepassage.server.tornet import TorNet, TorNetError, build

from .admin import create_admin_vault, enroll_admin
from .admin import invite as admin_invite
from .admin import login as admin_login
from .admin import propose as admin_propose
from .admin import publish as admin_publish
from .admin import sign as admin_sign
from .applicant import SentContact, check_mailbox, send_contact
from .directory_changes import Changes
from .errors import OnionAuthRequired, ServerUnreachable
from .handler import enroll, escalate, inbox, login, read_case, reply
from .handler_vault import HandlerPaths, read_enrolment_document
from .intake_api import IntakeClient
from .officer import complete_package, read_package
from .onion import OnionClientKey
from .staff_api import StaffEnrolment
from .trust import fetch_trusted_directory

ADMINS: Final = ("ada", "bram", "cleo")
THRESHOLD: Final = 2
HANDLERS: Final = ("dana", "emil")
POOL: Final = "general"
ADMIN_ENTRY: Final = "admin-signing-key"
DEFAULT_MESSAGE: Final = (
    "I am a ministry engineer with the plant drawings. I want to leave with my family. "
    "Quietly, please: marmalade-heron-4471."
)
REPLY_TEXT: Final = "We have your message and will write again within two days. Do not carry the drawings. (demo)"
NOTE: Final = "Demo assessment: consistent story, asks for a family plan. (demo)"
DEMO_LABEL: Final = "DEMO ONLY: a real passphrase is never written next to its vault.\n"

Echo = Callable[[str], None]


class DemoFailed(click.ClickException):
    """The demonstration found plaintext where there must be none."""

    exit_code = 1


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=False)
    return path


def _new_passphrase() -> Passphrase:
    return Passphrase("demo-only " + secrets.token_urlsafe(24))


def _write_demo_passphrase(path: Path, passphrase: Passphrase) -> None:
    write_private(path, (DEMO_LABEL + passphrase + "\n").encode(), replace=False)


def _read_demo_passphrase(path: Path) -> Passphrase:
    return Passphrase(path.read_text(encoding="utf-8").splitlines()[1])


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


async def _serve(stack: AsyncExitStack, app: web.Application, sock: socket.socket) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await web.SockSite(runner, sock).start()


@dataclass
class _Admin:
    """One admin: a vault with the signing key, and what they know (kept in memory, never printed)."""

    paths: HandlerPaths
    passphrase: Passphrase
    password: str
    totp_secret: str = ""


def _make_admins(root: Path) -> tuple[dict[str, _Admin], KeySet]:
    admins: dict[str, _Admin] = {}
    verify_keys: list[VerifyKey] = []
    for name in ADMINS:
        folder = _private_dir(root / name)
        passphrase = _new_passphrase()
        paths = HandlerPaths(folder / "admin.vault")
        key = create_admin_vault(paths.vault, passphrase, opslimit=MIN_OPSLIMIT, memlimit=MIN_MEMLIMIT)
        _write_demo_passphrase(folder / "DEMO-ONLY-passphrase.txt", passphrase)
        admins[name] = _Admin(paths, passphrase, secrets.token_urlsafe(18))
        verify_keys.append(key)
    return admins, KeySet(tuple(verify_keys), THRESHOLD)


def _files(root: Path, skip: Sequence[Path] = ()) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(path.is_relative_to(s) for s in skip):
            yield path


def _needles(message: str) -> list[tuple[str, bytes]]:
    words = sorted((w.strip(".,;:!?()\"'") for w in message.split()), key=len, reverse=True)
    found = [("the applicant's message", message.encode())]
    if words and len(words[0]) >= 4:
        found.append((f"the word {words[0]!r} from it", words[0].encode()))
    found.append(("the handler's reply", REPLY_TEXT.encode()))
    found.append(("the handler's assessment", NOTE.encode()))
    return found


class _Steps:
    def __init__(self, echo: Echo) -> None:
        self.echo = echo
        self.n = 0
        self.started = time.monotonic()

    def step(self, title: str) -> None:
        self.n += 1
        self.echo("")
        self.echo(f"[{self.n:2d}] {title}   (+{time.monotonic() - self.started:.1f} s)")

    def say(self, text: str) -> None:
        self.echo(f"     {text}")


@dataclass(frozen=True, slots=True)
class _HandlerLogin:
    """What one handler knows and holds (kept in memory by the demo, never printed)."""

    paths: HandlerPaths
    password: str
    passphrase: Passphrase
    totp_secret: str


class _Demo:
    """The parties of one run; each phase is a method, in the order of :func:`run_demo`."""

    config: ServerConfig
    integration_config: IntegrationConfig
    store: Store

    def __init__(self, workdir: Path, message: str, out: _Steps, net: TorNet | None = None) -> None:
        self.workdir, self.message, self.out, self.net = workdir, message, out, net
        self.server_dir, self.integration_dir = workdir / "server", workdir / "integration"
        self.sockets = {name: _bound_socket() for name in ("intake", "staff", "integration")}
        self.intake_url, self.staff_url, self.integration_url = (
            _url(self.sockets[n]) for n in ("intake", "staff", "integration")
        )
        #: Where the integration service itself fetches the directory (loopback, server to server),
        #: and where the admins run their ceremony (operators' machines, on loopback in this demo).
        self.intake_loopback, self.staff_loopback = self.intake_url, self.staff_url
        self.onions: dict[str, str] = {}
        self.handlers: dict[str, _HandlerLogin] = {}

    def socks(self, who: str) -> str | None:
        """The SOCKS port of the applicant's or the handlers' Tor (None on loopback)."""
        if self.net is None:
            return None
        return (self.net.applicant if who == "applicant" else self.net.handler).socks_url()

    def _prepare_onions(self) -> None:
        """Onion keys made now, so the first directory can name the addresses; URLs become onion URLs."""
        if self.net is None:
            return
        control = f"127.0.0.1:{self.net.service.control_port}"
        ports = {n: self.sockets[n].getsockname()[1] for n in self.sockets}
        self.config = replace(
            self.config, tor_control=control, port=ports["intake"], staff_port=ports["staff"], tor_health_seconds=1
        ).validate()
        self.integration_config = replace(
            self.integration_config, tor_control=control, port=ports["integration"], tor_health_seconds=1
        ).validate()
        for role, path in (
            ("public", self.config.onion_key_path("public")),
            ("staff", self.config.onion_key_path("staff")),
            ("integration", self.integration_config.onion_key_path),
        ):
            key = OnionKey.generate()
            key.save(path)
            self.onions[role] = key.address()
        self.intake_url, self.staff_url, self.integration_url = (
            f"http://{self.onions[r]}" for r in ("public", "staff", "integration")
        )
        self.out.say(f"onion addresses (keys in keys/onion-*.key, 0600): {', '.join(self.onions.values())}")

    # --- the organisation ---------------------------------------------------------------------------------

    async def found_organisation(self) -> None:
        out = self.out
        out.step("Three admins make their signing keys (any 2 of the 3 must sign)")
        self.admins, self.admin_set = _make_admins(_private_dir(self.workdir / "admins"))
        self.fingerprint = self.admin_set.fingerprint()
        for name in ADMINS:
            out.say(f"{name}: key in admins/{name}/admin.vault (passphrase beside it, DEMO ONLY)")
        out.say(f"organisation fingerprint (everyone pins this, out of band): {self.fingerprint}")

        out.step("The operator runs `server init`: config, server keys, database")
        _private_dir(self.server_dir)
        write_config(self.server_dir, org_fingerprint=self.fingerprint)
        self.config = load_config(self.server_dir)
        self.keys = create_keys(self.config.keys_dir)
        await asyncio.to_thread(migrate.upgrade, self.config.url)
        out.say(f"server/: SQLite database and keys/ (0600); receipt key {self.keys.receipt.verify_key.fingerprint()}")

        out.step("The integration officer runs `integration init`: service key, database, officer's vault")
        plan = plan_init(self.integration_dir, org_fingerprint=self.fingerprint, intake_url=self.intake_loopback)
        self.officer_passphrase = _new_passphrase()
        self.integration = await asyncio.to_thread(init_data_dir, plan, self.officer_passphrase)
        _write_demo_passphrase(self.integration_dir / "DEMO-ONLY-officer-passphrase.txt", self.officer_passphrase)
        self.integration_config = load_integration_config(self.integration_dir)
        out.say(f"integration/: signing key {self.integration.signing_key.fingerprint()}")
        count = len(self.integration.encryption_keys)
        out.say(f"officer's encryption key(s) in {self.integration.vault_path.name}: {count}")
        self._prepare_onions()

    async def enrol_admins(self) -> None:
        self.out.step("The operator invites the three admins; each enrols (password + TOTP) and logs in")
        for name, admin in self.admins.items():
            code, _ = await create_invitation(
                self.store,
                username=name,
                role="admin",
                now=int(time.time()),
                day=self.staff_app[STAFF].today(),
                actor="operator",
                audit_key=self.keys.receipt,
            )

            def authenticator(answer: StaffEnrolment, admin: _Admin = admin) -> str:
                admin.totp_secret = answer.totp_secret.reveal()
                return pyotp.TOTP(admin.totp_secret).now()

            await enroll_admin(
                admin.paths,
                admin.passphrase,
                staff=self.staff_loopback,
                intake=self.intake_loopback,
                invitation=code,
                password=admin.password,
                org=self.fingerprint,
                totp_code=authenticator,
            )
            # The next code: the one used at enrolment is not accepted twice.
            next_code = pyotp.TOTP(admin.totp_secret).at(int(time.time()) + 30)
            await admin_login(admin.paths, password=admin.password, code=next_code)
        self.out.say(f"{', '.join(ADMINS)}: enrolled and logged in; the organisation fingerprint pinned in each vault")

    async def ceremony(self, changes: Changes) -> None:
        """One admin proposes; two of three review the diff and sign the directory, then the head; one publishes."""
        proposer, *_ = ADMINS
        signers = ADMINS[:THRESHOLD]
        first = self.admins[proposer]
        summary, diff = await admin_propose(first.paths, self.fingerprint, changes)
        self.out.say(f"{proposer} proposes version {summary.version} (proposal {summary.proposal_id[:8]}...):")
        for line in diff.splitlines():
            self.out.say(f"    {line}")
        for _stage in ("directory", "tree head"):
            for name in signers:
                admin = self.admins[name]
                done = await admin_sign(admin.paths, admin.passphrase, summary.proposal_id, lambda _text: True)
                self.out.say(f"{name} reviewed the diff and signed the {done.stage}; state now {done.summary.state}")
        published, _trusted = await admin_publish(first.paths, self.fingerprint, summary.proposal_id)
        await self.intake_app[INTAKE].refresh()
        self.out.say(f"{proposer} publishes: directory version {published.version}, log size {published.size}")

    async def start_intake_and_staff(self, stack: AsyncExitStack) -> None:
        self.store = Store(make_engine(self.config.url))
        stack.push_async_callback(self.store.close)
        self.out.step("The intake server and the staff app start (in this process, on loopback)")
        self.intake_app = create_app(self.config, store=self.store)
        self.staff_app = create_staff_app(self.config, store=self.store)
        if self.net is not None:
            self.out.say("each app publishes its onion through the service tor (PoW on the public one;")
            self.out.say("the staff onion admits only the handlers' Tor client keys, taken with their invitations)")
            publish_public_onion(self.intake_app, self.config)
            publish_staff_onion(self.staff_app, self.config, store=self.store)
        await _serve(stack, self.intake_app, self.sockets["intake"])
        await _serve(stack, self.staff_app, self.sockets["staff"])
        self.out.say(f"public intake: {self.intake_url}    staff API: {self.staff_url}")
        self.out.say(
            f"applicant web pages (Tor Browser, JavaScript optional): {self.intake_url}/ru/ and {self.intake_url}/en/"
        )
        await self.enrol_admins()
        self.out.step("The admins publish directory version 1: pool 'general', integration keys, receipt key")
        await self.ceremony(
            Changes(
                organisation="Safe Passage DEMONSTRATION (not a real organisation)",
                add_admins=list(self.admin_set.keys),
                threshold=THRESHOLD,
                add_pools=[Pool(POOL, "General", ("en", "ru"))],
                integration=IntegrationService(self.integration.signing_key, self.integration.encryption_keys),
                receipt_key=self.keys.receipt.verify_key,
                onions=dict(self.onions),
                policy={"intake_key_days": 7},
            )
        )

    async def enrol(self, name: str) -> None:
        # An admin (not the operator) invites each handler, as `safepassage admin invite` does.
        code, _ = await admin_invite(self.admins[ADMINS[0]].paths, name, "handler")
        home = _private_dir(self.workdir / "handlers" / name)
        paths = HandlerPaths(home / f"{name}.vault")
        await self._tor_client_key(name, paths)
        password, passphrase = secrets.token_urlsafe(18), _new_passphrase()
        _write_demo_passphrase(home / "DEMO-ONLY-passphrase.txt", passphrase)
        secret: list[str] = []

        def authenticator(answer: StaffEnrolment) -> str:
            # The handler's authenticator app: it reads the secret and shows the current code.
            secret.append(answer.totp_secret.reveal())
            return pyotp.TOTP(secret[-1]).now()

        done = await _retry_fresh_onion(
            lambda: enroll(
                staff=self.staff_url,
                invitation=code,
                password=password,
                vault=paths.vault,
                passphrase=passphrase,
                intake=self.intake_url,
                org=self.fingerprint,
                totp_code=authenticator,
                socks=self.socks("handler"),
                opslimit=MIN_OPSLIMIT,
                memlimit=MIN_MEMLIMIT,
            )
        )
        self.handlers[name] = _HandlerLogin(paths, password, passphrase, secret[0])
        self.out.say(f"{name}: enrolled; identity {done.identity_fingerprint[:23]}...; vault and intake-key.json")

    async def _tor_client_key(self, name: str, paths: HandlerPaths) -> None:
        """The handler's Tor client key: public half to the staff server (with the invitation), private to their Tor."""
        if self.net is None:
            return
        key, _ = OnionClientKey.load_or_create(paths.onion_key)
        client = ClientKey.parse(key.public_base32())
        register(self.config.onion_clients_dir, name, client)
        write_client_key(self.integration_config.onion_clients_dir, name, client)
        self._use_handler_tor(name, key)
        # The staff app re-reads the keys every tor_health_seconds and publishes again.
        await asyncio.sleep(2 * self.config.tor_health_seconds + 1)
        self.out.say(f"{name}: Tor client key {key.public_base32()[:12]}... given with the invitation")

    def _use_handler_tor(self, name: str, key: OnionClientKey) -> None:
        # One tor stands in for every handler's own machine: it holds the acting handler's key.
        if self.net is None:
            return
        for role in ("staff", "integration"):
            key.install(self.net.handler_auth_dir, self.onions[role], f"safepassage-{role}")
        self.net.reload_handler_auth()

    async def enrol_handlers(self) -> None:
        self.out.step(f"Admin ada invites two handlers; each enrols with it and TOTP: {', '.join(HANDLERS)}")
        handlers_dir = _private_dir(self.workdir / "handlers")
        handlers_dir.chmod(0o700)
        for name in HANDLERS:
            await self.enrol(name)
        self.out.step("The admins list both handlers (from their intake-key.json) and publish directory version 2")
        listed = []
        for name in HANDLERS:
            handler_id, identity, entry = read_enrolment_document(self.handlers[name].paths.intake_key)
            listed.append(Handler(handler_id, handler_id.title(), VerifyKey(identity), (POOL,), (entry,)))
        await self.ceremony(Changes(add_handlers=listed))

    async def start_integration(self, stack: AsyncExitStack) -> None:
        self.out.step("The integration service starts and fetches the directory from the intake")
        app = create_integration_app(self.integration_config)
        if self.net is not None:
            publish_integration_onion(app, self.integration_config)
        await _serve(stack, app, self.sockets["integration"])
        self.out.say(f"integration service: {self.integration_url}")

    # --- the case -----------------------------------------------------------------------------------------

    async def applicant_sends(self) -> SentContact:
        out = self.out
        out.step("An applicant sends a first contact with an attachment (over Tor in real life)")
        applicant_dir = _private_dir(self.workdir / "applicant")
        attachment = applicant_dir / "scan-page-1.bin"
        attachment.write_bytes(b"DEMO attachment: random bytes standing in for a scanned page\n" + os.urandom(40_000))
        async with IntakeClient(self.intake_url, socks=self.socks("applicant")) as client:
            trusted = await _retry_fresh_onion(
                lambda: fetch_trusted_directory(client, self.fingerprint, None, int(time.time()))
            )
            sent = await send_contact(
                client, trusted, pool=POOL, language="en", message=self.message, fields={}, attachments=[attachment]
            )
        out.say(f"delivered, receipt verified; case {sent.contact_id}, day {sent.receipt.day}")
        out.say("the codename, shown once to the applicant (they keep it in their head):")
        out.say(f"    {sent.codename.reveal()}")
        return sent

    async def handler_reads_and_replies(self, sent: SentContact) -> _HandlerLogin:
        out = self.out
        async with self.store.read() as session:
            owner = await session.scalar(select(ContactRow.owner).where(ContactRow.id == sent.contact_id))
        if owner not in self.handlers:
            raise DemoFailed(f"the case went to an unexpected owner: {owner!r}")
        handler = self.handlers[owner]
        out.step(f"The server routed the case to {owner}; {owner} logs in with password and TOTP")
        # The next code: the one used at enrolment is not accepted twice.
        code = pyotp.TOTP(handler.totp_secret).at(int(time.time()) + 30)
        if self.net is not None:
            key, _ = OnionClientKey.load_or_create(handler.paths.onion_key)
            self._use_handler_tor(str(owner), key)
        socks = self.socks("handler")
        await login(handler.paths, password=handler.password, code=code, socks=socks)
        for case in await inbox(handler.paths, socks=socks):
            out.say(f"inbox: case {case.case_id}  pool {case.pool}  {case.attachments} attachment(s)  {case.status}")

        out.step(f"{owner} reads the case on their own machine (decrypted only there)")
        case_dir = handler.paths.vault.parent / f"case-{sent.contact_id}"
        reading = await read_case(handler.paths, handler.passphrase, sent.contact_id, case_dir, socks=socks)
        out.say(f"written to handlers/{owner}/{case_dir.name}/")
        for check in reading.verified:
            out.say(f"verified: {check}")
        out.say(f"the message ({len(reading.contact.message)} characters) and {len(reading.attachments)} attachment(s)")

        out.step(f"{owner} replies (sealed to the applicant's reply key, signed by {owner})")
        posted = await reply(handler.paths, handler.passphrase, sent.contact_id, REPLY_TEXT, socks=socks)
        out.say(f"reply {posted.message_id} stored on the server, sealed")
        return handler

    async def applicant_reads_reply(self, sent: SentContact) -> None:
        self.out.step("The applicant checks the mailbox with the codename")
        async with IntakeClient(self.intake_url, socks=self.socks("applicant")) as client:
            trusted = await fetch_trusted_directory(client, self.fingerprint, None, int(time.time()))
            replies = await check_mailbox(client, trusted, sent.codename)
        for got in replies:
            self.out.say(f"from {got.handler_id} (signature verified): {got.text}")
        if not any(got.text == REPLY_TEXT for got in replies):
            raise DemoFailed("the applicant did not find the reply")

    async def escalate_and_read(self, sent: SentContact, handler: _HandlerLogin) -> None:
        out = self.out
        out.step(f"{handler.paths.vault.stem} escalates the case to the integration service")
        escalated = await _retry_fresh_onion(
            lambda: escalate(
                handler.paths,
                handler.passphrase,
                sent.contact_id,
                NOTE,
                integration=self.integration_url,
                socks=self.socks("handler"),
            )
        )
        out.say(f"package {escalated.package_id}: {escalated.attachments} attachment(s), receipt verified")

        out.step("The integration officer reads the package with the officer's vault")
        config = self.integration_config
        store = Store(make_engine(config.url))
        try:
            package = await complete_package(store, escalated.package_id)
            keys = await asyncio.to_thread(open_officer_keys, config.vault_path, self.officer_passphrase)
            directory = await IntakeDirectorySource(config, remember=False).fetch()
            opened = await read_package(store, package, keys, directory, self.integration_dir / "read")
        finally:
            await store.close()
        out.say(f"written to integration/read/: case.txt and {len(opened.files)} file(s)")
        out.say(f"signed by handler {opened.handler_id}, as listed in directory version {opened.directory_version}")
        out.say(f"the applicant's signature holds; {len(opened.replies)} reply(ies) signed by listed handlers")

    async def server_holds(self, sent: SentContact) -> None:
        self.out.step("What the server holds for this case")
        async with self.store.read() as session:
            row = await session.get(ContactRow, sent.contact_id)
            chunks = await session.scalar(
                select(func.count()).select_from(Chunk).where(Chunk.contact_id == sent.contact_id)
            )
        if row is None:
            raise DemoFailed("the case is not in the server's database")
        self.out.say(f"pool {row.pool}, day {row.day.isoformat()} (no time of day), size bucket {row.bucket}")
        self.out.say(f"sealed envelope {len(row.envelope)} bytes, {chunks} sealed attachment chunk(s)")
        self.out.say(f"status {row.status}, owner {row.owner}")

    # --- the check ----------------------------------------------------------------------------------------

    def scan(self) -> list[str]:
        out = self.out
        out.step("Looking for plaintext in every file under server/ and integration/")
        skip = (self.integration_dir / "read", self.integration_dir / "DEMO-ONLY-officer-passphrase.txt")
        out.say("(integration/read/ is the officer's decrypted copy, on the officer's machine: not scanned)")
        files = [*_files(self.server_dir), *_files(self.integration_dir, skip)]
        found = []
        for path in files:
            data = path.read_bytes()
            for what, needle in _needles(self.message):
                if needle in data:
                    found.append(f"{what} in {path.relative_to(self.workdir)}")
        out.say(f"{len(files)} file(s), {sum(p.stat().st_size for p in files)} bytes scanned")
        for line in found:
            out.say(f"FOUND: {line}")
        if not found:
            out.say("none found: the server and the integration service hold no plaintext")
        return found


T = TypeVar("T")
#: A fresh onion's descriptor may still be spreading: its first requests are retried this long.
FRESH_ONION_SECONDS: Final = 90.0


async def _retry_fresh_onion(make: Callable[[], Awaitable[T]]) -> T:
    deadline = time.monotonic() + FRESH_ONION_SECONDS
    while True:
        try:
            return await make()
        except OnionAuthRequired:
            raise
        except ServerUnreachable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)


async def run_demo(workdir: Path, message: str, echo: Echo, *, tor: bool = False) -> bool:
    """Run the whole flow in ``workdir`` (an empty or new folder); return True when no plaintext was found."""
    if not tor:
        return await _run_demo(workdir, message, echo, None)
    os.umask(0o077)
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    echo("Building a private Tor network on loopback (3 directory authorities, a relay, 3 more tors)...")
    try:
        net = await asyncio.to_thread(build, workdir / "tornet")
    except TorNetError as exc:
        raise DemoFailed(f"the private Tor network did not start: {str(exc).splitlines()[0]}") from None
    try:
        echo(f"Tor network ready in {net.bootstrap_seconds:.1f} s; every request below goes over onion services.")
        return await _run_demo(workdir, message, echo, net)
    finally:
        await asyncio.to_thread(net.stop)


async def _run_demo(workdir: Path, message: str, echo: Echo, net: TorNet | None) -> bool:
    out = _Steps(echo)
    how = "onion services on a private Tor network" if net is not None else "loopback HTTP"
    echo(f"Safe Passage: a DEMONSTRATION on this machine ({how}, SQLite). Nothing here is for real use.")
    echo(f"Work folder: {workdir}")
    os.umask(0o077)
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    demo = _Demo(workdir, message, out, net)
    await demo.found_organisation()
    async with AsyncExitStack() as stack:
        await demo.start_intake_and_staff(stack)
        await demo.enrol_handlers()
        await demo.start_integration(stack)
        sent = await demo.applicant_sends()
        handler = await demo.handler_reads_and_replies(sent)
        await demo.applicant_reads_reply(sent)
        await demo.escalate_and_read(sent, handler)
        await demo.server_holds(sent)
    # The apps have stopped and closed their databases: scan what is on disk.
    found = demo.scan()
    echo("")
    echo(f"Demonstration finished in {time.monotonic() - out.started:.1f} s.")
    return not found


@click.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for every party's state (must be empty or new); a temporary folder by default.",
)
@click.option("--keep", is_flag=True, help="Leave the work folder in place at the end.")
@click.option(
    "--message-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The applicant's message (UTF-8 text); a sample message by default.",
)
@click.option("--tor", "use_tor", is_flag=True, help="Run it over onion services on a private Tor network here.")
def demo(workdir: Path | None, keep: bool, message_file: Path | None, use_tor: bool) -> None:
    """Run the whole flow on this machine (a demonstration: loopback HTTP, SQLite, throwaway keys)."""
    message = DEFAULT_MESSAGE if message_file is None else message_file.read_text(encoding="utf-8").strip()
    if not message:
        raise click.UsageError("the message file is empty")
    if workdir is None:
        folder = Path(tempfile.mkdtemp(prefix="safepassage-demo-"))
        made = True
    else:
        if workdir.exists() and any(workdir.iterdir()):
            raise click.UsageError(f"{workdir} is not empty; choose a new or empty folder")
        made = not workdir.exists()
        folder = workdir
    clean = False
    try:
        clean = asyncio.run(run_demo(folder, message, click.echo, tor=use_tor))
    finally:
        if keep or not made:
            click.echo(f"The work folder is kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
            click.echo("The work folder was deleted.")
    if not clean:
        raise DemoFailed("plaintext was found in the server's or the integration service's files")
