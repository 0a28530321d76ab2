"""The integration API through a real service and a real intake, on SQLite and PostgreSQL.

Every answer is checked against docs/openapi/integration.yaml; every refusal is
checked to have stored nothing (the whole database before and after).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import replace

import pytest

from safepassage.crypto import envelope as E
from safepassage.crypto.encoding import b64e
from safepassage.crypto.envelope import CHUNK_DATA_MAX
from safepassage.crypto.staffmsg import Escalation, IntegrationReceipt, sign_delivery
from safepassage.server.integration.app import housekeeping
from safepassage.server.integration.models import Package, PackageChunk
from safepassage.server.security import HEADERS

from .helpers import hybrid_key, signing_key
from .integration_service import ASSESSMENT, CANARY, BuiltPackage, Integration


def _receipt(integration: Integration, body: dict[str, object], pkg: BuiltPackage) -> IntegrationReceipt:
    receipt = IntegrationReceipt.from_json(body)
    receipt.verify(integration.deployment.directory, envelope_hash=hashlib.sha256(pkg.envelope).digest())
    assert receipt.package_id == pkg.package_id
    return receipt


async def test_a_package_with_attachments_is_stored_then_receipted(integration: Integration) -> None:
    files = [os.urandom(CHUNK_DATA_MAX + 1000), b"", os.urandom(10)]
    pkg = integration.package(files=files)
    answer = await integration.post(pkg)
    assert answer.status == 201
    assert answer.body["status"] == "pending"
    assert "receipt" not in answer.body  # no receipt before every chunk is committed
    for name, value in HEADERS.items():
        assert answer.headers[name] == value
    token = answer.body["upload_token"]
    early = await integration.finalise(pkg, token)
    assert (early.status, early.body["error"]["code"]) == (409, "attachments_incomplete")
    for a, frames in enumerate(pkg.frames):
        for i in range(len(frames)):
            chunk = await integration.put_chunk(pkg, token, a, i)
            assert chunk.status == 201
            assert chunk.body == {"attachment": a, "index": i, "final": i == len(frames) - 1}
    done = await integration.finalise(pkg, token)
    assert done.status == 200
    receipt = _receipt(integration, done.body["receipt"], pkg)
    again = await integration.finalise(pkg, token)
    assert again.body == done.body  # a handler that lost the answer can ask again

    async with integration.store.read() as session:
        row = await session.get(Package, pkg.package_id)
        assert row is not None
        assert (row.state, row.handler, row.attachments, row.upload_expires) == ("complete", "alice", 3, None)
        assert row.day.isoformat() == receipt.day
        assert row.envelope == pkg.envelope
        # What is stored opens with the officer's key, and is the handler's signed escalation.
        opened = E.open_envelope(row.envelope, [integration.org.integration_key], expected_purpose=E.Purpose.ESCALATION)
        escalation = Escalation.open_payload(opened.plaintext, integration.deployment.directory)
        assert escalation.assessment == ASSESSMENT
        for a, data in enumerate(files):
            opener = opened.attachment_opener(a)
            got = b""
            for i in range(len(pkg.frames[a])):
                chunk = await session.get(PackageChunk, (pkg.package_id, a, i))
                assert chunk is not None
                got += opener.open_chunk(chunk.frame)
            opener.finish()
            assert got == data


async def test_a_package_without_attachments_is_complete_at_once(integration: Integration) -> None:
    pkg = integration.package()
    answer = await integration.post(pkg)
    assert answer.status == 201
    assert answer.body["status"] == "complete"
    assert "upload_token" not in answer.body
    _receipt(integration, answer.body["receipt"], pkg)


async def _refused(integration: Integration, answer_status: int, code: str, call) -> None:  # type: ignore[no-untyped-def]
    before = await integration.snapshot()
    answer = await call
    assert (answer.status, answer.body["error"]["code"]) == (answer_status, code), answer.body
    assert await integration.snapshot() == before


async def test_refusals_store_nothing(integration: Integration) -> None:
    org = integration.org
    good = integration.package(files=[b"x"])

    # Tampered envelope: one bit of the body flipped after the handler signed the delivery.
    tampered = bytearray(good.envelope)
    tampered[-1] ^= 1
    await _refused(integration, 403, "bad_signature", integration.post(good, body=bytes(tampered)))
    # Tampered header: no longer an envelope at all.
    await _refused(integration, 400, "malformed_envelope", integration.post(good, body=good.envelope[:-1]))
    # Mis-signed delivery: bob's key over alice's delivery; alice's over another attachment count.
    mis = integration.package(delivery_signer=org.identities["bob"])
    await _refused(integration, 403, "bad_signature", integration.post(mis))
    await _refused(integration, 403, "bad_signature", integration.post(good, attachments=2))
    # A handler the directory never listed.
    stranger = sign_delivery(
        signing_key("stranger"), handler_id="mallory", package_id=good.package_id, envelope=good.envelope, attachments=1
    )
    await _refused(
        integration,
        403,
        "unknown_handler",
        integration.post(good, **{"Safe-Passage-Handler": "mallory", "Safe-Passage-Signature": b64e(stranger)}),
    )
    # Wrong recipients: sealed to the integration key and a handler's intake key; or only to another key.
    extra = integration.package(recipients=[org.integration_key.public_key, org.intake["alice"].public_key])
    await _refused(integration, 422, "recipients_mismatch", integration.post(extra))
    other = integration.package(recipients=[hybrid_key("not-the-integration-key").public_key])
    await _refused(integration, 422, "recipients_mismatch", integration.post(other))
    # Wrong purpose: a contact envelope, validly signed as a delivery.
    contact = integration.package(purpose=E.Purpose.CONTACT)
    await _refused(integration, 400, "wrong_purpose", integration.post(contact))
    # Malformed requests.
    await _refused(integration, 400, "malformed_request", integration.post(good, **{"Safe-Passage-Package": "short"}))
    await _refused(integration, 400, "malformed_request", integration.post(good, **{"Safe-Passage-Handler": "Alice"}))
    await _refused(integration, 403, "missing_signature", integration.post(good, **{"Safe-Passage-Signature": ""}))
    await _refused(integration, 400, "malformed_request", integration.post(good, **{"Safe-Passage-Signature": "AA"}))
    await _refused(integration, 400, "malformed_request", integration.post(good, attachments=65))
    await _refused(
        integration, 415, "unsupported_media_type", integration.post(good, **{"Content-Type": "application/json"})
    )
    # Oversized: one byte more than the largest envelope the service accepts.
    from safepassage.server.integration.api import MAX_ENVELOPE

    await _refused(integration, 413, "payload_too_large", integration.post(good, body=bytes(MAX_ENVELOPE + 1)))
    # And the good one still goes through afterwards.
    answer = await integration.post(good)
    assert answer.status == 201


async def test_replays_are_refused(integration: Integration) -> None:
    org = integration.org
    pkg = integration.package()
    assert (await integration.post(pkg)).status == 201
    # The same delivery again.
    await _refused(integration, 409, "replayed", integration.post(pkg))
    # The same envelope under a new package id, properly signed.
    resigned = replace(
        pkg,
        package_id="another-package-id",
        signature=sign_delivery(
            org.identities["alice"],
            handler_id="alice",
            package_id="another-package-id",
            envelope=pkg.envelope,
            attachments=0,
        ),
    )
    await _refused(integration, 409, "replayed", integration.post(resigned))
    # A new envelope under the stored package id.
    reused = integration.package(package_id=pkg.package_id)
    await _refused(integration, 409, "replayed", integration.post(reused))


async def test_chunks_in_order_with_the_right_token_only(integration: Integration) -> None:
    files = [os.urandom(2 * CHUNK_DATA_MAX + 1), os.urandom(5)]
    pkg = integration.package(files=files)
    other = integration.package(files=[b"y"])
    answer = await integration.post(pkg)
    token = answer.body["upload_token"]
    other_token = (await integration.post(other)).body["upload_token"]
    frames = pkg.frames

    await _refused(integration, 409, "chunk_out_of_order", integration.put_chunk(pkg, token, 0, 1))
    await _refused(integration, 403, "bad_upload_token", integration.put_chunk(pkg, other_token, 0, 0))
    await _refused(integration, 403, "bad_upload_token", integration.put_chunk(pkg, "", 0, 0))
    await _refused(
        integration, 400, "malformed_chunk", integration.put_chunk(pkg, token, 0, 0, frame=frames[0][0][:-1])
    )
    await _refused(integration, 400, "malformed_chunk", integration.put_chunk(pkg, token, 1, 0, frame=frames[0][0]))
    await _refused(
        integration,
        400,
        "attachment_out_of_range",
        integration.put_chunk(pkg, token, 2, 0, frame=_reframed(frames[0][0], 2)),
    )
    missing = replace(pkg, package_id="no-such-package")
    await _refused(integration, 404, "not_found", integration.put_chunk(missing, token, 0, 0))

    assert (await integration.put_chunk(pkg, token, 0, 0)).status == 201
    await _refused(integration, 409, "chunk_out_of_order", integration.put_chunk(pkg, token, 0, 0))
    assert (await integration.put_chunk(pkg, token, 0, 1)).status == 201
    assert (await integration.put_chunk(pkg, token, 0, 2)).status == 201
    await _refused(
        integration,
        409,
        "attachment_complete",
        integration.put_chunk(pkg, token, 0, 3, frame=_reindexed(frames[0][2], 3)),
    )
    await _refused(integration, 409, "attachments_incomplete", integration.finalise(pkg, token))
    assert (await integration.put_chunk(pkg, token, 1, 0)).status == 201
    assert (await integration.finalise(pkg, token)).status == 200
    await _refused(integration, 409, "already_complete", integration.put_chunk(pkg, token, 1, 0))


def _reframed(frame: bytes, attachment: int) -> bytes:
    """The same chunk with another attachment number in its public frame (the tag no longer matches)."""
    return frame[:4] + attachment.to_bytes(2, "big") + frame[6:]


def _reindexed(frame: bytes, index: int) -> bytes:
    return frame[:6] + index.to_bytes(4, "big") + frame[10:]


async def test_a_revoked_handler_cannot_deliver_or_finish(integration: Integration) -> None:
    deployment = integration.deployment
    pending = integration.package(handler="carol", files=[b"z"])
    token = (await integration.post(pending)).body["upload_token"]
    assert (await integration.put_chunk(pending, token, 0, 0)).status == 201
    fresh = integration.package(handler="carol")

    # The admins remove carol; the service's next refresh sees it.
    current = deployment.directory
    await integration.publish(
        replace(current, version=2, handlers=tuple(h for h in current.handlers if h.handler_id != "carol"))
    )
    assert integration.service.directory().version == 2

    await _refused(integration, 403, "unknown_handler", integration.post(fresh))
    await _refused(integration, 403, "unknown_handler", integration.finalise(pending, token))
    # Others are unaffected.
    assert (await integration.post(integration.package(handler="alice"))).status == 201


async def test_expired_uploads_are_deleted(integration: Integration) -> None:
    pkg = integration.package(files=[b"a", b"b"])
    token = (await integration.post(pkg)).body["upload_token"]
    assert (await integration.put_chunk(pkg, token, 0, 0)).status == 201
    kept = integration.package()
    assert (await integration.post(kept)).status == 201
    async with integration.store.write() as session:
        row = await session.get(Package, pkg.package_id)
        assert row is not None
        assert row.upload_expires is not None
        assert row.upload_expires % 3600 == 0  # kept to the hour
        row.upload_expires = 3600
    await _refused(integration, 409, "upload_expired", integration.put_chunk(pkg, token, 1, 0))
    assert await housekeeping(integration.service) == 1
    snapshot = await integration.snapshot()
    assert [r[0] for r in snapshot["packages"]] == [kept.package_id]
    assert snapshot["package_chunks"] == []
    # Gone from the files too (SQLite: secure_delete, and the write-ahead log checkpointed).
    traces = (pkg.envelope[1000:1064], pkg.frames[0][0][5000:5064])
    for path in integration.config.data_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not any(trace in content for trace in traces), path


async def test_a_chunk_is_refused_before_its_body_is_read(integration: Integration) -> None:
    """Without the upload token nobody can make the service buffer (or wait for) a 1 MiB body."""
    host, port = integration.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"PUT /integration/v1/packages/AAAAAAAAAAAAAAAA/attachments/0/chunks/0 HTTP/1.1\r\nHost: x\r\n"
        b"Safe-Passage-Upload: wrong\r\nContent-Type: application/octet-stream\r\n"
        + f"Content-Length: {E.CHUNK_LEN}\r\n\r\n".encode()
        + bytes(1000)
    )
    await writer.drain()
    try:
        status_line = await asyncio.wait_for(reader.readline(), timeout=5.0)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 404"), status_line


async def test_nothing_readable_reaches_the_database_or_the_logs(
    integration: Integration, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pkg = integration.package(files=[CANARY.encode() * 100])
    await integration.deliver(pkg)
    await integration.post(pkg)  # a refusal too
    await integration.service.keeper.refresh()
    snapshot = repr(await integration.snapshot()).encode()
    for needle in (CANARY.encode(), CANARY.encode("unicode_escape"), ASSESSMENT.encode()):
        assert needle not in snapshot
    assert CANARY not in caplog.text
    assert ASSESSMENT not in caplog.text
    for path in integration.config.data_dir.rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes()
