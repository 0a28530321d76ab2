"""One network identity's HTTP session, for every client in this package.

An :class:`HttpIdentity` is what :class:`~safepassage.client.intake_api.IntakeClient`
and :class:`~safepassage.client.transport.Transport` talk through. Over Tor it
gives Tor random SOCKS credentials, which Tor's default ``IsolateSOCKSAuth``
turns into a circuit of its own; names are resolved by the proxy.

**Connection retries.** Tor answers a SOCKS CONNECT to an onion service only
once the rendezvous is done and the service has accepted the stream. When a
circuit goes bad on the way (an introduction or rendezvous that never
completes, a service-side circuit that died), Tor holds the stream until its
``SocksTimeout`` and then refuses it; asking again on the *same* credentials
lands on the same stuck circuit. A request whose connection was never set up
was never sent, so it is safe to send again, even a submission: such a
failure is retried on fresh credentials (a new circuit), a bounded number of
times. Anything that fails after the connection exists is never retried,
because the server may have received the request. Errors that another circuit
cannot change (a missing client key, a malformed address, Tor not running)
are not retried either.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
from typing import Any, Final

import aiohttp
import aiohttp_socks
from yarl import URL

from .errors import ServerUnreachable, TorUnreachable
from .onion import proxy_failure, tor_reply_code
from .proxy import SocksProxy

#: One fixed, generic value: no program name or version, which in a small
#: population of users could tell them apart.
USER_AGENT: Final = "Mozilla/5.0"

#: Onion services can take a minute to connect; uploads of 1 MiB chunks over
#: Tor can take a while, so they get no total limit, only a stall limit.
TIMEOUT: Final = aiohttp.ClientTimeout(total=300, sock_connect=120, sock_read=120)
UPLOAD_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, sock_connect=120, sock_read=300)

#: Attempts at setting up one request's connection over Tor, each on a new circuit.
CONNECT_ATTEMPTS: Final = 3
#: Pause before a new attempt: Tor has just closed the failed stream.
RETRY_PAUSE: Final = 1.0
#: Tor's SOCKS replies that a new circuit cannot change: client key missing or wrong
#: (0xF4, 0xF5), an invalid onion address (0xF6), a refused address type or command.
_FINAL_CODES: Final = frozenset({0x07, 0x08, 0xF4, 0xF5, 0xF6})


def connect_failed_retryably(exc: BaseException) -> bool:
    """True for a Tor connection failure that happened before any byte of the request was sent
    and that a new circuit may cure."""
    if isinstance(exc, aiohttp_socks.ProxyConnectionError):
        return False  # the SOCKS port itself is unreachable: Tor is not running
    if isinstance(exc, aiohttp_socks.ProxyError):
        return tor_reply_code(exc.error_code, str(exc)) not in _FINAL_CODES
    return isinstance(exc, aiohttp_socks.ProxyTimeoutError | aiohttp.ConnectionTimeoutError)


class HttpIdentity:
    """The aiohttp session of one network identity; renewed (new circuit) only to retry a connection."""

    def __init__(self, proxy: SocksProxy | None) -> None:
        self._proxy = proxy
        self._session: aiohttp.ClientSession | None = None
        self._retired: list[aiohttp.ClientSession] = []

    def open(self) -> None:
        self._session = self._new_session()

    async def close(self) -> None:
        sessions = [*self._retired, *([self._session] if self._session is not None else [])]
        self._session, self._retired = None, []
        for session in sessions:
            await session.close()

    @property
    def is_open(self) -> bool:
        return self._session is not None

    def _new_session(self) -> aiohttp.ClientSession:
        connector: aiohttp.BaseConnector
        if self._proxy is not None:
            connector = aiohttp_socks.ProxyConnector(
                host=self._proxy.host,
                port=self._proxy.port,
                proxy_type=aiohttp_socks.ProxyType.SOCKS5,
                # Fresh random credentials: Tor puts this identity on its own circuit.
                username=secrets.token_hex(16),
                password=secrets.token_hex(16),
                rdns=True,
            )
        else:
            connector = aiohttp.TCPConnector(use_dns_cache=False)
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            timeout=TIMEOUT,
            auto_decompress=False,
            trust_env=False,  # never an HTTP proxy from the environment, never .netrc
        )

    async def send(self, method: str, url: URL, **kwargs: Any) -> aiohttp.ClientResponse:
        """Send one request (``body`` must be bytes, so it can be sent again); return the response.

        The caller reads it under ``async with`` and maps errors with :func:`network_errors`.
        """
        attempt = 1
        while True:
            if self._session is None:
                raise RuntimeError("the HTTP session is not open")
            try:
                return await self._session.request(method, url, allow_redirects=False, **kwargs)
            except (aiohttp_socks.ProxyError, aiohttp_socks.ProxyTimeoutError, aiohttp.ConnectionTimeoutError) as exc:
                if self._proxy is None or attempt >= CONNECT_ATTEMPTS or not connect_failed_retryably(exc):
                    raise
            attempt += 1
            # A new circuit: the old session keeps its open connections until close().
            self._retired.append(self._session)
            self._session = self._new_session()
            await asyncio.sleep(RETRY_PAUSE)


@contextlib.contextmanager
def network_errors() -> Iterator[None]:
    """Library exceptions become ours; none carries a header value or a body."""
    try:
        yield
    except aiohttp_socks.ProxyConnectionError as exc:
        raise TorUnreachable() from exc
    except aiohttp_socks.ProxyError as exc:
        raise proxy_failure(exc.error_code, str(exc)) from exc
    except (TimeoutError, aiohttp_socks.ProxyTimeoutError) as exc:
        raise ServerUnreachable("timed out") from exc
    except aiohttp.ClientConnectorError as exc:
        raise ServerUnreachable("connection failed") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise ServerUnreachable("the connection broke") from exc
