"""Backup and restore of a server's data folder: secrets sealed under a passphrase, data copied.

A backup is a folder (never an existing one) holding:

- ``secrets.vault``: config.toml, every file of DATA/keys (receipt, staff TOTP
  and onion keys) and DATA/onion-clients, in one vault (crypto/vault.py:
  Argon2id, XChaCha20-Poly1305) under the operator's backup passphrase. These
  are what a thief with the backup medium must not get.
- ``database.sqlite`` (SQLite's online backup, consistent while the server
  runs) or ``database.pgdump`` (``pg_dump --format=custom``). The database
  holds sealed envelopes only, plus the metadata docs/storage.md lists; keep the
  medium encrypted anyway, the metadata is not nothing.
- ``manifest.json``: the format, the database kind and its SHA-256, so a
  restore refuses a swapped or damaged database file.

Restore builds the new data folder aside and moves it into place only when
everything checked and was written, so a failed restore leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from safepassage.crypto.errors import MalformedInput, SafePassageError
from safepassage.crypto.privatefile import read_private, write_private
from safepassage.crypto.vault import (
    DEFAULT_MEMLIMIT,
    DEFAULT_OPSLIMIT,
    Passphrase,
    VaultContents,
    create_vault,
    open_vault,
)

from .config import CONFIG_FILE, DB_FILE, ServerConfig, load_config

FORMAT: Final = "safepassage/server-backup/v1"
VAULT: Final = "secrets.vault"
MANIFEST: Final = "manifest.json"
SQLITE: Final = "database.sqlite"
PGDUMP: Final = "database.pgdump"
#: Largest single secret file copied into the vault (keys are a few hundred bytes).
MAX_SECRET_FILE: Final = 64 * 1024
_CONFIG_ENTRY: Final = "config"
_KEY_PREFIX: Final = "key."
_CLIENT_PREFIX: Final = "client."
_DB_ENTRY: Final = "meta.database"


class BackupError(SafePassageError):
    """The backup could not be made or restored."""

    hint = "Nothing was changed. Check the paths and the passphrase, then try again."
    exit_code = 2


@dataclass(frozen=True, slots=True)
class BackupSummary:
    folder: Path
    database: str
    secrets: int


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pg_url(url: str) -> str:
    # pg_dump speaks libpq URLs: drop SQLAlchemy's driver name.
    return "postgresql://" + url.removeprefix("postgresql+asyncpg://")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(f"{name} is not installed (apt-get install postgresql-client)")
    return path


def _secrets(config: ServerConfig) -> VaultContents:
    contents = VaultContents.empty()
    config_path = config.data_dir / CONFIG_FILE
    if config_path.is_file():
        contents = contents.with_entry(_CONFIG_ENTRY, config_path.read_bytes())
    for prefix, folder in ((_KEY_PREFIX, config.keys_dir), (_CLIENT_PREFIX, config.onion_clients_dir)):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file():
                data = read_private(path, max_len=MAX_SECRET_FILE, what=f"{folder.name}/{path.name}")
                contents = contents.with_entry(prefix + path.name, data)
    return contents


def make_backup(
    data_dir: Path,
    out: Path,
    passphrase: Passphrase,
    *,
    opslimit: int = DEFAULT_OPSLIMIT,
    memlimit: int = DEFAULT_MEMLIMIT,
) -> BackupSummary:
    """Write a backup of ``data_dir`` into the new folder ``out``."""
    config = load_config(data_dir)
    if out.exists():
        raise BackupError("the backup folder already exists")
    contents = _secrets(config)
    staging = out.with_name(f".{out.name}.partial")
    staging.mkdir(mode=0o700, parents=False)
    try:
        if config.database_url:
            db_name = PGDUMP
            subprocess.run(  # noqa: S603 (pg_dump from PATH, our arguments)
                [
                    _tool("pg_dump"),
                    "--format=custom",
                    "--no-owner",
                    "--file",
                    str(staging / PGDUMP),
                    "--dbname",
                    _pg_url(config.url),
                ],
                check=True,
                capture_output=True,
                timeout=3600,
            )
        else:
            db_name = SQLITE
            source = sqlite3.connect(f"file:{config.db_path}?mode=ro", uri=True)
            target = sqlite3.connect(staging / SQLITE)
            try:
                # SQLite's online backup: a consistent copy while the server keeps writing.
                source.backup(target)
            finally:
                target.close()
                source.close()
            os.chmod(staging / SQLITE, 0o600)
        digest = _sha256(staging / db_name)
        # The database's hash also goes inside the vault, where the passphrase authenticates it:
        # someone who swaps the database file must forge the vault too.
        contents = contents.with_entry(_DB_ENTRY, f"{db_name}:{digest}".encode("ascii"))
        create_vault(staging / VAULT, passphrase, contents, opslimit=opslimit, memlimit=memlimit)
        manifest = {"format": FORMAT, "database": db_name, "sha256": digest}
        write_private(staging / MANIFEST, json.dumps(manifest, sort_keys=True).encode() + b"\n", replace=False)
        staging.rename(out)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BackupError(f"pg_dump failed with status {exc.returncode}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return BackupSummary(out, db_name, len(contents.names()) - 1)


def _manifest(folder: Path) -> dict[str, str]:
    try:
        raw = json.loads((folder / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise BackupError("no manifest.json: that is not a Safe Passage backup") from None
    except ValueError:
        raise MalformedInput("manifest.json") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("database") not in (SQLITE, PGDUMP):
        raise BackupError("manifest.json is not of a known backup format")
    if not isinstance(raw.get("sha256"), str):
        raise MalformedInput("manifest.json")
    return {k: str(v) for k, v in raw.items()}


def restore_backup(folder: Path, data_dir: Path, passphrase: Passphrase, *, database_url: str = "") -> int:
    """Recreate ``data_dir`` (new or empty) from ``folder``; returns the number of secret files restored.

    A PostgreSQL backup is restored into ``database_url`` (an empty database),
    which replaces the one in the backed-up config.toml.
    """
    manifest = _manifest(folder)
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise BackupError("the data folder is not empty")
    db_file = folder / manifest["database"]
    if _sha256(db_file) != manifest["sha256"]:
        raise BackupError("the database file does not match the manifest (damaged or swapped)")
    if manifest["database"] == PGDUMP and not database_url:
        raise BackupError("a PostgreSQL backup needs --database-url of an empty database")
    contents = open_vault(folder / VAULT, passphrase)  # WrongPassphrase if wrong or altered
    try:
        sealed_digest = contents.get(_DB_ENTRY).decode("ascii")
    except (SafePassageError, UnicodeDecodeError):
        raise MalformedInput("backup vault without the database's hash") from None
    if sealed_digest != f"{manifest['database']}:{manifest['sha256']}":
        raise BackupError("the database file is not the one this backup's vault was made with")
    staging = data_dir.parent / f".{data_dir.name}.restore"
    staging.mkdir(mode=0o700)
    try:
        count = _write_secrets(staging, contents)
        if database_url:
            _set_database_url(staging, database_url)
        config = load_config(staging)
        _restore_database(manifest["database"], db_file, staging, config)
        if data_dir.exists():
            data_dir.rmdir()
        staging.rename(data_dir)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BackupError(f"pg_restore failed with status {exc.returncode} (is the database empty?)") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return count


def _write_secrets(staging: Path, contents: VaultContents) -> int:
    (staging / "keys").mkdir(mode=0o700)
    names = [n for n in contents.names() if n != _DB_ENTRY]
    for name in names:
        if name == _CONFIG_ENTRY:
            target = staging / CONFIG_FILE
        elif name.startswith(_KEY_PREFIX):
            target = staging / "keys" / name.removeprefix(_KEY_PREFIX)
        elif name.startswith(_CLIENT_PREFIX):
            (staging / "onion-clients").mkdir(mode=0o700, exist_ok=True)
            target = staging / "onion-clients" / name.removeprefix(_CLIENT_PREFIX)
        else:
            raise MalformedInput("unknown entry in the backup vault")
        write_private(target, contents.get(name), replace=False)
    return len(names)


def _restore_database(kind: str, db_file: Path, staging: Path, config: ServerConfig) -> None:
    if kind == SQLITE:
        if config.database_url:
            raise BackupError("the backed-up config names PostgreSQL but the backup holds SQLite")
        shutil.copyfile(db_file, staging / DB_FILE)
        os.chmod(staging / DB_FILE, 0o600)
        return
    subprocess.run(  # noqa: S603 (pg_restore from PATH, our arguments)
        [_tool("pg_restore"), "--no-owner", "--exit-on-error", "--dbname", _pg_url(config.url), str(db_file)],
        check=True,
        capture_output=True,
        timeout=3600,
    )


def _set_database_url(folder: Path, url: str) -> None:
    path = folder / CONFIG_FILE
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    lines = [line for line in lines if not line.startswith("database_url")]
    lines.append('database_url = "' + url.replace("\\", "\\\\").replace('"', '\\"') + '"')
    write_private(path, ("\n".join(lines) + "\n").encode("utf-8"), replace=True)


__all__ = ["BackupError", "BackupSummary", "make_backup", "restore_backup"]
