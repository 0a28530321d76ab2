"""Client side of Tor: SOCKS failures in our words, directory-checked onion addresses, client keys.

- Tor's SOCKS port (with ``ExtendedErrors``) answers onion failures with codes
  0xF0-0xF7 that SOCKS libraries do not know; :func:`proxy_failure` names
  them, so a handler whose key is missing reads that, not "error None".
- :func:`check_onion` compares the onion a client reached with the one the
  verified directory names for that role (protocol section 7: ``onions``), so
  a phished or stale address is refused after the first directory fetch.
- :class:`OnionClientKey` is a handler's or admin's x25519 key for v3 client
  authorisation. The private half goes to the person's own Tor, in tor's
  ``.auth_private`` format (``ClientOnionAuthDir``); the public half goes to
  the admins with the enrolment, and the staff server publishes its onion to it.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Final

from yarl import URL

from safepassage.crypto import _primitives as P
from safepassage.crypto.directory import Directory
from safepassage.crypto.errors import MalformedInput
from safepassage.crypto.privatefile import read_private, write_private

from .errors import ClientError, OnionAuthRequired, OnionMismatch, ServerUnreachable, UsageError

#: Tor's extended SOCKS5 replies for onion services (tor manual, SocksPort ExtendedErrors).
_TOR_CODES: Final = {
    0xF0: "the onion service's descriptor was not found (it may be down or the address wrong)",
    0xF1: "the onion service's descriptor is invalid",
    0xF2: "the onion service's introduction failed",
    0xF3: "the onion service did not complete the rendezvous",
    0xF6: "the onion address is invalid",
    0xF7: "the onion service's introduction timed out",
}
_CODE_IN_TEXT = re.compile(r"0X([0-9A-F]{2})", re.IGNORECASE)
_ONION_HOST = re.compile(r"[a-z2-7]{56}\.onion")


def tor_reply_code(error_code: int | None, text: str) -> int | None:
    if error_code is not None:
        return error_code
    match = _CODE_IN_TEXT.search(text)
    return int(match.group(1), 16) if match else None


def proxy_failure(error_code: int | None, text: str) -> ClientError:
    """The error for a SOCKS refusal; ``text`` is the library's message (never shown as is)."""
    code = tor_reply_code(error_code, text)
    if code in (0xF4, 0xF5):
        return OnionAuthRequired("Tor reported a missing or wrong client key" if code == 0xF5 else "")
    if code in _TOR_CODES:
        return ServerUnreachable(_TOR_CODES[code])
    return ServerUnreachable(f"the Tor proxy reported error {code}")


def check_onion(server: str | URL, directory: Directory, role: str) -> None:
    """Refuse an onion host that is not the directory's address for ``role``.

    Loopback and other non-onion hosts (tests, the demo) are not checked: only
    an onion address can be phished into a person's hands as "the" service.
    """
    host = (URL(server) if isinstance(server, str) else server).host or ""
    if not host.endswith(".onion"):
        return
    expected = directory.onions.get(role)
    if expected is None:
        raise OnionMismatch(f"directory version {directory.version} names no {role} onion")
    if host != expected:
        raise OnionMismatch(f"the directory's {role} address is {expected}", moved_to=expected)


class OnionClientKey:
    """An x25519 key pair for Tor v3 client authorisation. The private half is never printed."""

    __slots__ = ("_secret",)
    FILE_PREFIX: Final = b"safepassage-onion-client-key-v1\n"

    def __init__(self, secret: bytes) -> None:
        if len(secret) != P.X25519_KEY_LEN:
            raise MalformedInput("onion client key")
        self._secret = secret

    @classmethod
    def generate(cls) -> OnionClientKey:
        return cls(P.random_bytes(P.X25519_KEY_LEN))

    def __repr__(self) -> str:
        return "OnionClientKey(<secret>)"

    def public_base32(self) -> str:
        """What the admins give the staff server (``safepassage staff invite --onion-key``)."""
        return base64.b32encode(P.x25519_public_from_secret(self._secret)).decode("ascii").rstrip("=")

    def auth_private_line(self, onion: str) -> str:
        """tor's ``<name>.auth_private`` line for ``onion`` (``<56 letters>.onion`` or without the suffix)."""
        host = onion if onion.endswith(".onion") else onion + ".onion"
        if not _ONION_HOST.fullmatch(host):
            raise UsageError("the onion address must be 56 letters and digits followed by .onion")
        secret = base64.b32encode(self._secret).decode("ascii").rstrip("=")
        return f"{host[:-6]}:descriptor:x25519:{secret}"

    def save(self, path: Path) -> None:
        write_private(path, self.FILE_PREFIX + base64.b64encode(self._secret) + b"\n", replace=False)

    @classmethod
    def load(cls, path: Path) -> OnionClientKey:
        raw = read_private(path, max_len=256, what="the onion client key file")
        if not raw.startswith(cls.FILE_PREFIX):
            raise MalformedInput("onion client key file")
        try:
            return cls(base64.b64decode(raw[len(cls.FILE_PREFIX) :].strip(), validate=True))
        except ValueError:
            raise MalformedInput("onion client key file") from None

    @classmethod
    def load_or_create(cls, path: Path) -> tuple[OnionClientKey, bool]:
        """The key in ``path``, creating it (0600) on first use; the flag says whether it is new."""
        try:
            return cls.load(path), False
        except FileNotFoundError:
            key = cls.generate()
            key.save(path)
            return key, True

    def install(self, auth_dir: Path, onion: str, name: str) -> Path:
        """Write ``auth_dir/<name>.auth_private`` (0600) for the person's own Tor; reload Tor afterwards."""
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,63}", name):
            raise UsageError("the key name must be lowercase letters, digits or '-'")
        if not auth_dir.is_dir():
            raise UsageError("the ClientOnionAuthDir folder does not exist")
        path = auth_dir / f"{name}.auth_private"
        write_private(path, (self.auth_private_line(onion) + "\n").encode("ascii"), replace=True)
        return path


__all__ = ["OnionClientKey", "check_onion", "proxy_failure", "tor_reply_code"]
