"""Building the next directory from named changes, and the diff admins read before signing."""

from __future__ import annotations

import dataclasses

import pytest

from safepassage.client.directory_changes import Changes, apply_changes, describe_changes
from safepassage.client.errors import UsageError
from safepassage.crypto.directory import IntakeKey, Pool

from .helpers import WEEK, Org, signing_key

ORG = Org()
NOW = 1_700_000_500


def test_first_directory_needs_every_root_part() -> None:
    with pytest.raises(UsageError) as info:
        apply_changes(None, Changes(organisation="Org"), NOW)
    assert "--add-admin" in info.value.message
    first = apply_changes(
        None,
        Changes(
            organisation="Org",
            add_admins=[k.verify_key for k in ORG.admins],
            threshold=2,
            add_pools=[Pool("general", "General", ("ru",))],
            integration=ORG.directory().integration,
            receipt_key=ORG.receipt.verify_key,
        ),
        NOW,
    )
    assert first.version == 1
    text = describe_changes(None, first)
    assert "FIRST directory" in text
    assert first.admins.fingerprint() in text


def test_mistakes_are_usage_errors() -> None:
    base = ORG.directory()
    for changes in (
        Changes(),
        Changes(remove_handlers=["nobody"]),
        Changes(remove_pools=["nothing"]),
        Changes(threshold=4),
        Changes(remove_admins=[signing_key("stranger").verify_key]),
        Changes(add_handlers=[base.handlers[0]]),
        Changes(remove_pools=["science"]),  # bob still reads it
    ):
        with pytest.raises(UsageError):
            apply_changes(base, changes, NOW)


def test_every_change_is_shown_with_its_fingerprints() -> None:
    base = ORG.directory()
    bob = base.handler("bob")
    longer = IntakeKey.create("bob", ORG.identities["bob"], bob.intake_keys[0].key, not_before=0, not_after=2 * WEEK)
    new = dataclasses.replace(
        apply_changes(base, Changes(remove_handlers=["carol"], policy={"intake_key_days": True}), NOW),
    )
    new = dataclasses.replace(
        new,
        handlers=tuple(
            dataclasses.replace(h, intake_keys=(longer,)) if h.handler_id == "bob" else h for h in new.handlers
        ),
    )
    base = dataclasses.replace(base, policy={"intake_key_days": 1})
    text = describe_changes(base, new)
    assert "- HANDLER carol" in text
    # 1 -> true is a change (JSON types differ) though 1 == True in Python.
    assert "Policy intake_key_days: 1 -> True" in text
    # Same key, another window: shown as removed and added again.
    assert text.count(bob.intake_keys[0].key.fingerprint()) == 2
    assert new.version == base.version + 1


def test_a_policy_key_can_be_unset() -> None:
    base = dataclasses.replace(ORG.directory(), policy={"intake_key_days": 5, "retention_case_days": 30})
    new = apply_changes(base, Changes(unset_policy=["intake_key_days"]), NOW)
    assert new.policy == {"retention_case_days": 30}
    assert "Policy intake_key_days: 5 -> None" in describe_changes(base, new)
    for changes in (
        Changes(unset_policy=["never_set"]),
        Changes(policy={"intake_key_days": 6}, unset_policy=["intake_key_days"]),
    ):
        with pytest.raises(UsageError):
            apply_changes(base, changes, NOW)
