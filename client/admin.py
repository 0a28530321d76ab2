"""The admin's flows: a signing key in a vault, enrolment, proposing, co-signing and publishing.

An admin's files are those of a handler (``client/handler_vault.py``): the vault
``V`` and ``V.session``, ``V.state``, ``V.profile`` and ``V.lock`` beside it. The
vault holds the admin's Ed25519 signing key and, once enrolled, the pinned
organisation fingerprint.

What an admin signs is checked on the admin's machine, never taken from the
server: the proposed directory is rebuilt, compared with the directory this
client trusts through the transparency log, shown as a diff with every
fingerprint, and signed only after the person confirms. A tree head is signed
only if it is exactly the head of the log this client trusts with the signed
directory appended.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from safepassage.crypto import labels as L
from safepassage.crypto.directory import Directory, Handler, SignedDirectory, verify_genesis, verify_successor
from safepassage.crypto.encoding import (
    as_obj,
    b64d,
    b64e,
    canonical_json,
    get_int,
    get_str,
    parse_canonical_json,
    require_keys,
)
from safepassage.crypto.errors import BelowThreshold, NoSuchEntry, UntrustedRoot
from safepassage.crypto.keys import SigningKey, VerifyKey
from safepassage.crypto.privatefile import read_private, write_private
from safepassage.crypto.threshold import KeySet, Signature
from safepassage.crypto.translog import MerkleLog, leaf_hash
from safepassage.crypto.vault import (
    DEFAULT_MEMLIMIT,
    DEFAULT_OPSLIMIT,
    Passphrase,
    VaultContents,
    check_passphrase_strength,
    create_vault,
    open_vault,
    save_vault,
)

from .admin_api import AdminClient, ProposalDetail, ProposalSummary, Published
from .audit import AuditHeadRef, AuditReport, receipt_keys_of, verify_audit_log
from .directory_changes import Changes, apply_changes, describe_changes
from .errors import ClientError, ProtocolViolation, ServerRefused, UsageError
from .handler import check_staff_address, login, logout, staff_session
from .handler_vault import WITNESSES, HandlerPaths, Profile, pinned_witnesses_in, vault_lock
from .intake_api import IntakeClient
from .staff_api import StaffEnrolment
from .trust import HeadState, TrustedDirectory, fetch_trusted_directory, normalise_fingerprint

ADMIN_ENTRY: Final = "admin-signing-key"
ORG_ENTRY: Final = "org"
ENROL_ATTEMPTS: Final = 3
#: A frozen head may be at most this far in the future of the admin's clock.
MAX_HEAD_SKEW: Final = 3600
#: Log entries asked for at once when collecting every directory's receipt key.
AUDIT_LOG_PAGE: Final = 16

__all__ = ["Handler", "StaffEnrolment", "login", "logout"]


class NotAnAdmin(ClientError):
    """Your admin key is not in the admin set that must sign this."""

    hint = "Check the proposal: an admin key signs only directories whose old or new admin set lists it."
    exit_code = 3


class Declined(ClientError):
    """Not signed: you did not confirm."""

    exit_code = 1


class HeadMismatch(ClientError):
    """The server's tree head is not the head of the log you trust with this directory appended."""

    hint = "Do not sign. The server may be showing you a different history from the one other people see."
    exit_code = 3


@dataclass(frozen=True, slots=True, repr=False)
class AdminKeys:
    key: SigningKey
    org: str | None
    #: Witnesses pinned at enrolment: the directory an admin signs on top of needs K cosignatures.
    witnesses: KeySet | None = None

    def __repr__(self) -> str:
        return f"AdminKeys({self.key.verify_key.key_id.short()})"


def _now(now: int | None) -> int:
    return int(time.time()) if now is None else now


def create_admin_vault(
    path: Path,
    passphrase: Passphrase,
    *,
    opslimit: int = DEFAULT_OPSLIMIT,
    memlimit: int = DEFAULT_MEMLIMIT,
) -> VerifyKey:
    """A new vault holding a new admin signing key; returns the public key to list in the admin set."""
    check_passphrase_strength(passphrase)
    if not path.parent.is_dir():
        raise UsageError("the vault's folder does not exist")
    key = SigningKey.generate()
    create_vault(
        path,
        passphrase,
        VaultContents({ADMIN_ENTRY: key.seed_bytes_raw()}),
        opslimit=opslimit,
        memlimit=memlimit,
    )
    return key.verify_key


def open_admin_vault(paths: HandlerPaths, passphrase: Passphrase) -> AdminKeys:
    contents = open_vault(paths.vault, passphrase)
    key = SigningKey.from_seed_bytes(contents.get(ADMIN_ENTRY))
    try:
        org: str | None = contents.get(ORG_ENTRY).decode("ascii")
    except NoSuchEntry:  # not enrolled yet
        org = None
    return AdminKeys(key, org, pinned_witnesses_in(contents))


async def enroll_admin(
    paths: HandlerPaths,
    passphrase: Passphrase,
    *,
    staff: str,
    intake: str,
    invitation: str,
    password: str,
    org: str,
    totp_code: Callable[[StaffEnrolment], str],
    socks: str | None = None,
    witnesses: KeySet | None = None,
) -> str:
    """Create the staff account for this admin vault and pin the organisation fingerprint in it
    (and ``witnesses``, if given: ``admin sign`` then refuses a directory whose head they did not cosign)."""
    org = normalise_fingerprint(org)
    with vault_lock(paths):
        contents = open_vault(paths.vault, passphrase)
        await check_staff_address(paths, staff, intake=intake, org=org, socks=socks, now=_now(None))
        async with AdminClient(staff, socks=socks) as client:
            answer = await client.enroll(invitation, password)
            if answer.role != "admin":
                raise UsageError(f"this invitation is for the role {answer.role!r}; use that role's client")
            for attempt in range(1, ENROL_ATTEMPTS + 1):
                try:
                    username = await client.confirm_enrolment(invitation, totp_code(answer).strip())
                    break
                except ServerRefused as exc:
                    if exc.status >= 500 or exc.status == 429 or attempt == ENROL_ATTEMPTS:
                        raise
        contents = contents.with_entry(ORG_ENTRY, org.encode("ascii"))
        if witnesses is not None:
            contents = contents.with_entry(WITNESSES, canonical_json(witnesses.to_json()))
        save_vault(paths.vault, passphrase, contents)
        Profile(username, staff, intake, org).save(paths)
    return username


async def trusted_directory(
    paths: HandlerPaths, org: str, socks: str | None, now: int, witnesses: KeySet | None = None
) -> TrustedDirectory | None:
    """The directory this admin trusts through the log, or ``None`` before the first is published."""
    profile = _profile(paths)
    state = HeadState.load(paths.state)
    async with IntakeClient(profile.intake, socks=socks) as client:
        try:
            trusted = await fetch_trusted_directory(client, org, state, now, witnesses=witnesses)
        except ServerRefused as exc:
            if exc.status == 503 and exc.code == "no_directory" and state is None:
                return None
            raise
    trusted.state.save(paths.state)
    return trusted


def _profile(paths: HandlerPaths) -> Profile:
    profile = Profile.load(paths)
    if profile is None:
        raise UsageError("this vault is not enrolled; run: safepassage admin enroll")
    return profile


def _admin(paths: HandlerPaths, socks: str | None, now: int | None = None) -> AbstractAsyncContextManager[AdminClient]:
    """The staff API with this vault's saved admin session; a refused session is forgotten."""
    return staff_session(paths, socks, now, AdminClient, "admin")


def _org(keys: AdminKeys) -> str:
    if keys.org is None:
        raise UsageError("this vault is not enrolled; run: safepassage admin enroll")
    return keys.org


async def propose(
    paths: HandlerPaths, org: str, changes: Changes, *, socks: str | None = None, now: int | None = None
) -> tuple[ProposalSummary, str]:
    """Build the next directory from the trusted one and ``changes``, and propose it."""
    now = _now(now)
    trusted = await trusted_directory(paths, org, socks, now)
    base = trusted.directory if trusted else None
    directory = apply_changes(base, changes, now)
    async with _admin(paths, socks, now) as client:
        summary = await client.propose(directory)
    return summary, describe_changes(base, directory)


def _check_complete(base: Directory | None, org: str, detail: ProposalDetail) -> None:
    """The frozen signed directory is the proposal, with signatures that meet 7.4."""
    signed = detail.signed
    if signed is None or signed.directory.signed_bytes() != detail.directory.signed_bytes():
        raise ProtocolViolation("the frozen directory is not the one proposed")
    try:
        if base is None:
            verify_genesis(signed, org)
        else:
            verify_successor(base, signed)
    except BelowThreshold:
        raise ProtocolViolation("the frozen directory lacks the admin signatures it needs") from None


def _check_head(trusted: TrustedDirectory | None, detail: ProposalDetail, now: int) -> None:
    """The head is exactly the trusted log with the signed directory appended."""
    head, signed = detail.head, detail.signed
    if head is None or signed is None:
        raise ProtocolViolation("the proposal has no frozen head")
    log = MerkleLog(trusted.state.leaves if trusted else ())
    log.append(signed.to_bytes())
    if head.size != log.size or head.root != log.root():
        raise HeadMismatch(f"head of size {head.size} does not extend the {log.size - 1} entries you trust")
    if trusted is not None and head.timestamp < trusted.head.head.timestamp:
        raise HeadMismatch("the head is older than the one you trust")
    if head.timestamp > now + MAX_HEAD_SKEW:
        raise HeadMismatch("the head is dated in the future")


@dataclass(frozen=True, slots=True)
class Signed:
    stage: str
    summary: ProposalSummary


async def sign(
    paths: HandlerPaths,
    passphrase: Passphrase,
    proposal_id: str,
    confirm: Callable[[str], bool],
    *,
    socks: str | None = None,
    now: int | None = None,
) -> Signed:
    """Sign what the proposal needs next: the directory, or (once frozen) the tree head.

    ``confirm`` is shown the diff (and for a head, what the head commits to)
    and must return ``True`` for anything to be signed.
    """
    now = _now(now)
    keys = open_admin_vault(paths, passphrase)
    org = _org(keys)
    trusted = await trusted_directory(paths, org, socks, now, keys.witnesses)
    base = trusted.directory if trusted else None
    async with _admin(paths, socks, now) as client:
        detail = await client.proposal(proposal_id)
        directory = detail.directory
        expected = (base.version if base else 0) + 1
        if directory.version != expected:
            raise ProtocolViolation(f"the proposal is for version {directory.version}, not the next ({expected})")
        if base is None and directory.admins.fingerprint() != org:
            raise UntrustedRoot("the first directory's admins are not the organisation you pinned")
        diff = describe_changes(base, directory)
        me = keys.key.verify_key.key_id
        if detail.summary.state == "signing":
            may = directory.admins.member(me) is not None or (base is not None and base.admins.member(me) is not None)
            if not may:
                raise NotAnAdmin()
            if not confirm(diff + "\n\nSign this directory?"):
                raise Declined()
            sig = Signature.make(keys.key, L.SIG_DIRECTORY, directory.signed_bytes())
            stage = "directory"
        elif detail.summary.state == "head":
            if directory.admins.member(me) is None:
                raise NotAnAdmin()
            _check_complete(base, org, detail)
            _check_head(trusted, detail, now)
            head = detail.head
            assert head is not None  # noqa: S101 - checked by _check_head; narrows the type
            question = f"{diff}\n\nSign the tree head that appends it (log size {head.size})?"
            if not confirm(question):
                raise Declined()
            sig = Signature.make(keys.key, L.SIG_TREE_HEAD, head.signed_bytes())
            stage = "head"
        else:
            raise UsageError(f"the proposal is {detail.summary.state}; nothing to sign")
        summary = await client.add_signature(proposal_id, sig)
    return Signed(stage, summary)


async def publish(
    paths: HandlerPaths, org: str, proposal_id: str, *, socks: str | None = None, now: int | None = None
) -> tuple[Published, TrustedDirectory]:
    """Publish, then fetch the directory through the log as any client would, to confirm it is served."""
    now = _now(now)
    async with _admin(paths, socks, now) as client:
        published = await client.publish(proposal_id)
    trusted = await trusted_directory(paths, org, socks, now)
    if trusted is None or trusted.directory.version != published.version:
        raise ProtocolViolation("the server does not serve the directory it says it published")
    return published, trusted


async def status(
    paths: HandlerPaths, org: str, *, socks: str | None = None, now: int | None = None
) -> tuple[TrustedDirectory | None, tuple[ProposalSummary, ...]]:
    now = _now(now)
    trusted = await trusted_directory(paths, org, socks, now)
    async with _admin(paths, socks, now) as client:
        proposals = await client.proposals()
    return trusted, proposals


async def invite(
    paths: HandlerPaths, username: str, role: str, *, onion_key: str | None = None, socks: str | None = None
) -> tuple[str, int]:
    async with _admin(paths, socks) as client:
        return await client.invite(username, role, onion_key)


# --- the audit log (protocol 20) ------------------------------------------------------------------


def _audit_state(paths: HandlerPaths) -> Path:
    return paths.vault.with_name(paths.vault.name + ".audit")


def _load_audit_head(paths: HandlerPaths) -> AuditHeadRef | None:
    try:
        data = read_private(_audit_state(paths), max_len=4096, what="the remembered audit head")
    except FileNotFoundError:
        return None
    obj = as_obj(parse_canonical_json(data, max_len=4096), "audit head")
    require_keys(obj, ("seq", "hash"), "audit head")
    return AuditHeadRef(get_int(obj, "seq"), b64d(get_str(obj, "hash"), length=32, what="audit hash"))


async def _all_directories(paths: HandlerPaths, trusted: TrustedDirectory, socks: str | None) -> list[Directory]:
    """Every directory in the log, each checked against the leaf hashes this client verified."""
    leaves = trusted.state.leaves
    out: list[Directory] = []
    async with IntakeClient(_profile(paths).intake, socks=socks) as client:
        start = 0
        while start < len(leaves):
            end = min(len(leaves), start + AUDIT_LOG_PAGE)
            for offset, entry in enumerate(await client.get_log_entries(start, end)):
                if leaf_hash(entry) != leaves[start + offset]:
                    raise ProtocolViolation("a log entry differs from the one verified before")
                out.append(SignedDirectory.from_bytes(entry).directory)
            start = end
    return out


async def audit_verify(
    paths: HandlerPaths, org: str, *, socks: str | None = None, now: int | None = None
) -> AuditReport:
    """Check the whole audit log against every receipt key the signed directories ever named.

    The newest entry of a log that verified is remembered beside the vault
    (``V.audit``), so the next check also catches entries removed from the end.
    """
    now = _now(now)
    trusted = await trusted_directory(paths, org, socks, now)
    if trusted is None:
        raise UsageError("no directory is published yet, so no receipt key to check the audit log against")
    keys = receipt_keys_of(await _all_directories(paths, trusted, socks))
    async with _admin(paths, socks, now) as client:
        report = await verify_audit_log(client, keys, last_seen=_load_audit_head(paths))
    if report.ok and report.head is not None:
        head = canonical_json({"seq": report.head.seq, "hash": b64e(report.head.hash)})
        write_private(_audit_state(paths), head, replace=True)
    return report
