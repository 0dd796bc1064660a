"""fal_jobs: every FAL request in one registry; events say where they came from

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:00:00

Moves each avatar's request id and FAL URLs into `fal_jobs` (kind `training`) and adds
`webhook_events.source`. Rows written by the bot's reconciler before this revision carried the
header `x-aibots-source: reconciler`; they get that source, every other row `webhook`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.store.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The apps the bot submitted to, as of this revision (service/bot/training.py TRAINERS).
_BOT_APPS = {
    "portrait": "fal-ai/flux-lora-portrait-trainer",
    "style": "fal-ai/flux-lora-fast-training",
}
_URLS = ("status_url", "response_url", "cancel_url")

# The rows move at the SQL level (INSERT ... SELECT, UPDATE ... SET col = (SELECT ...)), so
# these views of the tables need only the columns' names, not their types.
avatars = sa.table(
    "avatars",
    *map(sa.column, ("id", "user_id", "training_type", "started_by", "created_at")),
    *map(sa.column, ("training_started_at", "fal_request_id", *(f"fal_{n}" for n in _URLS))),
)
fal_jobs = sa.table(
    "fal_jobs",
    *map(sa.column, ("request_id", "kind", "user_id", "avatar_id", "app", "submitted_at")),
    *map(sa.column, _URLS),
)
events = sa.table("webhook_events", sa.column("headers", sa.JSON), sa.column("source", sa.String))


class DowngradeRefused(RuntimeError):
    """The registry holds what the older schema cannot (a job that is not a training)."""


def upgrade() -> None:
    op.create_table(
        "fal_jobs",
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("avatar_id", sa.String(length=32), nullable=True),
        sa.Column("app", sa.String(length=128), nullable=True),
        sa.Column("status_url", sa.Text(), nullable=True),
        sa.Column("response_url", sa.Text(), nullable=True),
        sa.Column("cancel_url", sa.Text(), nullable=True),
        sa.Column("submitted_at", service.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_fal_jobs_user_id_users")),
        sa.ForeignKeyConstraint(
            ["avatar_id"], ["avatars.id"], name=op.f("fk_fal_jobs_avatar_id_avatars")
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_fal_jobs")),
    )
    op.create_index(op.f("ix_fal_jobs_user_id"), "fal_jobs", ["user_id"])
    op.create_index(
        "uq_fal_jobs_training_per_avatar",
        "fal_jobs",
        ["avatar_id"],
        unique=True,
        postgresql_where=sa.text("kind = 'training'"),
        sqlite_where=sa.text("kind = 'training'"),
    )
    app = sa.case(
        *(
            (sa.and_(avatars.c.started_by == "bot", avatars.c.training_type == kind), name)
            for kind, name in _BOT_APPS.items()
        ),
        else_=sa.null(),
    )
    op.execute(
        fal_jobs.insert().from_select(
            ["request_id", "kind", "user_id", "avatar_id", "app", *_URLS, "submitted_at"],
            sa.select(
                avatars.c.fal_request_id,
                sa.literal("training"),
                avatars.c.user_id,
                avatars.c.id,
                app,
                *(avatars.c[f"fal_{name}"] for name in _URLS),
                sa.func.coalesce(avatars.c.training_started_at, avatars.c.created_at),
            ).where(avatars.c.fal_request_id.is_not(None)),
        )
    )
    with op.batch_alter_table("webhook_events") as batch:
        batch.add_column(
            sa.Column("source", sa.String(length=16), nullable=False, server_default="webhook")
        )
    op.execute(
        events.update()
        .where(events.c.headers["x-aibots-source"].as_string() == "reconciler")
        .values(source="reconciler")
    )
    with op.batch_alter_table("avatars") as batch:
        batch.drop_constraint("uq_avatars_fal_request_id", type_="unique")
        batch.drop_column("fal_cancel_url")
        batch.drop_column("fal_response_url")
        batch.drop_column("fal_status_url")
        batch.drop_column("fal_request_id")


def downgrade() -> None:
    connection = op.get_bind()
    others = connection.execute(
        sa.select(sa.func.count()).select_from(fal_jobs).where(fal_jobs.c.kind != "training")
    ).scalar_one()
    if others:
        raise DowngradeRefused(
            f"refusing to downgrade below 0004: {others} FAL job(s) that are not trainings "
            "would be lost (the older schema only knows an avatar's training)"
        )
    with op.batch_alter_table("avatars") as batch:
        batch.add_column(sa.Column("fal_request_id", sa.String(length=128), nullable=True))
        for name in _URLS:
            batch.add_column(sa.Column(f"fal_{name}", sa.Text(), nullable=True))
        batch.create_unique_constraint("uq_avatars_fal_request_id", ["fal_request_id"])
    of_avatar = sa.and_(fal_jobs.c.avatar_id == avatars.c.id, fal_jobs.c.kind == "training")
    op.execute(
        avatars.update().values(
            {
                avatars.c.fal_request_id: sa.select(fal_jobs.c.request_id)
                .where(of_avatar)
                .scalar_subquery(),
                **{
                    avatars.c[f"fal_{name}"]: sa.select(fal_jobs.c[name])
                    .where(of_avatar)
                    .scalar_subquery()
                    for name in _URLS
                },
            }
        )
    )
    # Below 0004 an event's source was the header the reconciler added; events learnt since
    # (their headers are empty) get it back, so no event forgets where it came from.
    for source in ("reconciler", "operator"):
        op.execute(
            events.update()
            .where(events.c.source == source)
            .values(headers={"x-aibots-source": source})
        )
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_column("source")
    op.drop_index("uq_fal_jobs_training_per_avatar", table_name="fal_jobs")
    op.drop_index(op.f("ix_fal_jobs_user_id"), table_name="fal_jobs")
    op.drop_table("fal_jobs")
