"""Alembic, run from inside the package so that migrations work from any directory."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from service.store.engine import sqlite_path, sync_url


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", "service.store:migrations")
    config.set_main_option(
        "sqlalchemy.url", sync_url(database_url).render_as_string(hide_password=False)
    )
    return config


def upgrade(database_url: str) -> str:
    """Bring the schema to the newest revision; returns that revision."""
    path = sqlite_path(database_url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    config = alembic_config(database_url)
    command.upgrade(config, "head")
    return head_revision(database_url)


def head_revision(database_url: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    assert head is not None
    return head


def current_revision(database_url: str) -> str | None:
    engine = create_engine(sync_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


class SchemaOutOfDate(RuntimeError):
    """The database is not at the newest migration; the message says what to run."""


def schema_problem(database_url: str) -> str | None:
    """Why a process cannot start on this database (unreachable, not migrated), or None."""
    try:
        require_current(database_url)
    except SchemaOutOfDate as exc:
        return str(exc)
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        return f"database unreachable: {lines[0] if lines else type(exc).__name__}"
    return None


def require_current(database_url: str) -> None:
    current, head = current_revision(database_url), head_revision(database_url)
    if current != head:
        raise SchemaOutOfDate(
            f"database schema is at {current or 'nothing (empty database)'}, the code needs "
            f"{head}: run `python -m service migrate` first"
        )
