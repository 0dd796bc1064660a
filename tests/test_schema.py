"""The migrations and the models describe one schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from service.store import migrate
from service.store.engine import sync_url
from service.store.models import Base


def test_the_migrated_database_is_what_the_models_say(database_url: str) -> None:
    command.upgrade(migrate.alembic_config(database_url), "head")
    engine = sa.create_engine(sync_url(database_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            # Tables, columns, types, nullability, indexes, foreign keys: a model changed
            # without its migration (or the reverse) shows here as a difference.
            differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
