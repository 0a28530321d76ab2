"""directory proposals co-signed by admins

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "directory_proposals",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("base_version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("proposer", sa.String(length=64), nullable=False),
        sa.Column("created_day", sa.Date(), nullable=False),
        sa.Column("directory", sa.LargeBinary(), nullable=False),
        sa.Column("signatures", sa.LargeBinary(), nullable=False),
        sa.Column("entry", sa.LargeBinary(), nullable=True),
        sa.Column("head", sa.LargeBinary(), nullable=True),
        sa.Column("head_signatures", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_directory_proposals")),
    )
    with op.batch_alter_table("directory_proposals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_directory_proposals_state"), ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("directory_proposals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_directory_proposals_state"))
    op.drop_table("directory_proposals")
