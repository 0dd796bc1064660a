"""The webhook's hot path on SQLite: the whole transaction in one hop to one thread.

Through the session, each of a webhook's seven statements (BEGIN, the look-up, the event, the
change, the zip's deletion, the outbox row, COMMIT) was a hop to aiosqlite's thread and back
and a pass through the ORM. Here one thread of this process holds one connection with the
engine's pragmas, and the hot path's work (jobs/ingest.py's `ingest_matched`) runs there
from BEGIN IMMEDIATE to COMMIT: its awaits on this connection never wait, so the coroutine is
driven to its end on that thread. The process's transactions take turns with the engine's
(store/engine.py's `writer_turn`), so the two never meet on SQLite's busy handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy.dialects.sqlite import pysqlite
from sqlalchemy.exc import IntegrityError

from service.store.dialect import SQLITE_PRAGMAS, Dialect, is_retryable
from service.store.direct import DirectConnection, DirectPool, bound, compiled_for
from service.store.engine import DatabaseUnavailable, pause_before_retry, writer_turn

T = TypeVar("T")

# The blocking driver's SQL (qmark parameters) and bind processors (datetimes as text).
_PYSQLITE = pysqlite.dialect()


class SqliteConnection(DirectConnection):
    """The pool's connection, inside the transaction its thread has begun."""

    def __init__(self, connection: sqlite3.Connection, dialect: Dialect) -> None:
        self._connection = connection
        self.dialect = dialect

    def _fetch(self, statement: Any, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        compiled = compiled_for(statement, _PYSQLITE)
        cursor = self._connection.execute(compiled.string, bound(compiled, params))
        names = [column[0] for column in cursor.description or ()]
        # Every row read: a RETURNING statement is finished only when its cursor is empty.
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    async def first(self, statement: Any, params: Mapping[str, Any]) -> dict[str, Any] | None:
        found = self._fetch(statement, params)
        return found[0] if found else None

    async def rows(self, statement: Any, params: Mapping[str, Any]) -> int:
        return len(self._fetch(statement, params))


def _to_the_end(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never waits (each of its awaits is answered at once,
    as a SqliteConnection's are), driven here on this thread."""
    try:
        coroutine.send(None)
    except StopIteration as finished:
        return cast(T, finished.value)
    coroutine.close()
    raise RuntimeError("the hot path's work waited on something other than its connection")


class SqlitePool(DirectPool):
    """One connection to the database file, used only on its own thread."""

    def __init__(self, path: Path, dialect: Dialect) -> None:
        self.dialect = dialect
        self._path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-hot-path")
        self._connection: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            # As store/dialect.py's engine: the same pragmas, transactions begun by hand.
            connection = sqlite3.connect(self._path, timeout=5.0, isolation_level=None)
            for pragma in SQLITE_PRAGMAS:
                connection.execute(f"PRAGMA {pragma}")
            self._connection = connection
        return self._connection

    def _transaction(self, work: Callable[[DirectConnection], Awaitable[T]]) -> T:
        connection = self._open()
        connection.execute("BEGIN IMMEDIATE")
        try:
            result = _to_the_end(
                cast(Coroutine[Any, Any, T], work(SqliteConnection(connection, self.dialect)))
            )
            connection.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (a full disk) may have ended the transaction already.
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            raise
        return result

    async def run(
        self, work: Callable[[DirectConnection], Awaitable[T]], *, attempts: int = 8
    ) -> T:
        loop = asyncio.get_running_loop()
        for attempt in range(1, attempts + 1):
            try:
                async with writer_turn(self._path):
                    return await loop.run_in_executor(self._thread, self._transaction, work)
            except sqlite3.IntegrityError as exc:
                # As the session reports it: the event breaks a rule of the stored data.
                raise IntegrityError(None, None, exc) from exc
            except sqlite3.OperationalError as exc:
                # Another process holds the write lock beyond the busy timeout: again, later.
                if is_retryable(exc) and attempt < attempts:
                    await pause_before_retry(attempt)
                    continue
                # Locked for good, a full disk, an unreadable file: not this event's fault.
                raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc
            except (sqlite3.DatabaseError, OSError) as exc:
                raise DatabaseUnavailable(str(exc).splitlines()[0] or type(exc).__name__) from exc
        raise AssertionError("unreachable")

    async def close(self) -> None:
        def shut() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        await asyncio.get_running_loop().run_in_executor(self._thread, shut)
        self._thread.shutdown(wait=False)
