"""The staff application: ``create_staff_app(config)`` (docs/openapi/staff.yaml).

It runs as its own process behind its own onion service (Tor client
authorisation), on the same database as the public intake: it reads the
directory the intake serves and the sealed cases the intake stored, and
writes case status, replies, handovers and escalation receipts. Same error
middleware and security headers as the public app; no access log.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy import delete, or_

from safepassage.crypto.passwords import check_staff_password

from ..config import ServerConfig
from ..db.engine import Store, make_engine
from ..db.models import StaffInvitation, StaffSession
from ..errors import error_middleware
from ..keys import load_keys
from ..periodic import Job, running
from ..security import secure
from . import accounts, admin, audit_api, bulk, cases, proposals
from .context import STAFF, Clock, Staff

log = logging.getLogger("safepassage.server.staff")

#: Largest request body: a reply envelope (one recipient, largest bucket), with room for headers.
CLIENT_MAX_SIZE = cases.MAX_REPLY + 4096
HOUSEKEEPING_SECONDS = 30.0
DIRECTORY_WATCH_SECONDS = 2.0


async def housekeeping(staff: Staff) -> dict[str, int]:
    """Delete expired sessions and invitations, reload the directory; report counts to the caller only."""
    now = staff.now()
    async with staff.store.write() as session:
        sessions = await session.execute(
            delete(StaffSession).where(
                or_(StaffSession.absolute_expires <= now, StaffSession.last_seen <= now - staff.idle_seconds)
            )
        )
        invitations = await session.execute(delete(StaffInvitation).where(StaffInvitation.expires <= now))
    await staff.store.checkpoint()
    await staff.refresh()
    return {
        "expired_sessions": sessions.rowcount,  # type: ignore[attr-defined]
        "expired_invitations": invitations.rowcount,  # type: ignore[attr-defined]
    }


def _jobs(staff: Staff) -> list[Job]:
    return [
        Job("staff housekeeping", HOUSEKEEPING_SECONDS, lambda: housekeeping(staff)),
        # A revocation published by another process ends the handler's access within seconds.
        Job("staff directory check", DIRECTORY_WATCH_SECONDS, staff.refresh_if_changed),
    ]


async def _bearer_challenge(request: web.Request, response: web.StreamResponse) -> None:
    # RFC 6750: a 401 names the scheme it wants. Nothing more: the error code says the rest.
    if response.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="staff"'


def create_staff_app(config: ServerConfig, *, store: Store | None = None, clock: Clock = time.time) -> web.Application:
    """The staff API. ``clock`` (Unix seconds) is injectable so tests can move time instead of sleeping."""
    app = web.Application(middlewares=[error_middleware], client_max_size=CLIENT_MAX_SIZE)
    secure(app)
    app.on_response_prepare.append(_bearer_challenge)
    app.add_routes(accounts.routes)
    app.add_routes(cases.routes)
    app.add_routes(bulk.routes)
    app.add_routes(admin.routes)
    app.add_routes(proposals.routes)
    app.add_routes(audit_api.routes)
    # Fail at construction, with a clear error, rather than on the first request.
    keys = load_keys(config.keys_dir)
    totp_key = keys.require_totp()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        own_store = store is None
        active = store or Store(make_engine(config.url))
        # Verified against when a login names no account: a random password nobody knows.
        dummy = check_staff_password(secrets.token_urlsafe(24))
        state = Staff(config=config, store=active, totp_key=totp_key, audit_key=keys.receipt, clock=clock)
        state.dummy_hash = await state.hash_password(dummy)
        await state.refresh()
        app[STAFF] = state
        async with running(_jobs(state)):
            yield
        if own_store:
            await active.close()

    app.cleanup_ctx.append(resources)
    return app
