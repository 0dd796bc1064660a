"""`python -m service backup create|restore FILE`: a backup taken while the service runs,
restored into a fresh database, from which the service then serves.

For the embedded SQLite (in WAL mode while the service runs) the copy goes through SQLite's
online backup API; for PostgreSQL through pg_dump / pg_restore. Real processes throughout:
gunicorn with 2 workers, the CLI, a real SQLite file or a fresh PostgreSQL database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import requests

from tests.support import postgres, schema
from tests.support.servers import GunicornServer, base_env, run_cli
from tests.support.webhooks import fal_ok, new_request_id


@contextmanager
def database(kind: str, tmp_path: Path, name: str) -> Iterator[str]:
    """A new, empty database: a SQLite file not yet made, or a fresh PostgreSQL database."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / name}.db"
    else:
        with postgres.fresh_database() as url:
            yield url


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_backup_of_the_running_service_restores_into_a_fresh_database_that_serves(
    kind: str, tmp_path: Path
) -> None:
    backup = tmp_path / "aibots.backup"
    request_id = new_request_id()
    body = fal_ok(request_id)
    headers = {"Content-Type": "application/json"}
    with ExitStack() as stack:
        source = stack.enter_context(database(kind, tmp_path, "source"))
        fresh = stack.enter_context(database(kind, tmp_path, "restored"))
        source_env = base_env(DATABASE_URL=source)

        with GunicornServer({"DATABASE_URL": source}, workers=2) as service:
            run_cli("avatars", "attach", "--telegram-id", "4242", "--name", "Anna",
                    "--training-type", "portrait", "--request-id", request_id,
                    env=source_env)  # fmt: skip
            url = f"{service.url}/api/v1/avatar/status_update"
            reply = requests.post(url, data=body, headers=headers, timeout=10)
            assert reply.json() == {"status": "received", "request_id": request_id}
            if kind == "sqlite":
                live = sqlite3.connect(source.removeprefix("sqlite:///"))
                assert live.execute("PRAGMA journal_mode").fetchone() == ("wal",)
                live.close()
            # Taken while the service runs and holds the database open.
            made = run_cli("backup", "create", str(backup), env=source_env)
            assert "backup written to" in made.stderr
            assert backup.stat().st_size > 0
            again = run_cli("backup", "create", str(backup), env=source_env, check=False)
            assert again.returncode == 1 and "never overwrites" in again.stderr

        fresh_env = base_env(DATABASE_URL=fresh)
        restored = run_cli("backup", "restore", str(backup), env=fresh_env)
        assert "backup restored from" in restored.stderr
        # The service serves from the restored database: the avatar is there, completed, and
        # FAL's repeat of the delivery is recognised as the event already recorded.
        with GunicornServer({"DATABASE_URL": fresh}, workers=2) as service:
            assert requests.get(f"{service.url}/health", timeout=10).json()["database"] == "ok"
            shown = run_cli("avatars", "show", "--request-id", request_id, "--json",
                            env=fresh_env)  # fmt: skip
            assert '"status": "completed"' in shown.stdout
            url = f"{service.url}/api/v1/avatar/status_update"
            reply = requests.post(url, data=body, headers=headers, timeout=10)
            assert reply.json() == {"status": "duplicate", "request_id": request_id}

        # A restore never writes over a database that has data.
        twice = run_cli("backup", "restore", str(backup), env=fresh_env, check=False)
        assert twice.returncode == 1 and twice.stderr.startswith("error: ")


def test_a_sqlite_backup_is_one_self_contained_file(tmp_path: Path) -> None:
    """No -wal beside it is needed: the copy is complete and passes the integrity check."""
    source = f"sqlite:///{tmp_path / 'source.db'}"
    env = base_env(DATABASE_URL=source)
    schema.upgrade(source)
    run_cli("avatars", "attach", "--telegram-id", "1", "--name", "A", "--training-type",
            "portrait", "--request-id", "rid-1", env=env)  # fmt: skip
    backup = tmp_path / "copy.db"
    run_cli("backup", "create", str(backup), env=env)
    assert not (tmp_path / "copy.db-wal").exists()
    copy = sqlite3.connect(backup)
    try:
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert copy.execute("SELECT count(*) FROM avatars").fetchone() == (1,)
    finally:
        copy.close()


def test_restore_refuses_what_is_not_a_backup(tmp_path: Path) -> None:
    env = base_env(DATABASE_URL=f"sqlite:///{tmp_path / 'new.db'}")
    missing = run_cli("backup", "restore", str(tmp_path / "absent"), env=env, check=False)
    assert missing.returncode == 1 and "is not a file" in missing.stderr
    junk = tmp_path / "junk.backup"
    junk.write_bytes(b"not a database at all" * 100)
    refused = run_cli("backup", "restore", str(junk), env=env, check=False)
    assert refused.returncode == 1 and "SQLite backup failed" in refused.stderr
    assert not (tmp_path / "new.db").exists(), "nothing half-made is left behind"
