"""Stand-ins for the staff API and the integration service, for testing the handler client.

They answer as the contracts say (staff: ``/staff/v1``, integration:
``/integration/v1``), mounted on the same loopback server as
:class:`tests.fake_intake.FakeIntake`, whose stored contacts and mailboxes
they share: a contact an applicant sends through the intake is a case here, a
reply posted here lands in the applicant's mailbox. They check what they are
sent with the real crypto (TOTP with pyotp, envelope form, delivery
signatures, receipts), so a client bug shows up as a refusal. Deliberately
small and in memory; the real apps (``server/staff``, ``server/integration``)
have their own tests. Tests tamper with their fields to play a hostile server.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyotp
from aiohttp import web

from safepassage.crypto import envelope as E
from safepassage.crypto.encoding import b64d
from safepassage.crypto.errors import SafePassageError
from safepassage.crypto.keys import SigningKey
from safepassage.crypto.staffmsg import IntegrationReceipt, verify_delivery

from .fake_intake import FakeIntake


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


@dataclass
class Account:
    username: str
    role: str
    password: str
    secret: str
    active: bool = False
    last_code: str = ""


@dataclass
class Package:
    package_id: str
    handler: str
    envelope: bytes
    attachments: int
    token: str | None
    chunks: dict[int, list[bytes]] = field(default_factory=dict)
    complete: bool = False


class FakeStaff:
    """The staff API over a :class:`FakeIntake`'s contacts."""

    def __init__(self, intake: FakeIntake) -> None:
        self.intake = intake
        self.invitations: dict[str, tuple[str, str]] = {}
        self.accounts: dict[str, Account] = {}
        self.sessions: dict[str, str] = {}
        self.owners: dict[str, str] = {}
        self.status: dict[str, str] = {}
        self.escalations: dict[str, list[tuple[str, dict[str, str]]]] = {}
        #: A test may replace a case's stored envelope or a chunk to play a hostile server.
        self.envelope_override: dict[str, bytes] = {}
        self.chunk_override: dict[tuple[str, int, int], bytes] = {}
        self.mailbox_override: dict[str, str] = {}
        self.preset_secrets: dict[str, str] = {}

    def invite(self, username: str, role: str = "handler", *, secret: str | None = None) -> str:
        """An invitation code; ``secret`` fixes the TOTP secret enrolment will hand out (for scripts)."""
        code = secrets.token_urlsafe(32)
        self.invitations[code] = (username, role)
        if secret is not None:
            self.preset_secrets[username] = secret
        return code

    def routes(self, app: web.Application) -> None:
        r = app.router
        p = "/staff/v1"
        r.add_post(p + "/enroll", self.enroll)
        r.add_post(p + "/enroll/confirm", self.confirm)
        r.add_post(p + "/login", self.login)
        r.add_post(p + "/logout", self.logout)
        r.add_get(p + "/cases", self.list_cases)
        r.add_get(p + "/cases/{cid}", self.get_case)
        r.add_get(p + "/cases/{cid}/envelope", self.envelope)
        r.add_get(p + "/cases/{cid}/attachments/{att}/chunks/{idx}", self.chunk)
        r.add_get(p + "/cases/{cid}/messages/{mid}/envelope", self.message_envelope)
        r.add_post(p + "/cases/{cid}/status", self.set_status)
        r.add_post(p + "/cases/{cid}/replies", self.reply)
        r.add_post(p + "/cases/{cid}/handover", self.handover)
        r.add_post(p + "/cases/{cid}/escalations", self.record_escalation)

    # --- accounts ------------------------------------------------------------------------------

    async def enroll(self, request: web.Request) -> web.Response:
        body = await request.json()
        invitation = self.invitations.get(body["invitation"])
        if invitation is None:
            return _error(403, "invitation_invalid", "Unknown invitation.")
        username, role = invitation
        secret = self.preset_secrets.get(username) or pyotp.random_base32(32)
        self.accounts[username] = Account(username, role, body["password"], secret)
        uri = pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name="Safe Passage")
        return web.json_response(
            {"username": username, "role": role, "totp_secret": secret, "otpauth_uri": uri}, status=201
        )

    def _code_ok(self, account: Account, code: str) -> bool:
        if code == account.last_code or not pyotp.TOTP(account.secret).verify(code, valid_window=1):
            return False
        account.last_code = code
        return True

    async def confirm(self, request: web.Request) -> web.Response:
        body = await request.json()
        invitation = self.invitations.get(body["invitation"])
        if invitation is None:
            return _error(403, "invitation_invalid", "Unknown invitation.")
        account = self.accounts[invitation[0]]
        if not self._code_ok(account, body["code"]):
            return _error(403, "code_invalid", "Wrong code.")
        account.active = True
        del self.invitations[body["invitation"]]
        return web.json_response({"username": account.username})

    async def login(self, request: web.Request) -> web.Response:
        body = await request.json()
        account = self.accounts.get(body["username"])
        if account is None or not account.active or account.password != body["password"]:
            return _error(401, "login_failed", "Login failed.")
        if not self._code_ok(account, body["code"]):
            return _error(401, "login_failed", "Login failed.")
        token = secrets.token_urlsafe(32)
        self.sessions[token] = account.username
        now = int(datetime.now(UTC).timestamp())
        return web.json_response(
            {"token": token, "role": account.role, "idle_expires": now + 1800, "absolute_expires": now + 43200},
            status=201,
        )

    def _caller(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return self.sessions.get(token) if scheme == "Bearer" else None

    async def logout(self, request: web.Request) -> web.Response:
        _, _, token = request.headers.get("Authorization", "").partition(" ")
        if self.sessions.pop(token, None) is None:
            return _error(401, "unauthorized", "Log in first.")
        return web.Response(status=204)

    # --- cases ---------------------------------------------------------------------------------

    def owner(self, contact_id: str) -> str:
        if contact_id not in self.owners:
            contact = self.intake.contacts[contact_id]
            now = int(datetime.now(UTC).timestamp())
            handlers = sorted(h.handler_id for h, _ in self.intake.view.directory.recipients(contact.pool, now))
            self.owners[contact_id] = handlers[0]
        return self.owners[contact_id]

    def _messages(self, contact_id: str) -> list[tuple[int, str, str, bytes]]:
        contact = self.intake.contacts[contact_id]
        stored = self.intake.messages.get(contact.mailbox.key_id.hex(), [])
        return [
            (seq, m.message_id, m.kind, m.envelope)
            for seq, m in enumerate(stored, start=1)
            if m.contact_id == contact_id
        ]

    def _case_json(self, contact_id: str) -> dict[str, object]:
        contact = self.intake.contacts[contact_id]
        return {
            "id": contact_id,
            "pool": contact.pool,
            "day": _today(),
            "bucket": E.parse_header(contact.envelope).bucket,
            "status": self.status.get(contact_id, "new"),
            "attachments": contact.attachments,
            "server_sealed": False,
            "mailbox": self.mailbox_override.get(contact_id, contact.mailbox.key_id.hex()),
            "follow_ups": sum(1 for m in self._messages(contact_id) if m[2] == "follow-up"),
        }

    def _owned(self, request: web.Request) -> tuple[str, str] | web.Response:
        caller = self._caller(request)
        if caller is None:
            return _error(401, "unauthorized", "Log in first.")
        cid = request.match_info.get("cid", "")
        contact = self.intake.contacts.get(cid)
        if contact is None or not contact.complete or self.owner(cid) != caller:
            return _error(404, "not_found", "No such case.")
        return caller, cid

    async def list_cases(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        if caller is None:
            return _error(401, "unauthorized", "Log in first.")
        mine = sorted(c for c, s in self.intake.contacts.items() if s.complete and self.owner(c) == caller)
        cases = [self._case_json(c) for c in mine]
        if "status" in request.query:
            cases = [c for c in cases if c["status"] == request.query["status"]]
        if "pool" in request.query:
            cases = [c for c in cases if c["pool"] == request.query["pool"]]
        after = request.query.get("after")
        if after is not None:
            cases = [c for c in cases if str(c["id"]) > after]
        limit = int(request.query.get("limit", "100"))
        page = cases[:limit]
        return web.json_response({"cases": page, "next": str(page[-1]["id"]) if len(cases) > limit else None})

    async def get_case(self, request: web.Request) -> web.Response:
        owned = self._owned(request)
        if isinstance(owned, web.Response):
            return owned
        _, cid = owned
        case = self._case_json(cid)
        case["messages"] = [
            {"id": m, "kind": k, "day": _today(), "seq": s, "server_sealed": False}
            for s, m, k, _ in self._messages(cid)
        ]
        case["escalations"] = [{"package": p, "day": _today()} for p, _ in self.escalations.get(cid, [])]
        return web.json_response(case)

    async def envelope(self, request: web.Request) -> web.Response:
        owned = self._owned(request)
        if isinstance(owned, web.Response):
            return owned
        cid = owned[1]
        data = self.envelope_override.get(cid, self.intake.contacts[cid].envelope)
        return web.Response(body=data, content_type="application/octet-stream")

    async def chunk(self, request: web.Request) -> web.Response:
        owned = self._owned(request)
        if isinstance(owned, web.Response):
            return owned
        cid = owned[1]
        att, idx = int(request.match_info["att"]), int(request.match_info["idx"])
        frames = self.intake.contacts[cid].chunks.get(att, [])
        frame = self.chunk_override.get((cid, att, idx), frames[idx] if idx < len(frames) else None)
        if frame is None:
            return _error(404, "not_found", "No such chunk.")
        return web.Response(body=frame, content_type="application/octet-stream")

    async def message_envelope(self, request: web.Request) -> web.Response:
        owned = self._owned(request)
        if isinstance(owned, web.Response):
            return owned
        for _, mid, _, data in self._messages(owned[1]):
            if mid == request.match_info["mid"]:
                return web.Response(body=data, content_type="application/octet-stream")
        return _error(404, "not_found", "No such message.")

    async def set_status(self, request: web.Request) -> web.Response:
        owned = self._owned(request)
        if isinstance(owned, web.Response):
            return owned
        self.status[owned[1]] = (await request.json())["status"]
        return web.json_response(self._case_json(owned[1]))

    async def reply(self, request: web.Request) -> web.Response:
        owned = self._owned(request)
        if isinstance(owned, web.Response):
            return owned
        cid = owned[1]
        data = await request.read()
        header = E.parse_header(data)
        if header.purpose != E.Purpose.REPLY or len(header.recipient_ids) != 1:
            return _error(422, "recipients_mismatch", "A reply is sealed to the applicant alone.")
        mailbox = self.intake.contacts[cid].mailbox.key_id.hex()
        message_id = self.intake.add_reply(mailbox, cid, data)
        self.status[cid] = "replied"
        return web.json_response({"message": message_id, "seq": len(self.intake.messages[mailbox])}, status=201)

    async def handover(self, request: web.Request) -> web.Response:
        owned = self._owned(request)
        if isinstance(owned, web.Response):
            return owned
        target = (await request.json())["handler"]
        if target not in self.accounts or target == owned[0]:
            return _error(422, "invalid_handover_target", "No such handler.")
        self.owners[owned[1]] = target
        return web.json_response({"id": owned[1], "handler": target})

    async def record_escalation(self, request: web.Request) -> web.Response:
        owned = self._owned(request)
        if isinstance(owned, web.Response):
            return owned
        body = await request.json()
        try:
            receipt = IntegrationReceipt.from_json(body["receipt"])
            receipt.verify(self.intake.view.directory, envelope_hash=receipt.envelope_hash)
        except SafePassageError:
            return _error(422, "receipt_invalid", "Bad receipt.")
        self.escalations.setdefault(owned[1], []).append((receipt.package_id, body["receipt"]))
        self.status[owned[1]] = "escalated"
        return web.json_response({"package": receipt.package_id, "day": receipt.day}, status=201)


class FakeIntegration:
    """The integration API: delivery signatures checked against the intake's current directory."""

    def __init__(self, intake: FakeIntake, signing_key: SigningKey) -> None:
        self.intake = intake
        self.signing_key = signing_key
        self.packages: dict[str, Package] = {}

    def routes(self, app: web.Application) -> None:
        p = "/integration/v1/packages"
        app.router.add_post(p, self.deliver)
        app.router.add_put(p + "/{pid}/attachments/{att}/chunks/{idx}", self.chunk)
        app.router.add_post(p + "/{pid}/finalise", self.finalise)

    def _receipt(self, package: Package) -> dict[str, object]:
        envelope_hash = hashlib.sha256(package.envelope).digest()
        receipt = IntegrationReceipt.issue(self.signing_key, package.package_id, envelope_hash, _today())
        return {"package": package.package_id, "status": "complete", "receipt": receipt.to_json()}

    async def deliver(self, request: web.Request) -> web.Response:
        handler = request.headers["Safe-Passage-Handler"]
        package_id = request.headers["Safe-Passage-Package"]
        attachments = int(request.query.get("attachments", "0"))
        data = await request.read()
        directory = self.intake.view.directory
        header = E.parse_header(data)
        if header.purpose != E.Purpose.ESCALATION or set(header.recipient_ids) != {
            k.key_id.raw for k in directory.integration.encryption_keys
        }:
            return _error(422, "recipients_mismatch", "Wrong recipients.")
        try:
            verify_delivery(
                directory,
                b64d(request.headers["Safe-Passage-Signature"], length=64),
                handler_id=handler,
                package_id=package_id,
                envelope=data,
                attachments=attachments,
            )
        except SafePassageError:
            return _error(403, "bad_signature", "Bad delivery signature.")
        if package_id in self.packages:
            return _error(409, "replayed", "Replay.")
        token = secrets.token_urlsafe(32) if attachments else None
        package = Package(package_id, handler, data, attachments, token, complete=not attachments)
        self.packages[package_id] = package
        if token:
            return web.json_response({"package": package_id, "status": "pending", "upload_token": token}, status=201)
        return web.json_response(self._receipt(package), status=201)

    def _pending(self, request: web.Request) -> Package | web.Response:
        package = self.packages.get(request.match_info["pid"])
        if package is None:
            return _error(404, "not_found", "No such package.")
        if package.token is None or request.headers.get("Safe-Passage-Upload") != package.token:
            return _error(403, "bad_upload_token", "Bad token.")
        return package

    async def chunk(self, request: web.Request) -> web.Response:
        package = self._pending(request)
        if isinstance(package, web.Response):
            return package
        att, idx = int(request.match_info["att"]), int(request.match_info["idx"])
        frame = await request.read()
        fields = E.parse_chunk_frame(frame)
        got = package.chunks.setdefault(att, [])
        if (fields.attachment, fields.index) != (att, idx) or idx != len(got) or att >= package.attachments:
            return _error(409, "chunk_out_of_order", "Out of order.")
        got.append(frame)
        return web.json_response({"attachment": att, "index": idx, "final": fields.final}, status=201)

    async def finalise(self, request: web.Request) -> web.Response:
        package = self._pending(request)
        if isinstance(package, web.Response):
            return package
        finals = sum(1 for frames in package.chunks.values() if frames and E.parse_chunk_frame(frames[-1]).final)
        if finals != package.attachments:
            return _error(409, "attachments_incomplete", "Incomplete.")
        package.complete = True
        return web.json_response(self._receipt(package))


@dataclass
class FakeOrg:
    """The three services of an organisation on one loopback server (their path prefixes differ)."""

    intake: FakeIntake
    staff: FakeStaff
    integration: FakeIntegration

    @classmethod
    def around(cls, intake: FakeIntake, integration_key: SigningKey) -> FakeOrg:
        return cls(intake, FakeStaff(intake), FakeIntegration(intake, integration_key))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        app = self.intake.app()
        self.staff.routes(app)
        self.integration.routes(app)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()

    @contextmanager
    def in_thread(self) -> Iterator[str]:
        """Serve from a background thread (for the CLI, which runs its own event loop)."""
        loop = asyncio.new_event_loop()
        ready: list[str] = []
        started = threading.Event()
        stop = asyncio.Event()

        async def main() -> None:
            async with self.running() as url:
                ready.append(url)
                started.set()
                await stop.wait()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        started.wait(10)
        try:
            yield ready[0]
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(10)
            loop.close()
