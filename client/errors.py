"""Failures of the applicant client that are not cryptographic.

Like :mod:`safepassage.crypto.errors`, each docstring is the message a person
sees and ``hint`` says what to do; :func:`safepassage.client.cli.main` prints
them as ``error:`` and ``hint:`` lines. Exit codes: 2 usage, 3 a trust or
cryptographic check failed, 5 a local file, 6 the server refused, 7 the server
could not be reached, 8 the server broke the API contract.

Text that comes from the server is untrusted: it is stripped of control and
formatting characters (terminal escapes, bidirectional overrides) and cut to a
bounded length before it can reach a terminal (:func:`untrusted_text`).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from safepassage.crypto.codename import Codename
from safepassage.crypto.errors import CryptoError, SafePassageError

#: How much of a server's error message is shown; enough for a sentence.
MAX_SERVER_MESSAGE: Final = 200
_CODE = re.compile(r"[a-z_]{1,64}")


def untrusted_text(text: str, limit: int = MAX_SERVER_MESSAGE) -> str:
    """``text`` made safe to print: no control, format or unassigned characters, at most ``limit`` long.

    Unicode categories C* cover ESC (terminal escape sequences), bidirectional
    overrides (which can make a line read differently from its bytes) and
    unassigned code points. Whitespace runs become one space so a message
    cannot fake an ``error:`` or ``hint:`` line of our own.
    """
    kept = "".join(" " if ch.isspace() else ch for ch in text if ch.isspace() or unicodedata.category(ch)[0] != "C")
    kept = " ".join(kept.split())
    if len(kept) > limit:
        kept = kept[: limit - 1].rstrip() + "…"
    return kept


class ClientError(SafePassageError):
    """The applicant client could not complete the request."""


class UsageError(ClientError):
    """That input is not valid."""

    hint = "Run the command with --help to see what it expects."
    exit_code = 2


class ServerRefused(ClientError):
    """The server refused the request."""

    exit_code = 6

    def __init__(self, status: int, code: str = "", message: str = "") -> None:
        self.status = status
        # The code is shown only if it has the documented form; the message is
        # cleaned, because it is text the server chose.
        self.code = code if _CODE.fullmatch(code) else ""
        self.server_message = untrusted_text(message)
        parts = [f"HTTP {status}"]
        if self.code:
            parts.append(self.code)
        detail = " ".join(parts)
        if self.server_message:
            detail = f"{detail}: {self.server_message.rstrip('.')}"
        super().__init__(detail)
        self.hint = _refusal_hint(status, self.code)


def _refusal_hint(status: int, code: str) -> str:
    if status == 429:
        return "The service is busy or this mailbox reached its daily limit. Wait, then try again."
    if status >= 500:
        return "The service has a temporary problem. Nothing was stored; try again later."
    if code.startswith("pow"):
        return "Run the command again: it will ask for a new proof-of-work challenge."
    return "Nothing was stored. If this repeats, the service or this program may need an update."


class ServerUnreachable(ClientError):
    """Could not reach the server."""

    hint = "Check the address and that Tor is connected, then try again. Onion services can take a minute to answer."
    exit_code = 7


class TorUnreachable(ServerUnreachable):
    """Could not reach the Tor proxy."""

    hint = (
        "Start Tor (or Tor Browser) and check the --socks address: "
        "socks5://127.0.0.1:9050 for Tor, socks5://127.0.0.1:9150 for Tor Browser."
    )


class DirectConnectionRefused(UsageError):
    """Refusing to connect without Tor."""

    hint = (
        "Pass --socks socks5://127.0.0.1:9050 (Tor) or socks5://127.0.0.1:9150 (Tor Browser). "
        "A direct connection would show your network address to the server and to anyone watching your network."
    )


class ProtocolViolation(ClientError):
    """The server's answer does not follow the Safe Passage API."""

    hint = "Do not trust this server's answers. Check the address, or report this to the organisation."
    exit_code = 8


class ResponseTooLarge(ProtocolViolation):
    """The server's answer is larger than this request allows."""


class NotLatestDirectory(CryptoError):
    """The server did not show its newest directory: a revoked handler may still be listed."""

    hint = "Do not continue. Report this to the organisation through a channel you trust."


class StaleTreeHead(CryptoError):
    """The server's signed log head is older than this client accepts."""

    hint = "The server may be holding you on an old directory. Try again later; if it persists, report it."


class HeadStateError(ClientError):
    """The state file cannot be used."""

    hint = (
        "The file named by --state must be one this program wrote, for this organisation. "
        "If you cannot restore it, use a new file name; you lose only the memory of the last log seen."
    )
    exit_code = 5


class MessageTooLong(UsageError):
    """The message is too long to send in one contact."""

    hint = "Shorten it, or send the rest as a file with --attach."


class AttachmentError(UsageError):
    """An attachment cannot be sent."""

    hint = "Attach regular files that you can read, at most 64, with names of at most 255 characters."


class AttachmentChanged(ClientError):
    """An attachment changed while it was being sent."""

    hint = (
        "Nothing was delivered; the server drops the incomplete contact. Send it again with files that stay unchanged."
    )
    exit_code = 5


__all__ = [
    "MAX_SERVER_MESSAGE",
    "AttachmentChanged",
    "AttachmentError",
    "ClientError",
    "DirectConnectionRefused",
    "HeadStateError",
    "MessageTooLong",
    "NotLatestDirectory",
    "ProtocolViolation",
    "ResponseTooLarge",
    "ServerRefused",
    "ServerUnreachable",
    "StaleTreeHead",
    "TorUnreachable",
    "UsageError",
    "untrusted_text",
]


class DeliveryUncertain(ClientError):
    """The server may have stored your contact, but did not confirm it properly."""

    hint = (
        "Keep the codename shown above: if the contact arrived, replies will come to it. "
        "Run 'contact check' later with it before sending again."
    )
    exit_code = 9

    def __init__(self, codename: Codename) -> None:
        # Carried for the CLI to show once; never part of the message or repr.
        self.codename = codename
        super().__init__()

    def __repr__(self) -> str:
        return "DeliveryUncertain(<codename>)"


class OnionAuthRequired(ServerUnreachable):
    """The onion service only admits clients with an authorisation key, and this Tor has none for it."""

    hint = (
        "Install your client key for this address in Tor's ClientOnionAuthDir "
        "(safepassage handler onion-key --vault V --onion ADDRESS --auth-dir DIR), reload Tor, and try again."
    )


class OnionMismatch(ClientError):
    """The onion address you reached is not the one the verified directory names."""

    hint = (
        "Do not use this address. The organisation's signed directory names another one: "
        "use the address it names (shown above), which the organisation's admins signed."
    )
    exit_code = 3

    def __init__(self, detail: str = "", *, moved_to: str | None = None) -> None:
        super().__init__(detail)
        #: The address the verified directory names for the role, if it names one.
        self.moved_to = moved_to
