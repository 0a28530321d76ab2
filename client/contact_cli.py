"""``safepassage contact``: the applicant's commands (send, check, reply).

Nothing is written to disk unless ``--state FILE`` is given, and then only the
public state of the transparency log (:class:`~safepassage.client.trust.HeadState`).
The codename is printed once, to the terminal, after a successful send; it is
read back only from a hidden prompt or a file the applicant names. Messages
come from a file, standard input, or an editor working in a memory-backed
temporary directory where one exists.

Only loopback servers may be reached without ``--socks``: anything else would
show the applicant's network address (:class:`DirectConnectionRefused`).
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import tempfile
import threading
import time
import unicodedata
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

import click

from safepassage.crypto.codename import Codename, parse_codename
from safepassage.crypto.encoding import b64d, b64e
from safepassage.crypto.errors import MalformedInput
from safepassage.crypto.intake import FIELD_NAMES, MAX_MESSAGE_CHARS
from safepassage.crypto.keys import VerifyKey
from safepassage.crypto.receipt import Receipt
from safepassage.crypto.threshold import KeySet

from .applicant import Progress, Reply, SentContact, check_mailbox, send_contact, send_follow_up
from .errors import DeliveryUncertain, OnionMismatch, UsageError
from .intake_api import IntakeClient
from .trust import HeadState, TrustedDirectory, fetch_trusted_directory

#: UTF-8 needs at most 4 bytes a character; anything longer cannot be a message we accept.
MAX_MESSAGE_BYTES: Final = 4 * MAX_MESSAGE_CHARS
MAX_CODENAME_FILE: Final = 4096
LANGUAGES: Final = ("ru", "en")

T = TypeVar("T")


# --- options shared by every command --------------------------------------------------------------

_server = click.option(
    "--server",
    required=True,
    metavar="URL",
    help="The service's address, e.g. http://<56 letters>.onion (as published by the organisation).",
)
_org = click.option(
    "--org",
    "org_fingerprint",
    required=True,
    metavar="FINGERPRINT",
    help="The organisation fingerprint you obtained out of band (ten groups of five digits).",
)
_socks = click.option(
    "--socks",
    metavar="URL",
    help="Tor's SOCKS port: socks5://127.0.0.1:9050 (Tor) or socks5://127.0.0.1:9150 (Tor Browser). "
    "Required for anything but a local test server.",
)
_state = click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Remember the last transparency-log head here (created if missing, mode 0600) so a later run can "
    "detect a server that forks or rolls back the log. The file shows that Safe Passage was used.",
)
_WITNESSES = "safepassage.witnesses"


def _keep_witness_option(ctx: click.Context, param: click.Parameter, value: object) -> None:
    ctx.meta.setdefault(_WITNESSES, {})[param.name] = value


def witness_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--witness KEY (repeatable) and --witnesses-required K: refuse heads without K cosignatures (8.6)."""
    f = click.option(
        "--witnesses-required",
        type=click.IntRange(1, 32),
        expose_value=False,
        callback=_keep_witness_option,
        help="How many of the --witness keys must have cosigned the log head (default: all of them).",
    )(f)
    return click.option(
        "--witness",
        multiple=True,
        metavar="KEY",
        expose_value=False,
        callback=_keep_witness_option,
        help="Pin an independent witness's public key (repeat for several).",
    )(f)


def pinned_witnesses() -> KeySet | None:
    ctx = click.get_current_context(silent=True)
    given = ctx.meta.get(_WITNESSES, {}) if ctx is not None else {}
    keys = tuple(given.get("witness") or ())
    if not keys:
        if given.get("witnesses_required"):
            raise UsageError("--witnesses-required needs --witness keys")
        return None
    try:
        parsed = tuple(VerifyKey(b64d(k.strip(), length=32, what="witness key")) for k in keys)
        return KeySet(parsed, given.get("witnesses_required") or len(parsed))
    except MalformedInput as exc:
        raise UsageError(f"--witness: {exc.message}") from None


_message_file = click.option(
    "--message-file",
    metavar="FILE|-",
    help="Read the message from FILE, or from standard input with '-'. Without it, your $EDITOR opens.",
)
_codename_file = click.option(
    "--codename-file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Read the codename from FILE instead of asking for it. Keeping a codename in a file is risky.",
)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _trusted(
    client: IntakeClient, org_fingerprint: str, state_path: Path | None, state: HeadState | None
) -> TrustedDirectory:
    trusted = await fetch_trusted_directory(
        client, org_fingerprint, state, int(time.time()), witnesses=pinned_witnesses()
    )
    if state_path is not None:
        # 8.7 step 4: remember the head only after every check passed.
        trusted.state.save(state_path)
    return trusted


def _load_state(state_path: Path | None) -> HeadState | None:
    return HeadState.load(state_path) if state_path is not None else None


# --- reading input ---------------------------------------------------------------------------------


def _decode(data: bytes, what: str) -> str:
    if len(data) > MAX_MESSAGE_BYTES:
        raise UsageError(f"the {what} is longer than {MAX_MESSAGE_CHARS} characters")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise UsageError(f"the {what} is not UTF-8 text") from None


def _private_ram_dir() -> Path | None:
    """A directory in memory that only this user can use, for the editor's temporary file."""
    candidates = [os.environ.get("XDG_RUNTIME_DIR", ""), "/dev/shm"]  # noqa: S108  # tmpfs, private file via mkstemp
    for candidate in candidates:
        if not candidate:
            continue
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        own_private = st.st_uid == os.getuid() and not st.st_mode & 0o077
        shared_sticky = bool(st.st_mode & stat.S_ISVTX)  # /dev/shm: others cannot touch our 0600 file
        if own_private or shared_sticky:
            return Path(candidate)
    return None


def _edit_message() -> str:
    ram = _private_ram_dir()
    if ram is None:
        click.echo(
            "note: your editor will keep the message in a temporary file on disk while you write. "
            "To avoid that, use --message-file - and type or paste the message.",
            err=True,
        )
    click.echo("note: some editors keep their own copies (swap, backup or undo files).", err=True)
    previous = tempfile.tempdir
    tempfile.tempdir = str(ram) if ram is not None else previous
    try:
        text = click.edit("", extension=".txt", require_save=True)
    except UnicodeDecodeError:
        raise UsageError("the message is not UTF-8 text") from None
    finally:
        tempfile.tempdir = previous
    return text or ""


def _read_message(message_file: str | None) -> str:
    if message_file == "-":
        text = _decode(sys.stdin.buffer.read(MAX_MESSAGE_BYTES + 1), "message")
    elif message_file is not None:
        with open(message_file, "rb") as f:
            text = _decode(f.read(MAX_MESSAGE_BYTES + 1), "message")
    else:
        text = _edit_message()
    if not text.strip():
        raise UsageError("the message is empty; nothing was sent")
    if len(text) > MAX_MESSAGE_CHARS:
        raise UsageError(f"the message is longer than {MAX_MESSAGE_CHARS} characters")
    return text


def _read_codename(codename_file: Path | None) -> Codename:
    if codename_file is not None:
        with open(codename_file, "rb") as f:
            data = f.read(MAX_CODENAME_FILE + 1)
        if len(data) > MAX_CODENAME_FILE:
            raise UsageError("the codename file is too long to hold a codename")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("the codename file is not UTF-8 text") from None
    else:
        text = click.prompt("Codename (input is hidden)", hide_input=True, err=True)
    return parse_codename(text)


def _parse_fields(items: tuple[str, ...]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in FIELD_NAMES:
            raise UsageError(f"--field must be NAME=VALUE with NAME one of: {', '.join(FIELD_NAMES)}")
        if name in fields:
            raise UsageError(f"--field {name} given twice")
        fields[name] = value
    return fields


# --- progress on stderr ----------------------------------------------------------------------------


class _Bar:
    """One click progress bar on stderr, closed exactly once."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar
        self._bar.__enter__()
        self._closed = False

    def update(self, steps: int) -> None:
        if not self._closed and steps > 0:
            self._bar.update(steps)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bar.__exit__(None, None, None)


def _no_length() -> Iterator[None]:
    # A generator has no length hint, which gives click's indefinite bar.
    yield from ()


class ClickProgress(Progress):
    """Proof of work as a moving bar with the attempt count (not a countdown: the work is random)."""

    def __init__(self) -> None:
        self._bar: _Bar | None = None
        self._shown = 0
        self._last = 0.0
        self._lock = threading.Lock()

    def _open(self, bar: Any) -> None:
        self.close()
        self._bar = _Bar(bar)
        self._shown = 0

    def pow_started(self, difficulty: int) -> None:
        self._open(
            click.progressbar(
                _no_length(),
                label=f"Proof of work (about {2**difficulty} attempts expected)",
                show_pos=True,
                file=sys.stderr,
            )
        )

    def pow_attempt(self, attempts: int) -> None:
        now = time.monotonic()
        with self._lock:
            if self._bar is None or now - self._last < 0.1:
                return
            self._last = now
            self._bar.update(attempts - self._shown)
            self._shown = attempts

    def pow_done(self) -> None:
        self.close()

    def upload_started(self, chunks: int) -> None:
        self._open(click.progressbar(length=chunks, label="Uploading attachments (1 MiB chunks)", file=sys.stderr))

    def chunk_sent(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.update(1)

    def upload_done(self) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None


# --- output ----------------------------------------------------------------------------------------


def _printable(text: str) -> str:
    """Reply text made safe for a terminal: no escape sequences or direction overrides; lines kept."""
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")


def _echo_receipt(receipt: Receipt, what: str) -> None:
    click.echo(f"{what} delivered. The server's signed receipt:")
    click.echo(f"  id        {receipt.contact_id}")
    click.echo(f"  day       {receipt.day}")
    click.echo(f"  envelope  {b64e(receipt.envelope_hash)}")


CODENAME_ADVICE: Final = """\
- Write it on paper now. Do not keep it on a computer or phone, and keep it away
  from your work devices and anything your employer can see.
- Nobody from the service will ever ask you for it. Anyone who asks is not us.
- Without it, replies to you cannot be read: it cannot be recovered or reset.
- Anyone who has it can read the replies to you and write in your name.
- When you have written it down, close this terminal window (and clear its scrollback)."""


def _echo_codename(codename: Codename) -> None:
    if not sys.stdout.isatty():
        click.echo("warning: standard output is not a terminal; the codename goes wherever it points.", err=True)
    click.echo("")
    click.echo("Your codename, shown only this once:")
    click.echo("")
    click.echo(f"    {codename.reveal()}")
    click.echo("")
    click.echo(CODENAME_ADVICE)


UNVERIFIED_REPLY: Final = (
    "NOT VERIFIED: this message is not signed by a handler of the organisation. Whoever runs the server, "
    "or anyone else, could have written it. Do not act on it; confirm through another channel you trust."
)


def _quoted(text: str) -> str:
    """Body text under a margin, so no line of it can pass for a line of ours (a header, a verdict)."""
    return "\n".join(f"  | {line}" for line in _printable(text).split("\n"))


def _echo_replies(replies: list[Reply]) -> None:
    if not replies:
        click.echo("No replies yet.")
        return
    if any(r.readable and not r.verified for r in replies):
        click.echo(f"warning: {UNVERIFIED_REPLY}", err=True)
    for reply in replies:
        click.echo("")
        click.echo(f"--- Reply {reply.message_id} to contact {reply.contact_id}, {reply.day}")
        if reply.verified and reply.text is not None:
            verdict = f"verified: signed by handler {reply.handler_id} of the organisation"
            click.echo(f"({verdict})")
            click.echo(_quoted(reply.text))
            click.echo(f"(end of the reply; {verdict})")
        elif reply.plaintext is not None:
            click.echo(f"({UNVERIFIED_REPLY} Reason: {reply.problem})")
            click.echo(_quoted(reply.plaintext.decode("utf-8", errors="replace")))
            click.echo("(end of the message; NOT VERIFIED: do not act on it)")
        else:
            click.echo(f"(could not be read: {reply.problem})")


# --- commands --------------------------------------------------------------------------------------


@click.group()
def contact() -> None:
    """Reach the organisation as an applicant: send a first contact, read replies, answer them.

    Run these over Tor (--socks). The first time, you get a codename: it is the
    only key to your replies.
    """


@contact.command("send")
@_server
@_org
@click.option("--pool", required=True, metavar="NAME", help="The routing category to send to (see the directory).")
@click.option(
    "--lang",
    type=click.Choice(LANGUAGES),
    help="The language you want replies in (default: the pool's first language).",
)
@click.option(
    "--attach",
    "attachments",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="A file to send with the message (repeatable, at most 64).",
)
@_message_file
@click.option(
    "--field",
    "fields",
    multiple=True,
    metavar="NAME=VALUE",
    help=f"A structured detail (repeatable). NAME is one of: {', '.join(FIELD_NAMES)}.",
)
@_socks
@_state
@witness_options
def send_command(
    server: str,
    org_fingerprint: str,
    pool: str,
    lang: str | None,
    attachments: tuple[Path, ...],
    message_file: str | None,
    fields: tuple[str, ...],
    socks: str | None,
    state_path: Path | None,
) -> None:
    """Send a first, end-to-end encrypted contact and receive a codename."""
    IntakeClient(server, socks=socks)  # the address and proxy are checked before anything is read
    parsed_fields = _parse_fields(fields)
    state = _load_state(state_path)
    message = _read_message(message_file)
    progress = ClickProgress()

    async def go(client: IntakeClient) -> SentContact:
        trusted = await _trusted(client, org_fingerprint, state_path, state)
        language = lang or _default_language(trusted, pool)
        sent = await send_contact(
            client,
            trusted,
            pool=pool,
            language=language,
            message=message,
            fields=parsed_fields,
            attachments=list(attachments),
            progress=progress,
        )
        return sent

    try:
        sent = _run(_followed(server, socks, go))
    except DeliveryUncertain as exc:
        progress.close()
        click.echo("The server may have stored your contact but did not confirm it.", err=True)
        _echo_codename(exc.codename)
        raise
    finally:
        progress.close()
    _echo_receipt(sent.receipt, "Contact")
    click.echo(f"To answer a reply later you need the pool name ({sent.pool}); 'check' shows the contact id.")
    _echo_codename(sent.codename)


async def _followed(server: str, socks: str | None, flow: Callable[[IntakeClient], Awaitable[T]]) -> T:
    """Run ``flow`` against ``server``; if the verified directory moved the public onion, follow it once.

    Safe to follow: the new address comes from a directory that passed every
    check (admin signatures, the log), and nothing was sent before the check.
    A phishing copy that relays the real directory thus sends its victims home.
    """
    try:
        async with IntakeClient(server, socks=socks) as client:
            return await flow(client)
    except OnionMismatch as exc:
        if exc.moved_to is None:
            raise
        click.echo(f"The organisation's signed directory names {exc.moved_to} for this service; using it.", err=True)
        async with IntakeClient(f"http://{exc.moved_to}", socks=socks) as client:
            return await flow(client)


def _default_language(trusted: TrustedDirectory, pool: str) -> str:
    for p in trusted.directory.pools:
        if p.name == pool:
            return next((lang for lang in p.languages if lang in LANGUAGES), p.languages[0])
    return LANGUAGES[0]  # an unknown pool is refused with a clear message by send_contact


@contact.command("check")
@_server
@_org
@_codename_file
@_socks
@_state
@witness_options
def check_command(
    server: str, org_fingerprint: str, codename_file: Path | None, socks: str | None, state_path: Path | None
) -> None:
    """Read the replies to your contacts (asks for your codename)."""
    IntakeClient(server, socks=socks)
    state = _load_state(state_path)
    codename = _read_codename(codename_file)

    async def go(client: IntakeClient) -> list[Reply]:
        trusted = await _trusted(client, org_fingerprint, state_path, state)
        return await check_mailbox(client, trusted, codename)

    _echo_replies(_run(_followed(server, socks, go)))


@contact.command("reply")
@_server
@_org
@click.option("--contact", "contact_id", required=True, metavar="ID", help="The contact id shown with a reply.")
@click.option("--pool", required=True, metavar="NAME", help="The pool you sent your first contact to.")
@_message_file
@_codename_file
@_socks
@_state
@witness_options
def reply_command(
    server: str,
    org_fingerprint: str,
    contact_id: str,
    pool: str,
    message_file: str | None,
    codename_file: Path | None,
    socks: str | None,
    state_path: Path | None,
) -> None:
    """Send a follow-up message to an earlier contact (asks for your codename)."""
    IntakeClient(server, socks=socks)
    state = _load_state(state_path)
    codename = _read_codename(codename_file)
    message = _read_message(message_file)
    progress = ClickProgress()

    async def go(client: IntakeClient) -> Receipt:
        trusted = await _trusted(client, org_fingerprint, state_path, state)
        sent = await send_follow_up(client, trusted, codename, contact_id, message, pool=pool, progress=progress)
        return sent.receipt

    try:
        receipt = _run(_followed(server, socks, go))
    finally:
        progress.close()
    _echo_receipt(receipt, "Follow-up")


__all__ = ["CODENAME_ADVICE", "ClickProgress", "contact"]
