"""The integration service application: ``create_integration_app(config)``.

Same shape as the intake (:mod:`safepassage.server.app`): shared state under
one typed ``AppKey``, the engine, the signing key and the background jobs
(directory refresh, deletion of expired uploads) started and stopped in
``cleanup_ctx``, one error middleware, security headers on every answer and
no access log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy import delete

from safepassage.crypto.envelope import CHUNK_LEN

from ..db.engine import Store, make_engine
from ..errors import error_middleware
from ..security import secure
from . import api
from .config import IntegrationConfig
from .context import INTEGRATION, IntegrationService
from .directory import DirectoryKeeper, DirectorySource, IntakeDirectorySource
from .keys import load_signing_key
from .models import Package

log = logging.getLogger("safepassage.integration")

CLIENT_MAX_SIZE = max(api.MAX_ENVELOPE, CHUNK_LEN) + 4096
HOUSEKEEPING_SECONDS = 30.0
#: How long start-up waits for the first directory (over Tor a first connection can be slow).
FIRST_REFRESH_TIMEOUT = 60.0


async def housekeeping(service: IntegrationService) -> int:
    """Delete pending packages whose upload window closed (their chunks go with them); return the count.

    The count goes to the caller, never to the log: a log line per round would
    date each abandoned delivery to the hour of its expiry.
    """
    return await delete_expired_packages(service.store, int(time.time()))


async def delete_expired_packages(store: Store, now: int) -> int:
    """:func:`housekeeping`'s work as of ``now``."""
    async with store.write() as session:
        result = await session.execute(delete(Package).where(Package.state == "pending", Package.upload_expires <= now))
    deleted = int(result.rowcount)  # type: ignore[attr-defined]
    if deleted:
        await store.checkpoint()
    return deleted


async def _background(service: IntegrationService) -> None:
    last_refresh = time.monotonic()
    while True:
        await asyncio.sleep(HOUSEKEEPING_SECONDS)
        try:
            await housekeeping(service)
        except Exception as exc:  # a failed round must not stop the next one
            log.error("housekeeping failed: %s", type(exc).__name__)
        if time.monotonic() - last_refresh >= service.config.directory_refresh_seconds:
            last_refresh = time.monotonic()
            await service.keeper.refresh()


def create_integration_app(
    config: IntegrationConfig, *, store: Store | None = None, directory_source: DirectorySource | None = None
) -> web.Application:
    """The service for ``config``; ``store`` and ``directory_source`` replace the defaults (tests, tools)."""
    app = web.Application(middlewares=[error_middleware], client_max_size=CLIENT_MAX_SIZE)
    secure(app)
    app.add_routes(api.routes)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        own_store = store is None
        active = store or Store(make_engine(config.url))
        signing_key = load_signing_key(config.keys_dir)
        keeper = DirectoryKeeper(
            directory_source or IntakeDirectorySource(config), signing_key.verify_key, config.directory_max_age_seconds
        )
        service = IntegrationService(config, active, signing_key, keeper)
        keeper.follow_key = service.follow_signing_key
        try:
            await asyncio.wait_for(keeper.refresh(), FIRST_REFRESH_TIMEOUT)
        except TimeoutError:
            log.warning("no directory yet: the intake did not answer within %d s; retrying", FIRST_REFRESH_TIMEOUT)
        app[INTEGRATION] = service
        task = asyncio.create_task(_background(service))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if own_store:
            await active.close()

    app.cleanup_ctx.append(resources)
    return app
