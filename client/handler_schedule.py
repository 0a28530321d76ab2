"""When a handler's intake key must be rotated, and what to tell the handler (protocol 7.5, 19.3).

The admins set the rotation period in the directory's policy (``intake_key_days``,
default 7). The handler's own commands remind the handler: ``handler login`` from the
directory alone, ``handler read`` and ``read-all`` also from the keys the vault still
holds. A key whose window has ended is destroyed by ``handler rotate`` only after its
cases are archived; until then whoever takes the vault with its passphrase can read them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Final

from safepassage.crypto.directory import (
    DEFAULT_INTAKE_KEY_DAYS,
    KEY_DESTRUCTION_GRACE,
    Directory,
    IntakeKey,
    intake_key_days,
)
from safepassage.crypto.errors import SafePassageError

#: Remind the handler this long before the last listed key ends: the admins need time to list the next.
ROTATE_AHEAD: Final = 2 * 86400


def rotation_days(directory: Directory) -> int:
    """The admins' period, or the default if their policy value is unusable (the server refuses those)."""
    try:
        return intake_key_days(directory)
    except SafePassageError:
        return DEFAULT_INTAKE_KEY_DAYS


def _day(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def rotation_notices(
    directory: Directory,
    handler_id: str,
    now: int,
    *,
    held: Sequence[IntakeKey] = (),
    next_key_made: bool = False,
) -> tuple[str, ...]:
    """What the handler must do about intake keys now, in plain words (empty: nothing)."""
    notices: list[str] = []
    listed = next((h for h in directory.handlers if h.handler_id == handler_id), None)
    if listed is not None:
        last_end = max((k.not_after for k in listed.intake_keys), default=0)
        waiting = (
            "Your next key is made (next-intake-key.json): ask the admins to list it."
            if next_key_made
            else "Run `safepassage handler rotate` and give the admins next-intake-key.json."
        )
        period = f"The admins' policy is a new intake key every {rotation_days(directory)} day(s)."
        if last_end <= now:
            notices.append(f"You have no current intake key: new contacts are not sealed to you. {waiting}")
        elif last_end - now <= ROTATE_AHEAD:
            notices.append(f"Your intake key ends {_day(last_end)} and no later one is listed. {waiting} {period}")
    for key in held:
        if key.not_after + KEY_DESTRUCTION_GRACE <= now:
            notices.append(
                f"An intake key that ended {_day(key.not_after)} is still in your vault: run "
                "`safepassage handler rotate --no-new-key` to archive its cases and destroy it."
            )
    return tuple(notices)
