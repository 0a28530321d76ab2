"""Alembic environment of the integration service's database: its own metadata and version table."""

from __future__ import annotations

from safepassage.server.db.migrate import run_environment
from safepassage.server.integration.models import VERSION_TABLE, IntegrationBase

run_environment(IntegrationBase.metadata, version_table=VERSION_TABLE)
