"""Running Alembic migrations from code (``server init`` and ``server migrate``)."""

from __future__ import annotations

import asyncio

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from .engine import make_engine


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


def run_environment(target_metadata: MetaData, *, version_table: str = "alembic_version") -> None:
    """What an ``env.py`` does: run the migrations online, on our async engine for the configured URL.

    ``compare_type`` and ``compare_server_default`` make ``alembic check`` catch
    every drift between models and schema; SQLite needs batch mode to alter tables.
    """
    if context.is_offline_mode():
        raise SystemExit("offline (SQL script) migrations are not supported; run against a database")

    def run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=version_table,
            compare_type=True,
            compare_server_default=True,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()

    async def online() -> None:
        engine = make_engine(context.config.get_main_option("sqlalchemy.url") or "")
        try:
            async with engine.connect() as connection:
                await connection.run_sync(run)
                await connection.commit()
        finally:
            await engine.dispose()

    asyncio.run(online())
