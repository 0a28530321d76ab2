"""Integration service settings, read once into a frozen dataclass.

Same sources as the intake's (:mod:`safepassage.server.config`): built-in
defaults, ``DATA/config.toml``, then ``SAFEPASSAGE_INTEGRATION_*`` environment
variables. Key material is never configuration: the service signing key is a
0600 file under ``DATA/keys``, and the officer's keys are in a vault the
service never opens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from safepassage.client.intake_api import IntakeClient
from safepassage.crypto.encoding import b64d
from safepassage.crypto.errors import MalformedInput, SafePassageError
from safepassage.crypto.keys import VerifyKey
from safepassage.crypto.threshold import KeySet
from safepassage.server import tor
from safepassage.server.config import CONFIG_FILE, WITNESS_KEYS, ConfigError, check_tor_settings, load_settings

DB_FILE: Final = "integration.db"
#: The last transparency-log head this service accepted (client/trust.py HeadState).
STATE_FILE: Final = "directory-state.json"
#: The officer's vault with the encryption keys, unless ``--vault`` puts it elsewhere.
VAULT_FILE: Final = "officer.vault"
ENV_PREFIX: Final = "SAFEPASSAGE_INTEGRATION_"
_FINGERPRINT = re.compile(r"(\d{5} ){9}\d{5}")


@dataclass(frozen=True, slots=True)
class IntegrationConfig:
    data_dir: Path
    #: The organisation fingerprint (ten groups of five digits) the directory's first version must match.
    org_fingerprint: str = ""
    #: The public intake's address (http://<onion>), where the directory and its log are fetched.
    intake_url: str = ""
    #: Tor's SOCKS port (socks5://127.0.0.1:9050); required unless the intake is on loopback.
    intake_socks: str = ""
    database_url: str = field(default="", repr=False)  # may carry a password
    host: str = "127.0.0.1"
    port: int = 8090
    #: Attachments per package (the protocol allows 64).
    max_attachments: int = 64
    #: Total size of one package's attachment chunks on the wire.
    max_package_bytes: int = 2 * 1000 * 1000 * 1000
    #: Hours a pending package may take to upload its attachments before it is deleted.
    upload_window_hours: int = 24
    #: Seconds between fetches of the directory from the intake.
    directory_refresh_seconds: int = 300
    #: Deliveries are refused once the directory was last verified longer ago than this.
    directory_max_age_seconds: int = 3600
    #: Comma-separated public keys (base64url) of independent witnesses this service pins: a
    #: directory counts only with a log head they cosigned (protocol 8.6, 8.8).
    witness_keys: str = ""
    #: How many of ``witness_keys`` must have cosigned (0: all of them).
    witnesses_required: int = 0
    #: How this service reaches tor to publish its onion (as the intake's tor_control; server/tor.py).
    tor_control: str = ""
    tor_control_password_file: str = ""
    tor_health_seconds: int = 30

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILE

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    @property
    def vault_path(self) -> Path:
        return self.data_dir / VAULT_FILE

    @property
    def onion_clients_dir(self) -> Path:
        """The handlers' Tor client keys (``<handler>.auth``): only they may reach this service's onion."""
        return self.data_dir / "onion-clients"

    @property
    def onion_key_path(self) -> Path:
        return self.keys_dir / "onion-integration.key"

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.db_path}"

    def witnesses(self) -> KeySet | None:
        """The pinned witness set, or None when no witness is pinned."""
        keys = tuple(VerifyKey(b64d(k, length=32, what="witness key")) for k in self.witness_keys.split(",") if k)
        if not keys:
            return None
        return KeySet(keys, self.witnesses_required or len(keys))

    def intake_client(self) -> IntakeClient:
        """A client for the intake, over Tor when ``intake_socks`` is set (one circuit per client)."""
        return IntakeClient(self.intake_url, socks=self.intake_socks or None)

    def validate(self) -> IntegrationConfig:
        if not _FINGERPRINT.fullmatch(self.org_fingerprint):
            raise ConfigError("org_fingerprint must be ten groups of five digits")
        if not self.intake_url:
            raise ConfigError("intake_url is required: the service verifies the directory the intake publishes")
        try:
            self.intake_client()
        except SafePassageError as exc:
            raise ConfigError(f"intake_url / intake_socks: {exc.message}") from None
        if not self.url.startswith(("sqlite+aiosqlite:///", "postgresql+asyncpg://")):
            raise ConfigError("database_url must be sqlite+aiosqlite:/// or postgresql+asyncpg://")
        if not 1 <= self.port <= 65535:
            raise ConfigError("port out of range")
        if not 0 <= self.max_attachments <= 64 or self.max_package_bytes < 0:
            raise ConfigError("attachment limits out of range")
        if min(self.upload_window_hours, self.directory_refresh_seconds) < 1:
            raise ConfigError("windows and intervals must be positive")
        if self.directory_max_age_seconds < self.directory_refresh_seconds:
            raise ConfigError("directory_max_age_seconds must be at least directory_refresh_seconds")
        if self.witness_keys and not WITNESS_KEYS.fullmatch(self.witness_keys):
            raise ConfigError("witness_keys must be comma-separated base64url Ed25519 public keys")
        if not 0 <= self.witnesses_required <= len([k for k in self.witness_keys.split(",") if k]):
            raise ConfigError("witnesses_required must be from 0 (all) to the number of witness_keys")
        try:
            self.witnesses()
        except MalformedInput as exc:
            raise ConfigError(f"witness_keys: {exc.message}") from None
        check_tor_settings(self.tor_control, 0, 1, 1)
        if not 1 <= self.tor_health_seconds <= 3600:
            raise ConfigError("tor_health_seconds must be 1 to 3600")
        return self


class NotADataFolder(ConfigError):
    """That folder is not an integration service's data folder."""

    hint = "Name the folder 'safepassage integration init' created (it holds config.toml)."


def load_integration_config(
    data_dir: Path, *, env: dict[str, str] | None = None, **overrides: Any
) -> IntegrationConfig:
    """Read the configuration for ``data_dir`` (file, then environment, then ``overrides``)."""
    if not (data_dir / CONFIG_FILE).is_file():
        raise NotADataFolder(str(data_dir))
    return load_settings(IntegrationConfig, data_dir, env_prefix=ENV_PREFIX, env=env, overrides=overrides)


def publish_integration_onion(app: web.Application, config: IntegrationConfig) -> None:
    """Publish this service's onion while ``app`` runs, restricted to the handlers' client keys.

    The operator copies each handler's ``<handler>.auth`` (the one the staff
    server keeps in DATA/onion-clients) into this service's onion-clients
    folder, and deletes it when the handler is revoked; the folder is re-read
    every ``tor_health_seconds``.
    """
    spec = tor.restricted_spec("integration", config.onion_key_path, config.host, config.port)
    settings = tor.TorSettings(
        config.tor_control, config.tor_control_password_file, config.data_dir, config.tor_health_seconds
    )

    async def clients() -> tuple[tor.ClientKey, ...]:
        return tuple(sorted(set(tor.read_client_keys(config.onion_clients_dir).values())))

    tor.attach(app, settings, [spec], clients={"integration": clients})
