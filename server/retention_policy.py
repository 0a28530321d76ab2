"""Retention windows from the signed directory's ``policy`` (docs/protocol.md, section 7.5).

The admins set, in the directory they co-sign:

* ``retention_case_days``: a closed, rejected or escalated case is deleted once
  its last status change and its last message are more than this many days old;
* ``retention_mailbox_days``: a mailbox with no open case is deleted, with
  everything in it, once it has had no activity for more than this many days;
* ``retention_case_days__<pool>`` and ``retention_mailbox_days__<pool>``:
  the same for one pool, with ``-`` in the pool name written ``_`` (pool names
  have no ``_``, so the mapping is one to one).

An absent window means *keep*: deleting is irreversible, so it happens only
where M admins asked for it. A bad value (not an integer from 1 to
:data:`MAX_RETENTION_DAYS`, an unknown ``retention_`` key, a pool the directory
does not have) makes the whole policy invalid, and then nothing is deleted:
guessing what the admins meant is not safe in either direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from safepassage.crypto.directory import Directory, PolicyValue
from safepassage.crypto.errors import SafePassageError

CASE_DAYS: Final = "retention_case_days"
MAILBOX_DAYS: Final = "retention_mailbox_days"
PREFIX: Final = "retention_"
POOL_SEPARATOR: Final = "__"
#: Ten years: long enough for any real need, small enough that day arithmetic stays on the calendar.
MAX_RETENTION_DAYS: Final = 3650


class InvalidRetentionPolicy(SafePassageError):
    """The directory's retention policy is invalid, so nothing is deleted."""

    hint = (
        "Retention keys take an integer number of days from 1 to 3650; per-pool keys must name a pool "
        "of the directory (with '-' written '_'). Publish a corrected directory."
    )
    exit_code = 2


def pool_key(base: str, pool: str) -> str:
    """The policy key that overrides ``base`` for ``pool``."""
    return f"{base}{POOL_SEPARATOR}{pool.replace('-', '_')}"


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    case_days: int | None = None
    mailbox_days: int | None = None
    case_pools: dict[str, int] = field(default_factory=dict)
    mailbox_pools: dict[str, int] = field(default_factory=dict)

    def case_window(self, pool: str) -> int | None:
        """Days a closed case of ``pool`` is kept after its last change; None: kept for ever."""
        return self.case_pools.get(pool, self.case_days)

    def mailbox_window(self, pool: str) -> int | None:
        return self.mailbox_pools.get(pool, self.mailbox_days)

    @property
    def deletes_anything(self) -> bool:
        return any((self.case_days, self.mailbox_days, self.case_pools, self.mailbox_pools))


def _days(key: str, value: PolicyValue) -> int:
    # bool is an int in Python; true must not mean "one day".
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RETENTION_DAYS:
        raise InvalidRetentionPolicy(f"{key} must be a whole number of days from 1 to {MAX_RETENTION_DAYS}")
    return value


def retention_policy(directory: Directory) -> RetentionPolicy:
    """The retention windows ``directory`` sets; :class:`InvalidRetentionPolicy` names the first bad key."""
    pools = {pool.name.replace("-", "_"): pool.name for pool in directory.pools}
    case_days = mailbox_days = None
    case_pools: dict[str, int] = {}
    mailbox_pools: dict[str, int] = {}
    for key in sorted(directory.policy):
        if not key.startswith(PREFIX):
            continue
        days = _days(key, directory.policy[key])
        base, sep, suffix = key.partition(POOL_SEPARATOR)
        if base not in (CASE_DAYS, MAILBOX_DAYS) or (sep and not suffix):
            raise InvalidRetentionPolicy(f"{key} is not a retention key")
        if not sep:
            if base == CASE_DAYS:
                case_days = days
            else:
                mailbox_days = days
            continue
        if suffix not in pools:
            raise InvalidRetentionPolicy(f"{key} names a pool the directory does not have")
        (case_pools if base == CASE_DAYS else mailbox_pools)[pools[suffix]] = days
    return RetentionPolicy(case_days, mailbox_days, case_pools, mailbox_pools)
