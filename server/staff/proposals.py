"""Directory changes co-signed by M admins through the staff API (docs/protocol.md, section 19).

A proposal is a complete next directory. Admins sign it, each after checking
a readable diff on their own machine; once the signatures meet the admin
set(s) that 7.4 requires, the server freezes the signed directory as it will
stand in the log and the tree head of the log with it appended. Admins then
sign that head, and any admin publishes. The server signs nothing: it only
collects signatures that verify and refuses what a client would refuse, so a
planted admin (or the server itself) can neither add a handler alone nor
publish a head the admins did not sign.
"""

from __future__ import annotations

import secrets
from typing import Final

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from safepassage.crypto import labels as L
from safepassage.crypto.directory import Directory, SignedDirectory, verify_genesis, verify_successor
from safepassage.crypto.encoding import JsonObject, JsonValue, as_obj, canonical_json, parse_canonical_json
from safepassage.crypto.errors import BadSignature, BelowThreshold, SafePassageError
from safepassage.crypto.keys import VerifyKey
from safepassage.crypto.threshold import Signature, signatures_from_json
from safepassage.crypto.translog import MerkleLog, SignedTreeHead, TreeHead

from ..db.models import DirectoryProposal
from ..directory_store import MAX_HEAD_BYTES, Published, PublishRefused, load_in, publish_in
from ..errors import ApiError, from_crypto
from .accounts import PREFIX
from .auth import admin_caller
from .body import path_id, read_json
from .context import Staff, staff_of

routes = web.RouteTableDef()

#: A directory is at most 4 MiB (7.2); its JSON in a request body a little more.
MAX_PROPOSAL_BODY: Final = 4 * 1024 * 1024 + 4096
#: Proposals being signed at once; more is a mistake or an attack on storage.
MAX_OPEN_PROPOSALS: Final = 16
#: ... and by one admin account (a planted admin must not fill every slot).
MAX_OPEN_PER_ADMIN: Final = 4
OPEN_STATES: Final = ("signing", "head")


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "No such proposal.")


def _sigs(raw: bytes) -> tuple[Signature, ...]:
    return signatures_from_json(parse_canonical_json(raw, max_len=MAX_HEAD_BYTES))


def _encode_sigs(sigs: tuple[Signature, ...]) -> bytes:
    return canonical_json([s.to_json() for s in sorted(sigs, key=lambda s: s.key_id.raw)])


def _directory(row: DirectoryProposal) -> Directory:
    return Directory.from_json(parse_canonical_json(row.directory, max_len=len(row.directory)))


def _summary(row: DirectoryProposal) -> JsonObject:
    return {
        "id": row.id,
        "version": row.base_version + 1,
        "state": row.state,
        "proposer": row.proposer,
        "day": row.created_day.isoformat(),
        "signers": [s.key_id.hex() for s in _sigs(row.signatures)],
        "head_signers": [s.key_id.hex() for s in _sigs(row.head_signatures)],
    }


def _detail(row: DirectoryProposal) -> JsonObject:
    out = _summary(row)
    out["directory"] = parse_canonical_json(row.directory, max_len=len(row.directory))
    # Members appear once they exist (canonical JSON has no null).
    if row.entry is not None:
        out["signed_directory"] = parse_canonical_json(row.entry, max_len=len(row.entry))
    if row.head is not None:
        out["head"] = parse_canonical_json(row.head, max_len=len(row.head))
    return out


def _current_version(published: Published | None) -> int:
    return published.directory.version if published is not None else 0


async def _load_open(session: AsyncSession, proposal_id: str) -> tuple[DirectoryProposal, Published | None]:
    """The proposal, locked, with the published state it must still extend."""
    current = await load_in(session, for_update=True)
    row = await session.get(DirectoryProposal, proposal_id, with_for_update=True)
    if row is None:
        raise _not_found()
    if row.state == "stale":
        raise ApiError(409, "stale_proposal", "Another directory version was published first; propose again.")
    if row.state not in OPEN_STATES:
        raise ApiError(409, "proposal_closed", f"This proposal is {row.state}.")
    if row.base_version != _current_version(current):
        # Publication marks overtaken proposals stale in its own transaction (directory_store).
        raise ApiError(409, "stale_proposal", "Another directory version was published first; propose again.")
    return row, current


def _complete(staff: Staff, current: Published | None, signed: SignedDirectory) -> bool:
    """Whether the signatures meet every admin set 7.4 requires of this directory."""
    try:
        if current is None:
            verify_genesis(signed, staff.config.org_fingerprint)
        else:
            verify_successor(current.directory, signed)
    except BelowThreshold:
        return False
    return True


def _freeze(row: DirectoryProposal, current: Published | None, signed: SignedDirectory, now: int) -> None:
    """Fix the log entry and the head of the log with it appended; admins sign this head next."""
    entry = signed.to_bytes()
    log = MerkleLog(current.log.leaf_hashes() if current else ())
    log.append(entry)
    # A head must not be older than the one served (the publication check refuses it).
    timestamp = max(now, current.head.head.timestamp if current else 0)
    row.entry = entry
    row.head = canonical_json(log.head(timestamp).to_json())
    row.state = "head"


def _signature(body: JsonObject) -> Signature:
    try:
        return Signature.from_json(body["signature"])
    except SafePassageError as exc:
        raise from_crypto(exc, 400, "malformed_signature") from None


def _check_signer(key: VerifyKey | None, purpose: bytes, message: bytes, sig: Signature) -> None:
    if key is None:
        raise ApiError(422, "not_an_admin", "That key is not in the admin set that must sign at this stage.")
    try:
        key.verify(purpose, message, sig.signature)
    except BadSignature:
        raise ApiError(422, "bad_signature", "The signature does not verify for this proposal.") from None


@routes.post(PREFIX + "/admin/proposals", name="staff_admin_propose")
async def propose(request: web.Request) -> web.Response:
    caller = await admin_caller(request)
    body = await read_json(request, ("directory",), limit=MAX_PROPOSAL_BODY)
    try:
        directory = Directory.from_json(as_obj(body["directory"], "directory"))
    except SafePassageError as exc:
        raise from_crypto(exc, 400, "malformed_directory") from None
    staff = staff_of(request)
    if directory.receipt_key not in (staff.receipt_key, staff.next_receipt_key()):
        raise ApiError(422, "wrong_receipt_key", "The directory must name this server's receipt key (current or next).")
    async with staff.store.write() as session:
        current = await load_in(session, for_update=True)
        base = _current_version(current)
        if directory.version != base + 1:
            raise ApiError(
                422,
                "wrong_version",
                f"The next directory must have version {base + 1} (a proposal for an old one is refused).",
            )
        if current is None and directory.admins.fingerprint() != staff.config.org_fingerprint:
            raise ApiError(
                422, "untrusted_root", "The first directory's admins must match the organisation fingerprint."
            )
        pending = (
            select(func.count())
            .select_from(DirectoryProposal)
            .where(DirectoryProposal.state.in_(OPEN_STATES), DirectoryProposal.base_version == base)
        )
        mine = await session.scalar(pending.where(DirectoryProposal.proposer == caller.username))
        if (mine or 0) >= MAX_OPEN_PER_ADMIN:
            message = f"You have {MAX_OPEN_PER_ADMIN} proposals open for this version already."
            raise ApiError(429, "too_many_proposals", message)
        if (await session.scalar(pending) or 0) >= MAX_OPEN_PROPOSALS:
            raise ApiError(
                429, "too_many_proposals", "Too many proposals are open; publish or let them go stale first."
            )
        row = DirectoryProposal(
            id=secrets.token_hex(16),
            base_version=base,
            state="signing",
            proposer=caller.username,
            created_day=staff.today(),
            directory=directory.signed_bytes(),
            signatures=b"[]",
            head_signatures=b"[]",
        )
        session.add(row)
        await staff.audit(session, caller.username, "propose", detail=f"directory version {directory.version}")
        result = _summary(row)
    return web.json_response(result, status=201)


@routes.get(PREFIX + "/admin/proposals", name="staff_admin_proposals")
async def list_proposals(request: web.Request) -> web.Response:
    await admin_caller(request)
    async with staff_of(request).store.read() as session:
        rows = (
            await session.scalars(
                select(DirectoryProposal)
                .where(DirectoryProposal.state.in_(OPEN_STATES))
                .order_by(DirectoryProposal.base_version, DirectoryProposal.id)
            )
        ).all()
        result = [_summary(r) for r in rows]
    return web.json_response({"proposals": result})


@routes.get(PREFIX + "/admin/proposals/{proposal_id}", name="staff_admin_proposal")
async def get_proposal(request: web.Request) -> web.Response:
    await admin_caller(request)
    proposal_id = path_id(request, "proposal_id")
    async with staff_of(request).store.read() as session:
        row = await session.get(DirectoryProposal, proposal_id)
        if row is None:
            raise _not_found()
        result = _detail(row)
    return web.json_response(result)


@routes.post(PREFIX + "/admin/proposals/{proposal_id}/signatures", name="staff_admin_sign")
async def add_signature(request: web.Request) -> web.Response:
    """Add a directory signature (state ``signing``) or a tree-head signature (state ``head``)."""
    caller = await admin_caller(request)
    proposal_id = path_id(request, "proposal_id")
    sig = _signature(await read_json(request, ("signature",)))
    staff = staff_of(request)
    async with staff.store.write() as session:
        row, current = await _load_open(session, proposal_id)
        directory = _directory(row)
        if row.state == "signing":
            # Old admins approve the change; new admins (if the set changes) accept it.
            signer = directory.admins.member(sig.key_id) or (
                current.directory.admins.member(sig.key_id) if current else None
            )
            _check_signer(signer, L.SIG_DIRECTORY, directory.signed_bytes(), sig)
            others = tuple(s for s in _sigs(row.signatures) if s.key_id != sig.key_id)
            sigs = (*others, sig)
            row.signatures = _encode_sigs(sigs)
            signed = SignedDirectory(directory, tuple(sorted(sigs, key=lambda s: s.key_id.raw)))
            stage = "directory"
            if _complete(staff, current, signed):
                _freeze(row, current, signed, staff.now())
        else:
            head = TreeHead.from_json(parse_canonical_json(row.head or b"", max_len=MAX_HEAD_BYTES))
            _check_signer(directory.admins.member(sig.key_id), L.SIG_TREE_HEAD, head.signed_bytes(), sig)
            others = tuple(s for s in _sigs(row.head_signatures) if s.key_id != sig.key_id)
            row.head_signatures = _encode_sigs((*others, sig))
            stage = "head"
        await staff.audit(
            session,
            caller.username,
            "sign",
            detail=f"directory version {directory.version} {stage} by key {sig.key_id.hex()[:16]}",
        )
        await session.flush()
        result = _summary(row)
    return web.json_response(result)


@routes.post(PREFIX + "/admin/proposals/{proposal_id}/publish", name="staff_admin_publish")
async def publish_proposal(request: web.Request) -> web.Response:
    caller = await admin_caller(request)
    proposal_id = path_id(request, "proposal_id")
    await read_json(request, ())
    staff = staff_of(request)
    async with staff.store.write() as session:
        row, _current = await _load_open(session, proposal_id)
        if row.state != "head" or row.entry is None or row.head is None:
            raise ApiError(409, "not_ready", "Not enough admins have signed the directory yet.")
        head = TreeHead.from_json(parse_canonical_json(row.head, max_len=MAX_HEAD_BYTES))
        signed_head = SignedTreeHead(head, _sigs(row.head_signatures))
        directory = _directory(row)
        try:
            signed_head.verify(directory.admins)
        except BelowThreshold:
            raise ApiError(409, "not_ready", "Not enough admins have signed the tree head yet.") from None
        try:
            effects = await publish_in(
                session,
                SignedDirectory.from_bytes(row.entry),
                signed_head,
                org_fingerprint=staff.config.org_fingerprint,
                receipt_key=staff.receipt_key,
                next_receipt_key=staff.next_receipt_key(),
                now=staff.now(),
            )
        except PublishRefused as exc:
            raise ApiError(409, "publish_refused", exc.message) from None
        except IntegrityError:
            # Another publication of this version won the race (the log index is a primary key).
            raise ApiError(409, "stale_proposal", "Another directory version was published first.") from None
        row.state = "published"
        await staff.audit(session, caller.username, "publish", detail=effects.summary(directory.version))
        result: dict[str, JsonValue] = {
            "version": directory.version,
            "size": head.size,
            "removed_handlers": list(effects.removed_handlers),
            "ended_sessions": effects.ended_sessions,
            "moved_cases": effects.moved_cases,
            "stranded_cases": effects.stranded_cases,
        }
    await staff.refresh()
    return web.json_response(result)
