"""The driver's own connections for the webhook's hot path, where the dialect has them (psycopg).

SQLAlchemy's session costs the webhook a fifth of a worker's time and two round trips (BEGIN,
COMMIT) of its own. Here the same SQLAlchemy statements, compiled once, run on bare psycopg
connections in autocommit mode, where each statement is its own transaction: a matched webhook
is a read and one guarded write (store/dialect.py's `write_guarded`), two exchanges. psycopg
prepares a statement on the server after its fifth use on a connection. Everything else
(migrations, the bot, operator commands, the rare webhook that finds no job) keeps the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

import psycopg
from psycopg.rows import dict_row
from sqlalchemy.dialects.postgresql import psycopg as sa_psycopg
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.compiler import SQLCompiler

from service.store.dialect import RETRYABLE_SQLSTATES, Dialect, dialect_for
from service.store.engine import DatabaseUnavailable

T = TypeVar("T")

# The engine's own dialect, so that the SQL and its parameter conversions are the session's.
_COMPILER_DIALECT = sa_psycopg.dialect()  # type: ignore[no-untyped-call]


@functools.cache
def _compiled(statement: Any) -> SQLCompiler:
    compiled = statement.compile(dialect=_COMPILER_DIALECT)
    assert isinstance(compiled, SQLCompiler)
    return compiled


def _bound(compiled: SQLCompiler, params: Mapping[str, Any]) -> dict[str, Any]:
    """The statement's parameters as the driver takes them (JSON serialised, UTC checked)."""
    values = compiled.construct_params(dict(params))
    processors = cast(Mapping[str, Callable[[Any], Any]], compiled._bind_processors)
    return {
        name: processors[name](value) if name in processors else value
        for name, value in values.items()
    }


class DirectConnection:
    """A psycopg connection in autocommit mode: every statement commits before it answers."""

    def __init__(self, connection: psycopg.AsyncConnection[Any], dialect: Dialect) -> None:
        self._connection = connection
        self.dialect = dialect

    async def first(self, statement: Any, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """Run `statement` and read its first row, if any (one exchange).

        For statements whose columns need no conversion on the way out (text, numbers).
        """
        compiled = _compiled(statement)
        cursor = self._connection.cursor(row_factory=dict_row)
        await cursor.execute(compiled.string, _bound(compiled, params))
        return await cursor.fetchone()

    async def one(self, statement: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        row = await self.first(statement, params)
        assert row is not None, "the statement answers one row"
        return row


class DirectPool:
    """Up to `size` psycopg connections, opened on demand like the engine's pool: an outage
    fails the next checkout at once (a 503), and the first checkout after it reconnects."""

    def __init__(self, database_url: str, dialect: Dialect, size: int) -> None:
        self.dialect = dialect
        self._conninfo = dialect.libpq_conninfo(database_url)
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(size)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        # The engine's own settings (dialect.py): a quick failure and a bound on every statement.
        return await psycopg.AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            connect_timeout=3,
            options="-c statement_timeout=10000",
        )

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[DirectConnection]:
        try:
            # The engine waits as long for one of its connections (pool_timeout).
            await asyncio.wait_for(self._slots.acquire(), 10)
        except TimeoutError as exc:
            raise DatabaseUnavailable("no database connection free within 10 s") from exc
        connection: psycopg.AsyncConnection[Any] | None = None
        try:
            connection = self._idle.pop() if self._idle else await self._connect()
            yield DirectConnection(connection, self.dialect)
        finally:
            if connection is not None:
                self._put_back(connection)
            self._slots.release()

    def _put_back(self, connection: psycopg.AsyncConnection[Any]) -> None:
        idle = psycopg.pq.TransactionStatus.IDLE
        if connection.broken or connection.closed:
            # The server went away: the idle ones are as dead; the next checkout reconnects.
            for stale in self._idle:
                stale.pgconn.finish()
            self._idle.clear()
        elif connection.info.transaction_status == idle:
            self._idle.append(connection)
            return
        if not connection.closed:
            connection.pgconn.finish()

    async def run(
        self, work: Callable[[DirectConnection], Awaitable[T]], *, attempts: int = 8
    ) -> T:
        """`work` on a connection, again on a deadlock or serialization failure (as
        store.engine.run_transaction); DatabaseUnavailable when the database is down."""
        for attempt in range(1, attempts + 1):
            try:
                async with self.connection() as connection:
                    return await work(connection)
            except psycopg.IntegrityError as exc:
                # As the session reports it: the event breaks a rule of the stored data.
                raise IntegrityError(None, None, exc) from exc
            except psycopg.Error as exc:
                retryable = exc.sqlstate in RETRYABLE_SQLSTATES
                if retryable and attempt < attempts:
                    await asyncio.sleep(min(0.5, 0.01 * 2**attempt) * random.uniform(0.5, 1.5))
                    continue
                if retryable or isinstance(exc, psycopg.OperationalError):
                    raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc
                raise
            except OSError as exc:
                raise DatabaseUnavailable(str(exc)) from exc
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for connection in self._idle:
            await connection.close()
        self._idle.clear()


def open_direct(database_url: str, size: int = 10) -> DirectPool | None:
    """The hot path's pool, where the database's dialect has a direct driver; else None."""
    dialect = dialect_for(database_url)
    return DirectPool(database_url, dialect, size) if dialect.direct_driver else None
