"""Engine and sessions for PostgreSQL (psycopg 3) and the embedded SQLite default."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

T = TypeVar("T")

# psycopg's SQLSTATEs that mean "run the same transaction again": serialization failure,
# deadlock. SQLite says "database is locked" / "busy" instead.
_RETRYABLE_SQLSTATES = {"40001", "40P01"}


class DatabaseUnavailable(Exception):
    """The database cannot be reached or keeps refusing; callers answer 503."""


def async_url(database_url: str) -> URL:
    """`sqlite:///x` and `postgresql://...` as the async drivers want them."""
    url = make_url(database_url.replace("postgres://", "postgresql://", 1))
    if url.get_backend_name() == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    return url.set(drivername="postgresql+psycopg")


def sync_url(database_url: str) -> URL:
    """The same database through a blocking driver, for Alembic and the CLI's checks."""
    url = make_url(database_url.replace("postgres://", "postgresql://", 1))
    if url.get_backend_name() == "sqlite":
        return url.set(drivername="sqlite")
    return url.set(drivername="postgresql+psycopg")


def sqlite_path(database_url: str) -> Path | None:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    url = async_url(database_url)
    if url.get_backend_name() == "sqlite":
        path = sqlite_path(database_url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 5.0})
        _tune_sqlite(engine)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        # No overflow: under a burst, a request waits for one of the pool's connections rather
        # than opening (and, on return, closing) its own; a PostgreSQL connection costs a
        # process fork, and churning them took a tenth of a worker's time under load.
        max_overflow=0,
        # Waiting longer than this is worse than a 503 that FAL retries (its timeout is 15 s).
        pool_timeout=10,
        # An outage must give a quick 503, not a request that hangs until FAL's 15 s timeout.
        connect_args={"connect_timeout": 3, "options": "-c statement_timeout=10000"},
    )


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so that every transaction can start with
        # BEGIN IMMEDIATE: two workers then queue on the write lock instead of failing with
        # "database is locked" when a reader tries to become a writer.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged webhook survives power loss, not only a process crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def is_retryable(exc: BaseException) -> bool:
    """Lock contention or a serialization conflict: the same transaction may simply run again."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return True
    text = str(orig).lower()
    return "database is locked" in text or "database is busy" in text


def is_unavailable(exc: BaseException) -> bool:
    """The database is down or unreachable, as opposed to refusing this particular statement."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError) and not is_retryable(exc):
        return True
    return isinstance(exc, OSError | TimeoutError)


async def run_transaction(
    sessions: async_sessionmaker[AsyncSession],
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    attempts: int = 8,
) -> T:
    """Run `work` in one transaction, again on lock contention; DatabaseUnavailable when down."""
    for attempt in range(1, attempts + 1):
        try:
            async with sessions() as session, session.begin():
                return await work(session)
        except Exception as exc:
            if is_retryable(exc) and attempt < attempts:
                # Jitter spreads the retries of colliding workers apart.
                await asyncio.sleep(min(0.5, 0.01 * 2**attempt) * random.uniform(0.5, 1.5))
                continue
            if is_retryable(exc) or is_unavailable(exc):
                raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc
            raise
    raise AssertionError("unreachable")
