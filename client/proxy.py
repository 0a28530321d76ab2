"""Where a client's traffic goes: a Tor SOCKS proxy, or (tests, a local demonstration) loopback."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from yarl import URL

from .errors import UsageError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class SocksProxy:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> SocksProxy:
        """``socks5://host:port`` (``socks5h`` too: names are always resolved by the proxy)."""
        try:
            url = URL(text)
        except (ValueError, TypeError) as exc:
            raise UsageError("the SOCKS address is not a URL") from exc
        if url.scheme not in ("socks5", "socks5h") or not url.host or url.explicit_port is None:
            raise UsageError("the SOCKS address must look like socks5://127.0.0.1:9050")
        if url.user or url.password:
            # Credentials are ours to choose: they are what isolates circuits.
            raise UsageError("the SOCKS address must not contain a user name or password")
        if url.path not in ("", "/") or url.query_string or url.fragment:
            raise UsageError("the SOCKS address must be only socks5://host:port")
        return cls(url.host, url.explicit_port)
