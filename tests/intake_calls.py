"""Raw HTTP calls to the intake, for tests that must also send what a good client never would.

Every answer is checked against docs/openapi/public.yaml before the test sees it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from safepassage.crypto import envelope as E
from safepassage.crypto import pow as W
from safepassage.crypto.codename import ApplicantKeys, derive_applicant_keys, generate_codename
from safepassage.crypto.encoding import b64e
from safepassage.crypto.intake import AttachmentInfo, Contact, sign_submission
from safepassage.crypto.keys import HybridPublicKey

from .openapi import check_response

CANARY = "canary-5f0c2a Я готов передать документы"
FAST_KDF = {"opslimit": 1, "memlimit": 8 * 1024 * 1024}


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class Calls:
    def __init__(self, base_url: str, session: aiohttp.ClientSession, api: str = "public") -> None:
        self.base = base_url
        self.session = session
        self.api = api  # which docs/openapi/<api>.yaml the answers are checked against

    async def call(self, method: str, path: str, *, check: bool = True, **kwargs: Any) -> Answer:
        async with self.session.request(method, self.base + path, **kwargs) as response:
            raw = await response.read()
            body = json.loads(raw) if response.content_type == "application/json" else raw
            if check:
                check_response(self.api, method, path.split("?", maxsplit=1)[0], response.status, body)
            return Answer(response.status, body, dict(response.headers))

    async def challenge(self) -> W.Challenge:
        answer = await self.call("POST", "/api/v1/pow")
        assert answer.status == 201
        return W.Challenge.from_text(answer.body["challenge"])

    async def pow_header(self) -> str:
        challenge = await self.challenge()
        return f"{challenge.to_text()}.{W.solve(challenge)}"


@dataclass
class Applicant:
    """An applicant with a codename (cheap KDF settings: structure, not cost, is tested here)."""

    keys: ApplicantKeys = field(default_factory=lambda: derive_applicant_keys(generate_codename(), **FAST_KDF))

    @property
    def mailbox_id(self) -> str:
        return self.keys.mailbox_id.hex()

    def contact(
        self, pool: str = "general", message: str = CANARY, attachments: tuple[AttachmentInfo, ...] = ()
    ) -> bytes:
        return Contact(
            pool=pool,
            language="ru",
            message=message,
            fields={"role": "engineer"},
            attachments=attachments,
            reply_key=self.keys.reply_key.public_key,
            mailbox_key=self.keys.mailbox_key.verify_key,
            origin="cli",
        ).seal_payload(self.keys.mailbox_key)

    def submission_headers(self, envelope: bytes, pool: str, attachments: int, pow_header: str) -> dict[str, str]:
        sig = sign_submission(
            self.keys.mailbox_key, kind="contact", pool=pool, attachments=attachments, envelope=envelope
        )
        return {
            "Content-Type": "application/octet-stream",
            "Safe-Passage-PoW": pow_header,
            "Safe-Passage-Mailbox-Key": b64e(self.keys.mailbox_key.verify_key.public_bytes_raw()),
            "Safe-Passage-Signature": b64e(sig),
        }


def seal_for(
    recipients: list[HybridPublicKey], payload: bytes, purpose: E.Purpose = E.Purpose.CONTACT
) -> E.SealedEnvelope:
    return E.seal(payload, recipients, purpose)
