"""An independent witness of the directory log (docs/protocol.md, 8.8): ``safepassage witness``.

The witness keeps its own signing key (a 0600 file: it runs unattended) and
the last head it cosigned (a :class:`~safepassage.client.trust.HeadState`) in
its folder. Each run fetches the log through the same checks as any client:
the admin signatures, the chain of directories from the pinned organisation,
and a consistency proof from its own last head. Only then does it cosign. A
fork or a rollback stops it with the client's error and nothing is signed, so
it never cosigns two different roots for one size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from safepassage.crypto import labels as L
from safepassage.crypto.errors import FileAccessError, MalformedInput
from safepassage.crypto.keys import SigningKey, VerifyKey
from safepassage.crypto.privatefile import read_private, write_private
from safepassage.crypto.threshold import Signature

from .errors import UsageError
from .intake_api import IntakeClient
from .trust import HeadState, fetch_trusted_directory, normalise_fingerprint

KEY_FILE: Final = "witness.key"
STATE_FILE: Final = "witness.state"


@dataclass(frozen=True, slots=True)
class Cosigned:
    size: int
    version: int
    cosignatures: int


def init_witness(folder: Path) -> VerifyKey:
    """Create the witness folder (0700) with a new key; its public half goes to the clients that pin it."""
    if folder.exists() and any(folder.iterdir()):
        raise UsageError("the witness folder is not empty")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = SigningKey.generate()
    write_private(folder / KEY_FILE, key.seed_bytes_raw(), replace=False)
    return key.verify_key


def _key(folder: Path) -> SigningKey:
    try:
        seed = read_private(folder / KEY_FILE, max_len=32, what="the witness key")
    except FileNotFoundError:
        raise UsageError("no witness key here; run: safepassage witness init") from None
    if len(seed) != 32:
        raise MalformedInput("the witness key file is damaged")
    return SigningKey.from_seed_bytes(seed)


async def cosign(folder: Path, intake: str, org: str, *, socks: str | None = None, now: int | None = None) -> Cosigned:
    """Check the log's newest head against the last one cosigned, then cosign it."""
    now = int(time.time()) if now is None else now
    key = _key(folder)
    state_path = folder / STATE_FILE
    state = HeadState.load(state_path)
    async with IntakeClient(intake, socks=socks) as client:
        trusted = await fetch_trusted_directory(client, normalise_fingerprint(org), state, now)
        # Remember the head before signing it: a crash after signing must not
        # let a later run cosign a different root of the same size.
        trusted.state.save(state_path)
        head = trusted.head.head
        signature = Signature.make(key, L.SIG_WITNESS, head.signed_bytes())
        count = await client.post_cosignature(head.size, signature.to_json())
    return Cosigned(head.size, trusted.directory.version, count)


__all__ = ["Cosigned", "FileAccessError", "cosign", "init_witness"]
