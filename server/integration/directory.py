"""The directory the integration service trusts, and how it stays current.

The service believes no one's word about who the handlers are: it fetches the
directory from the public intake like any client and accepts it only through
:func:`~safepassage.client.trust.fetch_trusted_directory` (pinned organisation
fingerprint, admin signatures along the whole chain, the transparency log's
proofs), remembering the last accepted head in ``DATA/directory-state.json`` so
that a fork or a rollback is caught across restarts (docs/protocol.md, 7.4 and
8.7). Deliveries are checked against the newest directory verified this way.

What happens when a refresh fails depends on why:

* the intake cannot be reached, or refuses: the last verified directory stays
  in use until it is ``max_age`` seconds old, then deliveries are refused
  (503) until a refresh succeeds. This bounds how long somebody who blocks the
  service's view of the intake can keep a revoked handler able to deliver;
* a fork or a rollback of the log: the service stops accepting deliveries for
  the rest of the process's life (the protocol forbids continuing) and logs it;
  the operator must investigate before restarting;
* any other failed check (a bad signature or proof, a directory that does not
  name this service's signing key): the directory is dropped at once, and the
  next refresh may bring a good one. A directory that names the service's
  waiting next signing key (``integration rotate-signing-key``) completes that
  rotation instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from safepassage.client.errors import ServerRefused, ServerUnreachable
from safepassage.client.trust import HeadState, fetch_trusted_directory
from safepassage.crypto.directory import Directory
from safepassage.crypto.errors import Fork, Rollback, SafePassageError
from safepassage.crypto.keys import VerifyKey

from ..errors import ApiError
from .config import IntegrationConfig

log = logging.getLogger("safepassage.integration")


class DirectorySource(Protocol):
    """Where the service gets its directory; ``fetch`` returns one only after every check passed."""

    async def fetch(self) -> Directory: ...


@dataclass(frozen=True, slots=True)
class IntakeDirectorySource:
    """The intake's current directory, verified against the pinned organisation and the remembered head.

    With ``remember`` (the service) the accepted head is saved for the next
    fetch; without it (the officer's ``read``) the remembered head is only
    checked against, so the running service stays the file's one writer.
    """

    config: IntegrationConfig
    remember: bool = True

    async def fetch(self) -> Directory:
        path = self.config.state_path
        state = HeadState.load(path)
        async with self.config.intake_client() as client:
            trusted = await fetch_trusted_directory(
                client, self.config.org_fingerprint, state, int(time.time()), witnesses=self.config.witnesses()
            )
        if self.remember:
            # 8.7 step 4: remember the head only after every check passed.
            trusted.state.save(path)
        return trusted.directory


@dataclass
class DirectoryKeeper:
    """The newest verified directory, or why there is none; refreshed by :meth:`refresh`."""

    source: DirectorySource
    #: This service's receipt key: a directory that names another cannot vouch for our receipts.
    signing_key: VerifyKey
    max_age: float
    clock: Callable[[], float] = time.monotonic
    #: Called with a listed key that is not ours: True when the service switched to it (its waiting next key).
    follow_key: Callable[[VerifyKey], bool] | None = None
    _directory: Directory | None = field(default=None, repr=False)
    _verified_at: float = 0.0
    _halted: str = ""

    def current(self) -> Directory:
        """The directory to check a delivery against; 503 when there is none fit to use."""
        if self._halted:
            raise ApiError(
                503, "directory_untrusted", "The service stopped trusting the directory; it needs an operator."
            )
        if self._directory is None or self.clock() - self._verified_at > self.max_age:
            raise ApiError(503, "no_directory", "The service has no current verified directory; try again later.")
        return self._directory

    async def refresh(self) -> None:
        """Fetch and verify the directory once; never raises (the reason is logged, by type and public detail)."""
        if self._halted:
            return
        try:
            directory = await self.source.fetch()
        except (Fork, Rollback) as exc:
            self._directory = None
            self._halted = type(exc).__name__
            log.critical("directory refresh: %s; refusing every delivery until an operator restarts", exc.message)
            return
        except (ServerUnreachable, ServerRefused) as exc:
            # Keep the last verified directory until it is too old (see the module docstring).
            log.warning("directory refresh: intake not available: %s", exc.message)
            return
        except SafePassageError as exc:
            self._directory = None
            log.error("directory refresh: %s: %s", type(exc).__name__, exc.message)
            return
        except Exception as exc:  # a failed round must not stop the next one
            log.error("directory refresh failed: %s", type(exc).__name__)
            return
        listed = directory.integration.signing_key
        if listed != self.signing_key:
            try:
                followed = self.follow_key is not None and await asyncio.to_thread(self.follow_key, listed)
            except Exception as exc:  # an unreadable key file: logged by type, and this round fails
                log.error("switching to the next signing key failed: %s", type(exc).__name__)
                followed = False
            if not followed:
                self._directory = None
                log.error("directory version %d does not list this service's signing key", directory.version)
                return
            self.signing_key = listed
            log.warning(
                "directory version %d lists the next signing key: receipts are signed with it", directory.version
            )
        self._directory = directory
        self._verified_at = self.clock()
