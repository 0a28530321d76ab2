"""The service's one secret, and the officer's vault of encryption keys.

* ``DATA/keys/signing.key`` (0600, folder 0700): the Ed25519 seed that signs
  integration receipts. Its public half is the directory's integration
  ``signing_key``. The running service loads it; nothing else does.
* ``DATA/keys/signing.next.key``: during a rotation (``integration
  rotate-signing-key``), the key that replaces it once a verified directory
  lists it; the switch renames it over ``signing.key`` (the old key is gone).
* The officer's vault (crypto/vault.py, section 11): the hybrid encryption
  keys whose public halves are the directory's integration
  ``encryption_keys``. Only ``integration init`` (which makes them) and
  ``integration read`` (the officer, with the passphrase) open it; the
  service process never does, so a memory image of it holds no key that opens
  a package.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from safepassage.crypto.errors import SafePassageError
from safepassage.crypto.keys import HybridPrivateKey, SigningKey, VerifyKey
from safepassage.crypto.privatefile import read_private, write_private
from safepassage.crypto.vault import Passphrase, VaultContents, create_vault, open_vault, save_vault

SIGNING_KEY_FILE: Final = "signing.key"
NEXT_SIGNING_KEY_FILE: Final = "signing.next.key"
#: Vault entry names of the encryption keys: this prefix and the key id's first 16 bytes in hex.
ENCRYPTION_ENTRY_PREFIX: Final = "integration-encryption."


class MissingSigningKey(SafePassageError):
    """The integration service's signing key file is missing."""

    hint = "Run: safepassage integration init --data DIR (once), and keep DATA/keys with the data."
    exit_code = 2


class NoEncryptionKeys(SafePassageError):
    """The vault holds no integration encryption key."""

    hint = "Use the vault that 'safepassage integration init' created for this service (--vault FILE)."
    exit_code = 5


def create_signing_key(keys_dir: Path) -> SigningKey:
    key = SigningKey.generate()
    save_signing_key(keys_dir, key)
    return key


def save_signing_key(keys_dir: Path, key: SigningKey) -> None:
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys_dir.chmod(0o700)
    write_private(keys_dir / SIGNING_KEY_FILE, key.seed_bytes_raw(), replace=False)


def load_signing_key(keys_dir: Path) -> SigningKey:
    try:
        seed = read_private(keys_dir / SIGNING_KEY_FILE, max_len=64, what="the integration signing key")
    except FileNotFoundError:
        raise MissingSigningKey() from None
    return SigningKey.from_seed_bytes(seed)


class SigningKeyPending(SafePassageError):
    """A signing-key rotation is already waiting for the admins."""

    hint = (
        "Have the admins publish a directory listing keys/signing.next.key's public key "
        "(admin propose --integration-signing-key), or delete that file to start over."
    )
    exit_code = 2


def create_next_signing_key(keys_dir: Path) -> SigningKey:
    """Start a rotation: a new signing key beside the current one, used once a directory lists it."""
    load_signing_key(keys_dir)  # a folder without the current key is refused before anything is written
    key = SigningKey.generate()
    try:
        write_private(keys_dir / NEXT_SIGNING_KEY_FILE, key.seed_bytes_raw(), replace=False)
    except FileExistsError:
        raise SigningKeyPending() from None
    return key


def load_next_signing_key(keys_dir: Path) -> SigningKey | None:
    try:
        seed = read_private(keys_dir / NEXT_SIGNING_KEY_FILE, max_len=64, what="the next integration signing key")
    except FileNotFoundError:
        return None
    return SigningKey.from_seed_bytes(seed)


def next_signing_key_waiting(keys_dir: Path) -> bool:
    return (keys_dir / NEXT_SIGNING_KEY_FILE).exists()


def promote_signing_key(keys_dir: Path, wanted: VerifyKey) -> SigningKey | None:
    """The key a directory lists: the current one, or the waiting next one made current (the old one
    destroyed in the same rename); None when this service holds neither."""
    for _ in range(2):
        current = load_signing_key(keys_dir)
        if current.verify_key == wanted:
            return current
        waiting = load_next_signing_key(keys_dir)
        if waiting is None or waiting.verify_key != wanted:
            return None
        try:
            os.replace(keys_dir / NEXT_SIGNING_KEY_FILE, keys_dir / SIGNING_KEY_FILE)
        except FileNotFoundError:
            continue  # promoted by another process between the two reads: look again
        return waiting
    return None


def _entry_name(key: HybridPrivateKey) -> str:
    return ENCRYPTION_ENTRY_PREFIX + key.key_id.hex()[:32]


def create_officer_vault(path: Path, passphrase: Passphrase, keys: Sequence[HybridPrivateKey], **cost: int) -> None:
    """A new vault at ``path`` holding ``keys`` (``VaultExists`` if anything is there already)."""
    contents = VaultContents({_entry_name(k): k.private_bytes_raw() for k in keys})
    create_vault(path, passphrase, contents, **cost)


def open_officer_keys(path: Path, passphrase: Passphrase) -> tuple[HybridPrivateKey, ...]:
    """Every integration encryption key in the officer's vault (old ones too, for older packages)."""
    contents = open_vault(path, passphrase)
    keys = tuple(
        HybridPrivateKey.from_private_bytes(contents.get(name))
        for name in contents.names()
        if name.startswith(ENCRYPTION_ENTRY_PREFIX)
    )
    if not keys:
        raise NoEncryptionKeys()
    return keys


def add_encryption_key(path: Path, passphrase: Passphrase) -> HybridPrivateKey:
    """A new encryption key in the officer's vault, kept beside the old ones (which still open older packages).

    Its public half goes into the directory's integration ``encryption_keys``
    (``admin propose --integration-key``); handlers seal to the keys listed.
    """
    contents = open_vault(path, passphrase)
    key = HybridPrivateKey.generate()
    save_vault(path, passphrase, contents.with_entry(_entry_name(key), key.private_bytes_raw()))
    return key
