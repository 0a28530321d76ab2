"""The integration API (docs/openapi/integration.yaml; docs/protocol.md, section 17).

A handler delivers a sealed escalation envelope with its signature over the
delivery; attachments follow as chunk frames, in order, with the upload token
the delivery returned, as on the intake (section 5, 15.5). The service cannot
open anything it stores: it checks form, the delivering handler against the
verified directory and the handler's signature, and refuses replays. Every
check runs before anything is written, the writes of one request are one
transaction, and a receipt is signed only after the package is committed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import time

from aiohttp import web
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from safepassage.crypto import envelope as E
from safepassage.crypto.directory import MAX_INTEGRATION_KEYS, Directory
from safepassage.crypto.errors import BadSignature, SafePassageError
from safepassage.crypto.keys import SIGNATURE_LEN
from safepassage.crypto.staffmsg import verify_delivery

from ..errors import ApiError, bad_request, from_crypto
from ..inputs import (
    check_chunk_order,
    header_bytes,
    path_int,
    query_int,
    read_binary,
    read_chunk_frame,
    round_up_hour,
    token_hash,
)
from .context import IntegrationService, service_of
from .models import Package, PackageChunk

routes = web.RouteTableDef()

PREFIX = "/integration/v1"
HANDLER_HEADER = "Safe-Passage-Handler"
PACKAGE_HEADER = "Safe-Passage-Package"
SIGNATURE_HEADER = "Safe-Passage-Signature"
UPLOAD_HEADER = "Safe-Passage-Upload"
#: Largest escalation envelope: the biggest bucket sealed to every integration key a directory may list.
MAX_ENVELOPE = E.envelope_length(len(E.BUCKETS) - 1, MAX_INTEGRATION_KEYS)
_HANDLER = re.compile(r"[a-z][a-z0-9-]{0,63}")
_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _header_text(request: web.Request, name: str, pattern: re.Pattern[str]) -> str:
    raw = request.headers.get(name, "")
    if not pattern.fullmatch(raw):
        raise bad_request(f"{name} is missing or malformed.")
    return raw


def _package_id(request: web.Request) -> str:
    raw = request.match_info["package_id"]
    if not _ID.fullmatch(raw):
        raise bad_request("Malformed package id.")
    return raw


def _listed_handler(directory: Directory, handler_id: str) -> None:
    if handler_id not in {h.handler_id for h in directory.handlers}:
        raise ApiError(
            403, "unknown_handler", "This handler is not in the service's current directory (unknown or revoked)."
        )


def _check_envelope(directory: Directory, data: bytes) -> None:
    try:
        header = E.parse_header(data)
    except SafePassageError as exc:
        raise from_crypto(exc, 400, "malformed_envelope") from None
    if header.purpose != E.Purpose.ESCALATION:
        raise bad_request("Expected an envelope of purpose escalation.", "wrong_purpose")
    if set(header.recipient_ids) != {k.key_id.raw for k in directory.integration.encryption_keys}:
        raise ApiError(
            422,
            "recipients_mismatch",
            "The package must be sealed to exactly the directory's integration encryption keys.",
        )


async def _receipt_answer(service: IntegrationService, package: Package) -> dict[str, object]:
    receipt = await service.receipt(package.id, package.envelope_hash, package.day.isoformat())
    return {"package": package.id, "status": "complete", "receipt": receipt.to_json()}


async def _flush_or_replay(session: AsyncSession) -> None:
    try:
        await session.flush()
    except IntegrityError:
        # Two deliveries raced with one package id or envelope: the loser changes nothing.
        raise ApiError(409, "replayed", "This package was already delivered; nothing was stored.") from None


@routes.post(PREFIX + "/packages", name="deliver_package")
async def deliver_package(request: web.Request) -> web.Response:
    service = service_of(request)
    cfg = service.config
    attachments = query_int(request, "attachments", default=0, maximum=cfg.max_attachments)
    handler_id = _header_text(request, HANDLER_HEADER, _HANDLER)
    package_id = _header_text(request, PACKAGE_HEADER, _ID)
    signature = header_bytes(request, SIGNATURE_HEADER, SIGNATURE_LEN)
    if attachments * E.CHUNK_LEN > cfg.max_package_bytes:
        raise ApiError(413, "package_too_large", "The attachments exceed the size limit for one package.")
    # One directory for the whole request, checked before the body is read: an
    # unknown or revoked handler cannot make the service read 1 MiB first.
    directory = service.directory()
    _listed_handler(directory, handler_id)
    data = await read_binary(request, MAX_ENVELOPE)
    _check_envelope(directory, data)
    try:
        verify_delivery(
            directory, signature, handler_id=handler_id, package_id=package_id, envelope=data, attachments=attachments
        )
    except BadSignature:
        raise ApiError(403, "bad_signature", "The delivery signature does not verify.") from None
    envelope_hash = hashlib.sha256(data).digest()
    token = secrets.token_urlsafe(32) if attachments else None
    package = Package(
        id=package_id,
        handler=handler_id,
        day=_today(),
        state="pending" if attachments else "complete",
        attachments=attachments,
        envelope=data,
        envelope_hash=envelope_hash,
        upload_token_hash=token_hash(token) if token else None,
        upload_expires=round_up_hour(int(time.time()) + 3600 * cfg.upload_window_hours) if token else None,
    )
    async with service.store.write() as session:
        seen = await session.scalar(
            select(func.count())
            .select_from(Package)
            .where(or_(Package.id == package_id, Package.envelope_hash == envelope_hash))
        )
        if seen:
            raise ApiError(409, "replayed", "This package id or envelope was already delivered; nothing was stored.")
        session.add(package)
        await _flush_or_replay(session)
    if token is not None:
        return web.json_response({"package": package_id, "status": "pending", "upload_token": token}, status=201)
    return web.json_response(await _receipt_answer(service, package), status=201)


async def _upload_target(session: AsyncSession, request: web.Request, package_id: str) -> Package:
    token = request.headers.get(UPLOAD_HEADER, "")
    package = await session.get(Package, package_id)
    if package is None:
        raise ApiError(404, "not_found", "No such package.")
    if package.upload_token_hash is None or not secrets.compare_digest(package.upload_token_hash, token_hash(token)):
        raise ApiError(403, "bad_upload_token", f"{UPLOAD_HEADER} is missing or wrong.")
    if package.state == "pending" and (package.upload_expires or 0) <= int(time.time()):
        raise ApiError(409, "upload_expired", "The upload window has closed; deliver the package again.")
    return package


def _check_upload(package: Package, attachment: int) -> None:
    if package.state != "pending":
        raise ApiError(409, "already_complete", "This package is already complete.")
    if attachment >= package.attachments:
        raise bad_request("No such attachment in this package.", "attachment_out_of_range")


@routes.put(PREFIX + "/packages/{package_id}/attachments/{attachment}/chunks/{index}", name="upload_chunk")
async def upload_chunk(request: web.Request) -> web.Response:
    service = service_of(request)
    package_id = _package_id(request)
    attachment = path_int(request, "attachment", E.MAX_ATTACHMENTS - 1)
    index = path_int(request, "index", E.MAX_CHUNKS - 1)
    # Package, token and state first (a cheap read): without the upload token
    # nobody can make the service buffer a 1 MiB body.
    async with service.store.read() as session:
        _check_upload(await _upload_target(session, request, package_id), attachment)
    frame, fields = await read_chunk_frame(request, attachment, index)
    async with service.store.write() as session:
        # Again in the writing transaction: the package may have completed or expired meanwhile.
        _check_upload(await _upload_target(session, request, package_id), attachment)
        last = await session.scalar(
            select(PackageChunk)
            .where(PackageChunk.package_id == package_id, PackageChunk.attachment == attachment)
            .order_by(PackageChunk.index.desc())
            .limit(1)
        )
        check_chunk_order(None if last is None else last.index, last is not None and last.final, index)
        total = await session.scalar(
            select(func.count()).select_from(PackageChunk).where(PackageChunk.package_id == package_id)
        )
        if ((total or 0) + 1) * E.CHUNK_LEN > service.config.max_package_bytes:
            raise ApiError(413, "package_too_large", "The attachments exceed the size limit for one package.")
        session.add(
            PackageChunk(package_id=package_id, attachment=attachment, index=index, final=fields.final, frame=frame)
        )
        try:
            await session.flush()
        except IntegrityError:
            raise ApiError(409, "conflict", "A concurrent request already stored this chunk.") from None
    return web.json_response({"attachment": attachment, "index": index, "final": fields.final}, status=201)


@routes.post(PREFIX + "/packages/{package_id}/finalise", name="finalise_package")
async def finalise_package(request: web.Request) -> web.Response:
    service = service_of(request)
    package_id = _package_id(request)
    async with service.store.write() as session:
        package = await _upload_target(session, request, package_id)
        if package.state == "pending":
            finals = await session.scalar(
                select(func.count())
                .select_from(PackageChunk)
                .where(PackageChunk.package_id == package_id, PackageChunk.final.is_(True))
            )
            if finals != package.attachments:
                raise ApiError(409, "attachments_incomplete", "Every attachment needs its final chunk first.")
            # A handler revoked while its upload ran gets no receipt.
            _listed_handler(service.directory(), package.handler)
            package.state = "complete"
            package.upload_expires = None
    # After the commit. Finalising again with the same token returns the same
    # receipt, so a handler that lost the answer can ask again.
    return web.json_response(await _receipt_answer(service, package))
