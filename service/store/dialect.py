"""The one place that knows PostgreSQL from SQLite: URLs, engine options, locks, capabilities.

Everything else asks the `Dialect` chosen once for a database URL (`dialect_for`) or found for
a session (`dialect_of`) what it can do: whether claims can skip locked rows, whether a commit
can wake a listener, how one process is elected leader, how a chain of writes (the webhook's
event, its job's change, its outbox row) reaches the server: as one statement of
data-modifying CTEs on PostgreSQL, statement by statement on SQLite. Nothing outside this
module compares driver names or URL prefixes.
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Select,
    event,
    func,
    make_url,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

Q = TypeVar("Q", bound=Select[Any])

# psycopg's SQLSTATEs that mean "run the same transaction again": serialization failure,
# deadlock. SQLite says "database is locked" / "busy" instead.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


def _url(database_url: str) -> URL:
    return make_url(database_url.replace("postgres://", "postgresql://", 1))


@dataclass(frozen=True)
class Dialect:
    """What one kind of database can do, and how this service talks to it."""

    name: str
    # SELECT ... FOR UPDATE [SKIP LOCKED]: concurrent claimers and appliers queue on rows.
    # Without it (SQLite) BEGIN IMMEDIATE serialises every writer instead.
    row_locks: bool
    # A commit can wake a listening process (NOTIFY); otherwise the outbox polls.
    wakes_on_commit: bool
    # How often the outbox looks for due rows when nothing woke it.
    outbox_poll_seconds: float
    # Data-modifying CTEs: a chain of writes goes to the server as one statement.
    combines_writes: bool
    # The driver of the webhook's hot path, on its own connections (store/direct.py).
    direct_driver: str | None = None
    # One writer at a time for the whole database: a process queues its own transactions
    # (store/engine.py) instead of leaving them to the busy handler, which sleeps in growing
    # steps (up to 100 ms) while the lock is held; under load that sleeping was most of a
    # SQLite webhook's time.
    one_writer: bool = False

    def async_url(self, database_url: str) -> URL:
        driver = "sqlite+aiosqlite" if self.name == "sqlite" else "postgresql+psycopg"
        return _url(database_url).set(drivername=driver)

    def sync_url(self, database_url: str) -> URL:
        """The same database through a blocking driver, for Alembic and the CLI's checks."""
        driver = "sqlite" if self.name == "sqlite" else "postgresql+psycopg"
        return _url(database_url).set(drivername=driver)

    def libpq_conninfo(self, database_url: str) -> str:
        """The URL as psycopg's own connect() takes it (PostgreSQL only)."""
        assert self.name == "postgresql", "only PostgreSQL has a libpq connection string"
        return _url(database_url).set(drivername="postgresql").render_as_string(False)

    def file_path(self, database_url: str) -> Path | None:
        """The database file (SQLite on disk); None for a server or an in-memory database."""
        url = _url(database_url)
        if self.name != "sqlite" or not url.database or url.database == ":memory:":
            return None
        return Path(url.database)

    def create_engine(self, database_url: str, *, pool_size: int = 10) -> AsyncEngine:
        url = self.async_url(database_url)
        if self.name == "sqlite":
            path = self.file_path(database_url)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(url, connect_args={"timeout": 5.0})
            _tune_sqlite(engine)
            return engine
        return create_async_engine(
            url,
            pool_size=pool_size,
            # No overflow: under a burst, a request waits for one of the pool's connections
            # rather than opening (and, on return, closing) its own; a PostgreSQL connection
            # costs a process fork, and churning them took a tenth of a worker's time under load.
            max_overflow=0,
            # Waiting longer than this is worse than a 503 that FAL retries (its timeout is 15 s).
            pool_timeout=10,
            # An outage must give a quick 503, not a request that hangs until FAL's 15 s timeout.
            connect_args={"connect_timeout": 3, "options": "-c statement_timeout=10000"},
        )

    def insert(self, table: Any) -> Any:
        """INSERT with ON CONFLICT support, in this dialect's construct."""
        return postgresql.insert(table) if self.name == "postgresql" else sqlite.insert(table)

    def skip_locked(self, query: Q) -> Q:
        """Rows another process is claiming right now are skipped, not waited for."""
        return query.with_for_update(skip_locked=True) if self.row_locks else query

    def wake(self, channel: str) -> list[Any]:
        """Columns to add to a RETURNING that wake `channel`'s listeners on commit."""
        return [func.pg_notify(channel, "")] if self.wakes_on_commit else []

    async def lock_key(self, session: AsyncSession, key: str) -> None:
        """Serialise transactions on `key` until commit (SQLite serialises every writer)."""
        if self.name == "postgresql":
            await session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))

    def stores_naive_datetimes(self) -> bool:
        # SQLite compares datetimes as text, so every stored value must share one format.
        return self.name == "sqlite"

    def is_retryable(self, exc: BaseException) -> bool:
        """Lock contention or a serialization conflict: the transaction may simply run again."""
        return is_retryable(exc)


POSTGRESQL = Dialect(
    "postgresql",
    row_locks=True,
    wakes_on_commit=True,
    outbox_poll_seconds=1.0,
    combines_writes=True,
    direct_driver="asyncpg",
)
# SQLite cannot wake a process from another one: poll often (a cheap indexed query).
SQLITE = Dialect(
    "sqlite",
    row_locks=False,
    wakes_on_commit=False,
    outbox_poll_seconds=0.2,
    combines_writes=False,
    direct_driver="sqlite3",
    one_writer=True,
)
_BY_NAME = {d.name: d for d in (POSTGRESQL, SQLITE)}


@functools.cache
def dialect_for(database_url: str) -> Dialect:
    """The dialect of a DATABASE_URL (`sqlite:///...` or `postgresql://...`)."""
    return _BY_NAME[_url(database_url).get_backend_name()]


def dialect_named(name: str) -> Dialect:
    """The dialect of an SQLAlchemy dialect name (a bind's `dialect.name`)."""
    return _BY_NAME[name]


def dialect_of(bind: AsyncSession | AsyncConnection | AsyncEngine) -> Dialect:
    """The dialect a session, connection or engine talks to."""
    engine = bind.get_bind() if isinstance(bind, AsyncSession) else bind
    return _BY_NAME[engine.dialect.name]


def is_retryable(exc: BaseException) -> bool:
    """Lock contention or a serialization conflict, in either dialect's words (as SQLAlchemy
    wraps it, or as the driver raised it)."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if getattr(orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
        return True
    if not isinstance(exc, DBAPIError) and not isinstance(orig, sqlite3.OperationalError):
        return False
    text = str(orig).lower()
    return "database is locked" in text or "database is busy" in text


# Every SQLite connection's settings (the benchmark's SQLite floor uses the same). FULL: an
# acknowledged webhook survives power loss, not only a process crash.
SQLITE_PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=5000")


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so that every transaction can start with
        # BEGIN IMMEDIATE: two workers then queue on the write lock instead of failing with
        # "database is locked" when a reader tries to become a writer.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
