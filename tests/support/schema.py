"""Databases at the newest schema for tests: a new SQLite file is a copy of one migrated once.

Running the migrations takes a second or more; the suite makes several hundred databases.
Alembic writes the same file for every empty database (tests/test_migrations.py and
tests/test_schema.py run and check the migrations themselves), so each pytest process
migrates one file and copies it. PostgreSQL, and a file that already exists, are migrated:
recreating an empty database from a migrated template needs a DROP DATABASE, whose forced
checkpoint made it slower than the migrations whenever the server had writes to flush.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from service.store import migrate
from service.store.engine import sqlite_path


def upgrade(database_url: str) -> None:
    """Bring `database_url` to the newest revision, as `migrate.upgrade` does."""
    path = sqlite_path(database_url)
    if path is None or path.exists():
        migrate.upgrade(database_url)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_migrated_file(), path)


@functools.cache
def _migrated_file() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="aibots-schema-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "migrated.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path
