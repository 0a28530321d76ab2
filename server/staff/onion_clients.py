"""Which clients may reach the staff onion: one Tor client key per enrolled handler or admin.

The hook between enrolment and Tor, kept small: an invitation may carry the
person's onion client key (``staff invite --onion-key``, or ``onion_key`` in
the admin API), stored as ``DATA/onion-clients/<username>.auth`` in tor's own
format; revoking the account deletes the file. The staff app re-reads the
folder on every health check (``tor_health_seconds``) and re-publishes its
onion when the set changed. A key file is only a claim: it is admitted while
its username is an active account or holds a live invitation (unused, not
expired; a pending enrolment still has one until its first code is
confirmed). So a revoked account's file left by a crash between the database
and the file, an invitation that lapsed unredeemed, or a file for a name the
database never heard of, admits nobody.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from ..db.engine import Store
from ..db.models import StaffInvitation, StaffUser
from ..tor import ClientKey, read_client_keys, remove_client_key, write_client_key


async def authorised_keys(store: Store, folder: Path, *, now: int) -> tuple[ClientKey, ...]:
    """The keys in ``folder`` whose username is an active account or has a live invitation at ``now``."""
    keys = read_client_keys(folder)
    if not keys:
        return ()
    async with store.read() as session:
        active = (await session.execute(select(StaffUser.username).where(StaffUser.state == "active"))).scalars()
        # Revocation deletes unused invitations, so a revoked name with a live one was invited
        # again on purpose and needs the onion to enrol.
        invited = (
            await session.execute(
                select(StaffInvitation.username).where(StaffInvitation.used.is_(False), StaffInvitation.expires > now)
            )
        ).scalars()
        admitted = set(active) | set(invited)
    return tuple(sorted({k for name, k in keys.items() if name in admitted}))


def register(folder: Path, username: str, key: ClientKey) -> Path:
    return write_client_key(folder, username, key)


def unregister(folder: Path, username: str) -> bool:
    return remove_client_key(folder, username)


__all__ = ["authorised_keys", "register", "unregister"]
