"""``safepassage witness``: an independent party that cosigns the directory log's heads (protocol 8.8)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from safepassage.crypto.encoding import b64e

from .witness import cosign, init_witness

_dir = click.option(
    "--dir",
    "folder",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The witness's folder (its key and the last head it cosigned).",
)


@click.group()
def witness() -> None:
    """Cosign the directory log's heads as an independent witness."""


@witness.command("init")
@_dir
def init_command(folder: Path) -> None:
    """Create the folder and the witness key; give the public key to the operator and to clients."""
    key = init_witness(folder)
    click.echo(f"Created {folder}.")
    click.echo(f"  witness key:  {b64e(key.public_bytes_raw())}")
    click.echo(f"  fingerprint:  {key.fingerprint()}")
    click.echo("The operator adds the key to the server's witness_keys; clients pin it with --witness.")


@witness.command("cosign")
@_dir
@click.option("--intake", required=True, metavar="URL", help="The public intake's address.")
@click.option("--org", "org_fingerprint", required=True, metavar="FINGERPRINT", help="The organisation fingerprint.")
@click.option("--socks", metavar="URL", help="Tor's SOCKS port, e.g. socks5://127.0.0.1:9050.")
def cosign_command(folder: Path, intake: str, org_fingerprint: str, socks: str | None) -> None:
    """Check the newest head extends the last one cosigned (no fork, no rollback), then cosign it."""
    done = asyncio.run(cosign(folder, intake, org_fingerprint, socks=socks))
    click.echo(
        f"Cosigned the head of size {done.size} (directory version {done.version}); "
        f"it now has {done.cosignatures} witness cosignature(s)."
    )
