"""``safepassage admin``: keys, enrolment, and the M-of-N directory ceremony (protocol 19).

    admin init       a new vault with a new admin signing key (no server needed)
    admin enroll     register the staff account for that vault (invitation, password, TOTP)
    admin login / logout
    admin invite     a one-time invitation for a handler or another admin
    admin propose    the next directory: add or remove handlers, pools, admins, keys, policy
    admin sign ID    review the diff and sign the directory, then (second round) its tree head
    admin publish ID publish once M admins signed both
    admin status     the trusted directory, and open proposals with who has signed

Secrets come from hidden prompts or files, never from the command line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from safepassage.crypto.directory import IntegrationService, Pool
from safepassage.crypto.encoding import JsonValue, b64d, b64e
from safepassage.crypto.errors import MalformedInput
from safepassage.crypto.keys import HybridPublicKey, VerifyKey

from . import admin as flows
from .audit import describe_audit_report
from .contact_cli import pinned_witnesses, witness_options
from .directory_changes import Changes
from .errors import UsageError, untrusted_text
from .handler_cli import _passphrase, _passphrase_file, _password, _run, _show_totp, _socks, _totp
from .handler_vault import HandlerPaths, Profile, forget_session, read_enrolment_document
from .render import describe_directory

_vault = click.option(
    "--vault",
    "vault",
    required=True,
    envvar="SAFEPASSAGE_ADMIN_VAULT",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Your admin vault (or $SAFEPASSAGE_ADMIN_VAULT).",
)


def _org(paths: HandlerPaths) -> str:
    profile = Profile.load(paths)
    if profile is None:
        raise UsageError("this vault is not enrolled; run: safepassage admin enroll")
    return profile.org


def _verify_key(text: str, what: str) -> VerifyKey:
    try:
        return VerifyKey(b64d(text.strip(), length=32, what=what))
    except MalformedInput:
        raise UsageError(f"{what}: expected a base64url Ed25519 public key") from None


def _hybrid_key(text: str, what: str) -> HybridPublicKey:
    try:
        return HybridPublicKey.from_public_bytes(b64d(text.strip(), what=what))
    except MalformedInput:
        raise UsageError(f"{what}: expected a base64url hybrid public key") from None


def _pool(text: str) -> Pool:
    parts = text.split(":")
    if len(parts) != 3:
        raise UsageError("--add-pool takes NAME:TITLE:LANG[,LANG...]")
    try:
        languages: list[JsonValue] = list(parts[2].split(","))
        return Pool.from_json({"name": parts[0], "title": parts[1], "languages": languages})
    except MalformedInput as exc:
        raise UsageError(f"--add-pool: {exc.message}") from None


def _policy(text: str) -> tuple[str, int | bool | str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise UsageError("--set-policy takes KEY=VALUE")
    if value in ("true", "false"):
        return key, value == "true"
    if re.fullmatch(r"-?[0-9]{1,15}", value):
        return key, int(value)
    return key, value


@click.group()
def admin() -> None:
    """Vet handlers and co-sign the directory of keys (M of N admins)."""


@admin.command("init")
@_vault
@_passphrase_file
def init_command(vault: Path, passphrase_file: Path | None) -> None:
    """Create your admin vault with a new signing key (offline; no server needed)."""
    key = flows.create_admin_vault(vault, _passphrase(passphrase_file, new=True))
    click.echo(f"Created {vault}.")
    click.echo("Your admin public key (to list in the admin set; compare its fingerprint with the other admins):")
    click.echo(f"  public key:   {b64e(key.public_bytes_raw())}")
    click.echo(f"  fingerprint:  {key.fingerprint()}")


@admin.command("enroll")
@_vault
@click.option("--staff", required=True, metavar="URL", help="The staff server's address.")
@click.option("--intake", required=True, metavar="URL", help="The public intake's address (for the directory).")
@click.option("--invite", "invitation", required=True, metavar="CODE", help="The invitation code.")
@click.option("--org", "org_fingerprint", required=True, metavar="FINGERPRINT", help="The organisation fingerprint.")
@_passphrase_file
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE")
@click.option("--totp-code", metavar="CODE", help="The first TOTP code (for scripts); otherwise you are asked.")
@witness_options
@_socks
def enroll_command(
    vault: Path,
    staff: str,
    intake: str,
    invitation: str,
    org_fingerprint: str,
    passphrase_file: Path | None,
    password_file: Path | None,
    totp_code: str | None,
    socks: str | None,
) -> None:
    """Register the staff account for this vault and pin the organisation fingerprint.

    Witness keys given here are pinned in the vault too: 'admin sign' then refuses to sign on
    top of a directory whose log head lacks their cosignatures."""
    witnesses = pinned_witnesses()  # a malformed key is refused before any passphrase is asked for
    passphrase = _passphrase(passphrase_file)
    password = _password(password_file, new=True)
    asked = 0

    def ask(answer: flows.StaffEnrolment) -> str:
        nonlocal asked
        asked += 1
        if asked == 1:
            _show_totp(answer)
        if totp_code is not None:
            if asked > 1:
                raise UsageError("the server refused the TOTP code given with --totp-code")
            return totp_code
        return _totp(None)

    username = _run(
        flows.enroll_admin(
            HandlerPaths(vault),
            passphrase,
            staff=staff,
            intake=intake,
            invitation=invitation,
            password=password,
            org=org_fingerprint,
            totp_code=ask,
            socks=socks,
            witnesses=witnesses,
        )
    )
    click.echo(f"Enrolled as admin {username}. Next: safepassage admin login --vault {vault}")


@admin.command("login")
@_vault
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE")
@click.option("--totp-code", metavar="CODE", help="The current TOTP code; otherwise you are asked.")
@_socks
def login_command(vault: Path, password_file: Path | None, totp_code: str | None, socks: str | None) -> None:
    """Log in (password and TOTP code); the session is kept beside the vault."""
    password = _password(password_file)
    saved = _run(flows.login(HandlerPaths(vault), password=password, code=_totp(totp_code), socks=socks))
    if saved.role != "admin":
        forget_session(HandlerPaths(vault))
        raise UsageError("that account is not an admin")
    click.echo(f"Logged in as {saved.username}.")


@admin.command("logout")
@_vault
@_socks
def logout_command(vault: Path, socks: str | None) -> None:
    """End the session."""
    _run(flows.logout(HandlerPaths(vault), socks=socks))
    click.echo("Logged out.")


@admin.command("invite")
@_vault
@click.option("--user", "username", required=True, help="The account name; for a handler, its id in the directory.")
@click.option("--role", type=click.Choice(["handler", "admin"]), required=True)
@click.option(
    "--onion-key",
    metavar="KEY",
    help="The person's Tor client key (from 'handler onion-key'), admitting them to the staff onion.",
)
@_socks
def invite_command(vault: Path, username: str, role: str, onion_key: str | None, socks: str | None) -> None:
    """A one-time enrolment invitation (expires in 72 hours); give it over a channel you trust."""
    code, expires = _run(flows.invite(HandlerPaths(vault), username, role, onion_key=onion_key, socks=socks))
    click.echo(f"Invitation for {role} {username} (single use, expires at Unix time {expires}):")
    click.echo(f"  {code}")
    if role == "handler":
        click.echo("The handler cannot receive contacts until M admins sign a directory listing its keys.")


def _changes(
    organisation: str | None,
    add_admin: tuple[str, ...],
    remove_admin: tuple[str, ...],
    threshold: int | None,
    add_pool: tuple[str, ...],
    remove_pool: tuple[str, ...],
    add_handler: tuple[Path, ...],
    handler_pools: str | None,
    handler_name: str | None,
    remove_handler: tuple[str, ...],
    intake_keys: tuple[Path, ...],
    identity: tuple[Path, ...],
    integration_signing_key: str | None,
    integration_key: tuple[str, ...],
    receipt_key: str | None,
    onion: tuple[str, ...],
    set_policy: tuple[str, ...],
    unset_policy: tuple[str, ...],
) -> Changes:
    changes = Changes(organisation=organisation, threshold=threshold)
    changes.add_admins = [_verify_key(k, "--add-admin") for k in add_admin]
    changes.remove_admins = [_verify_key(k, "--remove-admin") for k in remove_admin]
    changes.add_pools = [_pool(p) for p in add_pool]
    changes.remove_pools = list(remove_pool)
    pools = tuple(p for p in (handler_pools or "").split(",") if p)
    if add_handler and not pools:
        raise UsageError("--add-handler needs --pools NAME[,NAME...]")
    for path in add_handler:
        hid, identity_raw, entry = read_enrolment_document(path)
        changes.add_handlers.append(flows.Handler(hid, handler_name or hid, VerifyKey(identity_raw), pools, (entry,)))
    changes.remove_handlers = list(remove_handler)
    for path in intake_keys:
        hid, identity_raw, entry = read_enrolment_document(path)
        changes.intake_keys.setdefault(hid, []).append(entry)
    for path in identity:
        hid, identity_raw, entry = read_enrolment_document(path)
        changes.identities[hid] = (VerifyKey(identity_raw), [entry])
    if integration_signing_key or integration_key:
        if not (integration_signing_key and integration_key):
            raise UsageError("give --integration-signing-key and at least one --integration-key together")
        changes.integration = IntegrationService(
            _verify_key(integration_signing_key, "--integration-signing-key"),
            tuple(_hybrid_key(k, "--integration-key") for k in integration_key),
        )
    changes.receipt_key = _verify_key(receipt_key, "--receipt-key") if receipt_key else None
    for item in onion:
        role, sep, address = item.partition("=")
        if not sep:
            raise UsageError("--onion takes ROLE=ADDRESS")
        changes.onions[role] = address
    changes.policy = dict(_policy(p) for p in set_policy)
    changes.unset_policy = list(unset_policy)
    return changes


@admin.command("propose")
@_vault
@click.option("--organisation", help="The organisation's display name (first directory, or a rename).")
@click.option("--add-admin", multiple=True, metavar="KEY", help="An admin public key (from 'admin init').")
@click.option("--remove-admin", multiple=True, metavar="KEY")
@click.option("--threshold", type=click.IntRange(1, 32), help="M: how many admins must sign.")
@click.option("--add-pool", multiple=True, metavar="NAME:TITLE:LANGS", help="e.g. science:Science:ru,en")
@click.option("--remove-pool", multiple=True, metavar="NAME")
@click.option(
    "--add-handler",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="FILE",
    help="A handler's intake-key.json (from 'handler enroll').",
)
@click.option("--pools", "handler_pools", metavar="NAME[,NAME]", help="Pools the added handler reads.")
@click.option("--name", "handler_name", help="Display name of the added handler (default: its id).")
@click.option("--remove-handler", multiple=True, metavar="ID", help="Revoke a handler.")
@click.option(
    "--intake-key",
    "intake_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="FILE",
    help="A handler's next intake key (from 'handler rotate').",
)
@click.option(
    "--identity",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="FILE",
    help="A handler's new identity key file (from 'handler rotate --identity').",
)
@click.option("--integration-signing-key", metavar="KEY")
@click.option("--integration-key", multiple=True, metavar="KEY")
@click.option("--receipt-key", metavar="KEY", help="The server's (new) receipt key.")
@click.option("--onion", multiple=True, metavar="ROLE=ADDRESS", help="public, staff or integration.")
@click.option("--set-policy", multiple=True, metavar="KEY=VALUE")
@click.option("--unset-policy", multiple=True, metavar="KEY", help="Remove a policy key (its default applies).")
@_socks
def propose_command(vault: Path, socks: str | None, **options: Any) -> None:
    """Propose the next directory; other admins then review and sign it."""
    paths = HandlerPaths(vault)
    changes = _changes(**options)
    summary, diff = _run(flows.propose(paths, _org(paths), changes, socks=socks))
    click.echo(diff)
    click.echo("")
    click.echo(f"Proposal {summary.proposal_id} (version {summary.version}). Each admin now runs:")
    click.echo(f"  safepassage admin sign {summary.proposal_id} --vault ADMIN_VAULT")


@admin.command("sign")
@click.argument("proposal_id")
@_vault
@_passphrase_file
@click.option("--yes", is_flag=True, help="Sign without asking (after reading the diff printed).")
@_socks
def sign_command(proposal_id: str, vault: Path, passphrase_file: Path | None, yes: bool, socks: str | None) -> None:
    """Review a proposal's diff and fingerprints, then sign the directory (or, once frozen, its tree head)."""
    passphrase = _passphrase(passphrase_file)

    def confirm(text: str) -> bool:
        click.echo(text)
        return yes or click.confirm("", default=False, err=True)

    done = _run(flows.sign(HandlerPaths(vault), passphrase, proposal_id, confirm, socks=socks))
    s = done.summary
    click.echo(f"Signed the {done.stage} of proposal {s.proposal_id}; state now {s.state}.")
    click.echo(f"  directory signatures: {len(s.signers)}, head signatures: {len(s.head_signers)}")
    if s.state == "head" and done.stage == "directory":
        click.echo("Enough admins signed the directory: now each signs the tree head (run 'admin sign' again).")


@admin.command("publish")
@click.argument("proposal_id")
@_vault
@_socks
def publish_command(proposal_id: str, vault: Path, socks: str | None) -> None:
    """Publish a proposal whose directory and tree head M admins signed."""
    paths = HandlerPaths(vault)
    published, _trusted = _run(flows.publish(paths, _org(paths), proposal_id, socks=socks))
    click.echo(f"Published directory version {published.version}; the log has {published.size} entries.")
    if published.removed_handlers:
        click.echo(f"Revoked: {', '.join(published.removed_handlers)} ({published.ended_sessions} session(s) ended).")
    if published.moved_cases or published.stranded_cases:
        click.echo(
            f"Open cases moved: {published.moved_cases}; left with nobody who can read them: "
            f"{published.stranded_cases}."
        )


@admin.command("status")
@_vault
@_socks
def status_command(vault: Path, socks: str | None) -> None:
    """The directory as verified through the log, and open proposals with their signers."""
    paths = HandlerPaths(vault)
    trusted, proposals = _run(flows.status(paths, _org(paths), socks=socks))
    if trusted is None:
        click.echo("No directory is published yet.")
        names: dict[str, str] = {}
    else:
        click.echo(describe_directory(trusted.directory))
        names = {k.key_id.hex(): k.fingerprint() for k in trusted.directory.admins.keys}
    click.echo("")
    if not proposals:
        click.echo("No open proposals.")
    for p in proposals:
        by, day = untrusted_text(p.proposer), untrusted_text(p.day)
        click.echo(f"Proposal {p.proposal_id}: version {p.version}, {p.state}, by {by} on {day}")
        for kid in p.signers:
            click.echo(f"  signed directory: {names.get(kid, kid)}")
        for kid in p.head_signers:
            click.echo(f"  signed head:      {names.get(kid, kid)}")


@admin.group("audit")
def audit_group() -> None:
    """The server's signed, hash-chained log of staff actions."""


@audit_group.command("verify")
@_vault
@_socks
def audit_verify_command(vault: Path, socks: str | None) -> None:
    """Check every entry's hash, link and signature; show any gap, edit or removal."""
    paths = HandlerPaths(vault)
    report = _run(flows.audit_verify(paths, _org(paths), socks=socks))
    click.echo(describe_audit_report(report))
    report.raise_for_findings()
