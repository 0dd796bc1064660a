"""Backups of the database: an online SQLite copy, or pg_dump / pg_restore for PostgreSQL."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from service.store.dialect import dialect_for


class BackupError(Exception):
    """A backup or restore that did not happen; the message says why."""


@dataclass(frozen=True)
class _Server:
    """A PostgreSQL database as libpq tools take it: the URI without its password, which
    travels in PGPASSWORD so that it never shows in the process list."""

    uri: str
    password: str | None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env


def _target(database_url: str) -> Path | _Server:
    dialect = dialect_for(database_url)
    path = dialect.file_path(database_url)
    if path is not None:
        return path
    url = make_url(dialect.libpq_conninfo(database_url))
    return _Server(url.set(password=None).render_as_string(False), url.password)


def create(database_url: str, output: Path) -> None:
    """Write a backup of the database to `output`, which must not exist yet. Safe while the
    service runs: SQLite is copied through its online backup API (a consistent snapshot,
    WAL included), PostgreSQL through pg_dump (one transaction)."""
    if output.exists():
        raise BackupError(f"{output} exists; a backup never overwrites a file")
    target = _target(database_url)
    if isinstance(target, Path):
        _sqlite_copy(target, output)
    else:
        _run(["pg_dump", "--format=custom", "--no-owner", f"--file={output}",
              f"--dbname={target.uri}"], target)  # fmt: skip


def restore(database_url: str, backup: Path) -> None:
    """Load `backup` into the database of `database_url`, which must be new and empty (a
    missing SQLite file; a PostgreSQL database made with createdb). Stop the service and
    the bot first."""
    if not backup.is_file():
        raise BackupError(f"{backup} is not a file")
    target = _target(database_url)
    if isinstance(target, Path):
        if target.exists() and target.stat().st_size > 0:
            raise BackupError(f"{target} exists; restore into a new file, then swap it in")
        _sqlite_copy(backup, target)
    else:
        _run(["pg_restore", "--no-owner", "--exit-on-error", "--single-transaction",
              f"--dbname={target.uri}", str(backup)], target)  # fmt: skip


def _sqlite_copy(source: Path, destination: Path) -> None:
    if not source.is_file():
        raise BackupError(f"{source} does not exist")
    # Opened read-only by URI, so a wrong path can never create an empty database.
    reader = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    writer = sqlite3.connect(destination)
    try:
        # Python's sqlite3.Connection.backup: SQLite's online backup, page by page, from a
        # consistent read of the source. A file copy of a live WAL database would miss the
        # pages still in -wal, or catch them half-written.
        reader.backup(writer)
        checked = writer.execute("PRAGMA integrity_check").fetchone()
        # The copy is a single self-contained file, whatever the source's journal mode.
        writer.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.Error as exc:
        writer.close()
        destination.unlink(missing_ok=True)
        raise BackupError(f"SQLite backup failed: {exc}") from exc
    finally:
        reader.close()
    writer.close()
    if checked != ("ok",):
        destination.unlink(missing_ok=True)
        raise BackupError(f"the copy failed SQLite's integrity check: {checked}")


def _run(command: list[str], server: _Server) -> None:
    if shutil.which(command[0]) is None:
        raise BackupError(f"{command[0]} is not installed (apt-get install postgresql-client)")
    done = subprocess.run(command, env=server.env(), capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise BackupError(f"{command[0]} failed: {lines[-1] if lines else done.returncode}")
