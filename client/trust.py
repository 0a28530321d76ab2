"""Fetching a directory the applicant can trust (docs/protocol.md, sections 7.4 and 8.7).

The server's word counts for nothing here. A directory is used only when

1. the chain of directories in the transparency log starts with one whose admin
   set has the organisation fingerprint the applicant pinned, and every later
   one is signed as a successor of the one before (:func:`verify_genesis`,
   :func:`verify_successor`);
2. the signed tree head meets the admin set of the newest of them;
3. the head extends the last head this client accepted, if it remembers one
   (:func:`check_extension`: a fork or a rollback stops everything);
4. every entry walked is in the log at its index under that head (the leaf
   hashes fold to the head's root), and the directory served is the last entry,
   with an inclusion proof.

**State.** Only with ``--state FILE`` does the client remember anything: a
small canonical JSON file (:class:`HeadState`) with the organisation
fingerprint, the last accepted head, the version of the newest trusted
directory and the leaf hash of every entry under that head. The leaf hashes let
a later run fetch only the entries it has not seen and still check each one's
place in the log (8.7 step 3) without per-entry proofs. The file holds no
secret, but it is a trust anchor like the pinned fingerprint: whoever can write
it chooses which directory the next run starts from. It is therefore written
atomically with mode 0600 and refused when group or others may access it.
Without ``--state`` every run walks the log from its first entry.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from safepassage.crypto.directory import Directory, SignedDirectory, verify_genesis, verify_successor
from safepassage.crypto.encoding import (
    JsonObject,
    JsonValue,
    as_obj,
    b64d,
    b64e,
    canonical_json,
    get_int,
    get_list,
    get_obj,
    get_str,
    parse_canonical_json,
    require_keys,
)
from safepassage.crypto.errors import InsecureFile, InvalidProof, MalformedInput, SafePassageError
from safepassage.crypto.keys import HybridPublicKey, VerifyKey
from safepassage.crypto.privatefile import read_private, write_private
from safepassage.crypto.threshold import KeySet
from safepassage.crypto.translog import (
    HASH_LEN,
    SignedTreeHead,
    TreeHead,
    check_extension,
    leaf_hash,
    root_hash,
    verify_inclusion,
)

from .errors import HeadStateError, NotLatestDirectory, ProtocolViolation, ResponseTooLarge, StaleTreeHead, UsageError
from .intake_api import LIMIT_LOG, MAX_LOG_PAGE, IntakeClient
from .onion import check_onion

STATE_TYPE: Final = "safepassage/client-state/v1"
#: The client refuses a longer log: at one directory version a week that is
#: over a thousand years, and it bounds the state file and the walk.
MAX_LOG_SIZE: Final = 65536
MAX_STATE_BYTES: Final = 4 * 1024 * 1024
_FINGERPRINT = re.compile(r"[0-9]{5}( [0-9]{5}){9}")


def normalise_fingerprint(text: str) -> str:
    """Ten groups of five digits, however the person spaced them."""
    digits = "".join(text.split())
    if len(digits) != 50 or not digits.isascii() or not digits.isdigit():
        raise UsageError("the organisation fingerprint must be ten groups of five digits")
    return " ".join(digits[i : i + 5] for i in range(0, 50, 5))


# --- remembered state ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeadState:
    """What a client remembers between runs: the last head it accepted and how it got there."""

    org: str
    head: TreeHead
    version: int
    leaves: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not _FINGERPRINT.fullmatch(self.org):
            raise HeadStateError("the organisation fingerprint in it has an invalid form")
        if self.version < 1 or self.head.size < 1 or self.head.size > MAX_LOG_SIZE:
            raise HeadStateError("its head or version is out of range")
        if len(self.leaves) != self.head.size or any(len(h) != HASH_LEN for h in self.leaves):
            raise HeadStateError("its leaf hashes do not match its head")
        if root_hash(self.leaves) != self.head.root:
            raise HeadStateError("its leaf hashes do not match its head")

    def __repr__(self) -> str:
        return f"HeadState(size={self.head.size}, version={self.version})"

    def to_bytes(self) -> bytes:
        value: JsonObject = {
            "type": STATE_TYPE,
            "org": self.org,
            "head": self.head.to_json(),
            "version": self.version,
            "leaves": [b64e(h) for h in self.leaves],
        }
        return canonical_json(value)

    @classmethod
    def from_bytes(cls, data: bytes) -> HeadState:
        try:
            obj = as_obj(parse_canonical_json(data, max_len=MAX_STATE_BYTES), "state")
            require_keys(obj, ("type", "org", "head", "version", "leaves"), "state")
            if obj["type"] != STATE_TYPE:
                raise MalformedInput("not a Safe Passage client state file")
            leaves = get_list(obj, "leaves")
            if len(leaves) > MAX_LOG_SIZE:
                raise MalformedInput("too many leaf hashes")
            return cls(
                org=get_str(obj, "org", max_len=64),
                head=TreeHead.from_json(get_obj(obj, "head")),
                version=get_int(obj, "version", minimum=1),
                leaves=tuple(_leaf(h) for h in leaves),
            )
        except HeadStateError:
            raise
        except SafePassageError as exc:
            raise HeadStateError("it is not a valid state file") from exc

    @classmethod
    def load(cls, path: Path) -> HeadState | None:
        """The state in ``path``, or ``None`` if there is no such file yet."""
        try:
            data = read_private(path, max_len=MAX_STATE_BYTES, what="the state file")
        except FileNotFoundError:
            return None
        except InsecureFile as exc:
            raise StateFileInsecure(exc.detail) from None
        except MalformedInput as exc:
            raise HeadStateError(exc.detail) from None
        return cls.from_bytes(data)

    def save(self, path: Path) -> None:
        """Replace ``path`` atomically with this state, mode 0600."""
        write_private(path, self.to_bytes(), replace=True)


def _leaf(value: JsonValue) -> bytes:
    if not isinstance(value, str):
        raise MalformedInput("leaf hashes must be strings")
    return b64d(value, length=HASH_LEN, what="leaf hash")


class StateFileInsecure(HeadStateError):
    """Other users of this machine may access the state file."""

    hint = (
        "Run chmod 600 on it. If others could write it, delete it and start a new one: "
        "they could have changed which directory this program trusts."
    )


# --- the trusted directory -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrustedDirectory:
    """A directory that passed every check of this module, with the head that vouches for it.

    Only :func:`fetch_trusted_directory` should make one; the flows in
    :mod:`safepassage.client.applicant` accept nothing else.
    """

    directory: Directory
    head: SignedTreeHead
    index: int
    state: HeadState

    def __repr__(self) -> str:
        return f"TrustedDirectory(version={self.directory.version}, log size={self.head.head.size})"

    @property
    def receipt_key(self) -> VerifyKey:
        return self.directory.receipt_key

    def recipients(self, pool: str, now: int) -> tuple[HybridPublicKey, ...]:
        """Exactly the keys a message for ``pool`` is sealed to at ``now`` (protocol 7.3)."""
        return tuple(key for _, key in self.directory.recipients(pool, now))


@dataclass(slots=True)
class _Walk:
    directory: Directory
    last_entry: bytes
    leaves: list[bytes]


def _first_page(directory_bytes: int) -> int:
    # Guess how many entries fit in one answer from the size of the newest one.
    return max(1, min(MAX_LOG_PAGE, LIMIT_LOG // max(1, 2 * directory_bytes)))


async def _entries(client: IntakeClient, start: int, end: int, page: int) -> AsyncGenerator[bytes, None]:
    """Entries ``[start, end)`` one at a time, fetched in pages that fit the size limit."""
    i = start
    while i < end:
        n = min(page, end - i)
        try:
            batch = await client.get_log_entries(i, i + n)
        except ResponseTooLarge:
            # An older directory was larger than the newest: ask for fewer. A
            # single entry (at most 4 MiB) always fits.
            if n == 1:
                raise
            page = max(1, n // 2)
            continue
        for entry in batch:
            yield entry
        i += n


async def _walk_from_genesis(client: IntakeClient, org: str, size: int, page: int) -> _Walk:
    current: Directory | None = None
    last = b""
    leaves: list[bytes] = []
    async for entry in _entries(client, 0, size, page):
        signed = SignedDirectory.from_bytes(entry)
        current = verify_genesis(signed, org) if current is None else verify_successor(current, signed)
        leaves.append(leaf_hash(entry))
        last = entry
    if current is None:
        raise ProtocolViolation("the log is empty")
    return _Walk(current, last, leaves)


async def _resume(client: IntakeClient, state: HeadState, size: int, page: int) -> _Walk | None:
    """Walk on from the last directory this client trusted; ``None`` if the log no longer has it there."""
    start = state.head.size - 1
    entries = _entries(client, start, size, page)
    try:
        first = await anext(entries, None)
        if first is None:
            return None
        if leaf_hash(first) != state.leaves[-1]:
            return None
        current = SignedDirectory.from_bytes(first).directory
        if current.version != state.version:
            raise HeadStateError("its directory version does not match its last log entry")
        leaves = list(state.leaves)
        last = first
        async for entry in entries:
            current = verify_successor(current, SignedDirectory.from_bytes(entry))
            leaves.append(leaf_hash(entry))
            last = entry
        return _Walk(current, last, leaves)
    finally:
        await entries.aclose()


async def fetch_trusted_directory(
    client: IntakeClient,
    org_fingerprint: str,
    state: HeadState | None,
    now: int,
    *,
    max_head_age: int | None = None,
    witnesses: KeySet | None = None,
) -> TrustedDirectory:
    """The server's current directory, if and only if it passes every check (see the module docstring).

    ``state`` is the last accepted head (``None`` for a client that remembers
    nothing). The returned :attr:`TrustedDirectory.state` is what to remember
    next; the caller saves it. ``max_head_age`` (seconds), if given, refuses a
    head made longer ago than that before ``now``, which bounds how long a
    server can keep a client on an old directory. ``witnesses`` (a pinned
    witness key set with its threshold K), if given, refuses a head without
    K valid witness cosignatures (8.6).
    """
    org = normalise_fingerprint(org_fingerprint)
    if state is not None and state.org != org:
        raise HeadStateError("it belongs to another organisation")
    answer = await client.get_directory(state.head.size if state is not None else None)
    signed_head = answer.tree_head
    head = signed_head.head
    # The directory to use is the newest one: the last entry of the log.
    if head.size != answer.index + 1:
        raise NotLatestDirectory(f"entry {answer.index} of a log of {head.size}")
    if head.size > MAX_LOG_SIZE:
        raise ProtocolViolation(f"the log has more than {MAX_LOG_SIZE} entries")

    page = _first_page(len(answer.directory))
    walk = None
    if state is not None and state.head.size <= head.size:
        walk = await _resume(client, state, head.size, page)
    if walk is None:
        # No state, a shorter log than remembered, or the remembered entry is
        # gone: check everything from the pinned root. Whatever history the
        # server shows is then compared with the remembered head below.
        walk = await _walk_from_genesis(client, org, head.size, page)

    # 8.6: the head must meet the admin set of the newest trusted directory
    # and, for a client that pins witnesses, K of their cosignatures.
    signed_head.verify(walk.directory.admins, witnesses)
    # 8.7 step 2: no rollback, no fork against what this client saw before.
    check_extension(state.head if state is not None else None, head, answer.consistency)
    # 8.7 step 3: every entry walked is at its index under this head...
    if root_hash(walk.leaves) != head.root:
        raise InvalidProof("the log entries do not lead to the signed root")
    # ...and the directory served is the last of them.
    verify_inclusion(leaf_hash(answer.directory), answer.index, head.size, answer.inclusion, head.root)
    if answer.directory != walk.last_entry:
        raise ProtocolViolation("the directory served is not the log's last entry")
    if max_head_age is not None and now - head.timestamp > max_head_age:
        raise StaleTreeHead(f"made {now - head.timestamp} seconds ago")

    # The onion we reached must be the one the organisation signed (a phished or moved address stops here).
    check_onion(client.base, walk.directory, "public")
    new_state = HeadState(org=org, head=head, version=walk.directory.version, leaves=tuple(walk.leaves))
    return TrustedDirectory(directory=walk.directory, head=signed_head, index=answer.index, state=new_state)


__all__ = [
    "MAX_LOG_SIZE",
    "STATE_TYPE",
    "HeadState",
    "StateFileInsecure",
    "TrustedDirectory",
    "fetch_trusted_directory",
    "normalise_fingerprint",
]
