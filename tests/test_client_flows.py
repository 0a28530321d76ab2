"""The applicant's flows and the `safepassage contact` commands, against the stand-in intake.

The stand-in (:mod:`tests.fake_intake`) checks proof of work, signatures and
recipient sets with the real crypto, and the tests open what it stored with
the handlers' real keys: a contact the client sends must be one a handler can
read and verify. The real server's end-to-end tests live with the server.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from safepassage.client.applicant import Progress, Reply, check_mailbox, send_contact, send_follow_up
from safepassage.client.cli import main
from safepassage.client.errors import (
    AttachmentChanged,
    AttachmentError,
    DeliveryUncertain,
    MessageTooLong,
    ServerRefused,
    UsageError,
)
from safepassage.client.intake_api import IntakeClient
from safepassage.client.trust import TrustedDirectory, fetch_trusted_directory
from safepassage.crypto.codename import derive_applicant_keys, generate_codename, parse_codename, wordlist
from safepassage.crypto.envelope import CHUNK_DATA_MAX, Purpose, open_envelope, seal
from safepassage.crypto.errors import BadSignature, NotARecipient
from safepassage.crypto.intake import Contact, FollowUp
from safepassage.crypto.staffmsg import Reply as HandlerReply

from .fake_intake import FakeIntake, honest_view
from .helpers import DAY, Org, hybrid_key, signing_key

ORG = Org()
FP = ORG.admin_set.fingerprint()
NOW = int(time.time())


def current_view() -> Any:
    # Intake keys valid around the real clock: the stand-in checks recipients at its own "now".
    handlers = tuple(
        ORG.handler(hid, ("general", "science") if i == 1 else ("general",), start=NOW - DAY)
        for i, hid in enumerate(ORG.handler_ids)
    )
    signed = [ORG.signed(ORG.directory(version=1, handlers=handlers))]
    return honest_view(signed, ORG.admins[:2], ts=NOW)


def new_fake(**kwargs: Any) -> FakeIntake:
    return FakeIntake(current_view(), receipt_key=kwargs.pop("receipt_key", ORG.receipt), **kwargs)


def run(fake: FakeIntake, flow: Callable[[IntakeClient, TrustedDirectory], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with fake.running() as url, IntakeClient(url) as client:
            trusted = await fetch_trusted_directory(client, FP, None, NOW)
            return await flow(client, trusted)

    return asyncio.run(go())


def handler_opens(envelope: bytes, handler: str, purpose: Purpose) -> Any:
    return open_envelope(envelope, [ORG.intake[handler]], expected_purpose=purpose)


class Recorder(Progress):
    def __init__(self) -> None:
        self.events: list[str] = []

    def pow_started(self, difficulty: int) -> None:
        self.events.append(f"pow {difficulty}")

    def pow_done(self) -> None:
        self.events.append("pow done")

    def upload_started(self, chunks: int) -> None:
        self.events.append(f"upload {chunks}")

    def chunk_sent(self) -> None:
        self.events.append("chunk")

    def upload_done(self) -> None:
        self.events.append("upload done")


# --- first contact --------------------------------------------------------------------------------


def test_send_contact_is_readable_by_every_handler_of_the_pool() -> None:
    fake = new_fake()
    progress = Recorder()
    sent = run(
        fake,
        lambda c, d: send_contact(
            c,
            d,
            pool="general",
            language="ru",
            message="Я инженер. canary-7b2",
            fields={"role": "engineer"},
            attachments=[],
            progress=progress,
        ),
    )
    stored = fake.contacts[sent.contact_id]
    assert stored.complete
    assert sent.receipt.envelope_hash == hashlib.sha256(stored.envelope).digest()
    for handler in ORG.handler_ids:
        contact = Contact.open_payload(handler_opens(stored.envelope, handler, Purpose.CONTACT).plaintext)
        assert contact.message == "Я инженер. canary-7b2"
        assert contact.fields == {"role": "engineer"}
        assert contact.origin == "cli"
        assert contact.mailbox_key.key_id == sent.mailbox_id
    # The codename re-derives the keys the contact names.
    keys = derive_applicant_keys(sent.codename)
    assert keys.mailbox_id == sent.mailbox_id
    assert contact.reply_key == keys.reply_key.public_key
    assert progress.events == ["pow 0", "pow done"]
    assert sent.codename.reveal() not in repr(sent)
    assert "canary" not in repr(sent)


def test_science_pool_is_sealed_to_its_one_handler() -> None:
    fake = new_fake()
    sent = run(
        fake,
        lambda c, d: send_contact(c, d, pool="science", language="ru", message="hi", fields={}, attachments=[]),
    )
    envelope = fake.contacts[sent.contact_id].envelope
    handler_opens(envelope, "bob", Purpose.CONTACT)
    with pytest.raises(NotARecipient):
        handler_opens(envelope, "alice", Purpose.CONTACT)


def test_attachments_are_streamed_and_readable(tmp_path: Path) -> None:
    big = tmp_path / "scan.pdf"
    big.write_bytes(os.urandom(CHUNK_DATA_MAX + 1000))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    fake = new_fake()
    progress = Recorder()
    sent = run(
        fake,
        lambda c, d: send_contact(
            c,
            d,
            pool="general",
            language="en",
            message="see files",
            fields={},
            attachments=[big, empty],
            progress=progress,
        ),
    )
    stored = fake.contacts[sent.contact_id]
    assert stored.complete
    opened = handler_opens(stored.envelope, "alice", Purpose.CONTACT)
    contact = Contact.open_payload(opened.plaintext)
    assert [(a.name, a.media_type, a.size, a.chunks) for a in contact.attachments] == [
        ("scan.pdf", "application/pdf", CHUNK_DATA_MAX + 1000, 2),
        ("empty.txt", "text/plain", 0, 1),
    ]
    for number, path in enumerate([big, empty]):
        opener = opened.attachment_opener(number)
        data = b"".join(opener.open_chunk(frame) for frame in stored.chunks[number])
        assert opener.finish() == contact.attachments[number].chunks
        assert data == path.read_bytes()
    assert progress.events == ["pow 0", "pow done", "upload 3", "chunk", "chunk", "chunk", "upload done"]


class ChangesFile(Progress):
    """Changes an attachment after it was measured, while the proof of work runs."""

    def __init__(self, path: Path, grow: bool) -> None:
        self.path = path
        self.grow = grow

    def pow_started(self, difficulty: int) -> None:
        if self.grow:
            with open(self.path, "ab") as f:
                f.write(os.urandom(CHUNK_DATA_MAX))
        else:
            os.truncate(self.path, 10)


@pytest.mark.parametrize("grow", [True, False])
def test_attachment_changed_while_sending_is_never_finalised(tmp_path: Path, grow: bool) -> None:
    path = tmp_path / "doc.bin"
    path.write_bytes(os.urandom(100))
    fake = new_fake()
    with pytest.raises(AttachmentChanged, match="attachment 1"):
        run(
            fake,
            lambda c, d: send_contact(
                c,
                d,
                pool="general",
                language="en",
                message="m",
                fields={},
                attachments=[path],
                progress=ChangesFile(path, grow),
            ),
        )
    (stored,) = fake.contacts.values()
    assert not stored.complete
    assert not any(p.endswith("/finalise") for _, p, _ in fake.requests)
    # A file that grew is caught before its first chunk leaves; one that shrank, before finalising.
    assert len(stored.chunks.get(0, [])) == (0 if grow else 1)


def test_bad_attachments_are_refused_before_any_work(tmp_path: Path) -> None:
    fifo = tmp_path / "secret-plan.fifo"
    os.mkfifo(fifo)
    fake = new_fake()
    for paths in ([tmp_path / "secret-missing.pdf"], [fifo], [tmp_path]):
        with pytest.raises(AttachmentError) as info:
            run(
                fake,
                lambda c, d, p=paths: send_contact(
                    c, d, pool="general", language="en", message="m", fields={}, attachments=p
                ),
            )
        # The file's name never appears: it can say as much as the file.
        assert "secret" not in info.value.message
        assert "attachment 1" in info.value.message
    assert not any(p.endswith("/pow") for _, p, _ in fake.requests)


def test_too_long_message_is_refused_before_the_proof_of_work() -> None:
    fake = new_fake()
    with pytest.raises(MessageTooLong):
        run(
            fake,
            lambda c, d: send_contact(
                c, d, pool="general", language="ru", message="я" * 600_000, fields={}, attachments=[]
            ),
        )
    assert not any(p.endswith("/pow") for _, p, _ in fake.requests)


def test_unknown_pool_names_the_known_ones() -> None:
    with pytest.raises(UsageError, match="general, science"):
        run(
            new_fake(),
            lambda c, d: send_contact(c, d, pool="nope", language="ru", message="m", fields={}, attachments=[]),
        )


def test_receipt_from_another_key_is_refused() -> None:
    fake = new_fake(receipt_key=signing_key("impostor-receipt"))
    # The server says it stored the contact but its receipt is forged: the
    # applicant is told delivery is uncertain and still gets the codename.
    with pytest.raises(DeliveryUncertain) as info:
        run(
            fake,
            lambda c, d: send_contact(c, d, pool="general", language="ru", message="m", fields={}, attachments=[]),
        )
    assert isinstance(info.value.__cause__, BadSignature)
    assert len(info.value.codename.reveal().split()) == 7
    assert info.value.codename.reveal() not in str(info.value) + repr(info.value)


# --- replies and follow-ups ------------------------------------------------------------------------


def signed_reply(contact_id: str, text: str, handler: str = "alice", key: str | None = None) -> bytes:
    """A reply payload as the handler client writes it (protocol 16.1)."""
    return HandlerReply(contact_id, handler, text).seal_payload(ORG.identities[key or handler])


def test_check_mailbox_verifies_handler_replies_and_flags_the_rest() -> None:
    fake = new_fake()

    async def flow(client: IntakeClient, directory: TrustedDirectory) -> tuple[Any, list[Reply]]:
        sent = await send_contact(
            client, directory, pool="general", language="ru", message="m", fields={}, attachments=[]
        )
        keys = derive_applicant_keys(sent.codename)
        mailbox = keys.mailbox_id.hex()
        reply_key = keys.reply_key.public_key
        cid = sent.contact_id

        def add(payload: bytes, key: Any = reply_key, purpose: Purpose = Purpose.REPLY) -> None:
            fake.add_reply(mailbox, cid, seal(payload, [key], purpose).data)

        add(signed_reply(cid, "Здравствуйте"))
        add(signed_reply(cid, "Come to this address.", handler="alice", key="bob"))  # bob's key, alice's name
        add(HandlerReply(cid, "mallory", "hi").seal_payload(signing_key("mallory")))  # not in the directory
        add(signed_reply("c_another01", "old news"))  # a genuine reply to another contact, replayed
        add(b"plain text the server wrote")
        add(b"x", key=hybrid_key("someone").public_key)
        add(b"x", purpose=Purpose.CONTACT)
        return sent, await check_mailbox(client, directory, sent.codename)

    sent, replies = run(fake, flow)
    assert [r.verified for r in replies] == [True, False, False, False, False, False, False]
    assert [r.readable for r in replies] == [True, True, True, True, True, False, False]
    first = replies[0]
    assert (first.handler_id, first.text, first.problem) == ("alice", "Здравствуйте", None)
    assert first.contact_id == sent.contact_id
    for forged in replies[1:5]:
        assert forged.handler_id is None
        assert forged.text is None
        assert forged.problem is not None
    assert "another contact" in (replies[3].problem or "")
    assert "not sealed to any of your keys" in (replies[5].problem or "")
    assert "expected a reply envelope" in (replies[6].problem or "")
    assert "Здравствуйте" not in repr(first)
    assert "verified, handler=alice" in repr(first)


def test_check_mailbox_with_an_unknown_codename_is_refused() -> None:
    with pytest.raises(ServerRefused) as info:
        run(new_fake(), lambda c, d: check_mailbox(c, d, generate_codename()))
    assert info.value.code == "mailbox_auth_failed"


def test_follow_up_reaches_the_pool() -> None:
    fake = new_fake()

    async def flow(client: IntakeClient, directory: TrustedDirectory) -> Any:
        sent = await send_contact(
            client, directory, pool="general", language="ru", message="m", fields={}, attachments=[]
        )
        follow = await send_follow_up(client, directory, sent.codename, sent.contact_id, "more", pool="general")
        return sent, follow

    sent, follow = run(fake, flow)
    stored = fake.messages[sent.mailbox_id.hex()][0]
    assert stored.kind == "follow-up"
    assert follow.receipt.contact_id == follow.message_id == stored.message_id
    payload = FollowUp.open_payload(handler_opens(stored.envelope, "carol", Purpose.FOLLOW_UP).plaintext)
    assert payload.message == "more"
    assert payload.contact_id == sent.contact_id


def test_follow_up_with_a_malformed_contact_id() -> None:
    with pytest.raises(UsageError):
        run(new_fake(), lambda c, d: send_follow_up(c, d, generate_codename(), "bad id", "m", pool="general"))


# --- the commands -----------------------------------------------------------------------------------


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str, stdin: bytes = b"") -> Any:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _codename_from(out: str) -> str:
    words = set(wordlist())
    lines = [line.strip() for line in out.splitlines()]
    found = [line for line in lines if len(line.split()) == 7 and all(w in words for w in line.split())]
    assert len(found) == 1
    return found[0]


def test_cli_send_check_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    fake = new_fake()
    state = tmp_path / "state.json"
    with fake.in_thread() as url:
        common = ["--server", url, "--org", FP, "--state", str(state)]
        code, out, err = cli(
            monkeypatch,
            capsys,
            "contact",
            "send",
            *common,
            "--pool",
            "general",
            "--field",
            "role=officer",
            "--message-file",
            "-",
            stdin="Сообщение canary-91".encode(),
        )
        assert code == 0, err
        codename = _codename_from(out)
        assert codename not in err
        assert "Write it on paper" in out
        assert "Nobody from the service will ever ask" in out
        (contact_id,) = fake.contacts
        assert f"id        {contact_id}" in out
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
        # Nothing else was written: not the message, not the codename.
        assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
        assert codename not in state.read_text()

        codename_file = tmp_path / "codename.txt"
        codename_file.write_text(codename.upper() + "\n")
        code, out, err = cli(monkeypatch, capsys, "contact", "check", *common, "--codename-file", str(codename_file))
        assert code == 0, err
        assert "No replies yet." in out

        keys = derive_applicant_keys(parse_codename(codename))
        text = "Ответ \x1b[2Jhandler\u202e"
        reply_key = keys.reply_key.public_key
        payload = signed_reply(contact_id, text)
        fake.add_reply(keys.mailbox_id.hex(), contact_id, seal(payload, [reply_key], Purpose.REPLY).data)
        code, out, err = cli(monkeypatch, capsys, "contact", "check", *common, "--codename-file", str(codename_file))
        assert code == 0, err
        assert "Ответ [2Jhandler" in out  # the escape byte is gone; the rest is harmless text
        assert "\x1b" not in out
        assert "\u202e" not in out
        assert "verified: signed by handler alice" in out
        assert "NOT VERIFIED" not in out + err

        # A message the server (or anyone with the public reply key) wrote is shown, loudly flagged.
        fake.add_reply(
            keys.mailbox_id.hex(), contact_id, seal(b"Go to the border now", [reply_key], Purpose.REPLY).data
        )
        code, out, err = cli(monkeypatch, capsys, "contact", "check", *common, "--codename-file", str(codename_file))
        assert code == 0, err
        assert "warning: NOT VERIFIED" in err
        flagged = out[out.index("Go to the border now") - 400 : out.index("Go to the border now")]
        assert "NOT VERIFIED" in flagged

        code, out, err = cli(
            monkeypatch,
            capsys,
            "contact",
            "reply",
            *common,
            "--contact",
            contact_id,
            "--pool",
            "general",
            "--codename-file",
            str(codename_file),
            "--message-file",
            "-",
            stdin=b"follow-up text",
        )
        assert code == 0, err
        assert "Follow-up delivered" in out
    assert [m.kind for m in fake.messages[keys.mailbox_id.hex()]] == ["reply", "reply", "follow-up"]


def test_cli_refuses_a_direct_connection_and_an_empty_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    onion = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz2345.onion"
    code, _, err = cli(
        monkeypatch, capsys, "contact", "send", "--server", f"http://{onion}", "--org", FP, "--pool", "general"
    )
    assert code == 2
    assert err.startswith("error: Refusing to connect without Tor")
    assert "hint: Pass --socks" in err

    code, _, err = cli(
        monkeypatch,
        capsys,
        "contact",
        "send",
        "--server",
        "http://127.0.0.1:9",
        "--org",
        FP,
        "--pool",
        "general",
        "--message-file",
        "-",
        stdin=b"  \n ",
    )
    assert code == 2
    assert "message is empty" in err


def test_cli_wrong_codename_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "codename.txt"
    bad.write_text("correct horse battery staple not in list")
    code, _, err = cli(
        monkeypatch,
        capsys,
        "contact",
        "check",
        "--server",
        "http://127.0.0.1:9",
        "--org",
        FP,
        "--codename-file",
        str(bad),
    )
    assert code == 2
    assert "not a valid codename" in err
    for word in ("correct", "horse", "battery", "staple"):
        assert word not in err
