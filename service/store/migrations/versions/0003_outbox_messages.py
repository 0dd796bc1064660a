"""outbox: a notification says what it sends (a text, a photo, an album of photos)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 08:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# No branch labels or dependencies: Alembic takes their absence as none.
revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    # Every row written before this revision was a text message.
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(
            sa.Column("message_type", sa.String(length=16), nullable=False, server_default="text")
        )
        # For photos and albums: [{"url": ..., "file_id": ..., "caption": ...}, ...].
        batch.add_column(sa.Column("media", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("media")
        batch.drop_column("message_type")
