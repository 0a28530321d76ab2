"""``safepassage staff``: init, invite, run.

``invite`` is how an operator bootstraps the first admin (and may enrol anyone
later); after that, admins invite through the API. Every check runs before
anything is written, so bad input changes nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

import click
from aiohttp import web
from sqlalchemy import inspect

from safepassage.crypto.errors import SafePassageError

from .. import tor
from ..config import ServerConfig, load_config
from ..db.engine import Store, make_engine
from ..keys import TOTP_KEY_FILE, create_totp_key, load_keys
from ..tor import ClientKey
from . import onion_clients
from .accounts import INVITATION_HOURS, create_invitation
from .app import create_staff_app
from .body import ROLES, USERNAME
from .context import STAFF

DATA = click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The server's data folder (config, keys, SQLite database).",
)


class BadStaffInput(SafePassageError):
    """That is not a valid staff account."""

    exit_code = 2


class SchemaOutdated(SafePassageError):
    """The database has no staff tables yet."""

    hint = "Run: safepassage server migrate --data DIR (after upgrading the software)."
    exit_code = 2


@click.group()
def staff() -> None:
    """Run the staff API and enrol staff."""


@staff.command()
@DATA
def init(data_dir: Path) -> None:
    """Add the staff key (keys/totp.key) to a server folder made before the staff app existed."""
    config = load_config(data_dir)
    keys = load_keys(config.keys_dir)  # a server folder, or MissingKeys
    if keys.totp is not None:
        click.echo(f"{TOTP_KEY_FILE} already exists; nothing changed.")
        return
    os.umask(0o077)
    create_totp_key(config.keys_dir)
    click.echo(f"Created {config.keys_dir / TOTP_KEY_FILE}. Back it up with the rest of DATA/keys.")


async def _require_schema(store: Store) -> None:
    async with store.engine.connect() as conn:
        tables: list[str] = await conn.run_sync(lambda c: inspect(c).get_table_names())
    if "staff_users" not in tables or "audit_log" not in tables:
        raise SchemaOutdated()


@staff.command()
@DATA
@click.option("--user", "username", required=True, help="The account name; for a handler, its id in the directory.")
@click.option("--role", "role", required=True, help="handler or admin.")
@click.option(
    "--onion-key",
    default=None,
    help="The person's Tor client key (from 'safepassage handler onion-key'): lets their Tor reach the staff onion.",
)
def invite(data_dir: Path, username: str, role: str, onion_key: str | None) -> None:
    """Print a one-time invitation code for a new staff account."""
    if not USERNAME.fullmatch(username):
        raise BadStaffInput("the username must be a lowercase letter, then up to 63 lowercase letters, digits or '-'")
    if role not in ROLES:
        raise BadStaffInput("the role must be 'handler' or 'admin'")
    client_key = ClientKey.parse(onion_key) if onion_key is not None else None
    config = load_config(data_dir)
    # A server folder with its staff key, before the database is touched.
    keys = load_keys(config.keys_dir)
    keys.require_totp()

    async def run() -> tuple[str, int]:
        store = Store(make_engine(config.url))
        try:
            await _require_schema(store)
            now = dt.datetime.now(dt.UTC)
            return await create_invitation(
                store,
                username=username,
                role=role,
                now=int(now.timestamp()),
                day=now.date(),
                actor="operator",
                audit_key=keys.receipt,
            )
        finally:
            await store.close()

    code, expires = asyncio.run(run())
    if client_key is not None:
        os.umask(0o077)
        onion_clients.register(config.onion_clients_dir, username, client_key)
        click.echo(f"Their Tor client key is authorised for the staff onion (within {config.tor_health_seconds} s).")
    until = dt.datetime.fromtimestamp(expires, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    click.echo(f"Invitation for {username} ({role}), valid for {INVITATION_HOURS} hours, until {until}:")
    click.echo(f"  {code}")
    click.echo("Give it to them over a channel you trust; it works once. It is not stored and cannot be shown again.")


@staff.command()
@DATA
@click.option("--host", default=None, help="Address to listen on (loopback; Tor forwards to it).")
@click.option("--port", default=None, type=int)
def run(data_dir: Path, host: str | None, port: int | None) -> None:
    """Serve the staff API until interrupted."""
    os.umask(0o077)
    config = load_config(data_dir)
    config = replace(config, staff_host=host or config.staff_host, staff_port=port or config.staff_port).validate()
    app = create_staff_app(config)  # loads and checks the keys now
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # aiohttp logs malformed requests with a traceback that quotes the raw
    # request line and headers (bearer tokens included): never let that through.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    logging.getLogger("aiohttp.access").setLevel(logging.CRITICAL)
    click.echo(f"Serving the staff API on http://{config.staff_host}:{config.staff_port}", err=True)
    if config.tor_control:
        publish_staff_onion(app, config)
    web.run_app(app, host=config.staff_host, port=config.staff_port, access_log=None, print=None)


def publish_staff_onion(app: web.Application, config: ServerConfig, store: Store | None = None) -> None:
    """Publish the staff onion, restricted to the enrolled staff's client keys, while ``app`` runs."""
    spec = tor.restricted_spec("staff", config.onion_key_path("staff"), config.staff_host, config.staff_port)
    settings = tor.TorSettings(
        config.tor_control, config.tor_control_password_file, config.data_dir, config.tor_health_seconds
    )

    async def clients() -> tuple[tor.ClientKey, ...]:
        staff = app[STAFF]
        # The staff app's clock, so invitation expiry is judged as enrolment judges it.
        return await onion_clients.authorised_keys(store or staff.store, config.onion_clients_dir, now=staff.now())

    tor.attach(app, settings, [spec], clients={"staff": clients})
