"""What the staff app shares between requests, under its own typed AppKey."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from safepassage.crypto.keys import SigningKey, VerifyKey
from safepassage.crypto.passwords import Password, TotpSecretKey, hash_password, verify_password

from ..audit import append_audit
from ..config import ServerConfig
from ..db.engine import Store
from ..directory_store import Published, load_published, published_marker
from ..errors import ApiError
from ..keys import UnknownReceiptKey, load_keys, load_next_receipt_key, promote_receipt_key

Clock = Callable[[], float]

#: Argon2id runs at most this many at once: each holds 64 MiB for its duration.
HASH_SLOTS = 4


@dataclass
class Staff:
    config: ServerConfig
    store: Store
    totp_key: TotpSecretKey
    #: The server's receipt key, which also signs audit entries (under their own purpose).
    audit_key: SigningKey
    clock: Clock = time.time
    #: A hash of a random password, verified against when a login names no account,
    #: so an unknown username costs the same work as a known one.
    dummy_hash: str = ""
    _hash_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(HASH_SLOTS), repr=False)
    _published: Published | None = field(default=None, repr=False)

    def now(self) -> int:
        return int(self.clock())

    def today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC).date()

    @property
    def idle_seconds(self) -> int:
        return self.config.staff_idle_minutes * 60

    @property
    def session_seconds(self) -> int:
        return self.config.staff_session_hours * 3600

    def published(self) -> Published:
        if self._published is None:
            raise ApiError(503, "no_directory", "No directory has been published yet; try again later.")
        return self._published

    async def refresh(self) -> None:
        """Reload the directory from the shared database (``server publish`` or another front end)."""
        self._published = await load_published(self.store)
        if self._published is not None and self._published.directory.receipt_key != self.receipt_key:
            # A receipt-key rotation completed (the intake promotes the key file; see server/keys.py).
            keys = load_keys(self.config.keys_dir)
            # An unknown key is the intake's to report; the staff app keeps checking against its own.
            with contextlib.suppress(UnknownReceiptKey):
                self.audit_key = promote_receipt_key(
                    self.config.keys_dir, keys, self._published.directory.receipt_key
                ).receipt

    async def refresh_if_changed(self) -> None:
        """Reload when another process published (a revocation must take effect within seconds)."""
        published = self._published
        size = published.head.head.size if published is not None else 0
        if (await published_marker(self.store))[0] != size:
            await self.refresh()

    @property
    def receipt_key(self) -> VerifyKey:
        """The public half of the receipt key: a directory must name it (or the next one) to be published."""
        return self.audit_key.verify_key

    def next_receipt_key(self) -> VerifyKey | None:
        """The receipt key waiting in a rotation, which a proposal may name instead of the current one."""
        waiting = load_next_receipt_key(self.config.keys_dir)
        return waiting.verify_key if waiting is not None else None

    async def hash_password(self, password: Password) -> str:
        # Off the event loop (libsodium releases the GIL), and bounded in number.
        async with self._hash_slots:
            return await asyncio.to_thread(hash_password, password)

    async def verify_password(self, stored: str, password: str) -> None:
        async with self._hash_slots:
            await asyncio.to_thread(verify_password, stored, password)

    async def audit(
        self, session: AsyncSession, actor: str, action: str, *, case_id: str | None = None, detail: str = ""
    ) -> None:
        """Append a signed audit entry in ``session``'s transaction: it commits with its change, or not at all."""
        await append_audit(
            session, self.audit_key, day=self.today(), actor=actor, action=action, case_id=case_id, detail=detail
        )


STAFF = web.AppKey("staff", Staff)


def staff_of(request: web.Request) -> Staff:
    return request.app[STAFF]
