"""tallies: events and notifications counted up to a mark, for status and metrics

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 10:00:00

Adds `tallies` and `tally_marks` (service/store/tallies.py), fills them with one count of
the rows older than the hold-back, and adds the triggers that keep a counted row's change
(an event's outcome updated, any row deleted) in its tally.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

import service.store.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# As service.store.tallies.HOLD_BACK at this revision.
_HOLD_BACK = dt.timedelta(minutes=5)

# (table, the time its rows were written, the counted column or None for the total)
_TALLIED = (("webhook_events", "received_at", "outcome"), ("notifications", "created_at", None))

# A delete adjusts the tally once per statement, from the deleted rows as a table: pruning
# deletes a thousand rows a statement, and a row-level trigger updated the same tally row a
# thousand times, its dead versions piling up (a million-event prune took 8 times as long).
_POSTGRES = """
CREATE FUNCTION tally_{table}_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE mark bigint;
BEGIN
    -- Shared lock: waits for a reader moving the mark, so a row is counted exactly once.
    SELECT up_to_id INTO mark FROM tally_marks WHERE name = '{table}' FOR SHARE;
    UPDATE tallies SET counted = tallies.counted - gone.n
    FROM (
        SELECT {gone} AS value, count(*) AS n FROM gone_rows WHERE id <= mark GROUP BY 1
    ) AS gone
    WHERE tallies.name = '{table}' AND tallies.value = gone.value;
    RETURN NULL;
END $$;
CREATE TRIGGER tally_{table}_delete AFTER DELETE ON {table}
    REFERENCING OLD TABLE AS gone_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tally_{table}_deleted();
"""
# An outcome changes one row at a time (an unmatched event applied, a replay): row level.
_POSTGRES_UPDATE = """
CREATE FUNCTION tally_{table}_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE mark bigint;
BEGIN
    SELECT up_to_id INTO mark FROM tally_marks WHERE name = '{table}' FOR SHARE;
    IF OLD.id <= mark THEN
        UPDATE tallies SET counted = counted - 1 WHERE name = '{table}' AND value = OLD.{column};
        INSERT INTO tallies (name, value, counted) VALUES ('{table}', NEW.{column}, 1)
        ON CONFLICT (name, value) DO UPDATE SET counted = tallies.counted + 1;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tally_{table}_update AFTER UPDATE OF {column} ON {table}
    FOR EACH ROW WHEN (OLD.{column} IS DISTINCT FROM NEW.{column})
    EXECUTE FUNCTION tally_{table}_change();
"""
# SQLite has one writer at a time: no lock is needed to read the mark.
_SQLITE_DELETE = """
CREATE TRIGGER tally_{table}_delete AFTER DELETE ON {table}
WHEN OLD.id <= (SELECT up_to_id FROM tally_marks WHERE name = '{table}')
BEGIN
    UPDATE tallies SET counted = counted - 1 WHERE name = '{table}' AND value = {old};
END
"""
_SQLITE_UPDATE = """
CREATE TRIGGER tally_{table}_update AFTER UPDATE OF {column} ON {table}
WHEN OLD.{column} IS NOT NEW.{column}
    AND OLD.id <= (SELECT up_to_id FROM tally_marks WHERE name = '{table}')
BEGIN
    UPDATE tallies SET counted = counted - 1 WHERE name = '{table}' AND value = OLD.{column};
    INSERT INTO tallies (name, value, counted) VALUES ('{table}', NEW.{column}, 1)
    ON CONFLICT (name, value) DO UPDATE SET counted = counted + 1;
END
"""


def _on_postgres() -> bool:
    # Migrations are outside the dialect seam's rule: DDL for triggers is per database.
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    op.create_table(
        "tallies",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=32), nullable=False),
        sa.Column("counted", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", "value", name=op.f("pk_tallies")),
    )
    op.create_table(
        "tally_marks",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("up_to_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_tally_marks")),
    )
    cutoff = dt.datetime.now(dt.UTC) - _HOLD_BACK
    bind = op.get_bind()
    for table, written_at, column in _TALLIED:
        rows = sa.table(
            table,
            sa.column("id", sa.BigInteger),
            sa.column(written_at, service.store.models.UTCDateTime()),
            *([sa.column(column, sa.String)] if column else []),
        )
        mark = bind.execute(
            sa.select(rows.c.id)
            .where(rows.c[written_at] < cutoff)
            .order_by(rows.c.id.desc())
            .limit(1)
        ).scalar()
        bind.execute(
            sa.text("INSERT INTO tally_marks (name, up_to_id) VALUES (:name, :mark)"),
            {"name": table, "mark": mark or 0},
        )
        group = rows.c[column] if column else sa.literal("")
        counts = bind.execute(
            sa.select(group, sa.func.count()).where(rows.c.id <= (mark or 0)).group_by(group)
        ).all()
        for value, count in counts:
            bind.execute(
                sa.text("INSERT INTO tallies (name, value, counted) VALUES (:n, :v, :c)"),
                {"n": table, "v": str(value), "c": int(count)},
            )
        names = {
            "table": table,
            "column": column,
            "old": f"OLD.{column}" if column else "''",
            "gone": column or "''",
        }
        if _on_postgres():
            op.execute(_POSTGRES.format(**names))
            if column:
                op.execute(_POSTGRES_UPDATE.format(**names))
        else:
            op.execute(_SQLITE_DELETE.format(**names))
            if column:
                op.execute(_SQLITE_UPDATE.format(**names))


def downgrade() -> None:
    for table, _written_at, column in _TALLIED:
        op.execute(f"DROP TRIGGER IF EXISTS tally_{table}_delete" + _on(table))
        if column:
            op.execute(f"DROP TRIGGER IF EXISTS tally_{table}_update" + _on(table))
        if _on_postgres():
            op.execute(f"DROP FUNCTION IF EXISTS tally_{table}_deleted()")
            op.execute(f"DROP FUNCTION IF EXISTS tally_{table}_change()")
    op.drop_table("tally_marks")
    op.drop_table("tallies")


def _on(table: str) -> str:
    # PostgreSQL names a trigger within its table; SQLite's names are global.
    return f" ON {table}" if _on_postgres() else ""
