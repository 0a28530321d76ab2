"""``safepassage integration``: run the integration service, and the officer's commands.

``init``, ``migrate`` and ``run`` are the operator's; ``inbox`` and ``read``
are the officer's and work on the service's data folder directly (its
database and configuration; ``read`` also needs the officer's vault and its
passphrase). ``read`` verifies against a directory it fetches and verifies
itself from the intake, checking it against the service's remembered log head
without changing it. Failures reach :func:`safepassage.client.cli.main`,
which prints them as ``error:`` and ``hint:`` lines with an exit code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Final

import click
from aiohttp import web

from safepassage.crypto.encoding import b64e
from safepassage.crypto.vault import MIN_PASSPHRASE_CHARS, Passphrase
from safepassage.server.db.engine import Store, make_engine
from safepassage.server.integration import create_integration_app, migrate
from safepassage.server.integration.bootstrap import init_data_dir, plan_init
from safepassage.server.integration.config import load_integration_config, publish_integration_onion
from safepassage.server.integration.directory import IntakeDirectorySource
from safepassage.server.integration.keys import (
    add_encryption_key,
    create_next_signing_key,
    load_signing_key,
    open_officer_keys,
)
from safepassage.server.integration.models import Package

from .errors import UsageError
from .officer import (
    CASE_FILE,
    InboxRow,
    ReadPackage,
    check_out_folder,
    complete_package,
    list_packages,
    read_package,
)
from .render import printable

MAX_PASSPHRASE_FILE: Final = 4096

_data = click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The integration service's data folder (config, signing key, database, remembered log head).",
)
_passphrase_file = click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Read the vault passphrase from FILE (first line) instead of asking for it. Keeping it in a file is risky.",
)
_vault = click.option(
    "--vault",
    "vault_path",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The officer's vault (default: DATA/officer.vault).",
)


def _read_passphrase(path: Path | None, *, new: bool) -> Passphrase:
    if path is not None:
        with open(path, "rb") as f:
            data = f.read(MAX_PASSPHRASE_FILE + 1)
        if len(data) > MAX_PASSPHRASE_FILE:
            raise UsageError("the passphrase file is too long to hold a passphrase")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("the passphrase file is not UTF-8 text") from None
        # The first line: an editor's final newline is not part of the passphrase.
        return Passphrase(text.splitlines()[0] if text else "")
    if new:
        click.echo(
            f"Choose the passphrase of the officer's vault: at least {MIN_PASSPHRASE_CHARS} characters; "
            "five or more random words are better. Without it no package can be opened.",
            err=True,
        )
    text = click.prompt("Vault passphrase (input is hidden)", hide_input=True, confirmation_prompt=new, err=True)
    return Passphrase(text)


@click.group()
def integration() -> None:
    """Run the integration service, and read the packages handlers deliver to it (officer)."""


@integration.command()
@_data
@click.option("--org", "org_fingerprint", required=True, help="Organisation fingerprint (ten groups of five digits).")
@click.option(
    "--intake", "intake_url", required=True, metavar="URL", help="The public intake's address (http://<onion>)."
)
@click.option("--socks", "intake_socks", default="", metavar="URL", help="Tor's SOCKS port, to reach the intake.")
@click.option("--database-url", default="", help="postgresql+asyncpg://... for PostgreSQL; SQLite in DATA by default.")
@_passphrase_file
@_vault
def init(
    data_dir: Path,
    org_fingerprint: str,
    intake_url: str,
    intake_socks: str,
    database_url: str,
    passphrase_file: Path | None,
    vault_path: Path | None,
) -> None:
    """Create the data folder, the signing key, the database and the officer's vault."""
    os.umask(0o077)
    # Everything that can be checked is, before the passphrase is asked for.
    plan = plan_init(
        data_dir,
        org_fingerprint=org_fingerprint,
        intake_url=intake_url,
        intake_socks=intake_socks,
        database_url=database_url,
        vault_path=vault_path,
    )
    passphrase = _read_passphrase(passphrase_file, new=True)
    made = init_data_dir(plan, passphrase)
    click.echo(f"Initialised {data_dir}.")
    click.echo(f"The officer's vault is {made.vault_path}: only it, with its passphrase, opens packages.")
    click.echo("Give the admins these keys for the directory's integration member, and compare the fingerprints")
    click.echo("with them over a channel you trust:")
    click.echo(f"  signing key:     {b64e(made.signing_key.public_bytes_raw())}")
    click.echo(f"  fingerprint:     {made.signing_key.fingerprint()}")
    for key in made.encryption_keys:
        click.echo(f"  encryption key:  {b64e(key.public_bytes_raw())}")
        click.echo(f"  fingerprint:     {key.fingerprint()}")


@integration.command(name="migrate")
@_data
def migrate_cmd(data_dir: Path) -> None:
    """Upgrade the database to the newest schema."""
    migrate.upgrade(load_integration_config(data_dir).url)
    click.echo("Database is at the newest schema.")


@integration.command()
@_data
@click.option("--host", default=None, help="Address to listen on (loopback; Tor forwards to it).")
@click.option("--port", default=None, type=int)
def run(data_dir: Path, host: str | None, port: int | None) -> None:
    """Serve /integration/v1 until interrupted."""
    os.umask(0o077)
    config = load_integration_config(data_dir)
    config = replace(config, host=host or config.host, port=port or config.port).validate()
    load_signing_key(config.keys_dir)  # fail now, with a clear error, rather than at start-up inside aiohttp
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # As `server run`: aiohttp logs a malformed request with a traceback that
    # quotes its raw request line and headers (upload tokens included).
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    logging.getLogger("aiohttp.access").setLevel(logging.CRITICAL)
    click.echo(f"Serving on http://{config.host}:{config.port}", err=True)
    app = create_integration_app(config)
    if config.tor_control:
        publish_integration_onion(app, config)
    web.run_app(app, host=config.host, port=config.port, access_log=None, print=None)


@integration.command()
@_data
def inbox(data_dir: Path) -> None:
    """List the packages received (complete ones; nothing is decrypted)."""
    config = load_integration_config(data_dir)

    async def go() -> tuple[tuple[InboxRow, ...], int]:
        store = Store(make_engine(config.url))
        try:
            return await list_packages(store)
        finally:
            await store.close()

    rows, pending = asyncio.run(go())
    if not rows:
        click.echo("No packages.")
    else:
        header = ("package", "handler", "day", "attachments", "size")
        table = [header, *((r.package_id, r.handler, r.day, str(r.attachments), r.size) for r in rows)]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if pending:
        click.echo(f"({pending} more still uploading, not shown)")


@integration.command()
@click.argument("package_id")
@_data
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    metavar="FOLDER",
    help="A new (or empty) folder for the case text and the attachments; created with mode 0700.",
)
@_passphrase_file
@_vault
def read(package_id: str, data_dir: Path, out: Path, passphrase_file: Path | None, vault_path: Path | None) -> None:
    """Decrypt a package locally, verify every signature in it, and write it to a new folder.

    An id that starts with '-' goes last, after '--': read --data DIR --out FOLDER -- -AbC123xy
    """
    os.umask(0o077)
    config = load_integration_config(data_dir)
    check_out_folder(out)

    async def stored() -> Package:
        store = Store(make_engine(config.url))
        try:
            return await complete_package(store, package_id)
        finally:
            await store.close()

    # Cheap checks first: no passphrase is asked for, and no network used, for a package that is not there.
    package = asyncio.run(stored())
    keys = open_officer_keys(vault_path or config.vault_path, _read_passphrase(passphrase_file, new=False))

    async def go() -> ReadPackage:
        directory = await IntakeDirectorySource(config, remember=False).fetch()
        store = Store(make_engine(config.url))
        try:
            return await read_package(store, package, keys, directory, out)
        finally:
            await store.close()

    _echo_read(asyncio.run(go()), out)


@integration.command(name="rotate-key")
@_data
@_passphrase_file
@_vault
def rotate_key(data_dir: Path, passphrase_file: Path | None, vault_path: Path | None) -> None:
    """Add a new encryption key to the officer's vault (old keys stay, for older packages)."""
    config = load_integration_config(data_dir)
    vault = vault_path or config.vault_path
    key = add_encryption_key(vault, _read_passphrase(passphrase_file, new=False)).public_key
    signing = load_signing_key(config.keys_dir).verify_key
    click.echo("New encryption key in the officer's vault. Give the admins (compare fingerprints with them):")
    click.echo(f"  encryption key:  {b64e(key.public_bytes_raw())}")
    click.echo(f"  fingerprint:     {key.fingerprint()}")
    click.echo(f"with the unchanged signing key {b64e(signing.public_bytes_raw())};")
    click.echo(
        "they run: admin propose --integration-signing-key SIGNING --integration-key NEW [--integration-key OLD]"
    )


@integration.command(name="rotate-signing-key")
@_data
def rotate_signing_key(data_dir: Path) -> None:
    """Make the service's next signing key; it replaces the current one once a directory lists it."""
    config = load_integration_config(data_dir)
    key = create_next_signing_key(config.keys_dir).verify_key
    click.echo("Next signing key made (keys/signing.next.key). Give the admins (compare fingerprints with them):")
    click.echo(f"  signing key:  {b64e(key.public_bytes_raw())}")
    click.echo(f"  fingerprint:  {key.fingerprint()}")
    click.echo(
        "they run: admin propose --integration-signing-key NEW --integration-key KEY (each key listed now); "
        "the service switches when it reads that directory and destroys the old key."
    )


def _echo_read(read: ReadPackage, out: Path) -> None:
    e, c = read.escalation, read.contact
    click.echo(f"Package {read.package_id}, delivered by {read.handler_id} on {read.day}: verified.")
    click.echo(f"  - opened with the officer's key {read.opened_with.short()}")
    click.echo(
        f"  - signed by handler {e.handler_id}, as listed in directory version {read.directory_version}; "
        "it names the package id and handler the service recorded"
    )
    click.echo(
        f"  - the applicant's contact (case {e.contact_id}, pool {e.pool}, {e.day}) is signed by its mailbox key "
        f"{c.mailbox_key.key_id.short()}; {len(read.follow_ups)} follow-up(s) signed by the same key"
    )
    signers = sorted({r.handler_id for r in read.replies})
    click.echo(
        f"  - {len(read.replies)} reply/replies signed by handlers of the directory: {', '.join(signers) or '-'}"
    )
    click.echo(f"  - {len(read.files)} attachment(s): every chunk authenticated; sizes as the applicant declared")
    click.echo(f"Written to {out} (only you can read it):")
    click.echo(f"  {CASE_FILE}  (the applicant's message, fields, follow-ups, replies and the assessment)")
    for f in read.files:
        click.echo(f"  {f.name}  ({f.size} bytes)")
    click.echo(f"Assessment by {e.handler_id}:")
    for line in printable(e.assessment).splitlines() or [""]:
        click.echo(f"  | {line}")


__all__ = ["integration"]
