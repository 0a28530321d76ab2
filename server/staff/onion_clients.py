"""Which clients may reach the staff onion: one Tor client key per enrolled handler or admin.

The hook between enrolment and Tor, kept small: an invitation may carry the
person's onion client key (``staff invite --onion-key``, or ``onion_key`` in
the admin API), stored as ``DATA/onion-clients/<username>.auth`` in tor's own
format; revoking the account deletes the file. The staff app re-reads the
folder on every health check (``tor_health_seconds``) and re-publishes its
onion when the set changed. A key whose account is revoked is left out even
if its file is still there (a crash between the database and the file).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from ..db.engine import Store
from ..db.models import StaffUser
from ..tor import ClientKey, read_client_keys, remove_client_key, write_client_key


async def authorised_keys(store: Store, folder: Path) -> tuple[ClientKey, ...]:
    keys = read_client_keys(folder)
    if not keys:
        return ()
    async with store.read() as session:
        revoked = set((await session.execute(select(StaffUser.username).where(StaffUser.state == "revoked"))).scalars())
    return tuple(sorted({k for name, k in keys.items() if name not in revoked}))


def register(folder: Path, username: str, key: ClientKey) -> Path:
    return write_client_key(folder, username, key)


def unregister(folder: Path, username: str) -> bool:
    return remove_client_key(folder, username)


__all__ = ["authorised_keys", "register", "unregister"]
