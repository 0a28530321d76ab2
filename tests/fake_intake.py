"""A stand-in for the public intake, for testing the applicant client without the real server.

It answers as docs/openapi/public.yaml says, on a real aiohttp server bound to
127.0.0.1, and checks what it is sent with the real crypto (proof of work,
submission and mailbox signatures, recipient sets, chunk frames) so a client
bug shows up as a refusal. It is deliberately small and keeps everything in
memory; it is not the server (``server/``), whose own end-to-end tests cover
the real thing. Tests tamper with :class:`LogView` to play a dishonest server.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

from safepassage.crypto import envelope as E
from safepassage.crypto import pow as W
from safepassage.crypto.directory import Directory, SignedDirectory
from safepassage.crypto.encoding import b64d, b64e
from safepassage.crypto.errors import SafePassageError
from safepassage.crypto.intake import verify_mailbox_auth, verify_submission
from safepassage.crypto.keys import SigningKey, VerifyKey
from safepassage.crypto.receipt import Receipt
from safepassage.crypto.translog import MerkleLog, SignedTreeHead, sign_tree_head

TS = 1_767_225_600  # 2026-01-01T00:00:00Z


# --- the log -------------------------------------------------------------------------------------


@dataclass
class LogView:
    """What /directory and /log/entries show. Every field may be tampered with by a test."""

    entries: list[bytes]
    head: SignedTreeHead
    index: int
    inclusion: list[bytes]
    served: bytes
    log: MerkleLog
    #: Overrides the consistency proof (known_size -> proof); None: the honest one.
    consistency: Callable[[int | None], list[bytes]] | None = None

    @property
    def directory(self) -> Directory:
        return SignedDirectory.from_bytes(self.served).directory


def head_for(log: MerkleLog, signers: Sequence[SigningKey], *, size: int | None = None, ts: int = TS) -> SignedTreeHead:
    head = log.head(ts, size)
    sigs = sorted((sign_tree_head(head, k) for k in signers), key=lambda s: s.key_id.raw)
    return SignedTreeHead(head, tuple(sigs))


def honest_view(signed: Sequence[SignedDirectory], signers: Sequence[SigningKey], *, ts: int = TS) -> LogView:
    """An honest log of ``signed`` with a head signed by ``signers``, serving the last directory."""
    entries = [s.to_bytes() for s in signed]
    log = MerkleLog()
    for e in entries:
        log.append(e)
    index = len(entries) - 1
    return LogView(
        entries=entries,
        head=head_for(log, signers, ts=ts),
        index=index,
        inclusion=log.inclusion_proof(index),
        served=entries[index],
        log=log,
    )


# --- stored things ---------------------------------------------------------------------------------


@dataclass
class StoredContact:
    contact_id: str
    pool: str
    mailbox: VerifyKey
    envelope: bytes
    attachments: int
    token: str | None
    complete: bool
    chunks: dict[int, list[bytes]] = field(default_factory=dict)


@dataclass
class StoredMessage:
    message_id: str
    contact_id: str
    kind: str
    envelope: bytes


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


class FakeIntake:
    """The intake API over one :class:`LogView`, with PoW, contacts, chunks, mailboxes and follow-ups."""

    def __init__(self, view: LogView, *, receipt_key: SigningKey | None = None, difficulty: int = 0) -> None:
        self.view = view
        self.receipt_key = receipt_key
        self.difficulty = difficulty
        self.pow_key = W.PowKey.generate()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.contacts: dict[str, StoredContact] = {}
        self.messages: dict[str, list[StoredMessage]] = {}  # by mailbox id
        self.nonces: dict[bytes, str] = {}
        #: Replies per mailbox page, small enough that tests can make a mailbox span several pages.
        self.fetch_page = 200
        self.spent: set[bytes] = set()
        #: A test may replace any route's answer: path suffix -> handler.
        self.override: dict[str, Callable[[web.Request], web.StreamResponse | Awaitable[web.StreamResponse]]] = {}

    # --- app -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record], client_max_size=4 * 1024 * 1024)
        r = app.router
        r.add_get("/api/v1/directory", self.get_directory)
        r.add_get("/api/v1/log/entries", self.get_entries)
        r.add_post("/api/v1/pow", self.new_pow)
        r.add_post("/api/v1/contacts", self.submit)
        r.add_put("/api/v1/contacts/{cid}/attachments/{att}/chunks/{idx}", self.chunk)
        r.add_post("/api/v1/contacts/{cid}/finalise", self.finalise)
        r.add_post("/api/v1/mailboxes/{mid}/challenge", self.mailbox_challenge)
        r.add_post("/api/v1/mailboxes/{mid}/fetch", self.mailbox_fetch)
        r.add_post("/api/v1/mailboxes/{mid}/follow-ups", self.follow_up)
        return app

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], asyncio.Future[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.query)))
        for suffix, replacement in self.override.items():
            if request.path.endswith(suffix):
                result = replacement(request)
                return await result if inspect.isawaitable(result) else result
        return await handler(request)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """Serve on 127.0.0.1 (a free port) inside the current event loop; yield the base URL."""
        runner = web.AppRunner(self.app())
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
        """Serve from a background thread (for code that runs its own event loop, like the CLI)."""
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

    def entry_requests(self) -> list[tuple[int, int]]:
        return [(int(q["start"]), int(q["end"])) for m, p, q in self.requests if p.endswith("/log/entries")]

    # --- directory and log --------------------------------------------------------------------

    async def get_directory(self, request: web.Request) -> web.Response:
        v = self.view
        known = int(request.query["known_size"]) if "known_size" in request.query else None
        if v.consistency is not None:
            consistency = v.consistency(known)
        elif known is not None and 0 < known < v.head.head.size:
            consistency = v.log.consistency_proof(known, v.head.head.size)
        else:
            consistency = []
        return web.json_response(
            {
                "directory": json.loads(v.served),
                "tree_head": v.head.to_json(),
                "index": v.index,
                "inclusion": [h.hex() for h in v.inclusion],
                "consistency": [h.hex() for h in consistency],
            }
        )

    async def get_entries(self, request: web.Request) -> web.Response:
        start, end = int(request.query["start"]), int(request.query["end"])
        if not 0 <= start < end <= len(self.view.entries) or end - start > 64:
            return _error(400, "bad_range", "Ask for 1 to 64 entries.")
        return web.json_response({"entries": [json.loads(e) for e in self.view.entries[start:end]]})

    # --- proof of work and submissions ---------------------------------------------------------

    async def new_pow(self, request: web.Request) -> web.Response:
        c = W.issue_challenge(self.pow_key, difficulty=self.difficulty, now=int(time.time()), memlimit_kib=1024)
        return web.json_response(
            {
                "challenge": c.to_text(),
                "difficulty": c.difficulty,
                "memlimit_kib": c.memlimit_kib,
                "opslimit": c.opslimit,
                "expires": c.expires,
            },
            status=201,
        )

    def _check_pow(self, request: web.Request) -> web.Response | None:
        text, _, counter = request.headers.get("Safe-Passage-PoW", "").rpartition(".")
        try:
            verified = W.verify_solution(self.pow_key, text, int(counter), now=int(time.time()))
        except (SafePassageError, ValueError):
            return _error(403, "pow_invalid", "Bad proof of work.")
        if verified.nonce in self.spent:
            return _error(409, "pow_reused", "Spent.")
        self.spent.add(verified.nonce)
        return None

    def _check_envelope(self, data: bytes, purpose: E.Purpose, pool: str) -> web.Response | None:
        try:
            header = E.parse_header(data)
        except SafePassageError:
            return _error(400, "malformed_envelope", "Not an envelope.")
        if header.purpose != purpose:
            return _error(400, "wrong_purpose", "Wrong purpose.")
        expected = {k.key_id.raw for _, k in self.view.directory.recipients(pool, int(time.time()))}
        if set(header.recipient_ids) != expected:
            return _error(422, "recipients_mismatch", "Wrong recipients.")
        return None

    def _receipt(self, ident: str, data: bytes) -> dict[str, str]:
        assert self.receipt_key is not None
        r = Receipt.issue(self.receipt_key, ident, hashlib.sha256(data).digest(), _today())
        return {"contact": r.contact_id, "day": r.day, "envelope": b64e(r.envelope_hash), "sig": b64e(r.signature)}

    async def submit(self, request: web.Request) -> web.Response:
        pool = request.query["pool"]
        attachments = int(request.query.get("attachments", "0"))
        if request.content_type != "application/octet-stream":
            return _error(415, "unsupported_media_type", "Binary please.")
        data = await request.read()
        refused = self._check_pow(request) or self._check_envelope(data, E.Purpose.CONTACT, pool)
        if refused:
            return refused
        mailbox = VerifyKey(b64d(request.headers["Safe-Passage-Mailbox-Key"], length=32))
        try:
            verify_submission(
                mailbox,
                b64d(request.headers["Safe-Passage-Signature"], length=64),
                kind="contact",
                pool=pool,
                attachments=attachments,
                envelope=data,
            )
        except SafePassageError:
            return _error(403, "bad_signature", "Bad submission signature.")
        cid = secrets.token_urlsafe(12)
        token = secrets.token_urlsafe(32) if attachments else None
        self.contacts[cid] = StoredContact(cid, pool, mailbox, data, attachments, token, complete=not attachments)
        self.messages.setdefault(mailbox.key_id.hex(), [])
        if token:
            return web.json_response({"contact": cid, "status": "pending", "upload_token": token}, status=201)
        return web.json_response(
            {"contact": cid, "status": "complete", "receipt": self._receipt(cid, data)}, status=201
        )

    def _pending(self, request: web.Request) -> StoredContact | web.Response:
        contact = self.contacts.get(request.match_info["cid"])
        if contact is None:
            return _error(404, "not_found", "No such contact.")
        if contact.token is None or request.headers.get("Safe-Passage-Upload") != contact.token:
            return _error(403, "bad_upload_token", "Bad token.")
        return contact

    async def chunk(self, request: web.Request) -> web.Response:
        contact = self._pending(request)
        if isinstance(contact, web.Response):
            return contact
        att, idx = int(request.match_info["att"]), int(request.match_info["idx"])
        frame = await request.read()
        fields = E.parse_chunk_frame(frame)
        got = contact.chunks.setdefault(att, [])
        if (fields.attachment, fields.index) != (att, idx) or idx != len(got) or att >= contact.attachments:
            return _error(409, "chunk_out_of_order", "Out of order.")
        got.append(frame)
        return web.json_response({"attachment": att, "index": idx, "final": fields.final}, status=201)

    async def finalise(self, request: web.Request) -> web.Response:
        contact = self._pending(request)
        if isinstance(contact, web.Response):
            return contact
        finals = sum(1 for frames in contact.chunks.values() if frames and E.parse_chunk_frame(frames[-1]).final)
        if finals != contact.attachments:
            return _error(409, "attachments_incomplete", "Incomplete.")
        contact.complete = True
        cid = contact.contact_id
        return web.json_response(
            {"contact": cid, "status": "complete", "receipt": self._receipt(cid, contact.envelope)}
        )

    # --- mailboxes ---------------------------------------------------------------------------------

    async def mailbox_challenge(self, request: web.Request) -> web.Response:
        nonce = secrets.token_bytes(32)
        self.nonces[nonce] = request.match_info["mid"]
        return web.json_response({"nonce": b64e(nonce), "expires": int(time.time()) + 300}, status=201)

    def _mailbox_key(self, mid: str) -> VerifyKey | None:
        return next((c.mailbox for c in self.contacts.values() if c.mailbox.key_id.hex() == mid), None)

    async def mailbox_fetch(self, request: web.Request) -> web.Response:
        mid = request.match_info["mid"]
        body = await request.json()
        nonce, sig = b64d(body["nonce"], length=32), b64d(body["signature"], length=64)
        key = self._mailbox_key(mid)
        if self.nonces.pop(nonce, None) != mid or key is None:
            return _error(403, "mailbox_auth_failed", "Mailbox authentication failed.")
        try:
            verify_mailbox_auth(key, nonce, sig)
        except SafePassageError:
            return _error(403, "mailbox_auth_failed", "Mailbox authentication failed.")
        after = body.get("after", 0)
        replies = [m for m in self.messages.get(mid, []) if m.kind == "reply"]
        out = [
            {"id": m.message_id, "contact": m.contact_id, "day": _today(), "seq": seq, "envelope": b64e(m.envelope)}
            for seq, m in enumerate(replies, start=1)
            if seq > after
        ]
        return web.json_response({"messages": out[: self.fetch_page]})

    async def follow_up(self, request: web.Request) -> web.Response:
        mid, cid = request.match_info["mid"], request.query["contact"]
        contact = self.contacts.get(cid)
        if contact is None or contact.mailbox.key_id.hex() != mid:
            return _error(404, "not_found", "No such contact for this mailbox.")
        data = await request.read()
        refused = self._check_pow(request) or self._check_envelope(data, E.Purpose.FOLLOW_UP, contact.pool)
        if refused:
            return refused
        try:
            verify_submission(
                contact.mailbox,
                b64d(request.headers["Safe-Passage-Signature"], length=64),
                kind="follow-up",
                pool=contact.pool,
                attachments=0,
                envelope=data,
                contact_id=cid,
            )
        except SafePassageError:
            return _error(403, "bad_signature", "Bad submission signature.")
        message_id = secrets.token_urlsafe(12)
        self.messages.setdefault(mid, []).append(StoredMessage(message_id, cid, "follow-up", data))
        return web.json_response({"message": message_id, "receipt": self._receipt(message_id, data)}, status=201)

    def add_reply(self, mailbox_id: str, contact_id: str, envelope: bytes) -> str:
        message_id = secrets.token_urlsafe(12)
        self.messages.setdefault(mailbox_id, []).append(StoredMessage(message_id, contact_id, "reply", envelope))
        return message_id
