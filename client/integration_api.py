"""HTTP client for delivering escalation packages (docs/openapi/integration.yaml, protocol 17.2).

The integration service cannot read a package: it checks the handler's
delivery signature against its directory, stores the sealed envelope and its
chunks, and answers with a receipt signed by the directory's integration
signing key. The receipt is parsed here and verified by the caller
(:func:`safepassage.client.handler.escalate`) before anything is recorded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from safepassage.crypto.encoding import JsonObject, b64e
from safepassage.crypto.errors import MalformedInput
from safepassage.crypto.keys import SIGNATURE_LEN
from safepassage.crypto.staffmsg import IntegrationReceipt

from .errors import ProtocolViolation, UsageError
from .http import UPLOAD_TIMEOUT
from .intake_api import UploadToken
from .transport import LIMIT_SMALL, Transport, expect_json
from .wire import ID

INTEGRATION_PREFIX: Final = "/integration/v1"
_HANDLER = re.compile(r"[a-z][a-z0-9-]{0,63}")


@dataclass(frozen=True, slots=True)
class PackageAnswer:
    """POST /packages and POST /packages/{id}/finalise."""

    package_id: str
    status: Literal["complete", "pending"]
    receipt: IntegrationReceipt | None
    upload_token: UploadToken | None


def _members(obj: JsonObject, what: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    keys = set(obj)
    if not set(required) <= keys or not keys <= set(required) | set(optional):
        raise ProtocolViolation(f"{what} does not have the documented fields")


def _receipt(obj: JsonObject) -> IntegrationReceipt:
    try:
        return IntegrationReceipt.from_json(obj["receipt"])
    except (MalformedInput, TypeError) as exc:
        raise ProtocolViolation("the integration receipt has an invalid form") from exc


def package_answer(obj: JsonObject) -> PackageAnswer:
    _members(obj, "package answer", ("package", "status"), ("receipt", "upload_token"))
    package = obj.get("package")
    if not isinstance(package, str) or not ID.fullmatch(package):
        raise ProtocolViolation("field 'package' has an invalid form")
    status = obj.get("status")
    if status == "complete":
        if "receipt" not in obj or "upload_token" in obj:
            raise ProtocolViolation("a complete package must come with a receipt and no upload token")
        return PackageAnswer(package, "complete", _receipt(obj), None)
    if status == "pending":
        token = obj.get("upload_token")
        if "receipt" in obj or not isinstance(token, str):
            raise ProtocolViolation("a pending package must come with an upload token and no receipt")
        return PackageAnswer(package, "pending", None, UploadToken(token))
    raise ProtocolViolation("field 'status' must be 'complete' or 'pending'")


class IntegrationClient(Transport):
    """One network identity delivering to the integration service. Use as ``async with``."""

    def __init__(self, server: str, *, socks: str | None = None, allow_direct: bool = False) -> None:
        super().__init__(server, INTEGRATION_PREFIX, socks=socks, allow_direct=allow_direct)

    async def __aenter__(self) -> IntegrationClient:
        await super().__aenter__()
        return self

    async def deliver(
        self, *, handler_id: str, package_id: str, signature: bytes, envelope: bytes, attachments: int
    ) -> PackageAnswer:
        if not _HANDLER.fullmatch(handler_id) or not ID.fullmatch(package_id) or len(signature) != SIGNATURE_LEN:
            raise UsageError("handler id, package id or signature has an invalid form")
        if not 0 <= attachments <= 64:
            raise UsageError("at most 64 attachments")
        answer = await self.call(
            "POST",
            self.url("packages"),
            expect=(201,),
            want="json",
            limit=LIMIT_SMALL,
            params={"attachments": str(attachments)},
            headers={
                "Safe-Passage-Handler": handler_id,
                "Safe-Passage-Package": package_id,
                "Safe-Passage-Signature": b64e(signature),
            },
            body=envelope,
            timeout=UPLOAD_TIMEOUT,
        )
        result = package_answer(expect_json(answer))
        if result.package_id != package_id:
            raise ProtocolViolation("the service answered for another package")
        if (result.status == "pending") != (attachments > 0):
            raise ProtocolViolation("a package stays pending exactly when it has attachments to upload")
        return result

    async def upload_chunk(
        self, package_id: str, attachment: int, index: int, frame: bytes, token: UploadToken
    ) -> None:
        if not ID.fullmatch(package_id) or not 0 <= attachment < 64 or not 0 <= index < 2**20:
            raise UsageError("package id, attachment or chunk index out of range")
        await self.call(
            "PUT",
            self.url("packages", package_id, "attachments", str(attachment), "chunks", str(index)),
            expect=(200, 201, 204),
            want="empty",
            limit=LIMIT_SMALL,
            headers={"Safe-Passage-Upload": token.reveal()},
            body=frame,
            timeout=UPLOAD_TIMEOUT,
        )

    async def finalise(self, package_id: str, token: UploadToken) -> PackageAnswer:
        if not ID.fullmatch(package_id):
            raise UsageError("package id has an invalid form")
        answer = await self.call(
            "POST",
            self.url("packages", package_id, "finalise"),
            expect=(200,),
            want="json",
            limit=LIMIT_SMALL,
            headers={"Safe-Passage-Upload": token.reveal()},
        )
        result = package_answer(expect_json(answer))
        if result.status != "complete" or result.package_id != package_id:
            raise ProtocolViolation("finalising did not complete this package")
        return result


__all__ = ["INTEGRATION_PREFIX", "IntegrationClient", "PackageAnswer", "package_answer"]
