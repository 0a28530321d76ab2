"""A handler's world for tests: an organisation on loopback, an enrolled handler, applicants.

:func:`handler_world` serves the intake, staff and integration stand-ins
(:mod:`tests.fake_intake`, :mod:`tests.fake_staff`) on one loopback port,
enrols the handler ``dana`` with the real client (a real vault at the floor
cost), publishes directory version 2 listing dana's keys from the
``intake-key.json`` the client wrote (as admins would), and logs dana in.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp

from safepassage.client.applicant import SentContact, send_contact
from safepassage.client.handler import enroll, login
from safepassage.client.handler_vault import HandlerPaths, read_enrolment_document
from safepassage.client.intake_api import IntakeClient
from safepassage.client.staff_api import StaffEnrolment
from safepassage.client.trust import TrustedDirectory, fetch_trusted_directory
from safepassage.crypto.directory import Handler
from safepassage.crypto.keys import VerifyKey
from safepassage.crypto.vault import MIN_MEMLIMIT, MIN_OPSLIMIT, Passphrase

from .fake_intake import FakeIntake, honest_view
from .fake_staff import FakeOrg
from .helpers import DAY, Org

ORG = Org()
FP = ORG.admin_set.fingerprint()
PASSPHRASE = Passphrase("a long vault passphrase for tests")
PASSWORD = "a staff password of some length"
FLOOR: dict[str, Any] = {"opslimit": MIN_OPSLIMIT, "memlimit": MIN_MEMLIMIT}
#: One clock for every directory built here, so version 1 is the same document each time it is logged.
NOW = int(time.time())


def base_handlers(now: int) -> tuple[Handler, ...]:
    return tuple(
        ORG.handler(hid, ("general", "science") if i == 1 else ("general",), start=now - DAY)
        for i, hid in enumerate(ORG.handler_ids)
    )


def publish(intake: FakeIntake, *extra: Handler) -> None:
    """Directory version 1 (the test organisation) and, with ``extra`` handlers, version 2 listing them too."""
    v1 = ORG.directory(version=1, handlers=base_handlers(NOW))
    signed = [ORG.signed(v1)]
    if extra:
        signed.append(ORG.signed(ORG.directory(version=2, handlers=(*base_handlers(NOW), *extra))))
    intake.view = honest_view(signed, ORG.admins[:2], ts=NOW)


def listed(paths: HandlerPaths, pools: Sequence[str] = ("general",)) -> Handler:
    """The directory entry admins make from the handler's ``intake-key.json``."""
    handler_id, identity, entry = read_enrolment_document(paths.intake_key)
    return Handler(handler_id, handler_id.title(), VerifyKey(identity), tuple(pools), (entry,))


def totp_now(secret: str, ahead: int = 0) -> str:
    return pyotp.TOTP(secret).at(int(time.time()) + 30 * ahead)


@dataclass
class World:
    org: FakeOrg
    url: str
    paths: HandlerPaths
    totp_secret: str

    @property
    def intake(self) -> FakeIntake:
        return self.org.intake

    async def trusted(self) -> TrustedDirectory:
        async with IntakeClient(self.url) as client:
            return await fetch_trusted_directory(client, FP, None, int(time.time()))

    async def applicant_sends(
        self, message: str = "hello", attachments: Sequence[Path] = (), owner: str = "dana"
    ) -> SentContact:
        async with IntakeClient(self.url) as client:
            trusted = await fetch_trusted_directory(client, FP, None, int(time.time()))
            sent = await send_contact(
                client,
                trusted,
                pool="general",
                language="ru",
                message=message,
                fields={"role": "officer"},
                attachments=list(attachments),
            )
        self.org.staff.owners[sent.contact_id] = owner
        return sent


async def enroll_dana(url: str, org: FakeOrg, paths: HandlerPaths, **kwargs: Any) -> tuple[Any, str]:
    secrets: list[str] = []

    def code(answer: StaffEnrolment) -> str:
        secrets.append(answer.totp_secret.reveal())
        return totp_now(answer.totp_secret.reveal())

    done = await enroll(
        staff=url,
        invitation=org.staff.invite("dana"),
        password=PASSWORD,
        vault=paths.vault,
        passphrase=PASSPHRASE,
        intake=url,
        org=FP,
        totp_code=code,
        **{**FLOOR, **kwargs},
    )
    return done, secrets[0]


@asynccontextmanager
async def handler_world(tmp_path: Path, *, listed_pools: Sequence[str] | None = ("general",)) -> AsyncIterator[World]:
    intake = FakeIntake(honest_view([ORG.signed(ORG.directory())], ORG.admins[:2]), receipt_key=ORG.receipt)
    publish(intake)
    org = FakeOrg.around(intake, ORG.integration_signing)
    home = tmp_path / "handler"
    home.mkdir(mode=0o700)
    paths = HandlerPaths(home / "dana.vault")
    async with org.running() as url:
        _, secret = await enroll_dana(url, org, paths)
        if listed_pools is not None:
            publish(intake, listed(paths, listed_pools))
        await login(paths, password=PASSWORD, code=totp_now(secret, ahead=1))
        yield World(org, url, paths, secret)
