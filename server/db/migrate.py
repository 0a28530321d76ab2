"""Running Alembic migrations from code (``server init`` and ``server migrate``)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "safepassage.migrations:")
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    # Alembic must not reconfigure the process's logging from an ini file.
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def check(url: str) -> None:
    """Raise unless the migrated schema matches the models (``alembic check``)."""
    command.check(alembic_config(url))
