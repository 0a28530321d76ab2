"""Handler intake-key rotation and forward secrecy, against the real apps (protocol 7.3).

A contact that arrived under last week's intake key; ``handler rotate`` makes
the next key, re-seals that case to the local archive key and destroys the
expired key. Then: a copy of the server database taken before the rotation
opens with nothing left on the handler's machine; the admins list the new key
and a new contact arrives under it through the real intake; the handler reads,
replies to and escalates both cases, the old one from its archive.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import secrets
from pathlib import Path

import pytest
from sqlalchemy import select

from safepassage.client.applicant import check_mailbox
from safepassage.client.errors import UsageError
from safepassage.client.handler import escalate, inbox, key_schedule, login, read_case, reply
from safepassage.client.handler_rotate import rotate
from safepassage.client.handler_vault import HandlerPaths, open_handler_vault, read_enrolment_document
from safepassage.client.intake_api import IntakeClient
from safepassage.client.trust import fetch_trusted_directory
from safepassage.crypto import envelope as E
from safepassage.crypto.directory import Handler, IntegrationService
from safepassage.crypto.errors import NotARecipient
from safepassage.crypto.intake import AttachmentInfo, Contact, FollowUp
from safepassage.crypto.keys import HybridPublicKey, VerifyKey
from safepassage.crypto.staffmsg import Escalation
from safepassage.crypto.threshold import KeySet
from safepassage.server.context import INTAKE
from safepassage.server.db.models import Chunk, Mailbox, Message
from safepassage.server.db.models import Contact as ContactRow
from safepassage.server.integration.keys import (
    NEXT_SIGNING_KEY_FILE,
    SIGNING_KEY_FILE,
    add_encryption_key,
    create_next_signing_key,
    create_officer_vault,
    load_signing_key,
    open_officer_keys,
)
from safepassage.server.integration.models import Package
from safepassage.server.keys import create_next_receipt_key, load_keys
from safepassage.server.staff.totp import Totp, TotpSecret, counter_at

from .deployment import now_ts
from .handler_env import FLOOR, PASSPHRASE, PASSWORD
from .helpers import signing_key
from .intake_calls import Applicant, Calls
from .integration_service import Integration
from .staff_deployment import StaffDeployment, enrol_with_client, new_case, public_calls, staff  # noqa: F401
from .test_handler_e2e import CANARY, _contact, _enrolled

pytestmark = pytest.mark.timeout(240)

DAY = 86400
ROSTER = {"alice": ("general",), "bob": ("general", "science"), "carol": ("general",)}
OLD_TEXT = "canary-old-7f1: contact from last week"


def _dana(paths: HandlerPaths, file: Path) -> Handler:
    handler_id, identity, entry = read_enrolment_document(file)
    return Handler(handler_id, "Dana", VerifyKey(identity), ("general",), (entry,))


async def _last_week_contact(sd: StaffDeployment, paths: HandlerPaths, blob: bytes) -> tuple[str, Applicant]:
    """A contact sealed last week to the pool's keys of then (dana's old key included), stored as the intake would."""
    dep = sd.dep
    applicant = Applicant()
    info = AttachmentInfo("plan.bin", "application/octet-stream", len(blob), 2)
    payload = applicant.contact("general", OLD_TEXT, (info,))
    _, keys = open_handler_vault(paths, PASSPHRASE)
    others = [dep.org.intake[h].public_key for h in ROSTER]
    sealed = E.seal(payload, [keys.intake[0].entry.key, *others], E.Purpose.CONTACT)
    frames = list(sealed.attachment_sealer(0).seal_stream(io.BytesIO(blob)))
    case_id = secrets.token_urlsafe(16)
    day = dt.date.today() - dt.timedelta(days=8)
    async with dep.store.write() as session:
        session.add(
            Mailbox(
                id=applicant.mailbox_id,
                public_key=applicant.keys.mailbox_key.verify_key.public_bytes_raw(),
                created_day=day,
            )
        )
        await session.flush()  # the contact refers to the mailbox
        session.add(
            ContactRow(
                id=case_id,
                mailbox_id=applicant.mailbox_id,
                pool="general",
                owner="dana",
                day=day,
                bucket=sealed.header.bucket,
                state="complete",
                status="new",
                attachments=1,
                server_sealed=False,
                envelope=sealed.data,
                envelope_hash=sealed.envelope_hash,
            )
        )
        await session.flush()  # the chunks refer to the contact
        for i, frame in enumerate(frames):
            session.add(Chunk(contact_id=case_id, attachment=0, index=i, final=i == len(frames) - 1, frame=frame))
    return case_id, applicant


async def _follow_up(sd: StaffDeployment, case_id: str, applicant: Applicant, key: HybridPublicKey, text: str) -> str:
    """A follow-up sealed to ``key`` (and the pool's others), stored as the intake would."""
    dep = sd.dep
    payload = FollowUp(case_id, text, applicant.keys.mailbox_key.verify_key).seal_payload(applicant.keys.mailbox_key)
    sealed = E.seal(payload, [key, *(dep.org.intake[h].public_key for h in ROSTER)], E.Purpose.FOLLOW_UP)
    message_id = secrets.token_urlsafe(16)
    async with dep.store.write() as session:
        session.add(
            Message(
                id=message_id,
                mailbox_id=applicant.mailbox_id,
                contact_id=case_id,
                kind="follow-up",
                day=dt.date.today(),
                bucket=sealed.header.bucket,
                envelope=sealed.data,
                envelope_hash=sealed.envelope_hash,
                seq=1,
            )
        )
    return message_id


async def test_rotation_archives_destroys_and_the_next_key_carries_a_full_case(
    staff: StaffDeployment,  # noqa: F811
    integration: Integration,
    public_calls: Calls,  # noqa: F811
    tmp_path: Path,
) -> None:
    dep = staff.dep
    # Enrolled ten days ago with a seven-day key: expired three days ago, past the two-day grace.
    week_ago = now_ts() - 10 * DAY
    paths, totp = await enrol_with_client(staff, tmp_path, validity_days=7, now=week_ago)
    start = now_ts() - 3600
    roster = tuple(dep.org.handler(h, p, start=start) for h, p in ROSTER.items())
    await staff.publish(dep.org.directory(2, handlers=(*roster, _dana(paths, paths.intake_key))))
    await integration.service.keeper.refresh()
    staff.clock.advance(30)
    await login(paths, password=PASSWORD, code=Totp(TotpSecret(totp[0])).code_at(counter_at(staff.clock())))

    blob = os.urandom(E.CHUNK_DATA_MAX + 999)
    old_case, applicant = await _last_week_contact(staff, paths, blob)
    async with dep.store.read() as session:
        copy_before = await session.scalar(select(ContactRow.envelope).where(ContactRow.id == old_case))
    assert copy_before is not None
    _, before = open_handler_vault(paths, PASSPHRASE)
    old_key_id = before.intake[0].private.key_id

    # What her own commands tell her now: her listed key ended, and it is still in the vault.
    due = await key_schedule(paths)
    assert len(due) == 1, due
    assert due[0].startswith("You have no current intake key"), due
    pre = await read_case(paths, PASSPHRASE, old_case, tmp_path / "pre")
    assert any("is still in your vault" in n for n in pre.key_notices), pre.key_notices

    done = await rotate(paths, PASSPHRASE)  # the admins' period (no policy: 7 days)
    assert done.destroyed == (old_key_id,)
    assert done.archived_cases == 1
    assert done.new_key is not None
    assert done.new_key.not_after - done.new_key.not_before == 7 * DAY
    assert "Your next key is made (next-intake-key.json): ask the admins to list it." in (await key_schedule(paths))[0]

    # Forward secrecy: nothing in the vault opens the server's copy any more.
    _, after = open_handler_vault(paths, PASSPHRASE)
    assert old_key_id not in {k.private.key_id for k in after.intake}
    with pytest.raises(NotARecipient):
        E.open_envelope(copy_before, after.opening_keys, expected_purpose=E.Purpose.CONTACT)
    # ...and the archive holds no plaintext.
    for file in paths.archive.rglob("*"):
        if file.is_file():
            assert OLD_TEXT.encode() not in file.read_bytes()
            assert blob[:64] not in file.read_bytes()

    # The old case still reads, from the archive, with every check.
    reading = await read_case(paths, PASSPHRASE, old_case, tmp_path / "old")
    assert reading.contact.message == OLD_TEXT
    assert (tmp_path / "old" / "plan.bin").read_bytes() == blob
    assert any("local archive key" in v for v in reading.verified)

    # Rotating again destroys nothing more and archives nothing twice.
    again = await rotate(paths, PASSPHRASE, new_key=False)
    assert again.destroyed == ()
    assert again.archived_cases == 0

    # The admins list the new key (from next-intake-key.json); a new contact arrives under it.
    await staff.publish(dep.org.directory(3, handlers=(*roster, _dana(paths, paths.next_intake_key))))
    await integration.service.keeper.refresh()
    new_case_id, _ = await new_case(staff, public_calls, owner="dana", message="canary-new-2c4")
    async with dep.store.read() as session:
        envelope = await session.scalar(select(ContactRow.envelope).where(ContactRow.id == new_case_id))
    assert done.new_key.key.key_id in E.parse_header(envelope).recipients
    assert {c.case_id for c in await inbox(paths)} == {old_case, new_case_id}
    fresh = await read_case(paths, PASSPHRASE, new_case_id, tmp_path / "new")
    assert fresh.contact.message == "canary-new-2c4"
    assert fresh.key_notices == ()
    assert await key_schedule(paths) == ()

    # A follow-up to the old case arrives under the new key; when that key is destroyed in
    # turn, the follow-up is archived although its contact was archived long before.
    later = await _follow_up(staff, old_case, applicant, done.new_key.key, "canary-later-9d1")
    staff.clock.advance(10 * DAY)
    await login(paths, password=PASSWORD, code=Totp(TotpSecret(totp[0])).code_at(counter_at(staff.clock())))
    third = await rotate(paths, PASSPHRASE, days=7, now=int(staff.clock()))
    assert third.destroyed == (done.new_key.key.key_id,)
    assert (paths.archive / old_case / f"m.{later}").is_file()
    _, now_keys = open_handler_vault(paths, PASSPHRASE)
    async with dep.store.read() as session:
        server_copy = await session.scalar(select(Message.envelope).where(Message.id == later))
    with pytest.raises(NotARecipient):
        E.open_envelope(server_copy, now_keys.opening_keys, expected_purpose=E.Purpose.FOLLOW_UP)
    reread = await read_case(paths, PASSPHRASE, old_case, tmp_path / "old-again", now=int(staff.clock()))
    assert [f.text for f in reread.follow_ups] == ["canary-later-9d1"]

    # Reply to and escalate the archived case: the officer gets the contact and the attachment.
    await reply(paths, PASSPHRASE, old_case, "received")
    escalation = await _escalated(staff, integration, paths, old_case)
    assert Contact.open_payload(escalation.contact).message == OLD_TEXT


async def test_identity_rotation_through_the_admins_then_reply_and_escalation(
    staff: StaffDeployment,  # noqa: F811
    integration: Integration,
    tmp_path: Path,
) -> None:
    dep = staff.dep
    paths, _ = await _enrolled(staff, integration, tmp_path)
    case_id, sent = await _contact(staff)
    _, before = open_handler_vault(paths, PASSPHRASE)

    done = await rotate(paths, PASSPHRASE, new_key=False, identity=True)
    assert done.new_identity is not None
    assert done.new_identity != before.identity.verify_key
    with pytest.raises(UsageError):
        await rotate(paths, PASSPHRASE, new_key=False, identity=True)
    # Until the admins list it, the old identity still signs (the directory lists the old one).
    await reply(paths, PASSPHRASE, case_id, "first, under the old identity")

    start = now_ts() - 3600
    roster = tuple(dep.org.handler(h, p, start=start) for h, p in ROSTER.items())
    await staff.publish(dep.org.directory(3, handlers=(*roster, _dana(paths, paths.new_identity))))
    await integration.service.keeper.refresh()
    await reply(paths, PASSPHRASE, case_id, "second, under the new identity")
    async with IntakeClient(dep.base_url) as client:
        trusted = await fetch_trusted_directory(client, dep.org.admin_set.fingerprint(), None, now_ts())
        replies = await check_mailbox(client, trusted, sent.codename)  # type: ignore[attr-defined]
    # The applicant verifies each reply against the handler's identity in the directory it trusts now.
    texts = {r.text for r in replies}
    assert "second, under the new identity" in texts
    escalated = await escalate(paths, PASSPHRASE, case_id, "assessment", integration=integration.base_url)
    async with integration.store.read() as session:
        package = await session.get(Package, escalated.package_id)
    assert package is not None
    assert package.state == "complete"

    # The next rotation run sees the listing and makes the new identity the only one.
    promoted = await rotate(paths, PASSPHRASE, new_key=False)
    assert promoted.identity_promoted
    _, after = open_handler_vault(paths, PASSPHRASE)
    assert after.identity.verify_key == done.new_identity
    assert after.identity_next is None


async def test_integration_key_rotation_then_escalation(
    staff: StaffDeployment,  # noqa: F811
    integration: Integration,
    tmp_path: Path,
) -> None:
    dep = staff.dep
    vault = tmp_path / "officer.vault"
    create_officer_vault(vault, PASSPHRASE, [dep.org.integration_key], **FLOOR)
    new = add_encryption_key(vault, PASSPHRASE)
    held = open_officer_keys(vault, PASSPHRASE)
    assert {k.key_id for k in held} == {dep.org.integration_key.key_id, new.key_id}

    paths, _ = await _enrolled(staff, integration, tmp_path)
    case_id, _ = await _contact(staff)
    start = now_ts() - 3600
    roster = tuple(dep.org.handler(h, p, start=start) for h, p in ROSTER.items())
    service = IntegrationService(dep.org.integration_signing.verify_key, (new.public_key,))
    await staff.publish(dep.org.directory(3, handlers=(*roster, _dana(paths, paths.intake_key)), integration=service))
    await integration.service.keeper.refresh()
    escalated = await escalate(paths, PASSPHRASE, case_id, "assessment", integration=integration.base_url)
    async with integration.store.read() as session:
        package = await session.get(Package, escalated.package_id)
    assert package is not None
    # Sealed to the new key only; the officer's vault (old and new keys) opens it.
    assert E.parse_header(package.envelope).recipients == (new.key_id,)
    with pytest.raises(NotARecipient):
        E.open_envelope(package.envelope, [dep.org.integration_key], expected_purpose=E.Purpose.ESCALATION)
    opened = E.open_envelope(package.envelope, held, expected_purpose=E.Purpose.ESCALATION)
    assert Escalation.open_payload(opened.plaintext, dep.directory).contact_id == case_id


async def test_integration_signing_key_rotation_then_a_full_case(
    staff: StaffDeployment,  # noqa: F811
    integration: Integration,
    tmp_path: Path,
) -> None:
    """The integration service's signing key: the next key waits beside the current one; the
    admins list it; the first receipt after the publication is signed with it (the service reads
    the directory again before signing while a rotation waits), and the old key is gone."""
    dep = staff.dep
    keys_dir = integration.config.keys_dir
    paths, _ = await _enrolled(staff, integration, tmp_path)
    old = load_signing_key(keys_dir)
    waiting = create_next_signing_key(keys_dir)
    # Until the admins list it, nothing changes: receipts are still signed with the old key.
    await _full_case(staff, integration, paths, tmp_path / "before", "before the signing key")
    assert integration.service.signing_key.verify_key == old.verify_key

    start = now_ts() - 3600
    roster = (*(dep.org.handler(h, p, start=start) for h, p in ROSTER.items()), _dana(paths, paths.intake_key))
    service = IntegrationService(waiting.verify_key, dep.directory.integration.encryption_keys)
    await staff.publish(dep.org.directory(3, handlers=roster, integration=service))
    # No explicit refresh of the service: the receipt path does it while a rotation waits.
    await _full_case(staff, integration, paths, tmp_path / "after", "after the signing key")
    assert integration.service.signing_key.verify_key == waiting.verify_key
    assert load_signing_key(keys_dir).verify_key == waiting.verify_key
    assert not (keys_dir / NEXT_SIGNING_KEY_FILE).exists()
    assert old.seed_bytes_raw() not in (keys_dir / SIGNING_KEY_FILE).read_bytes()
    async with integration.store.read() as session:
        assert len((await session.scalars(select(Package))).all()) == 2


async def test_receipt_key_and_admin_set_rotations_then_a_full_case(
    staff: StaffDeployment,  # noqa: F811
    integration: Integration,
    tmp_path: Path,
) -> None:
    """The server's receipt key, then the admin set (one admin replaced, signed by 2 of the old
    set and 2 of the new), each followed by a contact checked against the new state, read,
    replied to and escalated; the applicant pinned the original organisation throughout."""
    dep = staff.dep
    paths, _ = await _enrolled(staff, integration, tmp_path)
    start = now_ts() - 3600
    roster = (*(dep.org.handler(h, p, start=start) for h, p in ROSTER.items()), _dana(paths, paths.intake_key))

    waiting = create_next_receipt_key(dep.config.keys_dir).verify_key
    await staff.publish(dep.org.directory(3, handlers=roster, receipt_key=waiting), next_receipt_key=waiting)
    await dep.app[INTAKE].refresh()  # a publication naming the waiting key completes the rotation
    dep.keys = load_keys(dep.config.keys_dir)
    assert dep.keys.receipt.verify_key == waiting
    await integration.service.keeper.refresh()
    await _full_case(staff, integration, paths, tmp_path / "after-receipt-key", "after the receipt key")

    a0, a1, _replaced = dep.org.admins
    newcomer = signing_key("admin-newcomer")
    new_set = KeySet((a0.verify_key, a1.verify_key, newcomer.verify_key), 2)
    changed = dep.org.directory(4, handlers=roster, receipt_key=waiting, admins=new_set)
    await staff.publish(changed, signers=[a0, a1, newcomer])
    await dep.app[INTAKE].refresh()
    await integration.service.keeper.refresh()
    await _full_case(staff, integration, paths, tmp_path / "after-admin-set", "after the admin set")


async def _full_case(
    staff: StaffDeployment,  # noqa: F811
    integration: Integration,
    paths: HandlerPaths,
    out: Path,
    reply_text: str,
) -> None:
    """A contact (receipt checked by the client against the directory it walked to from the pinned
    organisation), read, replied to (the applicant verifies it), escalated (the officer opens it)."""
    dep = staff.dep
    case_id, sent = await _contact(staff)
    reading = await read_case(paths, PASSPHRASE, case_id, out)
    assert reading.contact.message == CANARY
    await reply(paths, PASSPHRASE, case_id, reply_text)
    async with IntakeClient(dep.base_url) as client:
        trusted = await fetch_trusted_directory(client, dep.org.admin_set.fingerprint(), None, now_ts())
        replies = await check_mailbox(client, trusted, sent.codename)  # type: ignore[attr-defined]
    assert [r.text for r in replies] == [reply_text]
    escalation = await _escalated(staff, integration, paths, case_id)
    assert escalation.contact_id == case_id


async def _escalated(
    staff: StaffDeployment,  # noqa: F811
    integration: Integration,
    paths: HandlerPaths,
    case_id: str,
) -> Escalation:
    """Escalate ``case_id`` with the handler client; the stored package complete, as the officer opens it."""
    dep = staff.dep
    escalated = await escalate(paths, PASSPHRASE, case_id, "assessment", integration=integration.base_url)
    async with integration.store.read() as session:
        package = await session.get(Package, escalated.package_id)
    assert package is not None
    assert package.state == "complete"
    opened = E.open_envelope(package.envelope, [dep.org.integration_key], expected_purpose=E.Purpose.ESCALATION)
    return Escalation.open_payload(opened.plaintext, dep.directory)
