"""What the integration app shares between requests, under one typed AppKey."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from safepassage.crypto.directory import Directory
from safepassage.crypto.keys import SigningKey
from safepassage.crypto.staffmsg import IntegrationReceipt

from ..db.engine import Store
from .config import IntegrationConfig
from .directory import DirectoryKeeper


@dataclass
class IntegrationService:
    config: IntegrationConfig
    store: Store
    signing_key: SigningKey
    keeper: DirectoryKeeper

    def directory(self) -> Directory:
        """The verified directory to check a delivery against (503 when there is none fit to use)."""
        return self.keeper.current()

    def receipt(self, package_id: str, envelope_hash: bytes, day: str) -> IntegrationReceipt:
        return IntegrationReceipt.issue(self.signing_key, package_id, envelope_hash, day)


INTEGRATION = web.AppKey("integration", IntegrationService)


def service_of(request: web.Request) -> IntegrationService:
    return request.app[INTEGRATION]
