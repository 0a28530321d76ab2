"""The one `safepassage` command.

Role groups (server, admin, handler, contact, integration, demo) are added by
the modules that implement them. Errors from anywhere below are turned into
``error:`` and ``hint:`` lines and an exit code here, in one place, so no
traceback (which could carry secret values in its frames) reaches a terminal.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import click

from safepassage.crypto.directory import SignedDirectory, verify_genesis
from safepassage.crypto.errors import SafePassageError
from safepassage.server.cli import server
from safepassage.server.staff.cli import staff

from .admin_cli import admin
from .contact_cli import contact
from .demo import demo
from .handler_cli import handler
from .integration_cli import integration
from .render import describe_directory
from .witness_cli import witness


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("safepassage"), prog_name="safepassage")
def cli() -> None:
    """Safe Passage: a secure first-contact channel over Tor."""


@cli.group()
def directory() -> None:
    """Inspect signed directories of keys."""


@directory.command("show")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--org",
    "org_fingerprint",
    required=True,
    help="The organisation fingerprint you obtained out of band (ten groups of five digits).",
)
def directory_show(path: Path, org_fingerprint: str) -> None:
    """Verify a genesis directory against the organisation fingerprint and show it.

    Compare every fingerprint printed here with the one its owner reads to you
    over a channel you trust before relying on it.
    """
    signed = SignedDirectory.from_bytes(path.read_bytes())
    trusted = verify_genesis(signed, " ".join(org_fingerprint.split()))
    click.echo(describe_directory(trusted))


cli.add_command(server)
cli.add_command(admin)
cli.add_command(staff)
cli.add_command(contact)
cli.add_command(integration)
cli.add_command(handler)
cli.add_command(demo)
cli.add_command(witness)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="safepassage", standalone_mode=False)
    except SafePassageError as exc:
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except OSError as exc:
        # File-system errors name the path and the reason, never file content.
        click.echo(f"error: {exc.strerror or 'input/output error'}: {exc.filename}", err=True)
        return 5
    return 0


if __name__ == "__main__":
    sys.exit(main())
