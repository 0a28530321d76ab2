"""Background jobs of the apps: each runs every few seconds until the app stops.

A failed round is logged by the exception's type only (never its message,
which could quote request or stored data) and the next round runs as usual.
Counts a job returns are not logged: a line every 30 s with numbers of expired
challenges or sessions would be a timeline of applicant or staff activity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger("safepassage.server")


@dataclass(frozen=True, slots=True)
class Job:
    what: str
    seconds: float
    run: Callable[[], Awaitable[object]]


async def _every(job: Job) -> None:
    while True:
        await asyncio.sleep(job.seconds)
        try:
            await job.run()
        except Exception as exc:  # a failed round must not stop the next one
            log.error("%s failed: %s", job.what, type(exc).__name__)


@contextlib.asynccontextmanager
async def running(jobs: Sequence[Job]) -> AsyncIterator[None]:
    """Run ``jobs`` in the background for the duration of the ``async with``."""
    tasks = [asyncio.create_task(_every(job)) for job in jobs]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
