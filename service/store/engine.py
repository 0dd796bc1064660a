"""Engines, sessions and transactions that retry contention and report an outage as one error."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from service.store.dialect import dialect_for, is_retryable

T = TypeVar("T")

# Work given up by `within`, kept referenced until its own cleanup ends (asyncio keeps only
# weak references to tasks).
_ABANDONED: set[asyncio.Task[Any]] = set()


class DatabaseUnavailable(Exception):
    """The database cannot be reached or keeps refusing; callers answer 503."""


def sync_url(database_url: str) -> URL:
    """The same database through a blocking driver, for Alembic and the CLI's checks."""
    return dialect_for(database_url).sync_url(database_url)


def sqlite_path(database_url: str) -> Path | None:
    """The database file of an embedded database; None for a server."""
    return dialect_for(database_url).file_path(database_url)


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    return dialect_for(database_url).create_engine(database_url, pool_size=pool_size)


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def is_unavailable(exc: BaseException) -> bool:
    """The database is down or unreachable, as opposed to refusing this particular statement."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError) and not is_retryable(exc):
        return True
    return isinstance(exc, OSError | TimeoutError)


# Per event loop (an asyncio.Lock belongs to one), per database file: the lock a process's
# transactions queue on where the database takes one writer at a time.
_WRITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


@contextlib.asynccontextmanager
async def writer_turn(path: Path) -> AsyncIterator[None]:
    """This process's turn to write to the database file `path` (the engine's sessions and
    the hot path's own connection, store/direct_sqlite.py, take the same turns)."""
    locks = _WRITERS.setdefault(asyncio.get_running_loop(), {})
    async with locks.setdefault(str(path), asyncio.Lock()):
        yield


@functools.lru_cache(maxsize=32)
def _one_writer_file(url: URL) -> Path | None:
    """The file whose writers take turns, for an engine's URL; None where writers need not.
    Worked out once per engine, not on every transaction."""
    database_url = url.render_as_string(hide_password=False)
    dialect = dialect_for(database_url)
    return dialect.file_path(database_url) if dialect.one_writer else None


@contextlib.asynccontextmanager
async def _turn(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[None]:
    """This process's turn to write, where the database takes one writer at a time."""
    bind = sessions.kw.get("bind")
    path = _one_writer_file(bind.url) if isinstance(bind, AsyncEngine) else None
    if path is None:
        yield
        return
    async with writer_turn(path):
        yield


async def pause_before_retry(attempt: int) -> None:
    """The wait before running contended work again: growing with the attempt, with jitter
    that spreads the retries of colliding workers apart."""
    await asyncio.sleep(min(0.5, 0.01 * 2**attempt) * random.uniform(0.5, 1.5))


async def run_transaction(
    sessions: async_sessionmaker[AsyncSession],
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    attempts: int = 8,
) -> T:
    """Run `work` in one transaction, again on lock contention; DatabaseUnavailable when down."""
    for attempt in range(1, attempts + 1):
        try:
            async with _turn(sessions), sessions() as session, session.begin():
                return await work(session)
        except Exception as exc:
            if is_retryable(exc) and attempt < attempts:
                await pause_before_retry(attempt)
                continue
            if is_retryable(exc) or is_unavailable(exc):
                raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc
            raise
    raise AssertionError("unreachable")


async def within(seconds: float, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result, or DatabaseUnavailable after `seconds` without one.

    For a database that stops answering without closing its connections (a stalled host, a
    frozen process): the server's statement_timeout cannot fire then, and cancelling a
    statement waits on the same silent socket (psycopg tries a cancel request, then gives the
    connection up, about 10 s). So the caller gets its answer at the deadline and the work is
    cancelled and left to finish its cleanup in the background.
    """
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task in done:
        return task.result()
    task.cancel()
    _ABANDONED.add(task)
    task.add_done_callback(_forget)
    raise DatabaseUnavailable(f"no answer from the database within {seconds:g} s")


def _forget(task: asyncio.Task[Any]) -> None:
    _ABANDONED.discard(task)
    if not task.cancelled():
        # Read, so that asyncio does not log "exception was never retrieved".
        task.exception()
