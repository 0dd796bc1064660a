"""bot_state: the bot's conversations and their drafts, kept across restarts

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 12:30:00

Adds `bot_state` (service/store/bot_state.py), which the bot's persistence reads at start and
writes after every update, so that a person in the middle of creating an avatar continues
where they were after the bot restarts.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.store.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bot_state",
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("updated_at", service.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", name=op.f("pk_bot_state")),
    )


def downgrade() -> None:
    # Only conversations in progress are lost: each person is back at the menu.
    op.drop_table("bot_state")
