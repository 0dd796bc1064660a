"""Databases at the newest schema for tests: copies of one database migrated once.

Running the migrations takes a second or more; the suite makes several hundred databases.
Alembic makes the same schema in every empty database (tests/test_migrations.py and
tests/test_schema.py run and check the migrations themselves), so each pytest process
migrates one SQLite file and one PostgreSQL database, and copies them: a new file is a copy
of the file, an empty database on the shared server is created again from the migrated one
as its template. A database that holds anything is migrated.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import psycopg

from service.store import migrate
from service.store.engine import sqlite_path
from tests.support import postgres


def upgrade(database_url: str) -> None:
    """Bring `database_url` to the newest revision, as `migrate.upgrade` does."""
    path = sqlite_path(database_url)
    if path is None:
        if _empty_on_the_shared_server(database_url):
            _create_again_from(database_url.rsplit("/", 1)[1], _migrated_database())
        else:
            migrate.upgrade(database_url)
    elif path.exists():
        migrate.upgrade(database_url)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_migrated_file(), path)


@functools.cache
def _migrated_file() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="aibots-schema-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "migrated.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


def _empty_on_the_shared_server(database_url: str) -> bool:
    server = postgres.ADMIN_URL.rsplit("/", 1)[0]
    if database_url.rsplit("/", 1)[0] != server:
        return False
    with psycopg.connect(database_url) as conn:
        found = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        row = found.fetchone()
    return row is not None and row[0] == 0


def _create_again_from(name: str, template: str) -> None:
    with psycopg.connect(postgres.ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}"')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')


@functools.cache
def _migrated_database() -> str:
    url = postgres.create_database("aibots_schema")
    atexit.register(postgres.drop_database, url)
    migrate.upgrade(url)
    return url.rsplit("/", 1)[1]
