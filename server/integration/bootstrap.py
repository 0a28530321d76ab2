"""``integration init``: a new data folder, the service's signing key, its database, the officer's vault.

Everything is checked before anything is written, and the folder is built
aside and moved into place (as ``server init`` does), so a failed init leaves
nothing behind: no half-made service, no stray vault.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from safepassage.crypto.errors import SafePassageError, VaultExists
from safepassage.crypto.keys import HybridPrivateKey, HybridPublicKey, VerifyKey
from safepassage.crypto.vault import Passphrase, check_passphrase_strength
from safepassage.server.config import write_config

from . import migrate
from .config import IntegrationConfig, load_integration_config
from .keys import create_officer_vault, create_signing_key


class DataDirInUse(SafePassageError):
    """The data folder is not empty."""

    hint = "Choose a new folder for a new integration service; its keys are made once, by init."
    exit_code = 2


@dataclass(frozen=True, slots=True)
class Initialised:
    """The public keys the admins put in the directory's ``integration`` member."""

    signing_key: VerifyKey
    encryption_keys: tuple[HybridPublicKey, ...]
    vault_path: Path


def _check_targets(data_dir: Path, vault_path: Path | None) -> None:
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise DataDirInUse(str(data_dir))
    if vault_path is not None and (vault_path.exists() or vault_path.is_symlink()):
        raise VaultExists()


@dataclass(frozen=True, slots=True)
class InitPlan:
    """What ``init`` will write, checked (:func:`plan_init`) before the officer is asked for a passphrase."""

    data_dir: Path
    settings: dict[str, str | int]
    #: Where the officer's vault goes when not in the data folder.
    vault_path: Path | None


def plan_init(
    data_dir: Path,
    *,
    org_fingerprint: str,
    intake_url: str,
    intake_socks: str = "",
    database_url: str = "",
    vault_path: Path | None = None,
) -> InitPlan:
    """Check everything ``init`` can check without a passphrase; raise, or return the plan."""
    _check_targets(data_dir, vault_path)
    settings: dict[str, str | int] = {
        "org_fingerprint": " ".join(org_fingerprint.split()),
        "intake_url": intake_url,
    }
    if intake_socks:
        settings["intake_socks"] = intake_socks
    if database_url:
        settings["database_url"] = database_url
    replace(IntegrationConfig(data_dir=data_dir), **settings).validate()  # type: ignore[arg-type]
    return InitPlan(data_dir, settings, vault_path)


def init_data_dir(plan: InitPlan, passphrase: Passphrase) -> Initialised:
    """Create the data folder with config, signing key and database, and the officer's vault.

    The vault is ``DATA/officer.vault`` unless the plan puts it elsewhere (for
    example on removable media the officer keeps).
    """
    data_dir, vault_path = plan.data_dir, plan.vault_path
    _check_targets(data_dir, vault_path)  # again: the folder may have changed while the officer typed
    check_passphrase_strength(passphrase)

    staging = data_dir.parent / f".{data_dir.name}.init-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700, parents=True)
    external_vault_made = False
    try:
        write_config(staging, **plan.settings)
        staged = load_integration_config(staging)
        signing = create_signing_key(staged.keys_dir)
        encryption = HybridPrivateKey.generate()
        create_officer_vault(vault_path or staged.vault_path, passphrase, [encryption])
        external_vault_made = vault_path is not None
        # The database last: a PostgreSQL schema is the one thing the staging folder cannot take back.
        migrate.upgrade(staged.url)
        if data_dir.exists():
            data_dir.rmdir()
        staging.rename(data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if external_vault_made and vault_path is not None:
            with contextlib.suppress(OSError):
                vault_path.unlink()
        raise
    return Initialised(signing.verify_key, (encryption.public_key,), vault_path or data_dir / staged.vault_path.name)
