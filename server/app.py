"""The public intake application: ``create_app(config)``.

Resources (engine, keys, background jobs) start and stop in ``cleanup_ctx``.
There is no access log: behind Tor a request line says nothing useful about a
client and much about an applicant's timing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy import delete, exists

from safepassage.crypto.directory import Directory
from safepassage.crypto.envelope import CHUNK_LEN

from . import intake, log_api
from .config import ServerConfig
from .context import INTAKE, Intake
from .db.engine import Store, make_engine
from .db.models import Contact, Mailbox, MailboxNonce, SpentChallenge
from .errors import ApiError, error_middleware
from .inputs import BODY_BUDGET, BodyBudget, body_budget_middleware
from .keys import load_keys
from .periodic import Job, running
from .retention import RetentionSchedule
from .security import secure
from .web.setup import setup_pages

log = logging.getLogger("safepassage.server")

#: Largest request body: one chunk frame or the largest envelope, whichever is bigger.
CLIENT_MAX_SIZE = max(intake.MAX_ENVELOPE, CHUNK_LEN) + 4096
HOUSEKEEPING_SECONDS = 30.0
DIRECTORY_WATCH_SECONDS = 2.0
#: Spent nonces are kept this long past their expiry, so a front end whose clock
#: is behind cannot accept a challenge another front end has already forgotten.
CLOCK_SKEW_MARGIN = 600
#: Mailbox ids per statement when removing the mailboxes of expired uploads.
ORPHAN_BATCH = 500


async def housekeeping(app: Intake, now: int | None = None) -> dict[str, int]:
    """Delete what has expired by ``now`` (default: the clock); report counts only (to the caller, never to the log)."""
    now = int(time.time()) if now is None else now
    async with app.store.write() as session:
        expired = await session.execute(
            delete(Contact)
            .where(Contact.state == "pending", Contact.upload_expires <= now)
            .returning(Contact.mailbox_id)
        )
        gone = list(expired.scalars())
        mailboxes = sorted(set(gone))
        # A mailbox whose only contact was an abandoned upload must not linger. Only the
        # mailboxes of the contacts just deleted are looked at: an anti-join over every
        # mailbox ran for more than 15 minutes at a million contacts.
        orphans = 0
        for start in range(0, len(mailboxes), ORPHAN_BATCH):
            batch = mailboxes[start : start + ORPHAN_BATCH]
            deleted = await session.execute(
                delete(Mailbox).where(Mailbox.id.in_(batch), ~exists().where(Contact.mailbox_id == Mailbox.id))
            )
            orphans += deleted.rowcount  # type: ignore[attr-defined]
        spent = await session.execute(delete(SpentChallenge).where(SpentChallenge.expires <= now - CLOCK_SKEW_MARGIN))
        nonces = await session.execute(delete(MailboxNonce).where(MailboxNonce.expires <= now))
    await app.store.checkpoint()
    await app.refresh()
    return {
        "expired_pending_contacts": len(gone),
        "orphan_mailboxes": orphans,
        "expired_challenges": spent.rowcount,  # type: ignore[attr-defined]
        "expired_mailbox_nonces": nonces.rowcount,  # type: ignore[attr-defined]
    }


def _directory_or_none(app: Intake) -> Directory | None:
    try:
        return app.published().directory
    except ApiError:  # nothing published yet: no policy, nothing to delete
        return None


def _jobs(app: Intake) -> list[Job]:
    retention = RetentionSchedule()

    async def retain() -> None:
        # At most hourly (the schedule decides); a failed run is retried next hour.
        await retention.tick(app.store, _directory_or_none(app), app.keys.receipt, time.time())

    return [
        Job("housekeeping", HOUSEKEEPING_SECONDS, lambda: housekeeping(app)),
        Job("retention", HOUSEKEEPING_SECONDS, retain),
        # A directory published elsewhere (the staff app, another front end) must
        # take effect within seconds: it may revoke a handler.
        Job("directory check", DIRECTORY_WATCH_SECONDS, app.refresh_if_changed),
    ]


def quiet_aiohttp_logs() -> None:
    """aiohttp logs a malformed request with a traceback that quotes the raw
    request line and headers (upload tokens included), and its access log
    would record every request: neither may reach our logs."""
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    logging.getLogger("aiohttp.access").setLevel(logging.CRITICAL)


def create_app(config: ServerConfig, *, store: Store | None = None) -> web.Application:
    quiet_aiohttp_logs()
    app = web.Application(middlewares=[error_middleware, body_budget_middleware], client_max_size=CLIENT_MAX_SIZE)
    app[BODY_BUDGET] = BodyBudget()
    secure(app)
    app.add_routes(intake.routes)
    app.add_routes(log_api.routes)
    setup_pages(app, config)  # the applicant's web pages (server/web/)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        own_store = store is None
        active = store or Store(make_engine(config.url))
        state = Intake.create(config, load_keys(config.keys_dir), active)
        await state.refresh()
        app[INTAKE] = state
        async with running(_jobs(state)):
            yield
        if own_store:
            await active.close()

    app.cleanup_ctx.append(resources)
    return app
