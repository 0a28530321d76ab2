"""The log for auditors and witnesses: stored heads, inclusion and consistency proofs, cosignatures (8).

The directory endpoint gives an applicant what it needs (the newest entry, its
inclusion, a consistency proof from the size it remembers). An auditor or a
witness also asks for any published head, and for proofs between any sizes.

Witness cosignatures on tree heads (docs/protocol.md, 8.8).

A witness is an independent party that follows the log, checks each new head
against the last one it cosigned (no fork, no rollback) and sends its
cosignature here. The server only stores cosignatures from the witnesses its
operator configured (``witness_keys``) that verify over a head it serves;
clients that pin those witnesses then refuse a head without K of them, so a
split view also needs K colluding witnesses.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from safepassage.crypto import labels as L
from safepassage.crypto.encoding import JsonObject, canonical_json
from safepassage.crypto.errors import BadSignature, SafePassageError
from safepassage.crypto.threshold import Signature
from safepassage.crypto.translog import MAX_TREE_SIZE, SignedTreeHead

from .context import intake_of
from .db.models import TreeHeadRecord
from .directory_store import parse_signed_head
from .errors import ApiError, bad_request, from_crypto
from .inputs import path_int, query_int
from .staff.body import read_json

routes = web.RouteTableDef()

MAX_BODY: Final = 1024


@routes.get("/api/v1/log/heads/{size}", name="log_head")
async def get_head(request: web.Request) -> web.Response:
    app = intake_of(request)
    size = path_int(request, "size", MAX_TREE_SIZE)
    async with app.store.read() as session:
        row = await session.get(TreeHeadRecord, size)
    if row is None:
        raise ApiError(404, "no_such_head", "No tree head of that size was published.")
    return web.Response(body=row.signed_head, content_type="application/json")


def _sizes(request: web.Request, first: str, second: str, size: int) -> tuple[int, int]:
    a = query_int(request, first, default=None, maximum=MAX_TREE_SIZE)
    b = query_int(request, second, default=None, maximum=MAX_TREE_SIZE)
    if b > size:
        raise ApiError(404, "beyond_log", f"The log has {size} entries.")
    return a, b


@routes.get("/api/v1/log/proof/inclusion", name="log_inclusion")
async def get_inclusion(request: web.Request) -> web.Response:
    """The inclusion proof (8.3) of entry ``index`` in the tree of the first ``size`` entries."""
    log = intake_of(request).published().log
    index, size = _sizes(request, "index", "size", log.size)
    if not index < size:
        raise bad_request("Ask with 0 <= index < size.", "bad_range")
    proof = log.inclusion_proof(index, size)
    return web.json_response({"index": index, "size": size, "proof": [h.hex() for h in proof]})


@routes.get("/api/v1/log/proof/consistency", name="log_consistency")
async def get_consistency(request: web.Request) -> web.Response:
    """The consistency proof (8.4) from the tree of ``first`` entries to the tree of ``second``."""
    log = intake_of(request).published().log
    first, second = _sizes(request, "first", "second", log.size)
    if not 0 < first <= second:
        raise bad_request("Ask with 0 < first <= second.", "bad_range")
    proof = log.consistency_proof(first, second)
    return web.json_response({"first": first, "second": second, "proof": [h.hex() for h in proof]})


def _body(value: JsonObject) -> tuple[int, Signature]:
    size = value["size"]
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 2**53 - 1:
        raise bad_request("'size' must be a positive integer.")
    try:
        return size, Signature.from_json(value["signature"])
    except SafePassageError as exc:
        raise from_crypto(exc, 400, "malformed_signature") from None


@routes.post("/api/v1/log/cosignatures", name="cosign")
async def add_cosignature(request: web.Request) -> web.Response:
    app = intake_of(request)
    if not app.witness_keys:
        raise ApiError(404, "no_witnesses", "This server is configured with no witnesses.")
    app.cosign_limit.hit()
    size, sig = _body(await read_json(request, ("size", "signature"), limit=MAX_BODY))
    witness = next((k for k in app.witness_keys if k.key_id == sig.key_id), None)
    if witness is None:
        raise ApiError(422, "unknown_witness", "That key is not one of this server's witnesses.")
    published = app.published()
    if size > published.log.size:
        raise ApiError(404, "no_such_head", "No tree head of that size was published.")
    if size == published.head.head.size and sig in published.head.witness_signatures:
        # A replay of what is stored already: answered without a write.
        return web.json_response({"size": size, "witness_signatures": len(published.head.witness_signatures)})
    async with app.store.write() as session:
        row = await session.get(TreeHeadRecord, size, with_for_update=True)
        if row is None:
            raise ApiError(404, "no_such_head", "No tree head of that size was published.")
        signed = parse_signed_head(row.signed_head)
        try:
            witness.verify(L.SIG_WITNESS, signed.head.signed_bytes(), sig.signature)
        except BadSignature:
            raise ApiError(422, "bad_signature", "The cosignature does not verify over that head.") from None
        others = tuple(s for s in signed.witness_signatures if s.key_id != sig.key_id)
        cosigned = SignedTreeHead(
            signed.head, signed.signatures, tuple(sorted((*others, sig), key=lambda s: s.key_id.raw))
        )
        row.signed_head = canonical_json(cosigned.to_json())
        count = len(cosigned.witness_signatures)
    await app.refresh()
    return web.json_response({"size": size, "witness_signatures": count})
