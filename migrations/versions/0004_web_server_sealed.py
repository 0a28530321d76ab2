"""follow-ups sealed by the no-JavaScript web path are marked, like contacts

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing follow-ups all came through the API, sealed by their sender: false.
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("server_sealed", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("server_sealed")
