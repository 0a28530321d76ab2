"""``safepassage handler``: the handler's commands (enroll, login, logout, inbox, read, read-all, reply,
status, handover, escalate).

Secrets come from hidden prompts or files the handler names, never from the
command line (where other users could read them in the process list). The
vault passphrase, the staff password, TOTP codes and the session token never
reach a message, and what a case says is printed only after it verified, with
terminal escapes and direction marks removed. Server addresses default to the
profile written at enrolment (``V.profile``); the organisation fingerprint is
always the one sealed in the vault.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import click
import qrcode  # type: ignore[import-untyped]

from safepassage.crypto.vault import Passphrase

from .case_text import reading_body, reading_header
from .contact_cli import _read_message, pinned_witnesses, witness_options
from .errors import UsageError, untrusted_text
from .handler import (
    CaseReading,
    enroll,
    escalate,
    handover,
    inbox,
    key_schedule,
    login,
    logout,
    read_case,
    reply,
    set_status,
)
from .handler_bulk import SomeCasesFailed, read_all
from .handler_rotate import rotate
from .handler_vault import HandlerPaths
from .onion import OnionClientKey
from .staff_api import CASE_STATUSES, CaseSummary, StaffEnrolment

T = TypeVar("T")
MAX_SECRET_FILE: Final = 4096
MAX_NOTE_BYTES: Final = 4_000_000


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# --- options ---------------------------------------------------------------------------------------------

_vault = click.option(
    "--vault",
    "vault",
    required=True,
    envvar="SAFEPASSAGE_HANDLER_VAULT",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Your vault file (or $SAFEPASSAGE_HANDLER_VAULT). Session, log state and profile are kept beside it.",
)
_passphrase_file = click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Read the vault passphrase from FILE instead of asking for it.",
)
_socks = click.option(
    "--socks",
    metavar="URL",
    help="Tor's SOCKS port, e.g. socks5://127.0.0.1:9050. Required for anything but local test servers.",
)
_intake = click.option(
    "--intake", metavar="URL", help="The public intake's address (default: the one given at enrolment)."
)


def _read_secret_file(path: Path, what: str) -> str:
    with open(path, "rb") as f:
        data = f.read(MAX_SECRET_FILE + 1)
    if len(data) > MAX_SECRET_FILE:
        raise UsageError(f"the {what} file is too long")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"the {what} file is not UTF-8 text") from None
    # One line: a trailing newline is the editor's, not the secret's.
    return text.removesuffix("\n").removesuffix("\r")


def _passphrase(path: Path | None, *, new: bool = False) -> Passphrase:
    if path is not None:
        return Passphrase(_read_secret_file(path, "passphrase"))
    if new:
        click.echo("Choose a vault passphrase: at least 20 characters; five or more random words are best.", err=True)
    text = click.prompt(
        "Vault passphrase (input is hidden)", hide_input=True, confirmation_prompt=new, err=True, show_default=False
    )
    return Passphrase(text)


def _password(path: Path | None, *, new: bool = False) -> str:
    if path is not None:
        return _read_secret_file(path, "password")
    return str(click.prompt("Staff password (input is hidden)", hide_input=True, confirmation_prompt=new, err=True))


def _totp(code: str | None) -> str:
    if code is not None:
        return code
    return str(click.prompt("Code from your authenticator app", err=True)).strip()


def _day(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- enroll -------------------------------------------------------------------------------------------------


def _qr_text(uri: str) -> str:
    code = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_M)
    code.add_data(uri)
    code.make(fit=True)
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue()


def _show_totp(answer: StaffEnrolment) -> None:
    if not sys.stdout.isatty():
        click.echo("warning: standard output is not a terminal; the TOTP secret goes wherever it points.", err=True)
    click.echo("")
    click.echo(f"Account {answer.username} ({answer.role}). Add it to your authenticator app (shown only now):")
    click.echo("")
    click.echo(_qr_text(answer.otpauth_uri))
    click.echo(f"  {answer.otpauth_uri}")
    click.echo("")
    click.echo("Do not photograph or save this screen; clear the terminal's scrollback when enrolment is done.")


@click.group()
def handler() -> None:
    """Read, answer and escalate contacts as a handler (keys stay in your local vault)."""


@handler.command("enroll")
@click.option("--staff", required=True, metavar="URL", help="The staff server's address.")
@click.option("--invite", "invitation", required=True, metavar="CODE", help="The invitation code from an admin.")
@_vault
@click.option("--intake", required=True, metavar="URL", help="The public intake's address (for the directory).")
@click.option(
    "--org",
    "org_fingerprint",
    required=True,
    metavar="FINGERPRINT",
    help="The organisation fingerprint obtained out of band (ten groups of five digits).",
)
@_passphrase_file
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE")
@click.option("--totp-code", metavar="CODE", help="The first TOTP code (for scripts); otherwise you are asked.")
@click.option("--days", type=click.IntRange(1, 90), default=7, show_default=True, help="Intake key validity.")
@witness_options
@_socks
def enroll_command(
    staff: str,
    invitation: str,
    vault: Path,
    intake: str,
    org_fingerprint: str,
    passphrase_file: Path | None,
    password_file: Path | None,
    totp_code: str | None,
    days: int,
    socks: str | None,
) -> None:
    """Create your vault and keys, and register with the staff server using an invitation.

    Witness keys given here are pinned in the vault: every later command refuses a directory
    whose log head lacks their cosignatures."""
    witnesses = pinned_witnesses()  # a malformed key is refused before any passphrase is asked for
    passphrase = _passphrase(passphrase_file, new=True)
    password = _password(password_file, new=True)
    asked = 0

    def ask(answer: StaffEnrolment) -> str:
        nonlocal asked
        asked += 1
        if asked == 1:
            _show_totp(answer)
        if totp_code is not None:
            if asked > 1:
                raise UsageError("the server refused the TOTP code given with --totp-code")
            return totp_code
        if asked > 1:
            click.echo("The server refused that code; wait for the next one.", err=True)
        return _totp(None)

    done = _run(
        enroll(
            staff=staff,
            invitation=invitation,
            password=password,
            vault=vault,
            passphrase=passphrase,
            intake=intake,
            org=org_fingerprint,
            totp_code=ask,
            socks=socks,
            validity_days=days,
            witnesses=witnesses,
        )
    )
    entry = done.intake_key
    click.echo("")
    click.echo(f"Enrolled as handler {done.handler_id}. Your vault: {done.paths.vault}")
    click.echo("")
    click.echo("Read these to the admins over a channel you trust; they must compare them before listing you:")
    click.echo(f"  handler id            {done.handler_id}")
    click.echo(f"  identity fingerprint  {done.identity_fingerprint}")
    click.echo(f"  intake-key fingerprint {done.intake_fingerprint}")
    click.echo(f"  intake key valid      {_day(entry.not_before)} to {_day(entry.not_after)}")
    click.echo("")
    click.echo(f"Give the admins {done.paths.intake_key} (public keys only). Next: safepassage handler login")


# --- sessions --------------------------------------------------------------------------------------------------


@handler.command("login")
@_vault
@click.option("--staff", metavar="URL", help="The staff server (default: the one given at enrolment).")
@click.option("--username", metavar="NAME", help="Your user name (default: your handler id).")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE")
@click.option("--totp-code", metavar="CODE", help="The current TOTP code; otherwise you are asked.")
@_socks
def login_command(
    vault: Path,
    staff: str | None,
    username: str | None,
    password_file: Path | None,
    totp_code: str | None,
    socks: str | None,
) -> None:
    """Log in to the staff server (password and TOTP code); the session is kept beside the vault."""
    password = _password(password_file)
    code = _totp(totp_code)
    paths = HandlerPaths(vault)
    saved = _run(login(paths, password=password, code=code, username=username, staff=staff, socks=socks))
    click.echo(f"Logged in as {saved.username} ({saved.role}) until {_day(saved.absolute_expires)} at the latest.")
    for notice in _run(key_schedule(paths, socks=socks)):
        click.echo(f"warning: {notice}", err=True)


@handler.command("logout")
@_vault
@_socks
def logout_command(vault: Path, socks: str | None) -> None:
    """End the session on the server and delete the local token."""
    _run(logout(HandlerPaths(vault), socks=socks))
    click.echo("Logged out.")


@handler.command("rotate")
@_vault
@_passphrase_file
@click.option(
    "--days",
    type=click.IntRange(1, 90),
    default=None,
    help="The new key's validity in days (default: the admins' policy, intake_key_days, else 7).",
)
@click.option("--no-new-key", is_flag=True, help="Only destroy expired keys (after archiving their cases).")
@click.option("--identity", is_flag=True, help="Also make a new identity key for the admins to list.")
@_intake
@_socks
def rotate_command(
    vault: Path,
    passphrase_file: Path | None,
    days: int | None,
    no_new_key: bool,
    identity: bool,
    intake: str | None,
    socks: str | None,
) -> None:
    """Make the next intake key for the admins to list, and destroy expired ones (their cases archived first)."""
    paths = HandlerPaths(vault)
    done = _run(
        rotate(
            paths,
            _passphrase(passphrase_file),
            days=days,
            new_key=not no_new_key,
            identity=identity,
            intake=intake,
            socks=socks,
        )
    )
    if done.identity_promoted:
        click.echo("The admins listed your new identity key: it is now your identity; the old one is destroyed.")
    if done.new_identity is not None:
        click.echo(f"New identity key {done.new_identity.fingerprint()} (waiting; the old one signs until listed)")
        click.echo(f"Give the admins {paths.new_identity} (admin propose --identity FILE).")
    if done.new_key is not None:
        click.echo(f"New intake key {done.new_key.key.fingerprint()}")
        click.echo(f"  valid {_day(done.new_key.not_before)} to {_day(done.new_key.not_after)}")
        click.echo(f"Give the admins {paths.next_intake_key} (admin propose --intake-key FILE).")
    if done.destroyed:
        click.echo(
            f"Destroyed {len(done.destroyed)} expired intake key(s) after re-sealing {done.archived_cases} case(s) "
            f"to your local archive key ({paths.archive.name}/)."
        )
    else:
        click.echo("No intake key has expired; nothing destroyed.")


# --- triage ----------------------------------------------------------------------------------------------------


def _inbox_table(cases: list[CaseSummary]) -> str:
    header = ("case", "pool", "day", "size", "status", "files", "follow-ups", "")
    rows = [
        (
            c.case_id,
            c.pool,
            c.day,
            f"<={4 ** (c.bucket + 1)} KiB",
            c.status,
            str(c.attachments),
            str(c.follow_ups),
            "server-sealed" if c.server_sealed else "",
        )
        for c in cases
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in (header, *rows)]
    return "\n".join(lines)


@handler.command("inbox")
@_vault
@click.option("--status", type=click.Choice(CASE_STATUSES), help="Only cases with this status.")
@click.option("--pool", metavar="NAME", help="Only cases of this pool.")
@_socks
def inbox_command(vault: Path, status: str | None, pool: str | None, socks: str | None) -> None:
    """List your cases: id, pool, arrival day, size bucket, status."""
    cases = _run(inbox(HandlerPaths(vault), status=status, pool=pool, socks=socks))
    if not cases:
        click.echo("No cases.")
        return
    click.echo(_inbox_table(cases))


def _echo_reading(reading: CaseReading) -> None:
    click.echo(reading_header(reading))
    for warning in reading.warnings:
        click.echo(f"warning: {warning}", err=True)
    for line in reading_body(reading):
        click.echo(line)
    for notice in reading.key_notices:
        click.echo(f"warning: {notice}", err=True)


@handler.command("read")
@click.argument("case_id", metavar="ID")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Where attachments go (created with mode 0700; existing files are never overwritten).",
)
@_vault
@_passphrase_file
@_intake
@_socks
def read_command(
    case_id: str, out_dir: Path, vault: Path, passphrase_file: Path | None, intake: str | None, socks: str | None
) -> None:
    """Download a case, decrypt and verify it here, and show it."""
    passphrase = _passphrase(passphrase_file)
    reading = _run(read_case(HandlerPaths(vault), passphrase, case_id, out_dir, intake=intake, socks=socks))
    _echo_reading(reading)


class _ProgressBar:
    """A progress bar on standard error, made when the number of cases is known; shows counts only."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.shown = 0

    def __call__(self, done: int, total: int | None) -> None:
        if self.bar is None:
            self.bar = click.progressbar(
                length=max(total or done, done), label="Opening cases", file=sys.stderr, show_pos=True
            )
            self.bar.__enter__()
        if self.bar.length is not None and done > self.bar.length:
            self.bar.length = done  # more cases arrived since the count
        self.bar.update(done - self.shown)
        self.shown = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@handler.command("read-all")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Where each case goes, as ID.txt (attachments in ID/); created with mode 0700, nothing is overwritten.",
)
@_vault
@_passphrase_file
@_intake
@_socks
def read_all_command(
    out_dir: Path, vault: Path, passphrase_file: Path | None, intake: str | None, socks: str | None
) -> None:
    """Download, decrypt and verify every case you hold, one text file per case; a progress bar shows counts."""
    passphrase = _passphrase(passphrase_file)
    bar = _ProgressBar()
    try:
        done = _run(read_all(HandlerPaths(vault), passphrase, out_dir, intake=intake, socks=socks, progress=bar))
    finally:
        bar.close()
    click.echo(f"Wrote {len(done.written)} case(s) to {out_dir}, each verified here.")
    for failure in done.failed:
        click.echo(f"error: case {failure.case_id}: {untrusted_text(failure.problem)}", err=True)
    if done.failed:
        raise SomeCasesFailed(f"{len(done.failed)} case(s) failed their checks and were not written")


@handler.command("reply")
@click.argument("case_id", metavar="ID")
@click.option(
    "--message-file",
    metavar="FILE|-",
    help="Read the reply from FILE, or from standard input with '-'. Without it, your $EDITOR opens.",
)
@_vault
@_passphrase_file
@_intake
@_socks
def reply_command(
    case_id: str,
    message_file: str | None,
    vault: Path,
    passphrase_file: Path | None,
    intake: str | None,
    socks: str | None,
) -> None:
    """Send a signed reply, sealed to the applicant alone."""
    passphrase = _passphrase(passphrase_file)
    message = _read_message(message_file)
    sent = _run(reply(HandlerPaths(vault), passphrase, case_id, message, intake=intake, socks=socks))
    click.echo(f"Reply {sent.message_id} stored for case {sent.case_id}; only the applicant's codename opens it.")


@handler.command("status")
@click.argument("case_id", metavar="ID")
@click.argument("state", type=click.Choice(CASE_STATUSES), metavar="STATE")
@_vault
@_socks
def status_command(case_id: str, state: str, vault: Path, socks: str | None) -> None:
    """Set a case's status (new, reviewing, replied, escalated, rejected, closed)."""
    _run(set_status(HandlerPaths(vault), case_id, state, socks=socks))
    click.echo(f"Case {case_id} is now {state}.")


@handler.command("handover")
@click.argument("case_id", metavar="ID")
@click.argument("handler_id", metavar="HANDLER")
@_vault
@_socks
def handover_command(case_id: str, handler_id: str, vault: Path, socks: str | None) -> None:
    """Hand a case over to another handler of its pool."""
    _run(handover(HandlerPaths(vault), case_id, handler_id, socks=socks))
    click.echo(f"Case {case_id} handed over to {handler_id}.")


@handler.command("escalate")
@click.argument("case_id", metavar="ID")
@click.option(
    "--note",
    "note_file",
    required=True,
    metavar="FILE|-",
    help="Your assessment, from FILE or standard input with '-'.",
)
@click.option("--integration", required=True, metavar="URL", help="The integration service's address.")
@_vault
@_passphrase_file
@_intake
@_socks
def escalate_command(
    case_id: str,
    note_file: str,
    integration: str,
    vault: Path,
    passphrase_file: Path | None,
    intake: str | None,
    socks: str | None,
) -> None:
    """Sign and seal the case for the integration service, deliver it, and record its receipt."""
    passphrase = _passphrase(passphrase_file)
    note = _read_message(note_file)
    done = _run(
        escalate(HandlerPaths(vault), passphrase, case_id, note, integration=integration, intake=intake, socks=socks)
    )
    click.echo(f"Case {done.case_id} escalated as package {done.package_id}.")
    click.echo(
        f"  carried: the original contact, {done.attachments} attachment(s), {done.follow_ups} follow-up(s), "
        f"{done.replies} reply(ies) from this vault"
    )
    if done.replies_left_out:
        click.echo(f"  left out: {done.replies_left_out} reply(ies) by other handlers (sealed to the applicant alone)")
    click.echo(f"  the integration service's receipt verifies against the directory (day {done.receipt.day})")


__all__ = ["handler"]


@handler.command("onion-key")
@_vault
@click.option("--onion", metavar="ADDRESS", help="Install the key for this onion (the staff or integration address).")
@click.option(
    "--auth-dir",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Your Tor's ClientOnionAuthDir (e.g. /var/lib/tor/onion-auth); needed with --onion.",
)
def onion_key_command(vault: Path, onion: str | None, auth_dir: Path | None) -> None:
    """Create (once) your Tor client key; print its public half; install it for an onion."""
    if (onion is None) != (auth_dir is None):
        raise UsageError("--onion and --auth-dir go together")
    paths = HandlerPaths(vault)
    if not paths.vault.parent.is_dir():
        raise UsageError("the vault's folder does not exist")
    key, new = OnionClientKey.load_or_create(paths.onion_key)
    if new:
        click.echo(f"Created {paths.onion_key} (keep it with your vault).")
    click.echo("Your Tor client key (give it to the admin who invites you; it is public):")
    click.echo(f"  {key.public_base32()}")
    if onion is not None and auth_dir is not None:
        name = "safepassage-" + onion.removesuffix(".onion")[:16]
        path = key.install(auth_dir, onion, name)
        click.echo(f"Installed {path}; reload your Tor (systemctl reload tor, or SIGHUP) to use it.")
