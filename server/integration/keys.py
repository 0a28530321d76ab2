"""The service's one secret, and the officer's vault of encryption keys.

* ``DATA/keys/signing.key`` (0600, folder 0700): the Ed25519 seed that signs
  integration receipts. Its public half is the directory's integration
  ``signing_key``. The running service loads it; nothing else does.
* The officer's vault (crypto/vault.py, section 11): the hybrid encryption
  keys whose public halves are the directory's integration
  ``encryption_keys``. Only ``integration init`` (which makes them) and
  ``integration read`` (the officer, with the passphrase) open it; the
  service process never does, so a memory image of it holds no key that opens
  a package.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from safepassage.crypto.errors import SafePassageError
from safepassage.crypto.keys import HybridPrivateKey, SigningKey
from safepassage.crypto.privatefile import read_private, write_private
from safepassage.crypto.vault import Passphrase, VaultContents, create_vault, open_vault, save_vault

SIGNING_KEY_FILE: Final = "signing.key"
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
