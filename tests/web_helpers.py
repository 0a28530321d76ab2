"""Shared by the web page tests: reading pages, planting handler replies, hunting a canary."""

from __future__ import annotations

import datetime as dt
import html
import re
from pathlib import Path

from sqlalchemy import func, select

from safepassage.crypto import envelope as E
from safepassage.crypto.codename import derive_applicant_keys, parse_codename
from safepassage.crypto.staffmsg import Reply as HandlerReply
from safepassage.server.db.models import Base, Message

from .deployment import Deployment

CANARY = "canary-web-5f3a91: я работаю в министерстве и хочу уехать"
CANARY_FIELD = "canary-field-8c2e77"
CANARY_FILE = b"canary-file-0d4b19 " * 1000
CANARY_FOLLOW_UP = "canary-follow-up-3e6d55: готов в четверг"

_TOKEN = re.compile(r'<input type="hidden" name="form" value="([^"]+)">')
_CODENAME = re.compile(r'<p class="codename" id="codename" lang="en">([^<]+)</p>')


def form_token(page: str) -> str:
    match = _TOKEN.search(page)
    assert match, "the page has no form token"
    return html.unescape(match.group(1))


def codename_of(page: str) -> str:
    match = _CODENAME.search(page)
    assert match, "the page shows no codename"
    return html.unescape(match.group(1))


async def plant_reply(deployment: Deployment, codename: str, contact_id: str, handler: str, text: str) -> None:
    """A handler's reply, written to the mailbox the way the handler client seals and the staff API stores it."""
    keys = derive_applicant_keys(parse_codename(codename))
    payload = HandlerReply(contact_id, handler, text).seal_payload(deployment.org.identities[handler])
    await _store_reply(
        deployment, keys.mailbox_id.hex(), contact_id, E.seal(payload, [keys.reply_key.public_key], E.Purpose.REPLY)
    )


async def plant_forged_reply(deployment: Deployment, codename: str, contact_id: str, text: str) -> None:
    """Sealed to the applicant's public reply key (anyone holding it can) but signed by nobody in the directory."""
    from tests.helpers import signing_key

    keys = derive_applicant_keys(parse_codename(codename))
    payload = HandlerReply(contact_id, "alice", text).seal_payload(signing_key("impostor"))
    await _store_reply(
        deployment, keys.mailbox_id.hex(), contact_id, E.seal(payload, [keys.reply_key.public_key], E.Purpose.REPLY)
    )


async def _store_reply(deployment: Deployment, mailbox_id: str, contact_id: str, sealed: E.SealedEnvelope) -> None:
    async with deployment.store.write() as session:
        seq = await session.scalar(
            select(func.coalesce(func.max(Message.seq), 0)).where(Message.mailbox_id == mailbox_id)
        )
        session.add(
            Message(
                id=f"r_{(seq or 0) + 1:012d}",
                mailbox_id=mailbox_id,
                contact_id=contact_id,
                kind="reply",
                day=dt.datetime.now(dt.UTC).date(),
                bucket=sealed.header.bucket,
                envelope=sealed.data,
                envelope_hash=sealed.envelope_hash,
                seq=(seq or 0) + 1,
            )
        )


async def all_rows(deployment: Deployment) -> bytes:
    """Every row of every table as bytes, to search for a canary."""
    out = []
    async with deployment.store.read() as session:
        for table in Base.metadata.sorted_tables:
            for row in (await session.execute(select(table))).all():
                out.append(repr(tuple(row)).encode())
                out.extend(v if isinstance(v, bytes) else str(v).encode() for v in row)
    return b"\n".join(out)


def files_containing(root: Path, needles: list[bytes]) -> list[Path]:
    """Files under ``root`` holding any needle, in UTF-8 as given or in UTF-16 (a stray text dump)."""
    found = []
    forms = [n for needle in needles for n in (needle, needle.decode("utf-8", "ignore").encode("utf-16-le"))]
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(n and n in data for n in forms):
                found.append(path)
    return found
