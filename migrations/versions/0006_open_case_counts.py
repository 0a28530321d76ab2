"""per-handler open-case counters kept by triggers; an index in inbox order

Revision ID: 0006
Revises: 0005

Routing gave a new contact to the handler with the fewest open cases by
counting every open case of the pool inside the submission's transaction, so a
submission slowed as the table grew. ``open_cases`` holds that count per (pool,
owner), and triggers on ``contacts`` keep it: they run in the transaction of
the statement that changes a contact, whatever the statement (intake, staff
API, directory reassignment, retention, a mailbox's ``ON DELETE CASCADE``), so
no code path can forget one.

- PostgreSQL: statement-level triggers with transition tables, one upsert per
  (pool, owner) a statement touched. A row-level trigger would update the same
  counter row once per contact, and a bulk statement would build a long chain
  of row versions inside one transaction.
- SQLite: row-level triggers (SQLite has no others); it has one writer, and
  updates a row in place.

The backfill runs after the triggers exist: on PostgreSQL ``CREATE TRIGGER``
holds a lock that keeps writers out of ``contacts`` until this migration
commits, so no change falls between the count and the triggers.

A later migration that rebuilds ``contacts`` on SQLite (``batch_alter_table``
copies the table and drops the old one) drops these triggers with it and must
create them again; ``tests/test_open_cases.py`` fails if head lacks them.
"""

# The SQL below is assembled from this file's constants only (no input reaches it):
# ruff: noqa: S608
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: The statuses routing counts (``server/routing.py``, ``OPEN_STATUSES``), frozen as of this revision.
_OPEN = "('new', 'reviewing', 'replied')"

_PG_FUNCTION = f"""
CREATE FUNCTION open_cases_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO open_cases AS o (pool, owner, cases)
        SELECT pool, owner, count(*) FROM new_rows
        WHERE state = 'complete' AND status IN {_OPEN}
        GROUP BY pool, owner ORDER BY pool, owner
        ON CONFLICT (pool, owner) DO UPDATE SET cases = o.cases + EXCLUDED.cases;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO open_cases AS o (pool, owner, cases)
        SELECT pool, owner, -count(*) FROM old_rows
        WHERE state = 'complete' AND status IN {_OPEN}
        GROUP BY pool, owner ORDER BY pool, owner
        ON CONFLICT (pool, owner) DO UPDATE SET cases = o.cases + EXCLUDED.cases;
    ELSE
        INSERT INTO open_cases AS o (pool, owner, cases)
        SELECT pool, owner, sum(d) FROM (
            SELECT pool, owner, 1 AS d FROM new_rows WHERE state = 'complete' AND status IN {_OPEN}
            UNION ALL
            SELECT pool, owner, -1 AS d FROM old_rows WHERE state = 'complete' AND status IN {_OPEN}
        ) AS changes
        GROUP BY pool, owner HAVING sum(d) <> 0 ORDER BY pool, owner
        ON CONFLICT (pool, owner) DO UPDATE SET cases = o.cases + EXCLUDED.cases;
    END IF;
    RETURN NULL;
END
$$
"""

_PG_TRIGGERS = (
    "CREATE TRIGGER trg_contacts_open_cases_insert AFTER INSERT ON contacts "
    "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION open_cases_apply()",
    "CREATE TRIGGER trg_contacts_open_cases_update AFTER UPDATE ON contacts "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION open_cases_apply()",
    "CREATE TRIGGER trg_contacts_open_cases_delete AFTER DELETE ON contacts "
    "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION open_cases_apply()",
)


# Row-level bodies: count the new row in if it is an open case, the old row out if it was one.
_SQLITE_ADD = (
    "INSERT INTO open_cases (pool, owner, cases) SELECT NEW.pool, NEW.owner, 0 "
    f"WHERE NEW.state = 'complete' AND NEW.status IN {_OPEN} AND NOT EXISTS "
    "(SELECT 1 FROM open_cases WHERE pool = NEW.pool AND owner = NEW.owner); "
    "UPDATE open_cases SET cases = cases + 1 WHERE pool = NEW.pool AND owner = NEW.owner "
    f"AND NEW.state = 'complete' AND NEW.status IN {_OPEN};"
)
_SQLITE_REMOVE = (
    "UPDATE open_cases SET cases = cases - 1 WHERE pool = OLD.pool AND owner = OLD.owner "
    f"AND OLD.state = 'complete' AND OLD.status IN {_OPEN};"
)

_SQLITE_TRIGGERS = (
    f"CREATE TRIGGER trg_contacts_open_cases_insert AFTER INSERT ON contacts BEGIN {_SQLITE_ADD} END",
    "CREATE TRIGGER trg_contacts_open_cases_update AFTER UPDATE OF pool, owner, state, status ON contacts "
    f"BEGIN {_SQLITE_REMOVE} {_SQLITE_ADD} END",
    f"CREATE TRIGGER trg_contacts_open_cases_delete AFTER DELETE ON contacts BEGIN {_SQLITE_REMOVE} END",
)

_TRIGGER_NAMES = ("trg_contacts_open_cases_insert", "trg_contacts_open_cases_update", "trg_contacts_open_cases_delete")


def upgrade() -> None:
    op.create_table(
        "open_cases",
        sa.Column("pool", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("cases", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("pool", "owner", name=op.f("pk_open_cases")),
    )
    op.create_index("ix_contacts_owner_state_day_id", "contacts", ["owner", "state", "day", "id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        for statement in _PG_TRIGGERS:
            op.execute(statement)
    else:
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)
    op.execute(
        "INSERT INTO open_cases (pool, owner, cases) SELECT pool, owner, count(*) FROM contacts "
        f"WHERE state = 'complete' AND status IN {_OPEN} GROUP BY pool, owner"
    )


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for name in _TRIGGER_NAMES:
        op.execute(f"DROP TRIGGER {name} ON contacts" if postgresql else f"DROP TRIGGER {name}")
    if postgresql:
        op.execute("DROP FUNCTION open_cases_apply()")
    op.drop_index("ix_contacts_owner_state_day_id", table_name="contacts")
    op.drop_table("open_cases")
