"""``handler rotate``: a new intake key ahead of time, and the destruction of expired ones (protocol 7.3).

Rotation has two halves. A new key (valid for the admins' period, policy
``intake_key_days``, unless ``--days`` asks for less): generated in the vault, signed by the
handler's identity key, written to ``next-intake-key.json`` for the admins to
list (``admin propose --intake-key``); once M admins publish it, new contacts
are sealed to it. Destruction: every intake key whose window has ended is
removed from the vault, after every case this handler owns that was sealed to
it has been re-sealed to the local archive key (``client/handler_archive.py``).
Nothing is destroyed unless the archiving of every such case succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass

from safepassage.crypto.directory import KEY_DESTRUCTION_GRACE, Directory, IntakeKey
from safepassage.crypto.encoding import canonical_json
from safepassage.crypto.keys import HybridPrivateKey, KeyId, SigningKey, VerifyKey
from safepassage.crypto.privatefile import write_private
from safepassage.crypto.vault import Passphrase, VaultContents, save_vault

from .errors import UsageError
from .handler import DAY, MAX_INTAKE_DAYS, _check_listed, _now, _staff, _trusted, inbox
from .handler_archive import archive_case
from .handler_schedule import rotation_days
from .handler_vault import (
    ARCHIVE_KEY,
    IDENTITY_NEXT,
    HandlerKeys,
    HandlerPaths,
    HeldIntakeKey,
    SavedSession,
    enrolment_document,
    keys_from_contents,
    open_handler_vault,
    vault_lock,
)


@dataclass(frozen=True, slots=True)
class Rotated:
    #: The new key's fingerprint and window, if one was made.
    new_key: IntakeKey | None
    archived_cases: int
    destroyed: tuple[KeyId, ...]
    #: A new identity key waiting for the admins (``new-identity.json``), if one was made.
    new_identity: VerifyKey | None = None
    #: Whether a waiting identity became the identity because a directory now lists it.
    identity_promoted: bool = False


def _promote_identity(contents: VaultContents, keys: HandlerKeys, directory: Directory) -> tuple[VaultContents, bool]:
    """Once the admins list the waiting identity key, it becomes the identity and the old one is destroyed."""
    if keys.identity_next is None:
        return contents, False
    listed = directory.handler(keys.handler_id).identity_key
    if listed != keys.identity_next.verify_key:
        return contents, False
    contents = contents.with_entry("identity", keys.identity_next.seed_bytes_raw()).without(IDENTITY_NEXT)
    return contents, True


def _new_identity(
    paths: HandlerPaths, contents: VaultContents, keys: HandlerKeys, now: int
) -> tuple[VaultContents, VerifyKey]:
    """A new identity key in the vault, and ``new-identity.json``: it and the current intake key signed by it."""
    if keys.identity_next is not None:
        raise UsageError("a new identity key is already waiting for the admins; publish it first")
    identity = SigningKey.generate()
    current = keys.current_intake(now)
    entry = IntakeKey.create(
        keys.handler_id,
        identity,
        current.entry.key,
        not_before=current.entry.not_before,
        not_after=current.entry.not_after,
    )
    write_private(
        paths.new_identity, canonical_json(enrolment_document(keys.handler_id, identity, entry)), replace=True
    )
    return contents.with_entry(IDENTITY_NEXT, identity.seed_bytes_raw()), identity.verify_key


async def rotate(
    paths: HandlerPaths,
    passphrase: Passphrase,
    *,
    days: int | None = None,
    new_key: bool = True,
    identity: bool = False,
    intake: str | None = None,
    socks: str | None = None,
    now: int | None = None,
) -> Rotated:
    now = _now(now)
    if days is not None and not 1 <= days <= MAX_INTAKE_DAYS:
        raise UsageError(f"an intake key is valid for 1 to {MAX_INTAKE_DAYS} days")
    with vault_lock(paths):
        contents, keys = open_handler_vault(paths, passphrase)
        SavedSession.load(paths, now=now)
        trusted = await _trusted(paths, keys.org, intake, socks, now, keys.witnesses)
        _check_listed(trusted.directory, keys)
        # The admins' period (policy intake_key_days): a longer window would be refused at publication.
        policy_days = rotation_days(trusted.directory)
        if days is None:
            days = policy_days
        elif days > policy_days:
            raise UsageError(f"the admins' policy allows intake keys of at most {policy_days} day(s)")
        contents, promoted = _promote_identity(contents, keys, trusted.directory)
        if promoted:
            keys = keys_from_contents(contents)
        new_identity = None
        if identity:
            contents, new_identity = _new_identity(paths, contents, keys, now)
        made: IntakeKey | None = None
        if new_key:
            private = HybridPrivateKey.generate()
            made = IntakeKey.create(
                keys.handler_id, keys.identity, private.public_key, not_before=now, not_after=now + days * DAY
            )
            held_new = HeldIntakeKey(private, made)
            contents = contents.with_entry(held_new.vault_name, held_new.to_bytes())
        # Destroyed only after a grace period the server knows too (late uploads, clock skew).
        retiring = [k for k in keys.intake if k.entry.not_after + KEY_DESTRUCTION_GRACE <= now]
        archive = keys.archive
        if retiring and archive is None:
            archive = HybridPrivateKey.generate()
            contents = contents.with_entry(ARCHIVE_KEY, archive.private_bytes_raw())
        # The new keys and the archive key are in the vault before anything depends on them.
        save_vault(paths.vault, passphrase, contents)
        if made is not None:
            document = enrolment_document(keys.handler_id, keys.identity, made)
            write_private(paths.next_intake_key, canonical_json(document), replace=True)
        archived = 0
        if retiring:
            assert archive is not None  # noqa: S101 - set above whenever keys retire
            ids = {k.private.key_id for k in retiring}
            async with _staff(paths, socks, now) as staff:
                for case in await inbox(paths, socks=socks):
                    detail = await staff.get_case(case.case_id)
                    if await archive_case(paths, staff, detail, keys.opening_keys, archive.public_key, ids):
                        archived += 1  # cases with at least one piece re-sealed in this run
            for held in retiring:
                contents = contents.without(held.vault_name)
            # Only now, with every case re-sealed to the archive key, do the old keys go.
            save_vault(paths.vault, passphrase, contents)
    return Rotated(made, archived, tuple(k.private.key_id for k in retiring), new_identity, promoted)
