"""The admin side of the staff API: invitations, accounts and directory proposals (protocol 19).

Everything the server says about a proposal is checked again by the admin
client before anything is signed: the directory bytes an admin signs are the
ones the admin's own client rebuilt and showed, never a server's say-so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from safepassage.crypto.directory import Directory, SignedDirectory
from safepassage.crypto.encoding import JsonObject, JsonValue, as_obj, canonical_json, get_int, get_list, get_str
from safepassage.crypto.threshold import Signature
from safepassage.crypto.translog import TreeHead

from .errors import ProtocolViolation, UsageError
from .intake_api import LIMIT_DIRECTORY
from .staff_api import StaffClient
from .transport import LIMIT_SMALL, expect_json

_PROPOSAL_ID: Final = re.compile(r"[0-9a-f]{32}")
_KEY_ID: Final = re.compile(r"[0-9a-f]{64}")
STATES: Final = ("signing", "head", "published", "stale")
#: A proposal answer holds a directory twice (proposed and signed), each at most 4 MiB.
LIMIT_PROPOSAL: Final = 2 * LIMIT_DIRECTORY + 64 * 1024


@dataclass(frozen=True, slots=True)
class ProposalSummary:
    proposal_id: str
    version: int
    state: str
    proposer: str
    day: str
    signers: tuple[str, ...]
    head_signers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProposalDetail:
    summary: ProposalSummary
    directory: Directory
    signed: SignedDirectory | None
    head: TreeHead | None


@dataclass(frozen=True, slots=True)
class Published:
    version: int
    size: int
    removed_handlers: tuple[str, ...]
    ended_sessions: int
    moved_cases: int
    stranded_cases: int


def _key_ids(obj: JsonObject, name: str) -> tuple[str, ...]:
    out = []
    for value in get_list(obj, name):
        if not isinstance(value, str) or not _KEY_ID.fullmatch(value):
            raise ProtocolViolation(f"the server sent a malformed {name} list")
        out.append(value)
    return tuple(out)


def _summary(value: JsonValue) -> ProposalSummary:
    obj = as_obj(value, "proposal")
    pid = get_str(obj, "id", max_len=32)
    state = get_str(obj, "state", max_len=16)
    if not _PROPOSAL_ID.fullmatch(pid) or state not in STATES:
        raise ProtocolViolation("the server sent a malformed proposal")
    return ProposalSummary(
        pid,
        get_int(obj, "version"),
        state,
        get_str(obj, "proposer", max_len=64),
        get_str(obj, "day", max_len=10),
        _key_ids(obj, "signers"),
        _key_ids(obj, "head_signers"),
    )


def check_proposal_id(value: str) -> str:
    if not _PROPOSAL_ID.fullmatch(value):
        raise UsageError("a proposal id is 32 hexadecimal digits")
    return value


class AdminClient(StaffClient):
    """The staff API as an admin. Use as ``async with``; log in first or pass a saved token."""

    async def __aenter__(self) -> AdminClient:
        await super().__aenter__()
        return self

    async def invite(self, username: str, role: str, onion_key: str | None = None) -> tuple[str, int]:
        body: dict[str, JsonValue] = {"username": username, "role": role}
        if onion_key is not None:
            body["onion_key"] = onion_key
        answer = expect_json(
            await self.call(
                "POST",
                self.url("admin", "invitations"),
                expect=(201,),
                want="json",
                limit=LIMIT_SMALL,
                headers=self._auth(),
                json_body=body,
            )
        )
        return get_str(answer, "invitation", max_len=64), get_int(answer, "expires")

    async def propose(self, directory: Directory) -> ProposalSummary:
        answer = await self.call(
            "POST",
            self.url("admin", "proposals"),
            expect=(201,),
            want="json",
            limit=LIMIT_SMALL,
            headers=self._auth(),
            json_body={"directory": directory.to_json()},
        )
        return _summary(expect_json(answer))

    async def proposals(self) -> tuple[ProposalSummary, ...]:
        answer = expect_json(
            await self.call(
                "GET",
                self.url("admin", "proposals"),
                expect=(200,),
                want="json",
                limit=LIMIT_SMALL,
                headers=self._auth(),
            )
        )
        return tuple(_summary(v) for v in get_list(answer, "proposals"))

    async def proposal(self, proposal_id: str) -> ProposalDetail:
        answer = expect_json(
            await self.call(
                "GET",
                self.url("admin", "proposals", check_proposal_id(proposal_id)),
                expect=(200,),
                want="json",
                limit=LIMIT_PROPOSAL,
                headers=self._auth(),
            )
        )
        summary = _summary(answer)
        if "directory" not in answer:
            raise ProtocolViolation("the proposal has no directory")
        directory = Directory.from_json(answer["directory"])
        # Re-encoding must give the same bytes, or the server sent something non-canonical.
        if canonical_json(directory.to_json()) != canonical_json(answer["directory"]):
            raise ProtocolViolation("the proposed directory is not in canonical form")
        signed = None
        if "signed_directory" in answer:
            signed = SignedDirectory.from_bytes(canonical_json(answer["signed_directory"]))
        head = TreeHead.from_json(answer["head"]) if "head" in answer else None
        return ProposalDetail(summary, directory, signed, head)

    async def add_signature(self, proposal_id: str, signature: Signature) -> ProposalSummary:
        answer = await self.call(
            "POST",
            self.url("admin", "proposals", check_proposal_id(proposal_id), "signatures"),
            expect=(200,),
            want="json",
            limit=LIMIT_SMALL,
            headers=self._auth(),
            json_body={"signature": signature.to_json()},
        )
        return _summary(expect_json(answer))

    async def publish(self, proposal_id: str) -> Published:
        answer = expect_json(
            await self.call(
                "POST",
                self.url("admin", "proposals", check_proposal_id(proposal_id), "publish"),
                expect=(200,),
                want="json",
                limit=LIMIT_SMALL,
                headers=self._auth(),
                json_body={},
            )
        )
        removed = tuple(v for v in get_list(answer, "removed_handlers") if isinstance(v, str))
        return Published(
            get_int(answer, "version"),
            get_int(answer, "size"),
            removed,
            get_int(answer, "ended_sessions"),
            get_int(answer, "moved_cases"),
            get_int(answer, "stranded_cases"),
        )
