"""The signed directory and its M-of-N trust rules (docs/protocol.md, section 7)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safepassage.crypto import labels as L
from safepassage.crypto.directory import (
    Directory,
    IntakeKey,
    SignedDirectory,
    verify_chain,
    verify_genesis,
    verify_successor,
)
from safepassage.crypto.encoding import canonical_json
from safepassage.crypto.errors import (
    BadSignature,
    BelowThreshold,
    ExpiredKey,
    MalformedInput,
    Rollback,
    SafePassageError,
    UntrustedRoot,
)
from safepassage.crypto.threshold import KeySet, Signature

from .helpers import WEEK, Org, hybrid_key, signing_key

ORG = Org()
D1 = ORG.directory(1)
S1 = ORG.signed(D1)


def test_round_trip_is_byte_exact() -> None:
    data = S1.to_bytes()
    assert SignedDirectory.from_bytes(data) == S1
    assert SignedDirectory.from_bytes(data).to_bytes() == data


def test_genesis_with_pinned_fingerprint() -> None:
    assert verify_genesis(S1, ORG.admin_set.fingerprint()) == D1
    assert verify_genesis(S1, ORG.admin_set) == D1


def test_genesis_with_other_org_is_untrusted() -> None:
    other = Org(admins=[signing_key(f"rogue-{i}") for i in range(3)])
    with pytest.raises(UntrustedRoot):
        verify_genesis(other.signed(other.directory()), ORG.admin_set.fingerprint())


def test_threshold_minus_one_is_refused() -> None:
    with pytest.raises(BelowThreshold):
        verify_genesis(ORG.signed(D1, ORG.admins[:1]), ORG.admin_set)


def test_duplicate_signature_is_refused() -> None:
    sig = Signature.make(ORG.admins[0], L.SIG_DIRECTORY, D1.signed_bytes())
    with pytest.raises(MalformedInput):
        verify_genesis(SignedDirectory(D1, (sig, sig)), ORG.admin_set)


def test_signature_by_non_member_does_not_count() -> None:
    outsider = signing_key("outsider")
    signed = ORG.signed(D1, [ORG.admins[0], outsider])
    with pytest.raises(BelowThreshold):
        verify_genesis(signed, ORG.admin_set)


def test_signature_for_another_purpose_does_not_count() -> None:
    wrong = Signature.make(ORG.admins[1], L.SIG_TREE_HEAD, D1.signed_bytes())
    signed = SignedDirectory(D1, (Signature.make(ORG.admins[0], L.SIG_DIRECTORY, D1.signed_bytes()), wrong))
    with pytest.raises(BelowThreshold):
        verify_genesis(signed, ORG.admin_set)


def test_garbage_signature_cannot_veto() -> None:
    junk = Signature(signing_key("outsider").verify_key.key_id, bytes(64))
    signed = SignedDirectory(D1, (*S1.signatures, junk))
    assert verify_genesis(signed, ORG.admin_set) == D1


def test_successor_needs_higher_version() -> None:
    with pytest.raises(Rollback):
        verify_successor(D1, ORG.signed(ORG.directory(1)))
    d2 = ORG.directory(2)
    assert verify_successor(D1, ORG.signed(d2)) == d2


def test_single_rogue_admin_cannot_add_a_handler() -> None:
    rogue_handler = Org(handler_ids=("mallory",))
    d2 = ORG.directory(2, handlers=(*D1.handlers, rogue_handler.handler("mallory")))
    with pytest.raises(BelowThreshold):
        verify_successor(D1, ORG.signed(d2, ORG.admins[2:]))


def test_admin_rotation_needs_old_and_new_sets() -> None:
    new_admin = signing_key("admin-new")
    new_set = KeySet((ORG.admins[0].verify_key, ORG.admins[1].verify_key, new_admin.verify_key), 2)
    d2 = ORG.directory(2, admins=new_set)
    # Signed by two old admins who are also new: meets both sets.
    assert verify_successor(D1, ORG.signed(d2, ORG.admins[:2])) == d2
    # Signed by the new admin and one old admin who stays: old set has only one.
    with pytest.raises(BelowThreshold):
        verify_successor(D1, ORG.signed(d2, [ORG.admins[0], new_admin]))
    # Old admins handing over to keys nobody signs with: new set not met.
    strangers = KeySet(tuple(signing_key(f"stranger-{i}").verify_key for i in range(3)), 2)
    with pytest.raises(BelowThreshold):
        verify_successor(D1, ORG.signed(ORG.directory(2, admins=strangers), ORG.admins[:2]))


def test_chain_verification_and_removed_admin() -> None:
    new_admin = signing_key("admin-new")
    new_set = KeySet((ORG.admins[0].verify_key, ORG.admins[1].verify_key, new_admin.verify_key), 2)
    d2 = ORG.directory(2, admins=new_set)
    d3 = ORG.directory(3, admins=new_set)
    chain = [S1, ORG.signed(d2, ORG.admins[:2]), ORG.signed(d3, [ORG.admins[0], new_admin])]
    assert verify_chain(ORG.admin_set.fingerprint(), chain) == d3
    # admin-2 was removed in version 2: its signature no longer counts.
    with pytest.raises(BelowThreshold):
        verify_chain(ORG.admin_set, [*chain[:2], ORG.signed(d3, [ORG.admins[0], ORG.admins[2]])])


def test_replayed_old_directory_is_rollback() -> None:
    d2 = ORG.directory(2)
    with pytest.raises(Rollback):
        verify_successor(d2, S1)


def test_recipients_follow_current_intake_keys() -> None:
    recipients = D1.recipients("general", now=10)
    assert [h.handler_id for h, _ in recipients] == ["alice", "bob", "carol"]
    assert [h.handler_id for h, _ in D1.recipients("science", now=10)] == ["bob"]
    with pytest.raises(ExpiredKey):
        D1.recipients("general", now=WEEK)
    with pytest.raises(MalformedInput):
        D1.recipients("nonexistent", now=10)


def test_next_intake_key_takes_over_in_overlap() -> None:
    hid = "alice"
    old = D1.handler(hid).intake_keys[0]
    nxt = IntakeKey.create(
        hid, ORG.identities[hid], hybrid_key("alice-next").public_key, not_before=WEEK - 100, not_after=2 * WEEK
    )
    handler = replace(D1.handler(hid), intake_keys=(old, nxt))
    assert handler.current_intake_key(WEEK - 200) == old
    assert handler.current_intake_key(WEEK - 50) == nxt


def test_intake_key_signed_by_another_identity_is_refused() -> None:
    hid = "alice"
    forged = IntakeKey.create(hid, signing_key("not-alice"), ORG.intake[hid].public_key, not_before=0, not_after=WEEK)
    with pytest.raises(BadSignature):
        ORG.directory(1, handlers=(replace(D1.handler(hid), intake_keys=(forged,)),))


def test_intake_key_moved_to_another_handler_is_refused() -> None:
    alice_key = D1.handler("alice").intake_keys[0]
    bob = replace(D1.handler("bob"), intake_keys=(alice_key,))
    with pytest.raises(SafePassageError):
        ORG.directory(1, handlers=(bob,))


def test_consistency_rules() -> None:
    alice = D1.handler("alice")
    with pytest.raises(MalformedInput):
        ORG.directory(1, handlers=(alice, alice))
    with pytest.raises(MalformedInput):
        ORG.directory(1, handlers=(replace(alice, pools=("missing",)),))
    with pytest.raises(MalformedInput):
        ORG.directory(1, receipt_key=ORG.admins[0].verify_key)
    with pytest.raises(MalformedInput):
        ORG.directory(1, pools=())


def test_canonical_form_is_required() -> None:
    data = S1.to_bytes()
    with pytest.raises(MalformedInput):
        SignedDirectory.from_bytes(data.replace(b'{"directory":', b'{ "directory":', 1))
    obj = S1.to_json()
    obj["extra"] = 1
    with pytest.raises(MalformedInput):
        SignedDirectory.from_bytes(canonical_json(obj))


def test_unsorted_admin_keys_are_refused() -> None:
    obj = S1.to_json()
    directory = obj["directory"]
    assert isinstance(directory, dict)
    admins = directory["admins"]
    assert isinstance(admins, dict)
    keys = admins["keys"]
    assert isinstance(keys, list)
    keys.reverse()
    with pytest.raises(MalformedInput):
        SignedDirectory.from_bytes(canonical_json(obj))


DATA = S1.to_bytes()


@given(st.data())
def test_any_byte_change_raises_our_error_or_fails_verification(data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(DATA) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != DATA[pos]))
    mutated = DATA[:pos] + bytes([new]) + DATA[pos + 1 :]
    with pytest.raises(SafePassageError):
        verify_genesis(SignedDirectory.from_bytes(mutated), ORG.admin_set)


@given(st.binary(max_size=512))
def test_garbage_raises_our_error(blob: bytes) -> None:
    with pytest.raises(SafePassageError):
        SignedDirectory.from_bytes(blob)


def test_directory_from_json_rejects_wrong_type() -> None:
    obj = D1.to_json()
    obj["type"] = "safepassage/directory/v2"
    with pytest.raises(MalformedInput):
        Directory.from_json(obj)
