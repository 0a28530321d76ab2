"""What the integration app shares between requests, under one typed AppKey."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from safepassage.crypto.directory import Directory
from safepassage.crypto.keys import SigningKey, VerifyKey
from safepassage.crypto.staffmsg import IntegrationReceipt

from ..db.engine import Store
from .config import IntegrationConfig
from .directory import DirectoryKeeper
from .keys import next_signing_key_waiting, promote_signing_key


@dataclass
class IntegrationService:
    config: IntegrationConfig
    store: Store
    signing_key: SigningKey
    keeper: DirectoryKeeper

    def directory(self) -> Directory:
        """The verified directory to check a delivery against (503 when there is none fit to use)."""
        return self.keeper.current()

    async def receipt(self, package_id: str, envelope_hash: bytes, day: str) -> IntegrationReceipt:
        """Signed with the key the newest directory lists. While a rotation waits, the directory is
        read again first, so a receipt is never signed with a key the admins just replaced."""
        if await asyncio.to_thread(next_signing_key_waiting, self.config.keys_dir):
            await self.keeper.refresh()
        return IntegrationReceipt.issue(self.signing_key, package_id, envelope_hash, day)

    def follow_signing_key(self, listed: VerifyKey) -> bool:
        """A directory lists ``listed``: switch to it if it is this service's waiting next key."""
        key = promote_signing_key(self.config.keys_dir, listed)
        if key is None:
            return False
        self.signing_key = key
        return True


INTEGRATION = web.AppKey("integration", IntegrationService)


def service_of(request: web.Request) -> IntegrationService:
    return request.app[INTEGRATION]
