"""The intake-key rotation period (policy ``intake_key_days``, protocol 7.5): what handlers are told,
and what a server refuses to publish."""

from __future__ import annotations

import dataclasses

import pytest

from safepassage.client.handler_schedule import ROTATE_AHEAD, rotation_days, rotation_notices
from safepassage.crypto.directory import KEY_DESTRUCTION_GRACE, Directory, IntakeKey, intake_key_days
from safepassage.crypto.errors import MalformedInput
from safepassage.server.directory_store import PublishRefused

from .deployment import Deployment, now_ts
from .helpers import DAY, Org, hybrid_key

ORG = Org()
NOW = 1_800_000_000


def _with_window(directory: Directory, hid: str, not_before: int, not_after: int, label: str) -> Directory:
    key = IntakeKey.create(
        hid, ORG.identities[hid], hybrid_key(label).public_key, not_before=not_before, not_after=not_after
    )
    handlers = tuple(
        dataclasses.replace(h, intake_keys=(key,)) if h.handler_id == hid else h for h in directory.handlers
    )
    return dataclasses.replace(directory, handlers=handlers)


def _key(not_before: int, not_after: int) -> IntakeKey:
    return IntakeKey.create(
        "alice", ORG.identities["alice"], hybrid_key("held").public_key, not_before=not_before, not_after=not_after
    )


def test_the_period_comes_from_the_policy_and_bad_values_are_refused() -> None:
    base = ORG.directory(1)
    assert intake_key_days(base) == 7
    assert intake_key_days(dataclasses.replace(base, policy={"intake_key_days": 3})) == 3
    for bad in (0, 91, True, "7"):
        broken = dataclasses.replace(base, policy={"intake_key_days": bad})
        with pytest.raises(MalformedInput):
            intake_key_days(broken)
        assert rotation_days(broken) == 7  # the client falls back; the server refuses to publish it


def test_nothing_to_say_while_the_key_has_time_left() -> None:
    directory = _with_window(ORG.directory(1), "alice", NOW - DAY, NOW + ROTATE_AHEAD + 60, "a")
    assert rotation_notices(directory, "alice", NOW) == ()
    # A key that ended within the grace period may still be held: readers need it for late uploads.
    assert rotation_notices(directory, "alice", NOW, held=[_key(NOW - 7 * DAY, NOW - KEY_DESTRUCTION_GRACE + 60)]) == ()


def test_a_key_about_to_end_asks_for_the_next_one_with_the_period() -> None:
    directory = dataclasses.replace(
        _with_window(ORG.directory(1), "alice", NOW - DAY, NOW + DAY, "a"), policy={"intake_key_days": 3}
    )
    [notice] = rotation_notices(directory, "alice", NOW)
    assert "ends 2027-01-16" in notice
    assert "Run `safepassage handler rotate`" in notice
    assert "every 3 day(s)" in notice
    [waiting] = rotation_notices(directory, "alice", NOW, next_key_made=True)
    assert "ask the admins to list it" in waiting


def test_an_ended_key_and_a_key_past_its_grace_are_named() -> None:
    directory = _with_window(ORG.directory(1), "alice", NOW - 8 * DAY, NOW - 60, "a")
    held = [_key(NOW - 8 * DAY, NOW - KEY_DESTRUCTION_GRACE - 1)]
    first, second = rotation_notices(directory, "alice", NOW, held=held)
    assert first.startswith("You have no current intake key")
    assert "is still in your vault" in second
    assert "handler rotate --no-new-key" in second
    # Someone not listed (revoked, or not yet listed) gets no schedule advice from the directory.
    assert rotation_notices(directory, "nobody", NOW) == ()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_new_key_longer_than_the_policy_is_not_published(deployment: Deployment) -> None:
    now = now_ts()
    current = deployment.directory
    short = dataclasses.replace(current, version=current.version + 1, policy={"intake_key_days": 3})
    # alice's listed key (7 days) was published before the policy: it is not judged again.
    await deployment.publish(short)
    too_long = _with_window(dataclasses.replace(short, version=short.version + 1), "alice", now, now + 4 * DAY, "b")
    with pytest.raises(PublishRefused) as refused:
        await deployment.publish(too_long)
    assert "longer than the policy's 3 day(s)" in refused.value.message
    fits = _with_window(dataclasses.replace(short, version=short.version + 1), "alice", now, now + 3 * DAY, "b")
    assert (await deployment.publish(fits)).directory.version == short.version + 1
    broken = dataclasses.replace(fits, version=fits.version + 1, policy={"intake_key_days": 0})
    with pytest.raises(PublishRefused):
        await deployment.publish(broken)
