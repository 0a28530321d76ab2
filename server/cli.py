"""``safepassage server``: init, migrate, publish, run."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import click
from aiohttp import web

from safepassage.crypto.directory import SignedDirectory
from safepassage.crypto.encoding import b64e
from safepassage.crypto.errors import SafePassageError
from safepassage.crypto.vault import Passphrase

from . import tor
from .app import create_app
from .backup import make_backup, restore_backup
from .config import ConfigError, ServerConfig, load_config, write_config
from .db import migrate
from .db.engine import Store, make_engine
from .directory_store import load_published, parse_signed_head, publish
from .integration.config import load_integration_config
from .integration.directory import IntakeDirectorySource
from .keys import create_keys, create_next_receipt_key, load_keys, load_next_receipt_key
from .retention import RetentionCounts, reclaim_space, run_retention

DATA = click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The server's data folder (config, keys, SQLite database).",
)


@click.group()
def server() -> None:
    """Run the public intake server."""


class DataDirInUse(SafePassageError):
    """The data folder is not empty."""

    hint = "Choose a new folder for a new server; to upgrade an existing one, run: safepassage server migrate."
    exit_code = 2


@server.command()
@DATA
@click.option("--org", "org_fingerprint", required=True, help="Organisation fingerprint (ten groups of five digits).")
@click.option("--database-url", default="", help="postgresql+asyncpg://... for PostgreSQL; SQLite in DATA by default.")
def init(data_dir: Path, org_fingerprint: str, database_url: str) -> None:
    """Create the data folder, the server keys and the database."""
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise DataDirInUse(str(data_dir))
    values: dict[str, str | int] = {"org_fingerprint": " ".join(org_fingerprint.split())}
    if database_url:
        values["database_url"] = database_url
    # Check everything before writing anything, then build the folder aside and
    # move it into place: a failed init leaves no half-made server behind.
    replace(ServerConfig(data_dir=data_dir), **values).validate()  # type: ignore[arg-type]
    os.umask(0o077)
    staging = data_dir.parent / f".{data_dir.name}.init-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700, parents=True)
    try:
        write_config(staging, **values)
        staged = load_config(staging)
        keys = create_keys(staged.keys_dir)
        migrate.upgrade(staged.url)
        if data_dir.exists():
            data_dir.rmdir()
        staging.rename(data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    click.echo(f"Initialised {data_dir}.")
    click.echo("Give the admins this receipt key for the directory, and compare its fingerprint with them:")
    click.echo(f"  receipt key:  {b64e(keys.receipt.verify_key.public_bytes_raw())}")
    click.echo(f"  fingerprint:  {keys.receipt.verify_key.fingerprint()}")


@server.command(name="migrate")
@DATA
def migrate_cmd(data_dir: Path) -> None:
    """Upgrade the database to the newest schema."""
    migrate.upgrade(load_config(data_dir).url)
    click.echo("Database is at the newest schema.")


@server.command(name="publish")
@DATA
@click.argument("directory_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("head_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def publish_cmd(data_dir: Path, directory_file: Path, head_file: Path) -> None:
    """Publish a signed directory with the signed tree head that appends it to the log."""
    config = load_config(data_dir)
    keys = load_keys(config.keys_dir)
    signed = SignedDirectory.from_bytes(directory_file.read_bytes())
    head = parse_signed_head(head_file.read_bytes())

    async def run() -> int:
        store = Store(make_engine(config.url))
        try:
            waiting = load_next_receipt_key(config.keys_dir)
            published = await publish(
                store,
                signed,
                head,
                org_fingerprint=config.org_fingerprint,
                receipt_key=keys.receipt.verify_key,
                next_receipt_key=waiting.verify_key if waiting is not None else None,
                audit_key=keys.receipt,
            )
        finally:
            await store.close()
        return published.directory.version

    version = asyncio.run(run())
    click.echo(f"Published directory version {version}; the log now has {head.head.size} entries.")


@server.command(name="rotate-receipt-key")
@DATA
def rotate_receipt_key(data_dir: Path) -> None:
    """Make the next receipt key; it replaces the current one when a directory naming it is published."""
    config = load_config(data_dir)
    load_keys(config.keys_dir)  # a folder with no keys is refused before anything is written
    key = create_next_receipt_key(config.keys_dir).verify_key
    click.echo("Next receipt key made. Give the admins this key, and compare its fingerprint with them:")
    click.echo(f"  receipt key:  {b64e(key.public_bytes_raw())}")
    click.echo(f"  fingerprint:  {key.fingerprint()}")
    click.echo("They run: safepassage admin propose --receipt-key KEY; the server switches once it is published.")


@server.command()
@DATA
@click.option("--host", default=None, help="Address to listen on (loopback; Tor forwards to it).")
@click.option("--port", default=None, type=int)
def run(data_dir: Path, host: str | None, port: int | None) -> None:
    """Serve the public API until interrupted."""
    os.umask(0o077)
    config = load_config(data_dir)
    config = replace(config, host=host or config.host, port=port or config.port).validate()
    load_keys(config.keys_dir)  # fail now, with a clear error, rather than on first request
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    click.echo(f"Serving on http://{config.host}:{config.port}", err=True)
    app = create_app(config)
    if config.tor_control:
        publish_public_onion(app, config)
    web.run_app(app, host=config.host, port=config.port, access_log=None, print=None)


class NothingPublished(SafePassageError):
    """No directory has been published on this server yet, so there is no retention policy."""

    hint = "Publish a directory first: safepassage server publish --data DIR DIRECTORY HEAD."
    exit_code = 2


@server.command(name="retention")
@DATA
@click.option("--dry-run", is_flag=True, help="Count what would be deleted now, and delete nothing.")
@click.option(
    "--vacuum-full",
    is_flag=True,
    help="PostgreSQL: then rewrite the content tables (VACUUM FULL) so deleted bytes leave their files.",
)
def retention_cmd(data_dir: Path, dry_run: bool, vacuum_full: bool) -> None:
    """Apply the directory's retention policy once and print the counts (never ids or content)."""
    config = load_config(data_dir)
    keys = load_keys(config.keys_dir)

    async def run() -> RetentionCounts:
        store = Store(make_engine(config.url))
        try:
            published = await load_published(store)
            if published is None:
                raise NothingPublished()
            today = dt.datetime.now(dt.UTC).date()
            counts = await run_retention(
                store, published.directory, today=today, audit_key=keys.receipt, dry_run=dry_run
            )
            if vacuum_full and not dry_run:
                await reclaim_space(store)
            return counts
        finally:
            await store.close()

    counts = asyncio.run(run())
    verb = "Would delete" if dry_run else "Deleted"
    click.echo(f"{verb} {counts.describe()}.")


def publish_public_onion(app: web.Application, config: ServerConfig) -> None:
    """Publish the applicants' onion (PoW defence per config) while ``app`` runs (key: keys/onion-public.key)."""
    spec = tor.public_spec(
        config.onion_key_path("public"),
        config.host,
        config.port,
        pow_defense=bool(config.onion_pow),
        queue_rate=config.onion_pow_queue_rate,
        queue_burst=config.onion_pow_queue_burst,
    )
    settings = tor.TorSettings(
        config.tor_control, config.tor_control_password_file, config.data_dir, config.tor_health_seconds
    )
    tor.attach(app, settings, [spec])


def _backup_passphrase(path: Path | None, *, new: bool) -> Passphrase:
    if path is not None:
        return Passphrase(path.read_text(encoding="utf-8").removesuffix("\n"))
    return Passphrase(click.prompt("Backup passphrase", hide_input=True, confirmation_prompt=new, err=True))


@server.command()
@DATA
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="A new folder.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path), help="Read the passphrase here.")
def backup(data_dir: Path, out: Path, passphrase_file: Path | None) -> None:
    """Back up config, keys (sealed under a passphrase) and the database into a new folder."""
    os.umask(0o077)
    summary = make_backup(data_dir, out, _backup_passphrase(passphrase_file, new=True))
    click.echo(f"Backed up {summary.secrets} secret file(s) and the database ({summary.database}) into {out}.")
    click.echo("Keep the passphrase apart from the backup; without it the keys cannot be restored.")


@server.command()
@click.option("--backup", "folder", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@DATA
@click.option("--database-url", default="", help="For a PostgreSQL backup: an empty database to restore into.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path), help="Read the passphrase here.")
def restore(folder: Path, data_dir: Path, database_url: str, passphrase_file: Path | None) -> None:
    """Recreate a data folder (new or empty) from a backup made by 'server backup'."""
    os.umask(0o077)
    count = restore_backup(folder, data_dir, _backup_passphrase(passphrase_file, new=False), database_url=database_url)
    click.echo(f"Restored {count} secret file(s) and the database into {data_dir}.")
    click.echo("Then: safepassage server migrate --data DIR (if the software is newer), and start the services.")


ROLE = click.option(
    "--role",
    type=click.Choice(tor.ROLES),
    required=True,
    help="public or staff (DATA is the server's folder), integration (DATA is the integration service's).",
)


def _onion_key_path(data_dir: Path, role: str) -> Path:
    # Only DATA/keys is used, so the same command serves the integration service's folder.
    return data_dir / "keys" / f"onion-{role}.key"


class MoveNotPublished(SafePassageError):
    """The newest published directory does not name the next onion address yet."""

    hint = "Have the admins sign a directory naming the next address, publish it, then run --finish again."
    exit_code = 2


async def _published_onion(data_dir: Path, role: str) -> str | None:
    """The role's address in the newest published directory (None if nothing is published or it names none)."""
    if role == "integration":
        # DATA is the integration service's folder: it reads the directory from the intake, verified.
        config = load_integration_config(data_dir)
        directory = await IntakeDirectorySource(config, remember=False).fetch()
        return directory.onions.get(role)
    store = Store(make_engine(load_config(data_dir).url))
    try:
        published = await load_published(store)
    finally:
        await store.close()
    return None if published is None else published.directory.onions.get(role)


@server.command(name="onion-address")
@DATA
@ROLE
@click.option("--create", is_flag=True, help="Make the role's key now if it has none (no tor needed).")
def onion_address(data_dir: Path, role: str, create: bool) -> None:
    """Print the role's onion addresses (current, and during a rotation next and retired), read from the keys."""
    os.umask(0o077)
    key_path = _onion_key_path(data_dir, role)
    addresses = tor.onion_addresses(key_path, time.time())
    if not addresses and create:
        if not key_path.parent.is_dir():
            raise ConfigError(f"{data_dir} has no keys folder: is it a data folder made by init?")
        with contextlib.suppress(FileExistsError):  # made by a service starting at this moment: show it
            tor.OnionKey.create(key_path)
        addresses = tor.onion_addresses(key_path, time.time())
    if not addresses:
        raise tor.NoOnionKey(f"no {role} onion key yet")
    for label, address in addresses.items():
        click.echo(f"{label}: {address}")


@server.command(name="onion-rotate")
@DATA
@ROLE
@click.option("--finish", is_flag=True, help="Make the next address current (after the admins signed it).")
@click.option("--grace-hours", default=24 * 7, type=int, show_default=True, help="How long the old address stays up.")
def onion_rotate(data_dir: Path, role: str, finish: bool, grace_hours: int) -> None:
    """Rotate an onion address: first a next key (published beside the current one), then --finish."""
    os.umask(0o077)
    key_path = _onion_key_path(data_dir, role)
    if not finish:
        key = tor.start_rotation(key_path)
        click.echo(f"Next {role} address: {key.address()}")
        click.echo("It is published beside the current one at the next health check. Have the admins sign a")
        click.echo("directory naming it, publish that, then run this command again with --finish.")
        return
    nxt = tor.onion_addresses(key_path, time.time()).get("next")
    if nxt is None:
        raise tor.RotationError("no rotation under way (there is no next key)")
    # Finishing takes the old address down (after the grace): clients that cannot learn the
    # new one from a signed directory would be stranded, so the admins' move must be public first.
    published = asyncio.run(_published_onion(data_dir, role))
    if published != nxt:
        raise MoveNotPublished(f"it names {published or 'no address'} for {role}, the next is {nxt}")
    old, new = tor.finish_rotation(key_path, grace_seconds=grace_hours * 3600, now=time.time())
    click.echo(f"{new} is now the {role} address; {old} stays up for {grace_hours} hours, then its key is destroyed.")
