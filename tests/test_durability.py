"""Kill -9 in the middle of a stream of submissions: what was acknowledged is there, nothing is half-written.

The intake runs as ``safepassage server run`` in its own process, on SQLite and
on PostgreSQL. Eight applicants submit contacts (a third of them with a
two-chunk attachment) as fast as the server takes them; once a number of
receipts have come back the server gets SIGKILL with requests in flight. It is
started again on the same folder, and then:

* every contact whose receipt came back is stored, complete, its envelope is
  the one the receipt names, and the owner handler's key opens it (and its
  attachment, chunk by chunk);
* every other stored row is whole: a complete contact has every chunk and
  opens; a pending contact (attachments still uploading, by design resumable
  until its window closes) holds a gap-free run of chunks that open, and the
  interrupted uploads resume and finish after the restart; every mailbox row
  has the contact it was created with; SQLite passes ``integrity_check``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select, text

from safepassage.crypto import envelope as E
from safepassage.crypto import pow as W
from safepassage.crypto.encoding import b64d
from safepassage.crypto.intake import AttachmentInfo
from safepassage.crypto.intake import Contact as ContactPayload
from safepassage.crypto.keys import HybridPrivateKey
from safepassage.crypto.receipt import Receipt
from safepassage.server.app import CLOCK_SKEW_MARGIN, housekeeping
from safepassage.server.config import load_config
from safepassage.server.context import Intake
from safepassage.server.db.engine import Store, make_engine
from safepassage.server.db.models import Chunk, Mailbox
from safepassage.server.db.models import Contact as ContactRow
from safepassage.server.keys import load_keys

from .deployment import now_ts
from .durability import FAST, Service, server_folder
from .helpers import Org
from .intake_calls import Applicant, seal_for

pytestmark = pytest.mark.timeout(240)

WORKERS = 8
KILL_AFTER = 24  # receipts before the kill
CHUNK_TAIL = 777  # the attachment is one full chunk and this many bytes more


@dataclass
class Upload:
    contact_id: str
    token: str
    frames: list[bytes]
    envelope_hash: bytes
    acked: int = 0  # chunks the server answered 201 for


@dataclass
class Sent:
    """What the applicants hold: receipts, interrupted uploads, and how many requests the kill cut off."""

    receipts: dict[str, Receipt] = field(default_factory=dict)
    uploads: dict[str, Upload] = field(default_factory=dict)
    known: set[str] = field(default_factory=set)  # every contact id the server told an applicant
    cut_off: int = 0


class Stream:
    def __init__(self, base: str, org: Org, sent: Sent) -> None:
        self.base, self.org, self.sent = base, org, sent
        self.recipients = [org.intake[h].public_key for h in org.handler_ids]
        self.stop = asyncio.Event()
        self.enough = asyncio.Event()

    async def _pow(self, http: aiohttp.ClientSession) -> str:
        async with http.post(self.base + "/api/v1/pow") as r:
            assert r.status == 201, r.status
            challenge = W.Challenge.from_text((await r.json())["challenge"])
        return f"{challenge.to_text()}.{await asyncio.to_thread(W.solve, challenge)}"

    async def one(self, http: aiohttp.ClientSession, n: int) -> None:
        applicant = Applicant()
        attachments = 1 if n % 3 == 0 else 0
        infos: tuple[AttachmentInfo, ...] = ()
        if attachments:
            size = E.CHUNK_DATA_MAX + CHUNK_TAIL
            infos = (AttachmentInfo("scan.bin", "application/octet-stream", size, 2),)
        sealed = seal_for(self.recipients, applicant.contact(attachments=infos))
        headers = applicant.submission_headers(sealed.data, "general", attachments, await self._pow(http))
        url = f"{self.base}/api/v1/contacts?pool=general&attachments={attachments}"
        async with http.post(url, data=sealed.data, headers=headers) as r:
            assert r.status == 201, (r.status, await r.text())
            body = await r.json()
        self.sent.known.add(body["contact"])
        if not attachments:
            self._receipt(body["receipt"], sealed.envelope_hash)
            return
        sealer = sealed.attachment_sealer(0)
        frames = [
            sealer.seal_chunk(os.urandom(E.CHUNK_DATA_MAX), final=False),
            sealer.seal_chunk(b"\x07" * CHUNK_TAIL, final=True),
        ]
        upload = Upload(body["contact"], body["upload_token"], frames, sealed.envelope_hash)
        self.sent.uploads[upload.contact_id] = upload
        await self.finish(http, upload)

    async def finish(self, http: aiohttp.ClientSession, upload: Upload) -> None:
        headers = {"Safe-Passage-Upload": upload.token, "Content-Type": "application/octet-stream"}
        base = f"{self.base}/api/v1/contacts/{upload.contact_id}"
        for i in range(upload.acked, len(upload.frames)):
            async with http.put(f"{base}/attachments/0/chunks/{i}", data=upload.frames[i], headers=headers) as r:
                assert r.status == 201, (r.status, await r.text())
            upload.acked = i + 1
        async with http.post(f"{base}/finalise", headers={"Safe-Passage-Upload": upload.token}) as r:
            assert r.status == 200, (r.status, await r.text())
            receipt = (await r.json())["receipt"]
        del self.sent.uploads[upload.contact_id]
        self._receipt(receipt, upload.envelope_hash)

    def _receipt(self, raw: dict[str, str], envelope_hash: bytes) -> None:
        receipt = Receipt(raw["contact"], b64d(raw["envelope"]), raw["day"], b64d(raw["sig"]))
        receipt.verify(self.org.receipt.verify_key, envelope_hash=envelope_hash)
        self.sent.receipts[receipt.contact_id] = receipt
        if len(self.sent.receipts) >= KILL_AFTER:
            self.enough.set()

    async def worker(self, http: aiohttp.ClientSession, w: int) -> None:
        n = w
        while not self.stop.is_set():
            try:
                await self.one(http, n)
            except (aiohttp.ClientError, ConnectionError):
                # Only the kill may break a request; any refusal is an assertion above.
                assert self.stop.is_set(), "a request failed before the kill"
                self.sent.cut_off += 1
                return
            n += WORKERS


async def _stream_and_kill(service: Service, org: Org, sent: Sent) -> None:
    stream = Stream(service.url, org, sent)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        workers = [asyncio.create_task(stream.worker(http, w)) for w in range(WORKERS)]
        done = asyncio.create_task(stream.enough.wait())
        await asyncio.wait([done, *workers], timeout=150, return_when=asyncio.FIRST_COMPLETED)
        assert stream.enough.is_set(), "the stream did not reach the kill point"
        stream.stop.set()
        service.kill()
        await asyncio.gather(*workers)


async def _resume(service: Service, org: Org, sent: Sent, stored: dict[str, int]) -> None:
    stream = Stream(service.url, org, sent)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        for upload in list(sent.uploads.values()):
            # A chunk can be stored with its answer lost to the kill: go on after what is there.
            upload.acked = stored[upload.contact_id]
            await stream.finish(http, upload)


def _open(row: ContactRow, chunks: list[Chunk], keys: dict[str, HybridPrivateKey]) -> None:
    opened = E.open_envelope(row.envelope, [keys[row.owner]], expected_purpose=E.Purpose.CONTACT)
    contact = ContactPayload.open_payload(opened.plaintext)
    assert row.attachments == len(contact.attachments)
    if not row.attachments:
        assert chunks == []
        return
    assert [c.index for c in chunks] == list(range(len(chunks))), "a gap in the stored chunks"
    opener = opened.attachment_opener(0)
    for c in chunks:
        opener.open_chunk(c.frame)
    if row.state == "complete":
        assert len(chunks) == contact.attachments[0].chunks
        assert chunks[-1].final
        opener.finish()
    else:
        assert not any(c.final for c in chunks[:-1])


@dataclass
class Stored:
    states: dict[str, str]
    chunks: dict[str, int]


async def _check_store(url: str, sent: Sent, keys: dict[str, HybridPrivateKey]) -> Stored:
    """Check every stored row; return each contact's state and number of chunks."""
    store = Store(make_engine(url))
    try:
        async with store.read() as session:
            if store.is_sqlite:
                assert (await session.execute(text("PRAGMA integrity_check"))).scalar() == "ok"
            rows = {r.id: r for r in (await session.scalars(select(ContactRow))).all()}
            chunks: dict[str, list[Chunk]] = {}
            for c in (await session.scalars(select(Chunk).order_by(Chunk.contact_id, Chunk.index))).all():
                chunks.setdefault(c.contact_id, []).append(c)
            empty_mailboxes = await session.scalar(
                select(func.count())
                .select_from(Mailbox)
                .where(~select(ContactRow.id).where(ContactRow.mailbox_id == Mailbox.id).exists())
            )
    finally:
        await store.close()
    assert empty_mailboxes == 0, "a mailbox row without the contact it was created with"
    assert set(chunks) <= set(rows), "chunks of a contact that is not stored"
    for contact_id, receipt in sent.receipts.items():
        row = rows.get(contact_id)
        assert row is not None, f"acknowledged contact {contact_id} is missing"
        assert row.state == "complete"
        assert row.envelope_hash == receipt.envelope_hash
        assert row.day.isoformat() == receipt.day
    for row in rows.values():
        _open(row, chunks.get(row.id, []), keys)
    for upload in sent.uploads.values():
        row = rows.get(upload.contact_id)
        assert row is not None, "a contact acknowledged as pending is missing"
        assert len(chunks.get(upload.contact_id, [])) >= upload.acked, "an acknowledged chunk is missing"
    return Stored({r.id: r.state for r in rows.values()}, {i: len(chunks.get(i, [])) for i in rows})


@contextlib.contextmanager
def _running(service: Service) -> Iterator[Service]:
    service.start()
    try:
        yield service
    finally:
        service.stop()


async def test_contacts_survive_sigkill_mid_stream(tmp_path: Path, database_url: str) -> None:
    org = Org()
    data = await asyncio.to_thread(server_folder, tmp_path, org, database_url)
    keys = dict(org.intake)
    url = load_config(data).url
    service = Service("server", data, "/api/v1/directory", env=dict(FAST))
    sent = Sent()
    with _running(service):
        await _stream_and_kill(service, org, sent)
    assert service.proc is not None
    assert service.proc.returncode == -9
    assert sent.cut_off >= 1, "the kill did not land mid-stream"
    before = await _check_store(url, sent, keys)

    with _running(service):
        # Interrupted uploads resume where their acknowledged chunks end, and finish.
        await _resume(service, org, sent, before.chunks)
    after = await _check_store(url, sent, keys)
    assert set(after.states) == set(before.states)
    assert sent.uploads == {}
    assert len(sent.receipts) >= KILL_AFTER
    # Left pending: only contacts whose first answer the kill swallowed (nobody holds their
    # upload token); they hold no chunk and go when their upload window closes.
    for contact_id, state in after.states.items():
        if state != "complete":
            assert contact_id not in sent.known
            assert after.chunks[contact_id] == 0
    # ...and they do go: the intake's housekeeping, run as of the end of their upload window,
    # leaves the acknowledged contacts, their mailboxes and chunks, and nothing else.
    await _housekeeping_after_the_upload_window(data)
    final = await _check_store(url, sent, keys)
    assert set(final.states.values()) <= {"complete"}
    assert set(sent.receipts) <= set(final.states)
    assert final.chunks == {i: after.chunks[i] for i in final.states}


async def _housekeeping_after_the_upload_window(data: Path) -> None:
    config = load_config(data)
    store = Store(make_engine(config.url))
    try:
        later = now_ts() + 3600 * (config.upload_window_hours + 1) + CLOCK_SKEW_MARGIN + config.pow_lifetime
        await housekeeping(Intake.create(config, load_keys(config.keys_dir), store), now=later)
    finally:
        await store.close()
