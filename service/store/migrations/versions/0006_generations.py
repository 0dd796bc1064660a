"""generations: photos asked of a trained avatar, the second kind of FAL job

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 12:00:00

Adds `generations`, and a `generation_id` beside `avatar_id` in `fal_jobs`, `webhook_events`
and `notifications`, so that a generation's job, events and photos point at their row. The
columns are added in place (no table is rebuilt on SQLite, where rebuilding
`webhook_events` or `notifications` would drop the triggers that keep their tallies).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.store.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_POINTING = ("fal_jobs", "webhook_events", "notifications")


class DowngradeRefused(RuntimeError):
    """The database holds generations, which the older schema has no place for."""


def _on_postgres() -> bool:
    # Migrations are outside the dialect seam's rule: how a column is added is per database.
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    op.create_table(
        "generations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("avatar_id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("style", sa.String(length=32), nullable=True),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("frame", sa.String(length=32), nullable=False),
        sa.Column("num_images", sa.Integer(), nullable=False),
        sa.Column("images", sa.JSON(), nullable=True),
        sa.Column("seed", sa.String(length=32), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", service.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", service.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", service.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_generations_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["avatar_id"], ["avatars.id"], name=op.f("fk_generations_avatar_id_avatars")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generations")),
    )
    op.create_index(op.f("ix_generations_avatar_id"), "generations", ["avatar_id"])
    op.create_index(op.f("ix_generations_status"), "generations", ["status"])
    op.create_index(
        op.f("ix_generations_user_id_created_at"), "generations", ["user_id", "created_at"]
    )
    for table in _POINTING:
        if _on_postgres():
            op.add_column(
                table,
                sa.Column(
                    "generation_id",
                    sa.String(length=32),
                    sa.ForeignKey("generations.id", name=f"fk_{table}_generation_id_generations"),
                    nullable=True,
                ),
            )
        else:
            # Alembic would rebuild the table for the constraint; SQLite itself takes a
            # REFERENCES clause on ADD COLUMN when the column defaults to NULL.
            op.execute(
                f"ALTER TABLE {table} ADD COLUMN generation_id VARCHAR(32) "
                "REFERENCES generations (id)"
            )
        op.create_index(op.f(f"ix_{table}_generation_id"), table, ["generation_id"])


def downgrade() -> None:
    held = op.get_bind().execute(sa.text("SELECT count(*) FROM generations")).scalar_one()
    if held:
        raise DowngradeRefused(
            f"{held} generations would be lost; 0005 has no place for them. Delete them "
            "first if that is intended."
        )
    for table in _POINTING:
        op.drop_index(op.f(f"ix_{table}_generation_id"), table_name=table)
        if _on_postgres():
            op.drop_constraint(f"fk_{table}_generation_id_generations", table, type_="foreignkey")
        # SQLite (3.35+) drops a column in place unless it is indexed or constrained; the
        # REFERENCES clause is part of the column, so it goes with it.
        op.drop_column(table, "generation_id")
    op.drop_table("generations")
