"""bot: training data, photos of an avatar, one training per person

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:26:17.530798
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.store.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Kept literally here (not imported) so this migration means the same whatever models.py
# says later.
ONE_TRAINING_PER_USER = "status = 'training' AND started_by = 'bot'"


def upgrade() -> None:
    op.create_table(
        "training_data",
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("avatar_id", sa.String(length=32), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("photo_count", sa.Integer(), nullable=False),
        sa.Column("created_at", service.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", service.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["avatar_id"],
            ["avatars.id"],
            name=op.f("fk_training_data_avatar_id_avatars"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token", name=op.f("pk_training_data")),
        sa.UniqueConstraint("avatar_id", name=op.f("uq_training_data_avatar_id")),
    )
    with op.batch_alter_table("training_data", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_training_data_expires_at"), ["expires_at"], unique=False
        )

    # Nullable columns only: every existing avatar stays valid, and no existing pair of
    # trainings can violate the new index (their started_by is NULL).
    with op.batch_alter_table("avatars", schema=None) as batch_op:
        batch_op.add_column(sa.Column("started_by", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("photo_count", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("photos", sa.JSON(), nullable=True))
        batch_op.create_index(
            "uq_avatars_one_training_per_user",
            ["user_id"],
            unique=True,
            postgresql_where=sa.text(ONE_TRAINING_PER_USER),
            sqlite_where=sa.text(ONE_TRAINING_PER_USER),
        )


def downgrade() -> None:
    with op.batch_alter_table("avatars", schema=None) as batch_op:
        batch_op.drop_index("uq_avatars_one_training_per_user")
        batch_op.drop_column("photos")
        batch_op.drop_column("photo_count")
        batch_op.drop_column("started_by")

    with op.batch_alter_table("training_data", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_data_expires_at"))

    op.drop_table("training_data")
