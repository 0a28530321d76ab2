"""Rate limits and adaptive proof-of-work difficulty.

Behind Tor there is no client address, so limits are global: a sliding one-
minute window of events. The proof-of-work difficulty rises with the load: one
extra bit (twice the work) for each doubling of submissions above the
configured threshold, up to the configured maximum. Verification cost stays
the same, so the server's cost per request does not grow with the defence.

These counters live in the process. With several front ends behind one onion
(onionbalance), each enforces its own share; the sum is what the operator
configures times the number of front ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from .errors import ApiError

Clock = Callable[[], float]


class SlidingWindow:
    """Counts events in the last ``window`` seconds."""

    def __init__(self, window: float = 60.0, clock: Clock = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._events: deque[float] = deque()

    def _trim(self, now: float) -> None:
        while self._events and self._events[0] <= now - self._window:
            self._events.popleft()

    def count(self) -> int:
        self._trim(self._clock())
        return len(self._events)

    def add(self) -> None:
        now = self._clock()
        self._trim(now)
        self._events.append(now)


class RateLimiter:
    """Refuses with 429 once ``limit`` events happened in the last minute."""

    def __init__(self, limit: int, what: str, clock: Clock = time.monotonic) -> None:
        self._limit = limit
        self._what = what
        self._window = SlidingWindow(60.0, clock)

    def hit(self) -> None:
        if self._window.count() >= self._limit:
            raise ApiError(429, "rate_limited", f"Too many {self._what} right now; try again in a minute.")
        self._window.add()


class KeyedRateLimiter:
    """Refuses with 429 once one key (an authenticated mailbox) had ``limit`` events in a minute.

    Only for keys a requester has proved it holds: a limit per key is then fair, since the
    holder only holds itself back. Idle keys are forgotten, so memory follows the keys
    active in the last minute.
    """

    def __init__(self, limit: int, what: str, clock: Clock = time.monotonic) -> None:
        self._limit = limit
        self._what = what
        self._clock = clock
        self._windows: dict[str, SlidingWindow] = {}

    def hit(self, key: str) -> None:
        if len(self._windows) > 4 * 1024:
            self._windows = {k: w for k, w in self._windows.items() if w.count() > 0}
        window = self._windows.setdefault(key, SlidingWindow(60.0, self._clock))
        if window.count() >= self._limit:
            raise ApiError(429, "rate_limited", f"Too many {self._what} right now; try again in a minute.")
        window.add()


class PowDifficulty:
    """Difficulty in leading zero bits, from recent submission load."""

    def __init__(self, base: int, maximum: int, threshold: int, clock: Clock = time.monotonic) -> None:
        self._base = base
        self._max = maximum
        self._threshold = threshold
        self._load = SlidingWindow(60.0, clock)

    def record_submission(self) -> None:
        self._load.add()

    def current(self) -> int:
        load = self._load.count()
        if load <= self._threshold:
            return self._base
        extra = math.ceil(math.log2(load / self._threshold))
        return min(self._max, self._base + extra)


class WorkGate:
    """Bounds the proof-of-work checks running and waiting, instead of the challenges issued.

    A challenge is free to ask for and behind Tor nobody can be told apart, so any cap on
    issuing them is one budget that whoever asks fastest takes, locking every applicant
    out. What costs the server is the Argon2id check each submission leads to: this gate
    lets ``workers`` run at once and ``backlog`` wait, and refuses beyond that with 503
    ``busy`` *before* the challenge is spent, so a refused applicant loses no work. A
    flood then has to send full submissions as fast as the server can check them, and
    applicants get a share of the checks rather than none.
    """

    def __init__(self, workers: int, backlog: int) -> None:
        self._slots = asyncio.Semaphore(workers)
        self._backlog = backlog
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._waiting >= self._backlog:
            raise ApiError(
                503,
                "busy",
                "The service is busy checking proofs of work; send the same request again in a few seconds.",
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()
