"""What the public app shares between requests, under one typed AppKey."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiohttp import web
from sqlalchemy import select

from safepassage.crypto.encoding import b64d, canonical_json
from safepassage.crypto.keys import VerifyKey

from .config import ServerConfig
from .db.engine import Store
from .db.models import LogEntry
from .directory_store import Published, load_published, published_marker
from .errors import ApiError
from .keys import ServerKeys, UnknownReceiptKey, promote_receipt_key
from .limits import KeyedRateLimiter, PowDifficulty, RateLimiter, WorkGate

log = logging.getLogger("safepassage.server")
COSIGNATURES_PER_MINUTE = 120
#: Authenticated reads of one mailbox per minute: a client pages 200 replies a read.
MAILBOX_READS_PER_MINUTE = 30


@dataclass
class Intake:
    config: ServerConfig
    keys: ServerKeys
    store: Store
    submission_limit: RateLimiter
    mailbox_fetch_limit: KeyedRateLimiter
    difficulty: PowDifficulty
    pow_gate: WorkGate
    #: Witnesses whose cosignatures this server keeps (configuration ``witness_keys``).
    witness_keys: tuple[VerifyKey, ...] = ()
    #: Cosignature posts per minute (each a write): a handful of witnesses need a few.
    cosign_limit: RateLimiter = field(default_factory=lambda: RateLimiter(COSIGNATURES_PER_MINUTE, "cosignatures"))
    #: Nonces whose work is being checked right now (SQLite: their spent mark is not committed yet).
    pow_in_flight: set[bytes] = field(default_factory=set, repr=False)
    _published: Published | None = field(default=None, repr=False)

    @classmethod
    def create(cls, config: ServerConfig, keys: ServerKeys, store: Store) -> Intake:
        return cls(
            config=config,
            keys=keys,
            store=store,
            submission_limit=RateLimiter(config.rate_limit_per_minute, "submissions"),
            # Challenges of both kinds are issued without a cap (WorkGate; protocol 15.4);
            # mailbox reads are limited per mailbox, after its owner proved it holds the key.
            mailbox_fetch_limit=KeyedRateLimiter(MAILBOX_READS_PER_MINUTE, "reads of this mailbox"),
            difficulty=PowDifficulty(config.pow_base_difficulty, config.pow_max_difficulty, config.pow_load_threshold),
            pow_gate=WorkGate(config.pow_verify_workers, config.pow_verify_backlog),
            witness_keys=tuple(
                VerifyKey(b64d(k, length=32, what="witness key")) for k in config.witness_keys.split(",") if k
            ),
        )

    def published(self) -> Published:
        if self._published is None:
            raise ApiError(503, "no_directory", "No directory has been published yet; try again later.")
        return self._published

    async def refresh(self) -> None:
        """Reload the directory if another process (or `server publish`) extended the log."""
        self._published = await load_published(self.store)
        if self._published is not None:
            wanted = self._published.directory.receipt_key
            if wanted != self.keys.receipt.verify_key:
                # A directory naming the next receipt key completes a rotation.
                try:
                    self.keys = promote_receipt_key(self.config.keys_dir, self.keys, wanted)
                except UnknownReceiptKey:
                    log.error("the published directory names a receipt key this server does not hold")

    async def refresh_if_changed(self) -> None:
        """Reload when the served head changed (a publication, a cosignature) or a key rotation is unfinished."""
        published = self._published
        current = (
            (published.head.head.size, canonical_json(published.head.to_json())) if published is not None else (0, b"")
        )
        stale_key = published is not None and published.directory.receipt_key != self.keys.receipt.verify_key
        if stale_key or await published_marker(self.store) != current:
            await self.refresh()

    async def log_entries(self, start: int, end: int) -> list[bytes]:
        async with self.store.read() as session:
            rows = await session.scalars(
                select(LogEntry.entry).where(LogEntry.index >= start, LogEntry.index < end).order_by(LogEntry.index)
            )
            return list(rows.all())


INTAKE = web.AppKey("intake", Intake)


def intake_of(request: web.Request) -> Intake:
    return request.app[INTAKE]
