"""Server configuration, read once into a frozen dataclass.

Sources, later ones winning: built-in defaults, ``DATA/config.toml``, then
``SAFEPASSAGE_*`` environment variables. Key material is never configuration:
it lives in its own 0600 files under ``DATA/keys`` (see :mod:`.keys`).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Final, Protocol, Self, TypeVar

from safepassage.crypto import pow as W
from safepassage.crypto.errors import SafePassageError

from .tor import TorError, validate_control

MiB: Final = 1024 * 1024
CONFIG_FILE: Final = "config.toml"
DB_FILE: Final = "safepassage.db"
_ENV_PREFIX: Final = "SAFEPASSAGE_"
_FINGERPRINT = re.compile(r"(\d{5} ){9}\d{5}")


class ConfigError(SafePassageError):
    """The server configuration is invalid."""

    hint = "Check DATA/config.toml and SAFEPASSAGE_* environment variables against docs/server.md."
    exit_code = 2


@dataclass(frozen=True, slots=True)
class ServerConfig:
    data_dir: Path
    #: The organisation fingerprint (ten groups of five digits) the first directory must match.
    org_fingerprint: str = ""
    database_url: str = field(default="", repr=False)  # may carry a password
    host: str = "127.0.0.1"
    port: int = 8080
    #: Total size of a contact's attachments (chunks on the wire), default 500 MB.
    max_contact_bytes: int = 500 * 1000 * 1000
    max_attachments: int = 16
    #: Hours a pending contact may take to upload its attachments before it is deleted.
    upload_window_hours: int = 24
    pow_base_difficulty: int = W.DEFAULT_DIFFICULTY
    pow_max_difficulty: int = 20
    pow_memlimit_kib: int = W.DEFAULT_MEMLIMIT_KIB
    pow_lifetime: int = W.DEFAULT_LIFETIME
    #: Submissions per minute (all clients together) at which PoW difficulty starts to rise.
    pow_load_threshold: int = 60
    #: Global cap on submissions (contacts, follow-ups) per minute.
    rate_limit_per_minute: int = 1200
    # No cap on challenges of either kind: issuing one costs an HMAC and no write, and a
    # global cap on a free request is a lever for locking every applicant out. The Argon2id
    # checks proof-of-work challenges lead to are bounded instead:
    #: Argon2id proof-of-work checks running at once (each 1-3 ms of one core) ...
    pow_verify_workers: int = 2
    #: ... and waiting for a worker; a submission beyond that is refused with 503 ``busy``
    #: before its challenge is spent, so the applicant sends the same request again.
    pow_verify_backlog: int = 256
    #: Contacts plus follow-ups per mailbox per day.
    mailbox_daily_quota: int = 20
    #: Replies a mailbox fetch returns at most.
    mailbox_fetch_limit: int = 200
    #: Where the staff API listens (its own onion service forwards to it).
    staff_host: str = "127.0.0.1"
    staff_port: int = 8081
    #: A staff session ends after this many minutes without a request ...
    staff_idle_minutes: int = 30
    #: ... and at the latest this many hours after login.
    staff_session_hours: int = 12
    #: Comma-separated public keys (base64url) of witnesses whose cosignatures the server keeps (protocol 8.8).
    witness_keys: str = ""
    #: Shown on the web pages as who runs this service (empty: the directory's organisation name).
    operator_name: str = ""
    #: One paragraph about the operator, shown on the web pages as plain text.
    operator_about: str = ""
    #: 1: the web pages seal for browsers without JavaScript (the server sees that plaintext
    #: for one request); 0: that path is off and the pages point to the command-line client.
    web_server_sealing: int = 1
    #: Total size of the files one web contact may attach (held in memory while sealed).
    web_max_upload_bytes: int = 32 * MiB
    #: Codename derivations (contacts, reads, follow-ups) the web pages do per minute, all clients together.
    web_sealing_per_minute: int = 30
    #: How this process reaches tor to publish its onion (server/tor.py): "" publishes nothing
    #: (a torrc HiddenService does it), "launch" starts a private tor under DATA/tor,
    #: "127.0.0.1:9051" or "unix:/run/tor/control" uses a running tor (cookie or password).
    tor_control: str = ""
    #: A 0600 file holding tor's control password, when tor wants one instead of its cookie.
    tor_control_password_file: str = ""
    #: Tor's onion-service proof-of-work defence on the public onion (1 on, 0 off) and its queue.
    onion_pow: int = 1
    onion_pow_queue_rate: int = 250
    onion_pow_queue_burst: int = 2500
    #: Seconds between checks that tor still publishes our onions (and the staff clients are current).
    tor_health_seconds: int = 30

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILE

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.db_path}"

    @property
    def onion_clients_dir(self) -> Path:
        """Staff onion client keys, one ``<username>.auth`` file each (tor's format)."""
        return self.data_dir / "onion-clients"

    def onion_key_path(self, role: str) -> Path:
        return self.keys_dir / f"onion-{role}.key"

    def validate(self) -> ServerConfig:
        if self.org_fingerprint and not _FINGERPRINT.fullmatch(self.org_fingerprint):
            raise ConfigError("org_fingerprint must be ten groups of five digits")
        if not self.url.startswith(("sqlite+aiosqlite:///", "postgresql+asyncpg://")):
            raise ConfigError("database_url must be sqlite+aiosqlite:/// or postgresql+asyncpg://")
        if not 1 <= self.port <= 65535 or not 1 <= self.staff_port <= 65535:
            raise ConfigError("port out of range")
        if not 1 <= self.staff_idle_minutes <= 24 * 60 or not 1 <= self.staff_session_hours <= 7 * 24:
            raise ConfigError("staff session lifetimes out of range (1 minute to 1 day idle, 1 hour to 7 days)")
        if not 0 <= self.max_attachments <= 64 or self.max_contact_bytes < 0:
            raise ConfigError("attachment limits out of range")
        if not W.MIN_DIFFICULTY <= self.pow_base_difficulty <= self.pow_max_difficulty <= W.MAX_DIFFICULTY:
            raise ConfigError("PoW difficulty bounds out of range")
        if not W.MIN_MEMLIMIT_KIB <= self.pow_memlimit_kib <= W.MAX_MEMLIMIT_KIB:
            raise ConfigError("PoW memory out of range")
        if not W.MIN_LIFETIME <= self.pow_lifetime <= W.MAX_LIFETIME:
            raise ConfigError("PoW lifetime out of range")
        if not 1 <= self.pow_verify_workers <= 64 or not 1 <= self.pow_verify_backlog <= 100_000:
            raise ConfigError("pow_verify_workers must be 1 to 64 and pow_verify_backlog 1 to 100000")
        self._validate_web()
        positive = (
            self.web_sealing_per_minute,
            self.upload_window_hours,
            self.pow_load_threshold,
            self.rate_limit_per_minute,
            self.mailbox_daily_quota,
            self.mailbox_fetch_limit,
        )
        if min(positive) < 1:
            raise ConfigError("limits and windows must be positive")
        if self.witness_keys and not WITNESS_KEYS.fullmatch(self.witness_keys):
            raise ConfigError("witness_keys must be comma-separated base64url Ed25519 public keys")
        check_tor_settings(self.tor_control, self.onion_pow, self.onion_pow_queue_rate, self.onion_pow_queue_burst)
        if not 1 <= self.tor_health_seconds <= 3600:
            raise ConfigError("tor_health_seconds must be 1 to 3600")
        return self

    def _validate_web(self) -> None:
        if self.web_server_sealing not in (0, 1):
            raise ConfigError("web_server_sealing must be 0 or 1")
        if not 0 <= self.web_max_upload_bytes <= 256 * MiB or len(self.operator_name) > 200:
            raise ConfigError("web_max_upload_bytes must be 0 to 256 MiB and operator_name at most 200 characters")
        if len(self.operator_about) > 4000:
            raise ConfigError("operator_about must be at most 4000 characters")


WITNESS_KEYS = re.compile(r"[A-Za-z0-9_-]{43}(,[A-Za-z0-9_-]{43}){0,31}")


def check_tor_settings(control: str, pow_on: int, rate: int, burst: int) -> None:
    try:
        validate_control(control)
    except TorError as exc:
        raise ConfigError(exc.message) from None
    if pow_on not in (0, 1):
        raise ConfigError("onion_pow must be 0 or 1")
    if not 1 <= rate <= burst <= 10_000_000:
        raise ConfigError("onion_pow_queue_rate must be positive and at most onion_pow_queue_burst")


def _coerce(name: str, raw: Any, kind: type) -> Any:
    if kind is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{name} must be an integer")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer") from None
    if not isinstance(raw, str):
        raise ConfigError(f"{name} must be a string")
    return raw


class _Settings(Protocol):
    """A frozen settings dataclass with a data folder and a ``validate()`` that raises or returns it."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def data_dir(self) -> Path: ...

    def validate(self) -> Self: ...


S = TypeVar("S", bound=_Settings)


def load_settings(
    kind: Callable[..., S], data_dir: Path, *, env_prefix: str, env: dict[str, str] | None, overrides: dict[str, Any]
) -> S:
    """Read settings for ``data_dir``: ``config.toml``, then ``<env_prefix>NAME`` variables, then ``overrides``.

    Every field but ``data_dir`` may be set; an unknown name or a value of the
    wrong type is a :class:`ConfigError`, never a silent default.
    """
    env = dict(os.environ) if env is None else env
    defaults = kind(data_dir=data_dir)
    types = {f.name: (int if f.type in ("int", int) else str) for f in fields(defaults) if f.name != "data_dir"}
    values: dict[str, Any] = {}
    path = data_dir / CONFIG_FILE
    if path.exists():
        try:
            file_values = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{CONFIG_FILE} is not valid TOML") from exc
        for key, value in file_values.items():
            if key not in types:
                raise ConfigError(f"unknown setting {key!r} in {CONFIG_FILE}")
            values[key] = _coerce(key, value, types[key])
    for key, kind_of in types.items():
        raw = env.get(env_prefix + key.upper())
        if raw is not None:
            values[key] = _coerce(key, raw, kind_of)
    for key, value in overrides.items():
        if key not in types:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = value
    return replace(defaults, **values).validate()


def load_config(data_dir: Path, *, env: dict[str, str] | None = None, **overrides: Any) -> ServerConfig:
    """Read the configuration for ``data_dir`` (file, then environment, then ``overrides``)."""
    return load_settings(ServerConfig, data_dir, env_prefix=_ENV_PREFIX, env=env, overrides=overrides)


def write_config(data_dir: Path, **values: str | int) -> None:
    """Write ``config.toml`` with ``values`` (used by ``server init``)."""
    lines = []
    for key, value in sorted(values.items()):
        rendered = str(value) if isinstance(value, int) else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{key} = {rendered}")
    (data_dir / CONFIG_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
