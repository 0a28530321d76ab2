"""The whole applicant path through the real server, on SQLite and PostgreSQL.

The library flows and the `safepassage contact` command (as a separate process)
talk HTTP to a running intake; the tests then look at what the server stored
with the handlers' own keys, and check that nothing readable was kept.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
from pathlib import Path

from sqlalchemy import select

from safepassage.client.applicant import check_mailbox, send_contact, send_follow_up
from safepassage.client.intake_api import IntakeClient
from safepassage.client.trust import HeadState, fetch_trusted_directory
from safepassage.crypto import envelope as E
from safepassage.crypto.codename import derive_applicant_keys, parse_codename
from safepassage.crypto.intake import Contact, FollowUp
from safepassage.crypto.staffmsg import Reply as HandlerReply
from safepassage.server.db.models import Chunk, Message
from safepassage.server.db.models import Contact as ContactRow

from .deployment import Deployment, now_ts

CANARY = "canary-7d21e0: я служу в штабе и хочу уехать"
EXE = str(Path(sys.executable).with_name("safepassage"))


async def test_send_check_and_follow_up_through_the_real_server(deployment: Deployment, tmp_path: Path) -> None:
    attachment = tmp_path / "report.pdf"
    blob = os.urandom(E.CHUNK_DATA_MAX + 5000)
    attachment.write_bytes(blob)
    async with IntakeClient(deployment.base_url) as client:
        trusted = await fetch_trusted_directory(client, deployment.org.admin_set.fingerprint(), None, now_ts())
        sent = await send_contact(
            client,
            trusted,
            pool="science",
            language="ru",
            message=CANARY,
            fields={"role": "physicist"},
            attachments=[attachment],
        )
    async with deployment.store.read() as session:
        row = await session.get(ContactRow, sent.contact_id)
        chunks = (
            await session.scalars(select(Chunk).where(Chunk.contact_id == sent.contact_id).order_by(Chunk.index))
        ).all()
    assert row is not None
    assert row.state == "complete"
    assert row.owner == "bob"  # the only handler of the science pool
    opened = E.open_envelope(row.envelope, [deployment.org.intake["bob"]], expected_purpose=E.Purpose.CONTACT)
    contact = Contact.open_payload(opened.plaintext)
    assert contact.message == CANARY
    assert contact.mailbox_key.key_id == sent.mailbox_id
    [info] = contact.attachments
    assert info.name == "report.pdf"
    assert info.size == len(blob)
    opener = opened.attachment_opener(0)
    assert b"".join(opener.open_chunk(c.frame) for c in chunks) == blob
    opener.finish()

    # A handler's reply arrives in the mailbox (written here as the handler client writes it).
    keys = derive_applicant_keys(sent.codename)
    payload = HandlerReply(sent.contact_id, "bob", "Мы получили. Ответьте в четверг.").seal_payload(
        deployment.org.identities["bob"]
    )
    reply = E.seal(payload, [keys.reply_key.public_key], E.Purpose.REPLY)
    async with deployment.store.write() as session:
        session.add(
            Message(
                id="r_abcdefghijkl",
                mailbox_id=sent.mailbox_id.hex(),
                contact_id=sent.contact_id,
                kind="reply",
                day=dt.datetime.now(dt.UTC).date(),
                bucket=0,
                envelope=reply.data,
                envelope_hash=reply.envelope_hash,
                seq=1,
            )
        )
    async with IntakeClient(deployment.base_url) as client:
        trusted = await fetch_trusted_directory(client, deployment.org.admin_set.fingerprint(), None, now_ts())
        replies = await check_mailbox(client, trusted, parse_codename(sent.codename.reveal()))
        follow = await send_follow_up(
            client, trusted, sent.codename, sent.contact_id, "Четверг подходит.", pool="science"
        )
    assert [(r.handler_id, r.text) for r in replies] == [("bob", "Мы получили. Ответьте в четверг.")]
    async with deployment.store.read() as session:
        stored = await session.get(Message, follow.message_id)
    assert stored is not None
    assert stored.kind == "follow-up"
    opened_follow = E.open_envelope(
        stored.envelope, [deployment.org.intake["bob"]], expected_purpose=E.Purpose.FOLLOW_UP
    )
    assert FollowUp.open_payload(opened_follow.plaintext).message == "Четверг подходит."


async def _run(*args: str, stdin: bytes = b"", env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        EXE,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_contact_command_sends_and_checks_without_writing_to_disk(deployment: Deployment, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(work), "XDG_RUNTIME_DIR": str(work)}
    message = tmp_path / "message.txt"
    message.write_text(CANARY, encoding="utf-8")
    org = deployment.org.admin_set.fingerprint()
    code, out, err = await _run(
        "contact", "send", "--server", deployment.base_url, "--org", org, "--pool", "general",
        "--message-file", str(message), env=env,
    )  # fmt: skip
    assert code == 0, err
    assert "Traceback" not in err
    codename_line = out.splitlines()[out.splitlines().index("Your codename, shown only this once:") + 2]
    codename = parse_codename(codename_line.strip())
    assert "receipt" in out
    # Nothing written anywhere unless asked: no state, no cache, no temporary files.
    assert list(home.iterdir()) == []
    assert list(work.iterdir()) == []

    codename_file = tmp_path / "codename"
    codename_file.write_text(codename.reveal())
    code, out, err = await _run(
        "contact", "check", "--server", deployment.base_url, "--org", org, "--codename-file", str(codename_file),
        env=env,
    )  # fmt: skip
    assert code == 0, err
    assert "No replies yet." in out

    # A wrong organisation fingerprint stops everything with one clear error.
    code, out, err = await _run(
        "contact", "send", "--server", deployment.base_url, "--org", "00000 " * 10, "--pool", "general",
        "--message-file", str(message), env=env,
    )  # fmt: skip
    assert code == 3
    assert err.startswith("error: ")
    assert "Traceback" not in err

    # The state file, when asked for, remembers the head; a second run accepts the same log.
    state = tmp_path / "state.json"
    for _ in range(2):
        code, out, err = await _run(
            "contact", "check", "--server", deployment.base_url, "--org", org, "--codename-file",
            str(codename_file), "--state", str(state), env=env,
        )  # fmt: skip
        assert code == 0, err
    assert HeadState.load(state) is not None
    assert oct(state.stat().st_mode & 0o777) == "0o600"


async def test_long_mailbox_is_read_page_by_page(deployment: Deployment) -> None:
    from dataclasses import replace

    from safepassage.server.context import INTAKE

    state = deployment.app[INTAKE]
    state.config = replace(state.config, mailbox_fetch_limit=2)
    async with IntakeClient(deployment.base_url) as client:
        trusted = await fetch_trusted_directory(client, deployment.org.admin_set.fingerprint(), None, now_ts())
        sent = await send_contact(
            client, trusted, pool="general", language="en", message="hello", fields={}, attachments=[]
        )
        keys = derive_applicant_keys(sent.codename)
        async with deployment.store.write() as session:
            for seq in range(1, 6):
                payload = HandlerReply(sent.contact_id, "alice", f"reply {seq}").seal_payload(
                    deployment.org.identities["alice"]
                )
                reply = E.seal(payload, [keys.reply_key.public_key], E.Purpose.REPLY)
                session.add(
                    Message(
                        id=f"r_page{seq:08d}",
                        mailbox_id=sent.mailbox_id.hex(),
                        contact_id=sent.contact_id,
                        kind="reply",
                        day=dt.datetime.now(dt.UTC).date(),
                        bucket=0,
                        envelope=reply.data,
                        envelope_hash=reply.envelope_hash,
                        seq=seq,
                    )
                )
        replies = await check_mailbox(client, trusted, sent.codename)
    assert [r.text for r in replies] == [f"reply {i}" for i in range(1, 6)]
    assert all(r.verified for r in replies)
