"""Running the integration service's own Alembic migrations (``migrations_integration/``)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from safepassage.server.db.migrate import alembic_config as _intake_alembic_config

SCRIPT_LOCATION = "safepassage.migrations_integration:"


def alembic_config(url: str) -> Config:
    # The intake's settings (URL quoting, no logging reconfiguration) with this schema's scripts.
    cfg = _intake_alembic_config(url)
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def check(url: str) -> None:
    """Raise unless the migrated schema matches the models (``alembic check``)."""
    command.check(alembic_config(url))
