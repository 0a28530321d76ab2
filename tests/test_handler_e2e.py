"""The handler client against the real apps: public intake, staff app and integration service.

On SQLite and on PostgreSQL (the ``deployment`` fixture), over real HTTP on
loopback: a handler enrols with an invitation, the admins list the keys from
its ``intake-key.json``, an applicant writes through the real intake, and the
handler logs in, reads, replies and escalates with the library flows. Then the
other side checks: the applicant's client verifies the reply, the officer's
key opens the package and every signature in it holds, and no table of either
database holds the plaintext. Hostile cases are played by changing rows in the
staff database, as a seized or dishonest server could.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select, update

from safepassage.client.applicant import check_mailbox, send_contact
from safepassage.client.handler import escalate, inbox, login, read_case, reply, set_status
from safepassage.client.handler_vault import HandlerPaths, open_handler_vault
from safepassage.client.intake_api import IntakeClient
from safepassage.client.trust import fetch_trusted_directory
from safepassage.crypto import envelope as E
from safepassage.crypto.errors import BadSignature, DecryptionFailed, NotARecipient, WrongPassphrase
from safepassage.crypto.intake import Contact
from safepassage.crypto.staffmsg import Escalation, Reply
from safepassage.crypto.vault import Passphrase
from safepassage.server.db.models import Chunk, EscalationRecord
from safepassage.server.db.models import Contact as ContactRow
from safepassage.server.integration.models import Package, PackageChunk
from safepassage.server.staff.totp import Totp, TotpSecret, counter_at

from .deployment import now_ts
from .handler_env import PASSPHRASE, PASSWORD, listed
from .integration_service import Integration
from .staff_deployment import StaffDeployment, enrol_with_client, staff  # noqa: F401

pytestmark = pytest.mark.timeout(240)

CANARY = "canary-5e0c77: я полковник, документы при мне"
NOTE = "canary-note-91: credible, urgent"
ROSTER = {"alice": ("general",), "bob": ("general", "science"), "carol": ("general",)}


async def _enrolled(sd: StaffDeployment, integration: Integration, tmp_path: Path) -> tuple[HandlerPaths, str]:
    dep = sd.dep
    paths, secrets = await enrol_with_client(sd, tmp_path)
    # The admins list dana from intake-key.json (after comparing fingerprints out of band).
    start = now_ts() - 3600
    handlers = tuple(dep.org.handler(h, p, start=start) for h, p in ROSTER.items())
    await sd.publish(dep.org.directory(2, handlers=(*handlers, listed(paths, ("general",)))))
    await integration.service.keeper.refresh()
    sd.clock.advance(30)
    await login(paths, password=PASSWORD, code=Totp(TotpSecret(secrets[0])).code_at(counter_at(sd.clock())))
    return paths, secrets[0]


async def _contact(
    sd: StaffDeployment, *, pool: str = "general", attachments: tuple[Path, ...] = ()
) -> tuple[str, object]:
    dep = sd.dep
    async with IntakeClient(dep.base_url) as client:
        trusted = await fetch_trusted_directory(client, dep.org.admin_set.fingerprint(), None, now_ts())
        sent = await send_contact(
            client,
            trusted,
            pool=pool,
            language="ru",
            message=CANARY,
            fields={"role": "colonel"},
            attachments=list(attachments),
        )
    async with dep.store.write() as session:
        await session.execute(update(ContactRow).where(ContactRow.id == sent.contact_id).values(owner="dana"))
    return sent.contact_id, sent


async def _rows(store: object, tables: object) -> bytes:
    out = b""
    async with store.read() as session:  # type: ignore[attr-defined]
        for table in tables:  # type: ignore[attr-defined]
            for row in (await session.execute(select(table))).all():
                out += repr(tuple(row)).encode()
    return out


async def test_enrol_read_reply_escalate_through_the_real_apps(
    staff: StaffDeployment,  # noqa: F811
    integration: Integration,
    tmp_path: Path,
) -> None:
    dep = staff.dep
    paths, _ = await _enrolled(staff, integration, tmp_path)
    blob = os.urandom(E.CHUNK_DATA_MAX + 4321)
    attachment = tmp_path / "orders.pdf"
    attachment.write_bytes(blob)
    case_id, sent = await _contact(staff, attachments=(attachment,))

    [case] = await inbox(paths)
    assert (case.case_id, case.pool, case.attachments, case.status) == (case_id, "general", 1, "new")

    out = tmp_path / "out"
    reading = await read_case(paths, PASSPHRASE, case_id, out)
    assert reading.contact.message == CANARY
    assert reading.contact.fields == {"role": "colonel"}
    assert (out / "orders.pdf").read_bytes() == blob
    assert any("mailbox key's id equals the case's mailbox id" in v for v in reading.verified)

    await set_status(paths, case_id, "reviewing")
    posted = await reply(paths, PASSPHRASE, case_id, "Мы получили. Ждите.")
    async with IntakeClient(dep.base_url) as client:
        trusted = await fetch_trusted_directory(client, dep.org.admin_set.fingerprint(), None, now_ts())
        [got] = await check_mailbox(client, trusted, sent.codename)  # type: ignore[attr-defined]
    assert (got.message_id, got.handler_id, got.text) == (posted.message_id, "dana", "Мы получили. Ждите.")

    done = await escalate(paths, PASSPHRASE, case_id, NOTE, integration=integration.base_url)
    async with dep.store.read() as session:
        record = await session.get(EscalationRecord, done.package_id)
        status = await session.scalar(select(ContactRow.status).where(ContactRow.id == case_id))
    assert record is not None
    assert status == "escalated"
    async with integration.store.read() as session:
        package = await session.get(Package, done.package_id)
        frames = (
            await session.scalars(
                select(PackageChunk.frame)
                .where(PackageChunk.package_id == done.package_id)
                .order_by(PackageChunk.index)
            )
        ).all()
    assert package is not None
    assert package.state == "complete"
    # The officer: open with the integration key, check the handler's and the applicant's signatures.
    opened = E.open_envelope(package.envelope, [dep.org.integration_key], expected_purpose=E.Purpose.ESCALATION)
    directory = staff.dep.directory
    escalation = Escalation.open_payload(opened.plaintext, directory)
    assert (escalation.handler_id, escalation.contact_id, escalation.assessment) == ("dana", case_id, NOTE)
    assert Contact.open_payload(escalation.contact).message == CANARY
    assert [Reply.open_payload(r, directory).message for r in escalation.replies] == ["Мы получили. Ждите."]
    opener = opened.attachment_opener(0)
    assert b"".join(opener.open_chunk(f) for f in frames) == blob
    opener.finish()

    # Neither server kept anything readable.
    from safepassage.server.db.models import Base
    from safepassage.server.integration.models import IntegrationBase

    for text in (CANARY, NOTE, "Мы получили"):
        needle = text.encode()
        assert needle not in await _rows(dep.store, Base.metadata.sorted_tables)
        assert needle not in await _rows(integration.store, IntegrationBase.metadata.sorted_tables)


async def test_hostile_staff_rows_write_nothing(
    staff: StaffDeployment,  # noqa: F811
    integration: Integration,
    tmp_path: Path,
) -> None:
    dep = staff.dep
    paths, _ = await _enrolled(staff, integration, tmp_path)
    out = tmp_path / "out"

    # Wrong passphrase.
    case_id, _ = await _contact(staff)
    with pytest.raises(WrongPassphrase):
        await read_case(paths, Passphrase("certainly not the passphrase"), case_id, out)

    # A case sealed to someone else (the science pool is bob's alone), routed to dana.
    foreign, _ = await _contact(staff, pool="science")
    with pytest.raises(NotARecipient):
        await read_case(paths, PASSPHRASE, foreign, out)

    # An applicant signature that does not verify: the stored envelope replaced by a forged one.
    _, keys = open_handler_vault(paths, PASSPHRASE)
    from .helpers import hybrid_key, signing_key

    mailbox = signing_key("forger")
    genuine = Contact(
        pool="general", language="ru", message="genuine", fields={}, attachments=(),
        reply_key=hybrid_key("forger-reply").public_key, mailbox_key=mailbox.verify_key, origin="cli",
    ).seal_payload(mailbox)  # fmt: skip
    forged = E.seal(genuine.replace(b"genuine", b"altered"), [keys.intake[0].entry.key], E.Purpose.CONTACT)
    async with dep.store.write() as session:
        await session.execute(update(ContactRow).where(ContactRow.id == case_id).values(envelope=forged.data))
    with pytest.raises(BadSignature):
        await read_case(paths, PASSPHRASE, case_id, out)

    # A tampered chunk.
    blob = os.urandom(E.CHUNK_DATA_MAX + 1)
    attachment = tmp_path / "doc.bin"
    attachment.write_bytes(blob)
    with_file, _ = await _contact(staff, attachments=(attachment,))
    async with dep.store.write() as session:
        frame = await session.scalar(select(Chunk.frame).where(Chunk.contact_id == with_file, Chunk.index == 1))
        assert frame is not None
        bad = bytearray(frame)
        bad[-1] ^= 1
        await session.execute(
            update(Chunk).where(Chunk.contact_id == with_file, Chunk.index == 1).values(frame=bytes(bad))
        )
    with pytest.raises(DecryptionFailed):
        await read_case(paths, PASSPHRASE, with_file, out)
    with pytest.raises(DecryptionFailed):
        await escalate(paths, PASSPHRASE, with_file, NOTE, integration=integration.base_url)
    assert not out.exists()

    # A receipt from the wrong key: the service's signing key swapped for one the directory does not list.
    plain, _ = await _contact(staff)
    integration.service.signing_key = signing_key("not-the-integration-service")
    with pytest.raises(BadSignature):
        await escalate(paths, PASSPHRASE, plain, NOTE, integration=integration.base_url)
    async with dep.store.read() as session:
        assert (await session.scalars(select(EscalationRecord))).all() == []
