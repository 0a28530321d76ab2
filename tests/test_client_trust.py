"""The applicant client's trust in a directory (docs/protocol.md, 7.4 and 8.7), against a real HTTP server.

Directories are built with :class:`tests.helpers.Org` and logged in a real
:class:`MerkleLog`; :mod:`tests.fake_intake` serves them over aiohttp on
127.0.0.1. Every dishonest case is a server that answers well-formed JSON with
validly signed pieces where it can, so what refuses it is the client's check,
not a parse error.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from safepassage.client import intake_api, trust
from safepassage.client.errors import HeadStateError, NotLatestDirectory, ProtocolViolation, StaleTreeHead
from safepassage.client.intake_api import IntakeClient
from safepassage.client.trust import HeadState, StateFileInsecure, TrustedDirectory, fetch_trusted_directory
from safepassage.crypto.directory import SignedDirectory
from safepassage.crypto.encoding import canonical_json, parse_canonical_json
from safepassage.crypto.errors import (
    BelowThreshold,
    FileAccessError,
    Fork,
    InvalidProof,
    Rollback,
    SafePassageError,
    UntrustedRoot,
)
from safepassage.crypto.threshold import KeySet
from safepassage.crypto.translog import MerkleLog, leaf_hash

from .fake_intake import TS, FakeIntake, LogView, head_for, honest_view
from .helpers import Org, signing_key

ORG = Org()
FP = ORG.admin_set.fingerprint()
SIGNERS = ORG.admins[:2]
NOW = TS + 60


def chain(n: int, org: Org = ORG, **changes: object) -> list[SignedDirectory]:
    """Versions 1..n, each signed by the org's first M admins."""
    return [org.signed(org.directory(version=v, **changes)) for v in range(1, n + 1)]


async def _fetch(fake: FakeIntake, state: HeadState | None, org: str) -> TrustedDirectory:
    async with fake.running() as url, IntakeClient(url) as client:
        return await fetch_trusted_directory(client, org, state, NOW)


def fetch(view: LogView | FakeIntake, state: HeadState | None = None, org: str = FP) -> TrustedDirectory:
    fake = view if isinstance(view, FakeIntake) else FakeIntake(view)
    return asyncio.run(_fetch(fake, state, org))


def state_after(signed: Sequence[SignedDirectory]) -> HeadState:
    return fetch(honest_view(signed, SIGNERS)).state


# --- the honest log ----------------------------------------------------------------------------------


def test_honest_log_is_trusted_from_genesis() -> None:
    signed = chain(3)
    trusted = fetch(honest_view(signed, SIGNERS))
    assert trusted.directory == signed[-1].directory
    assert trusted.index == 2
    assert trusted.state.head.size == 3
    assert trusted.state.version == 3
    assert trusted.state.leaves == tuple(leaf_hash(s.to_bytes()) for s in signed)
    assert trusted.state.org == FP
    assert "version=3" in repr(trusted)


def test_fingerprint_may_be_typed_without_spaces() -> None:
    trusted = fetch(honest_view(chain(1), SIGNERS), org=FP.replace(" ", ""))
    assert trusted.directory.version == 1


def test_resume_from_state_fetches_only_new_entries() -> None:
    signed = chain(5)
    state = state_after(signed[:3])
    fake = FakeIntake(honest_view(signed, SIGNERS))
    trusted = fetch(fake, state)
    assert trusted.directory.version == 5
    assert trusted.state.head.size == 5
    # Only from the last trusted entry (index 2) on: nothing before it again.
    assert fake.entry_requests() == [(2, 5)]
    assert ("GET", "/api/v1/directory", {"known_size": "3"}) in fake.requests


def test_same_head_again_is_accepted() -> None:
    signed = chain(2)
    state = state_after(signed)
    trusted = fetch(honest_view(signed, SIGNERS), state)
    assert trusted.state == state


def test_admin_rotation_head_signed_by_the_new_admins() -> None:
    # Version 2 replaces admin-0 with admin-3: signed by M of the old set and M
    # of the new one; the head is then signed by the new admins only.
    new_admins = [*ORG.admins[1:], signing_key("admin-3")]
    d2 = ORG.directory(version=2, admins=KeySet(tuple(k.verify_key for k in new_admins), 2))
    v2 = ORG.signed(d2, [ORG.admins[0], *new_admins])
    signed = [chain(1)[0], v2]
    trusted = fetch(honest_view(signed, new_admins[-2:]))
    assert trusted.directory.admins == d2.admins
    # The old pinned fingerprint still anchors the chain.
    assert trusted.state.org == FP


def test_log_pages_shrink_when_entries_are_large(monkeypatch: pytest.MonkeyPatch) -> None:
    signed = chain(4)
    one = len(signed[0].to_bytes())
    # An answer holds one entry and a bit: every page must shrink to 1.
    monkeypatch.setattr(intake_api, "LIMIT_LOG", one + one // 2)
    monkeypatch.setattr(trust, "LIMIT_LOG", 4 * one)
    fake = FakeIntake(honest_view(signed, SIGNERS))
    trusted = fetch(fake)
    assert trusted.directory.version == 4
    assert fake.entry_requests()[-4:] == [(0, 1), (1, 2), (2, 3), (3, 4)]


# --- refusals ----------------------------------------------------------------------------------------


def test_wrong_org_is_untrusted_root() -> None:
    other = Org(admins=[signing_key(f"other-admin-{i}") for i in range(3)])
    view = honest_view(chain(2, other), other.admins[:2])
    with pytest.raises(UntrustedRoot):
        fetch(view)


def test_head_signed_by_too_few_admins() -> None:
    view = honest_view(chain(3), SIGNERS[:1])
    with pytest.raises(BelowThreshold):
        fetch(view)


def test_head_signed_by_admins_of_an_older_directory_only() -> None:
    new_admins = [*ORG.admins[1:], signing_key("admin-3")]
    d2 = ORG.directory(version=2, admins=KeySet(tuple(k.verify_key for k in new_admins), 2))
    signed = [chain(1)[0], ORG.signed(d2, [ORG.admins[0], *new_admins])]
    # admin-0 and admin-1: two of the *old* set, but only one of the newest.
    with pytest.raises(BelowThreshold):
        fetch(honest_view(signed, ORG.admins[:2]))


def test_bad_inclusion_proof() -> None:
    view = honest_view(chain(3), SIGNERS)
    view.inclusion = [bytes([view.inclusion[0][0] ^ 1]) + view.inclusion[0][1:], *view.inclusion[1:]]
    with pytest.raises(InvalidProof):
        fetch(view)


def test_inclusion_proof_of_the_wrong_length() -> None:
    view = honest_view(chain(3), SIGNERS)
    view.inclusion = view.inclusion[:-1]
    with pytest.raises(InvalidProof):
        fetch(view)


def test_directory_not_the_last_entry() -> None:
    view = honest_view(chain(3), SIGNERS)
    view.index = 1
    view.served = view.entries[1]
    view.inclusion = view.log.inclusion_proof(1)
    with pytest.raises(NotLatestDirectory):
        fetch(view)


def test_older_directory_passed_off_as_the_last() -> None:
    # Index says "last", but the bytes are version 2's: no proof can place them there.
    view = honest_view(chain(3), SIGNERS)
    view.served = view.entries[1]
    with pytest.raises(InvalidProof):
        fetch(view)


def test_entries_that_do_not_lead_to_the_root() -> None:
    # The head and proofs are for one log; /log/entries shows a different,
    # equally well-signed version 2 (a split view of the entries).
    signed = chain(3)
    view = honest_view(signed, SIGNERS)
    other_v2 = ORG.signed(ORG.directory(version=2, organisation="Another view"))
    view.entries = [view.entries[0], other_v2.to_bytes(), view.entries[2]]
    with pytest.raises(InvalidProof):
        fetch(view)


def test_fork_against_remembered_head() -> None:
    state = state_after(chain(2))
    # Same genesis, then a different version 2 and a version 3, all validly signed.
    forked = [chain(1)[0], *(ORG.signed(ORG.directory(version=v, organisation="Fork")) for v in (2, 3))]
    with pytest.raises(Fork) as info:
        fetch(honest_view(forked, SIGNERS), state)
    assert "split-view" in info.value.message
    assert info.value.hint.startswith("Do not continue")


def test_fork_of_the_same_size() -> None:
    state = state_after(chain(2))
    forked = [chain(1)[0], ORG.signed(ORG.directory(version=2, organisation="Fork"))]
    with pytest.raises(Fork):
        fetch(honest_view(forked, SIGNERS), state)


def test_fork_that_keeps_the_remembered_last_entry() -> None:
    # Entry 1 (the one the state resumes from) is unchanged, entry 0 differs:
    # the resume path must not skip the consistency check.
    v1, v2 = chain(2)
    state = state_after([v1, v2])
    other_v1 = ORG.signed(ORG.directory(version=1, organisation="Fork"))
    with pytest.raises(Fork):
        fetch(honest_view([other_v1, v2, chain(3)[2]], SIGNERS), state)


def test_fork_with_a_consistency_proof_that_does_not_join() -> None:
    state = state_after(chain(2))
    view = honest_view(chain(4), SIGNERS)
    view.consistency = lambda known: [bytes(32)] * 2
    with pytest.raises(Fork):
        fetch(view, state)


def test_rollback_to_an_older_head() -> None:
    signed = chain(3)
    state = state_after(signed)
    with pytest.raises(Rollback) as info:
        fetch(honest_view(signed[:2], SIGNERS), state)
    assert "rollback" in info.value.message
    assert info.value.hint.startswith("Do not continue")


def test_rogue_successor_signed_by_one_admin() -> None:
    v1 = chain(1)[0]
    rogue = ORG.signed(ORG.directory(version=2, organisation="Rogue"), ORG.admins[:1])
    with pytest.raises(BelowThreshold):
        fetch(honest_view([v1, rogue], SIGNERS))


def test_rogue_successor_handing_the_org_to_new_keys() -> None:
    # Version 2 names an attacker's admin set and is signed only by it.
    rogue_keys = [signing_key(f"rogue-{i}") for i in range(3)]
    d2 = ORG.directory(version=2, admins=KeySet(tuple(k.verify_key for k in rogue_keys), 2))
    rogue = ORG.signed(d2, rogue_keys[:2])
    with pytest.raises(BelowThreshold):
        fetch(honest_view([chain(1)[0], rogue], rogue_keys[:2]))


def test_successor_with_a_lower_version() -> None:
    v1, v2 = chain(2)
    with pytest.raises(Rollback):
        fetch(honest_view([v2, v1], SIGNERS))


def test_state_of_another_org() -> None:
    other = Org(admins=[signing_key(f"other-admin-{i}") for i in range(3)])
    state = fetch(honest_view(chain(1, other), other.admins[:2]), org=other.admin_set.fingerprint()).state
    with pytest.raises(HeadStateError):
        fetch(honest_view(chain(1), SIGNERS), state)


def test_short_log_page_is_a_protocol_violation() -> None:
    fake = FakeIntake(honest_view(chain(3), SIGNERS))
    fake.override["/log/entries"] = lambda request: _json({"entries": []})
    with pytest.raises(ProtocolViolation):
        fetch(fake)


def test_max_head_age() -> None:
    view = honest_view(chain(1), SIGNERS, ts=NOW - 100)

    async def go(max_age: int) -> TrustedDirectory:
        async with FakeIntake(view).running() as url, IntakeClient(url) as client:
            return await fetch_trusted_directory(client, FP, None, NOW, max_head_age=max_age)

    assert asyncio.run(go(100)).directory.version == 1
    with pytest.raises(StaleTreeHead):
        asyncio.run(go(99))


def test_every_refusal_is_ours() -> None:
    # Tampering with any single field of an honest answer raises one of our errors.
    base = honest_view(chain(3), SIGNERS)
    tampered: list[LogView] = [
        replace(base, index=5),
        replace(base, head=head_for(base.log, SIGNERS, size=2)),
        replace(base, served=base.entries[0]),
        replace(base, entries=base.entries[:1] * 3),
    ]
    for view in tampered:
        with pytest.raises(SafePassageError):
            fetch(view)


def _json(value: object) -> web.Response:
    return web.json_response(value)


# --- the state file -----------------------------------------------------------------------------------


def _state(n: int = 2) -> HeadState:
    log = MerkleLog()
    for s in chain(n):
        log.append(s.to_bytes())
    return HeadState(org=FP, head=log.head(TS), version=n, leaves=log.leaf_hashes())


def test_state_round_trip_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = _state()
    state.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert HeadState.load(path) == state
    assert repr(state) == "HeadState(size=2, version=2)"


def test_missing_state_file_is_none(tmp_path: Path) -> None:
    assert HeadState.load(tmp_path / "nope.json") is None


def test_state_save_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    old = _state(1)
    old.save(path)
    new = _state(3)
    new.save(path)
    assert HeadState.load(path) == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]

    # A failure before the rename leaves the old file and no temporary file.
    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(FileAccessError, match="ENOSPC"):
        old.save(path)
    monkeypatch.undo()
    assert HeadState.load(path) == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_state_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    _state().save(path)
    path.chmod(0o644)
    with pytest.raises(StateFileInsecure) as info:
        HeadState.load(path)
    assert "chmod 600" in info.value.hint
    assert isinstance(info.value, HeadStateError)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00garbage",
        b'{"type":"safepassage/client-state/v1"}',
        b'{"leaves":[],"org":"x","type":"safepassage/client-state/v9","version":1}',
    ],
)
def test_corrupt_state_file_is_one_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(HeadStateError) as info:
        HeadState.load(path)
    assert info.value.message.startswith("The state file cannot be used")
    assert info.value.exit_code == 5


def test_state_whose_leaves_do_not_match_its_root(tmp_path: Path) -> None:
    state = _state(3)
    value = parse_canonical_json(state.to_bytes(), max_len=1 << 20)
    assert isinstance(value, dict)
    assert isinstance(value["leaves"], list)
    leaves = value["leaves"]
    leaves[0], leaves[1] = leaves[1], leaves[0]
    path = tmp_path / "state.json"
    path.write_bytes(canonical_json(value))
    path.chmod(0o600)
    with pytest.raises(HeadStateError, match="leaf hashes do not match"):
        HeadState.load(path)


def test_state_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(HeadStateError):
        HeadState.load(tmp_path)


def test_state_remembers_version_consistently(tmp_path: Path) -> None:
    # A state whose version was edited no longer matches its last entry.
    signed = chain(2)
    state = replace(state_after(signed), version=1)
    with pytest.raises(HeadStateError, match="version"):
        fetch(honest_view(chain(3), SIGNERS), state)
