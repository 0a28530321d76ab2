"""The one exception root of Safe Passage, and the cryptographic failures.

Every failure a person can meet is a subclass of :class:`SafePassageError`.
The docstring of each class is the message a person sees; ``hint`` says what
to do about it. The CLI turns these into ``error:`` / ``hint:`` lines and exit
codes in one place (``safepassage.client.cli``).

Messages never carry secret material or plaintext: an error may quote a public
key id or a field name, never a private key, a passphrase or message text.
Checks that fail raise; nothing in this project returns ``False`` for a failed
verification or decryption (docs/protocol.md, section 1.3).
"""

from __future__ import annotations


class SafePassageError(Exception):
    """Something went wrong in Safe Passage."""

    hint: str = ""
    exit_code: int = 1

    def __init__(self, detail: str = "") -> None:
        # `detail` is a short, non-secret qualifier (a field name, a count).
        self.detail = detail
        super().__init__(self.message)

    @property
    def message(self) -> str:
        base = (type(self).__doc__ or "error").strip().splitlines()[0]
        if not self.detail:
            return base
        return f"{base.rstrip('.')}: {self.detail}."

    def __str__(self) -> str:
        return self.message


class CryptoError(SafePassageError):
    """A cryptographic check failed."""

    exit_code = 3


class MalformedInput(CryptoError):
    """The data is not in the expected format."""

    hint = "The file or message may be truncated, corrupted or not meant for this program."


class UnsupportedVersion(MalformedInput):
    """The data uses a format version this program does not support."""

    hint = "Upgrade Safe Passage, or check that the data came from a Safe Passage service."


class DecryptionFailed(CryptoError):
    """The message could not be decrypted: it was altered, truncated or reordered."""

    hint = "Do not trust any part of it. Ask for it to be sent again over a trusted path."


class NotARecipient(CryptoError):
    """This message was not sealed to any of your keys."""

    hint = "It may be meant for another handler, or sealed to an intake key you no longer hold."


class BadSignature(CryptoError):
    """A signature did not verify."""

    hint = "The data was altered or signed by someone else. Do not trust it."


class BelowThreshold(CryptoError):
    """Not enough valid administrator signatures."""

    hint = "The directory must be co-signed by at least M administrators before anyone may trust it."


class Rollback(CryptoError):
    """The server showed an older state than one already seen: possible rollback attack."""

    hint = "Do not continue. Report this to the organisation through a channel you trust."


class Fork(CryptoError):
    """The server showed a history that contradicts one already seen: possible split-view attack."""

    hint = "Do not continue. Someone may be showing you a fake directory. Report this out of band."


class InvalidProof(CryptoError):
    """A transparency-log proof did not verify."""

    hint = "The server could not prove that this directory is in the public log. Do not trust it."


class ExpiredKey(CryptoError):
    """The key is outside its validity window."""

    hint = "Fetch the current directory; keys rotate on a schedule."


class UntrustedRoot(CryptoError):
    """The directory is not signed by the organisation you pinned."""

    hint = "Compare the organisation fingerprint you were given out of band. Do not continue if it differs."


class WrongPassphrase(CryptoError):
    """The passphrase is wrong, or the vault was altered."""

    hint = "Check the passphrase. If it is right, restore the vault from a backup."


class InsecureFile(SafePassageError):
    """A key file can be read by other users of this machine."""

    hint = "Run: chmod 600 on the file, and consider its keys exposed if others had access."
    exit_code = 4


class FileAccessError(SafePassageError):
    """A file could not be read or written."""

    hint = "Check that the path exists, is a regular file, and that you may read and write it."
    exit_code = 5


class InvalidCodename(SafePassageError):
    """That is not a valid codename."""

    hint = "A codename is seven words from the list, separated by spaces. Check the spelling."
    exit_code = 2


class PowRejected(CryptoError):
    """The proof of work is wrong, expired or already used."""

    hint = "Ask for a new challenge and solve it again."


class WeakPassphrase(SafePassageError):
    """The passphrase is too short."""

    hint = "Use at least 5 random words or 20 characters; a lost vault cannot be recovered."
    exit_code = 2


class VaultExists(SafePassageError):
    """A vault already exists at that path."""

    hint = "Choose another path, or open the existing vault instead of creating a new one."
    exit_code = 2


class VaultNotFound(SafePassageError):
    """There is no vault at that path."""

    hint = "Check the path, or create a vault first."
    exit_code = 2


class NoSuchEntry(SafePassageError, KeyError):
    """The vault has no entry by that name."""

    hint = "List the vault's entries to see what it holds."
    exit_code = 2
