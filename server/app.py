"""The public intake application: ``create_app(config)``.

Resources (engine, keys, background jobs) start and stop in ``cleanup_ctx``.
There is no access log: behind Tor a request line says nothing useful about a
client and much about an applicant's timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy import delete, select

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
from .retention import RetentionSchedule
from .security import add_security_headers
from .web.setup import setup_pages

log = logging.getLogger("safepassage.server")

#: Largest request body: one chunk frame or the largest envelope, whichever is bigger.
CLIENT_MAX_SIZE = max(intake.MAX_ENVELOPE, CHUNK_LEN) + 4096
HOUSEKEEPING_SECONDS = 30.0
DIRECTORY_WATCH_SECONDS = 2.0
#: Spent nonces are kept this long past their expiry, so a front end whose clock
#: is behind cannot accept a challenge another front end has already forgotten.
CLOCK_SKEW_MARGIN = 600


async def housekeeping(app: Intake) -> dict[str, int]:
    """Delete what has expired; report counts only (to the caller, never to the log)."""
    now = int(time.time())
    async with app.store.write() as session:
        pending = await session.execute(
            delete(Contact).where(Contact.state == "pending", Contact.upload_expires <= now)
        )
        # A mailbox whose only contact was an abandoned upload must not linger.
        orphans = await session.execute(delete(Mailbox).where(~Mailbox.id.in_(select(Contact.mailbox_id))))
        spent = await session.execute(delete(SpentChallenge).where(SpentChallenge.expires <= now - CLOCK_SKEW_MARGIN))
        nonces = await session.execute(delete(MailboxNonce).where(MailboxNonce.expires <= now))
    await app.store.checkpoint()
    await app.refresh()
    return {
        "expired_pending_contacts": pending.rowcount,  # type: ignore[attr-defined]
        "orphan_mailboxes": orphans.rowcount,  # type: ignore[attr-defined]
        "expired_challenges": spent.rowcount,  # type: ignore[attr-defined]
        "expired_mailbox_nonces": nonces.rowcount,  # type: ignore[attr-defined]
    }


def _directory_or_none(app: Intake) -> Directory | None:
    try:
        return app.published().directory
    except ApiError:  # nothing published yet: no policy, nothing to delete
        return None


async def _housekeeping_loop(app: Intake) -> None:
    retention = RetentionSchedule()
    while True:
        await asyncio.sleep(HOUSEKEEPING_SECONDS)
        try:
            # The counts are not logged: a log line every 30 s with numbers of
            # expired challenges and mailbox checks would be a timeline of
            # applicant activity.
            await housekeeping(app)
        except Exception as exc:  # a failed round must not stop the next one
            log.error("housekeeping failed: %s", type(exc).__name__)
        try:
            await retention.tick(app.store, _directory_or_none(app), app.keys.receipt, time.time())
        except Exception as exc:  # nor may a failed retention run (it is retried next hour)
            log.error("retention failed: %s", type(exc).__name__)


async def _directory_watch(app: Intake) -> None:
    # A directory published elsewhere (the staff app, another front end) must
    # take effect within seconds: it may revoke a handler.
    while True:
        await asyncio.sleep(DIRECTORY_WATCH_SECONDS)
        try:
            await app.refresh_if_changed()
        except Exception as exc:  # a failed check must not stop the next one
            log.error("directory check failed: %s", type(exc).__name__)


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
    app.on_response_prepare.append(add_security_headers)
    app.add_routes(intake.routes)
    app.add_routes(log_api.routes)
    setup_pages(app, config)  # the applicant's web pages (server/web/)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        own_store = store is None
        active = store or Store(make_engine(config.url))
        state = Intake.create(config, load_keys(config.keys_dir), active)
        await state.refresh()
        app[INTAKE] = state
        tasks = [asyncio.create_task(_housekeeping_loop(state)), asyncio.create_task(_directory_watch(state))]
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if own_store:
            await active.close()

    app.cleanup_ctx.append(resources)
    return app
