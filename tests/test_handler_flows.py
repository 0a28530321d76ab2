"""The handler client's library flows against the staff and integration stand-ins (tests/fake_staff.py).

The stand-ins check what they receive with the real crypto; the tests open
what the client produced with the other parties' real keys (the applicant's
codename, the integration officer's key) and play a hostile staff server:
envelopes sealed to someone else, forged applicant signatures, tampered or
truncated attachments, a receipt from the wrong key.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safepassage.client.applicant import check_mailbox
from safepassage.client.case_files import safe_file_name
from safepassage.client.errors import ServerRefused
from safepassage.client.handler import (
    AttachmentMismatch,
    CaseMismatch,
    NotListed,
    OutputFolderError,
    enroll,
    escalate,
    handover,
    inbox,
    logout,
    read_case,
    reply,
    set_status,
)
from safepassage.client.handler_vault import NotLoggedIn, Profile, SavedSession, open_handler_vault
from safepassage.client.intake_api import IntakeClient
from safepassage.crypto import envelope as E
from safepassage.crypto.codename import derive_applicant_keys
from safepassage.crypto.encoding import canonical_json
from safepassage.crypto.errors import (
    BadSignature,
    DecryptionFailed,
    NotARecipient,
    UntrustedRoot,
    VaultExists,
    WrongPassphrase,
)
from safepassage.crypto.intake import AttachmentInfo, Contact, FollowUp
from safepassage.crypto.keys import SigningKey
from safepassage.crypto.staffmsg import Escalation, Reply
from safepassage.crypto.vault import Passphrase, vault_cost

from .fake_intake import FakeIntake, StoredContact, honest_view
from .fake_staff import FakeOrg
from .handler_env import FLOOR, FP, ORG, PASSPHRASE, PASSWORD, World, enroll_dana, handler_world, publish
from .helpers import hybrid_key, signing_key

pytestmark = pytest.mark.timeout(120)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --- enrolment -------------------------------------------------------------------------------------------


async def test_enrol_writes_a_private_vault_and_the_public_entry(tmp_path: Path) -> None:
    async with handler_world(tmp_path, listed_pools=None) as world:
        paths = world.paths
        for path in (paths.vault, paths.intake_key, paths.profile, paths.state, paths.session):
            assert mode(path) == 0o600, path
        assert vault_cost(paths.vault) == (FLOOR["opslimit"], FLOOR["memlimit"])
        _, keys = open_handler_vault(paths, PASSPHRASE)
        assert keys.handler_id == "dana"
        assert keys.org == FP
        [held] = keys.intake
        assert held.entry.not_after - held.entry.not_before == 7 * 86400
        document = json.loads(paths.intake_key.read_text())
        assert set(document) == {"type", "handler", "identity_key", "intake_key"}
        assert set(document["intake_key"]) == {"key", "not_before", "not_after", "sig"}
        # Public keys only: no private material in the file for admins.
        held.entry.verify("dana", keys.identity.verify_key)
        assert document["intake_key"] == json.loads(canonical_json(held.entry.to_json()))
        text = paths.intake_key.read_text()
        assert held.to_bytes().decode() not in text
        assert Profile.load(paths) == Profile("dana", world.url, world.url, FP)
        assert world.org.staff.accounts["dana"].active
        # The account's TOTP secret is nowhere on disk.
        for path in paths.vault.parent.iterdir():
            assert world.totp_secret.encode() not in path.read_bytes()


async def test_enrol_checks_everything_local_before_the_server(tmp_path: Path) -> None:
    intake = FakeIntake(honest_view([ORG.signed(ORG.directory())], ORG.admins[:2]), receipt_key=ORG.receipt)
    publish(intake)
    org = FakeOrg.around(intake, ORG.integration_signing)
    paths_dir = tmp_path / "h"
    paths_dir.mkdir(mode=0o700)
    from safepassage.client.handler_vault import HandlerPaths

    paths = HandlerPaths(paths_dir / "dana.vault")
    async with org.running() as url:
        wrong = " ".join(["12345"] * 10)

        async def attempt(**kwargs: object) -> None:
            args: dict[str, object] = {
                "staff": url,
                "invitation": org.staff.invite("dana"),
                "password": PASSWORD,
                "vault": paths.vault,
                "passphrase": PASSPHRASE,
                "intake": url,
                "org": FP,
                "totp_code": lambda a: "000000",
                **FLOOR,
                **kwargs,
            }
            await enroll(**args)  # type: ignore[arg-type]

        with pytest.raises(UntrustedRoot):
            await attempt(org=wrong)
        from safepassage.crypto.errors import WeakPassphrase

        with pytest.raises(WeakPassphrase):
            await attempt(passphrase=Passphrase("short"))
        assert org.staff.accounts == {}
        assert list(paths_dir.iterdir()) == []

        # A refused code is asked for again; the vault appears only after confirmation.
        codes = iter(["000000", "111111"])
        calls: list[str] = []

        def code(answer: object) -> str:
            calls.append("x")
            secret = answer.totp_secret.reveal()  # type: ignore[attr-defined]
            import pyotp

            return next(codes, None) or pyotp.TOTP(secret).now()

        done = await enroll(
            staff=url,
            invitation=org.staff.invite("dana"),
            password=PASSWORD,
            vault=paths.vault,
            passphrase=PASSPHRASE,
            intake=url,
            org=FP,
            totp_code=code,
            validity_days=3,
            **FLOOR,
        )
        assert len(calls) == 3
        assert done.intake_key.not_after - done.intake_key.not_before == 3 * 86400
        assert "dana" in repr(done)
        assert done.identity_fingerprint not in repr(done)
        with pytest.raises(VaultExists):
            await enroll_dana(url, org, paths)


# --- triage, reading, replying ---------------------------------------------------------------------------------


async def test_read_reply_and_the_applicant_verifies(tmp_path: Path) -> None:
    blob = os.urandom(E.CHUNK_DATA_MAX + 777)
    report = tmp_path / "report.pdf"
    report.write_bytes(blob)
    odd = tmp_path / ".\u202eevil\x1b[2J.txt"
    odd.write_bytes(b"odd")
    async with handler_world(tmp_path) as world:
        sent = await world.applicant_sends("Я инженер. canary-h1", [report, odd])
        other = await world.applicant_sends("not mine", owner="alice")
        cases = await inbox(world.paths)
        assert [c.case_id for c in cases] == [sent.contact_id]
        assert cases[0].attachments == 2
        out = tmp_path / "out"
        reading = await read_case(world.paths, PASSPHRASE, sent.contact_id, out)
        assert reading.contact.message == "Я инженер. canary-h1"
        assert reading.contact.fields == {"role": "officer"}
        assert mode(out) == 0o700
        files = sorted(out.iterdir())
        assert [p.name for p in files] == ["evil[2J.txt", "report.pdf"]
        assert all(mode(p) == 0o600 for p in files)
        assert (out / "report.pdf").read_bytes() == blob
        assert any("mailbox signature" in v for v in reading.verified)
        assert any("2 chunk(s)" in v for v in reading.verified)
        assert "canary" not in repr(reading)

        # Reading again never overwrites: the second copy gets a new name.
        await read_case(world.paths, PASSPHRASE, sent.contact_id, out)
        assert (out / "report (2).pdf").read_bytes() == blob
        assert not [p for p in out.iterdir() if p.name.startswith(".")]

        posted = await reply(world.paths, PASSPHRASE, sent.contact_id, "Мы получили. canary-r1")
        assert world.org.staff.status[sent.contact_id] == "replied"
        async with IntakeClient(world.url) as client:
            trusted = await world.trusted()
            [got] = await check_mailbox(client, trusted, sent.codename)
        assert got.verified
        assert got.handler_id == "dana"
        assert got.text == "Мы получили. canary-r1"
        assert got.message_id == posted.message_id

        again = await read_case(world.paths, PASSPHRASE, sent.contact_id, tmp_path / "out2")
        [mine] = again.replies
        assert mine.text == "Мы получили. canary-r1"
        assert mine.handler_id == "dana"

        # Someone else's case is not ours to read.
        with pytest.raises(ServerRefused) as info:
            await read_case(world.paths, PASSPHRASE, other.contact_id, tmp_path / "out3")
        assert info.value.status == 404
        assert not (tmp_path / "out3").exists()


async def test_follow_ups_are_verified_and_forged_ones_flagged(tmp_path: Path) -> None:
    async with handler_world(tmp_path) as world:
        sent = await world.applicant_sends("first")
        keys = derive_applicant_keys(sent.codename)
        from safepassage.client.applicant import send_follow_up

        async with IntakeClient(world.url) as client:
            trusted = await world.trusted()
            await send_follow_up(client, trusted, sent.codename, sent.contact_id, "second canary-f", pool="general")
        # A follow-up signed by another mailbox, planted by the server.
        stranger = signing_key("stranger")
        forged = FollowUp(sent.contact_id, "forged", stranger.verify_key).seal_payload(stranger)
        recipients = [k for _, k in trusted.directory.recipients("general", int(time.time()))]
        from .fake_intake import StoredMessage

        world.intake.messages[keys.mailbox_id.hex()].append(
            StoredMessage(
                "m_forged0001", sent.contact_id, "follow-up", E.seal(forged, recipients, E.Purpose.FOLLOW_UP).data
            )
        )
        reading = await read_case(world.paths, PASSPHRASE, sent.contact_id, tmp_path / "out")
        good, bad = reading.follow_ups
        assert good.text == "second canary-f"
        assert bad.text is None
        assert bad.problem is not None


# --- hostile cases ------------------------------------------------------------------------------------------------


def _plant(
    world: World, payload: bytes, recipients: list, chunks: dict[int, list[bytes]] | None = None, n: int = 0
) -> str:
    """Store a case the way a hostile server or applicant could shape it."""
    mailbox = signing_key("planted-mailbox")
    sealed = E.seal(payload, recipients, E.Purpose.CONTACT)
    cid = "c_planted" + os.urandom(4).hex()
    world.intake.contacts[cid] = StoredContact(
        cid, "general", mailbox.verify_key, sealed.data, n, None, complete=True, chunks=chunks or {}
    )
    world.org.staff.owners[cid] = "dana"
    return cid


def _contact(mailbox: SigningKey, attachments: tuple[AttachmentInfo, ...] = (), message: str = "m") -> Contact:
    return Contact(
        pool="general",
        language="en",
        message=message,
        fields={},
        attachments=attachments,
        reply_key=hybrid_key("applicant-reply").public_key,
        mailbox_key=mailbox.verify_key,
        origin="cli",
    )


def _dana_key(world: World) -> list:
    _, keys = open_handler_vault(world.paths, PASSPHRASE)
    return [keys.intake[0].private.public_key]


async def test_wrong_passphrase_and_foreign_envelope_write_nothing(tmp_path: Path) -> None:
    async with handler_world(tmp_path) as world:
        sent = await world.applicant_sends("x")
        out = tmp_path / "out"
        with pytest.raises(WrongPassphrase):
            await read_case(world.paths, Passphrase("not the passphrase at all"), sent.contact_id, out)
        mailbox = signing_key("planted-mailbox")
        payload = _contact(mailbox).seal_payload(mailbox)
        cid = _plant(world, payload, [ORG.intake["alice"].public_key])
        with pytest.raises(NotARecipient):
            await read_case(world.paths, PASSPHRASE, cid, out)
        assert not out.exists()


async def test_forged_signature_and_wrong_mailbox_are_refused(tmp_path: Path) -> None:
    async with handler_world(tmp_path) as world:
        mailbox = signing_key("planted-mailbox")
        payload = _contact(mailbox, message="genuine words").seal_payload(mailbox)
        forged = payload.replace(b"genuine words", b"altered words")
        cid = _plant(world, forged, _dana_key(world))
        out = tmp_path / "out"
        out.mkdir(mode=0o700)
        with pytest.raises(BadSignature):
            await read_case(world.paths, PASSPHRASE, cid, out)
        with pytest.raises(BadSignature):
            await reply(world.paths, PASSPHRASE, cid, "no")
        good = _plant(world, payload, _dana_key(world))
        world.org.staff.mailbox_override[good] = "ab" * 32
        with pytest.raises(CaseMismatch):
            await read_case(world.paths, PASSPHRASE, good, out)
        assert list(out.iterdir()) == []
        assert world.org.staff.status.get(cid) is None


async def test_tampered_or_truncated_attachments_write_nothing(tmp_path: Path) -> None:
    async with handler_world(tmp_path) as world:
        blob = os.urandom(E.CHUNK_DATA_MAX + 10)
        path = tmp_path / "doc.bin"
        path.write_bytes(blob)
        sent = await world.applicant_sends("with file", [path])
        frames = world.intake.contacts[sent.contact_id].chunks[0]
        out = tmp_path / "out"
        tampered = bytearray(frames[1])
        tampered[100] ^= 1
        world.org.staff.chunk_override[(sent.contact_id, 0, 1)] = bytes(tampered)
        with pytest.raises(DecryptionFailed):
            await read_case(world.paths, PASSPHRASE, sent.contact_id, out)
        assert not out.exists()
        # A chunk swapped in from another position fails too.
        world.org.staff.chunk_override[(sent.contact_id, 0, 1)] = frames[0]
        out.mkdir(mode=0o700)
        with pytest.raises(DecryptionFailed):
            await read_case(world.paths, PASSPHRASE, sent.contact_id, out)
        assert list(out.iterdir()) == []

        # Declared size differs from what the chunks carry (a hostile applicant or a broken client).
        mailbox = signing_key("planted-mailbox")
        info = AttachmentInfo("a.txt", "text/plain", 10, 1)
        contact = _contact(mailbox, (info,))
        sealed = E.seal(contact.seal_payload(mailbox), _dana_key(world), E.Purpose.CONTACT)
        frame = sealed.attachment_sealer(0).seal_chunk(b"12345", final=True)
        cid = "c_short" + os.urandom(4).hex()
        world.intake.contacts[cid] = StoredContact(
            cid, "general", mailbox.verify_key, sealed.data, 1, None, complete=True, chunks={0: [frame]}
        )
        world.org.staff.owners[cid] = "dana"
        with pytest.raises(AttachmentMismatch):
            await read_case(world.paths, PASSPHRASE, cid, out)
        assert list(out.iterdir()) == []


async def test_output_folder_must_be_private(tmp_path: Path) -> None:
    async with handler_world(tmp_path) as world:
        path = tmp_path / "doc.bin"
        path.write_bytes(b"data")
        sent = await world.applicant_sends("with file", [path])
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o700)
        os.chmod(shared, 0o750)  # noqa: S103  # the point: a folder the group may read is refused
        with pytest.raises(OutputFolderError):
            await read_case(world.paths, PASSPHRASE, sent.contact_id, shared)
        assert list(shared.iterdir()) == []


# --- escalation ---------------------------------------------------------------------------------------------------


async def test_escalate_delivers_a_package_the_officer_can_verify(tmp_path: Path) -> None:
    blob = os.urandom(2 * E.CHUNK_DATA_MAX + 3)
    path = tmp_path / "plans.bin"
    path.write_bytes(blob)
    async with handler_world(tmp_path) as world:
        sent = await world.applicant_sends("escalate me canary-e", [path])
        await reply(world.paths, PASSPHRASE, sent.contact_id, "answer one")
        done = await escalate(world.paths, PASSPHRASE, sent.contact_id, "Credible. canary-note", integration=world.url)
        assert done.attachments == 1
        assert done.replies == 1
        [(package_id, _)] = world.org.staff.escalations[sent.contact_id]
        assert package_id == done.package_id
        assert world.org.staff.status[sent.contact_id] == "escalated"
        package = world.org.integration.packages[done.package_id]
        assert package.complete
        # The officer opens it with the integration key and checks every signature.
        opened = E.open_envelope(package.envelope, [ORG.integration_key], expected_purpose=E.Purpose.ESCALATION)
        directory = world.intake.view.directory
        escalation = Escalation.open_payload(opened.plaintext, directory)
        assert escalation.handler_id == "dana"
        assert escalation.assessment == "Credible. canary-note"
        contact = Contact.open_payload(escalation.contact)
        assert contact.message == "escalate me canary-e"
        assert contact.mailbox_key.key_id == sent.mailbox_id
        [r] = escalation.replies
        assert Reply.open_payload(r, directory).message == "answer one"
        opener = opened.attachment_opener(0)
        assert b"".join(opener.open_chunk(f) for f in package.chunks[0]) == blob
        assert opener.finish() == 3


async def test_a_receipt_from_the_wrong_key_is_not_recorded(tmp_path: Path) -> None:
    async with handler_world(tmp_path) as world:
        sent = await world.applicant_sends("x")
        world.org.integration.signing_key = signing_key("not-the-integration-service")
        with pytest.raises(BadSignature):
            await escalate(world.paths, PASSPHRASE, sent.contact_id, "note", integration=world.url)
        assert world.org.staff.escalations == {}


async def test_an_unlisted_handler_cannot_sign_replies_or_packages(tmp_path: Path) -> None:
    async with handler_world(tmp_path, listed_pools=None) as world:
        with pytest.raises(NotListed):
            await reply(world.paths, PASSPHRASE, "c_anything1", "hello")
        with pytest.raises(NotListed):
            await escalate(world.paths, PASSPHRASE, "c_anything1", "note", integration=world.url)


# --- status, handover, sessions ---------------------------------------------------------------------------------


async def test_status_handover_and_logout(tmp_path: Path) -> None:
    async with handler_world(tmp_path) as world:
        sent = await world.applicant_sends("x")
        await set_status(world.paths, sent.contact_id, "reviewing")
        assert [c.status for c in await inbox(world.paths, status="reviewing")] == ["reviewing"]
        assert await inbox(world.paths, status="closed") == []
        world.org.staff.accounts.setdefault("alice", world.org.staff.accounts["dana"])
        await handover(world.paths, sent.contact_id, "alice")
        assert await inbox(world.paths) == []
        token = SavedSession.load(world.paths).token
        assert token.reveal() not in repr(SavedSession.load(world.paths))
        await logout(world.paths)
        assert not world.paths.session.exists()
        assert token.reveal() not in world.org.staff.sessions
        with pytest.raises(NotLoggedIn):
            await inbox(world.paths)


async def test_a_session_the_server_ended_is_forgotten(tmp_path: Path) -> None:
    async with handler_world(tmp_path) as world:
        world.org.staff.sessions.clear()
        with pytest.raises(NotLoggedIn):
            await inbox(world.paths)
        assert not world.paths.session.exists()


async def test_inbox_reads_every_page(tmp_path: Path) -> None:
    async with handler_world(tmp_path) as world:
        ids = {(await world.applicant_sends(f"m{i}")).contact_id for i in range(3)}
        from safepassage.client import staff_api

        original = staff_api.StaffClient.list_cases

        async def small_pages(self: staff_api.StaffClient, **kwargs: object) -> staff_api.CasePage:
            return await original(self, **{**kwargs, "limit": 1})  # type: ignore[arg-type]

        staff_api.StaffClient.list_cases = small_pages  # type: ignore[method-assign]
        try:
            assert {c.case_id for c in await inbox(world.paths)} == ids
        finally:
            staff_api.StaffClient.list_cases = original  # type: ignore[method-assign]


# --- file names ----------------------------------------------------------------------------------------------------


def test_safe_file_names() -> None:
    assert safe_file_name("report.pdf", 0) == "report.pdf"
    assert safe_file_name("../../etc/passwd", 0) == "_.._etc_passwd"
    assert safe_file_name("..", 2) == "attachment-3"
    assert safe_file_name(".bashrc", 0) == "bashrc"
    assert safe_file_name("a\u202etxt.exe", 0) == "atxt.exe"
    assert safe_file_name("C:\\x.doc", 0) == "C__x.doc"
    long = "я" * 300 + ".pdf"
    assert len(safe_file_name(long, 0).encode()) <= 200
    assert safe_file_name(long, 0).endswith(".pdf")


@given(st.text(min_size=1, max_size=300))
def test_safe_file_names_never_escape(name: str) -> None:
    out = safe_file_name(name, 0)
    assert out
    assert "/" not in out
    assert "\\" not in out
    assert not out.startswith(".")
    assert out not in (".", "..")
    assert len(out.encode()) <= 200
    assert all(ch.isprintable() or ch == " " for ch in out)
    assert Path(out).name == out
