"""The server's own secrets, each in its own 0600 file under ``DATA/keys``.

* ``receipt.key``: the Ed25519 seed that signs receipts; its public half is in
  the directory, so applicants can check what the server acknowledged.
* ``receipt.next.key``: during a rotation, the next receipt key; it replaces
  ``receipt.key`` (which is then destroyed) as soon as a published directory
  names it, so receipts are always signed by the key the directory lists.
* ``pow.key``: the secret that authenticates proof-of-work challenges.
* ``totp.key``: the key sealing staff TOTP secrets in the database
  (docs/protocol.md, section 18.3). Folders made before the staff app have
  none; ``safepassage staff init`` adds it, and only the staff app needs it.

None is ever written to configuration, logs or the database.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from safepassage.crypto.errors import SafePassageError
from safepassage.crypto.keys import SigningKey, VerifyKey
from safepassage.crypto.passwords import TOTP_KEY_LEN, TotpSecretKey
from safepassage.crypto.pow import PowKey
from safepassage.crypto.privatefile import read_private, write_private

RECEIPT_KEY_FILE = "receipt.key"
#: A receipt key made by ``server rotate-receipt-key``, waiting for a directory that names it.
RECEIPT_NEXT_FILE = "receipt.next.key"
POW_KEY_FILE = "pow.key"
TOTP_KEY_FILE = "totp.key"


class MissingKeys(SafePassageError):
    """The server's key files are missing."""

    hint = "Run: safepassage server init --data DIR (once), and keep DATA/keys with the data."
    exit_code = 2


class MissingStaffKey(SafePassageError):
    """The staff key file keys/totp.key is missing."""

    hint = "Run once: safepassage staff init --data DIR (server folders made before the staff app lack it)."
    exit_code = 2


@dataclass(frozen=True, slots=True, repr=False)
class ServerKeys:
    receipt: SigningKey
    pow: PowKey
    #: None in a folder made before the staff app (see :func:`create_totp_key`).
    totp: TotpSecretKey | None = None

    def __repr__(self) -> str:
        return f"ServerKeys(receipt={self.receipt.verify_key.key_id.short()}...)"

    def require_totp(self) -> TotpSecretKey:
        if self.totp is None:
            raise MissingStaffKey()
        return self.totp


def create_keys(keys_dir: Path) -> ServerKeys:
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys_dir.chmod(0o700)
    keys = ServerKeys(SigningKey.generate(), PowKey.generate(), TotpSecretKey.generate())
    write_private(keys_dir / RECEIPT_KEY_FILE, keys.receipt.seed_bytes_raw(), replace=False)
    write_private(keys_dir / POW_KEY_FILE, keys.pow.secret_bytes_raw(), replace=False)
    write_private(keys_dir / TOTP_KEY_FILE, keys.require_totp().secret_bytes_raw(), replace=False)
    return keys


def create_totp_key(keys_dir: Path) -> TotpSecretKey:
    """Add ``totp.key`` to an existing keys folder; an existing file raises FileExistsError, untouched."""
    key = TotpSecretKey.generate()
    write_private(keys_dir / TOTP_KEY_FILE, key.secret_bytes_raw(), replace=False)
    return key


def load_keys(keys_dir: Path) -> ServerKeys:
    try:
        receipt = read_private(keys_dir / RECEIPT_KEY_FILE, max_len=64, what="the receipt key")
        pow_key = read_private(keys_dir / POW_KEY_FILE, max_len=64, what="the proof-of-work key")
    except FileNotFoundError:
        raise MissingKeys() from None
    try:
        totp: TotpSecretKey | None = TotpSecretKey.from_bytes(
            read_private(keys_dir / TOTP_KEY_FILE, max_len=TOTP_KEY_LEN, what="the TOTP key")
        )
    except FileNotFoundError:
        # Loading creates nothing: the public app runs without it, the staff app refuses.
        totp = None
    return ServerKeys(SigningKey.from_seed_bytes(receipt), PowKey.from_bytes(pow_key), totp)


class ReceiptKeyPending(SafePassageError):
    """A next receipt key is already waiting for the admins to publish it."""

    hint = (
        "Have the admins publish a directory naming it (admin propose --receipt-key), or delete keys/receipt.next.key."
    )
    exit_code = 2


def create_next_receipt_key(keys_dir: Path) -> SigningKey:
    """Start a receipt-key rotation: a new key beside the current one, used once a directory names it."""
    key = SigningKey.generate()
    try:
        write_private(keys_dir / RECEIPT_NEXT_FILE, key.seed_bytes_raw(), replace=False)
    except FileExistsError:
        raise ReceiptKeyPending() from None
    return key


def load_next_receipt_key(keys_dir: Path) -> SigningKey | None:
    try:
        return SigningKey.from_seed_bytes(
            read_private(keys_dir / RECEIPT_NEXT_FILE, max_len=64, what="the next receipt key")
        )
    except FileNotFoundError:
        return None


def promote_receipt_key(keys_dir: Path, keys: ServerKeys, wanted: VerifyKey) -> ServerKeys:
    """The keys with ``wanted`` as the receipt key: the current one, or the waiting next one made current.

    The old receipt key's file is replaced (destroyed) in one rename; several
    processes sharing the folder may race here, and each ends with the same key.
    """
    if keys.receipt.verify_key == wanted:
        return keys
    for _ in range(2):
        current = _read_receipt(keys_dir)
        if current.verify_key == wanted:
            return replace(keys, receipt=current)
        waiting = load_next_receipt_key(keys_dir)
        if waiting is not None and waiting.verify_key == wanted:
            try:
                os.replace(keys_dir / RECEIPT_NEXT_FILE, keys_dir / RECEIPT_KEY_FILE)
            except FileNotFoundError:
                continue  # another process promoted it between the two reads: read receipt.key again
            return replace(keys, receipt=waiting)
        # The next key may have just been promoted by another process: one more look.
    raise UnknownReceiptKey()


def _read_receipt(keys_dir: Path) -> SigningKey:
    return SigningKey.from_seed_bytes(read_private(keys_dir / RECEIPT_KEY_FILE, max_len=64, what="the receipt key"))


class UnknownReceiptKey(SafePassageError):
    """The published directory names a receipt key this server does not hold."""

    hint = "Receipts cannot be signed until a directory naming this server's receipt key is published."
    exit_code = 2
