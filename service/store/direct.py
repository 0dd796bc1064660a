"""The driver's own connections for the webhook's hot path, where the dialect has them (asyncpg).

SQLAlchemy's session costs the webhook a fifth of a worker's time and two round trips (BEGIN,
COMMIT) of its own. Here the same SQLAlchemy statements, compiled once, run on bare asyncpg
connections outside any transaction, where each statement is its own: a matched webhook is a
read and one guarded write (store/dialect.py's `write_guarded`), two exchanges. asyncpg
prepares each statement on its first use on a connection and keeps it; it encodes the
parameters in C, which took a webhook about a quarter less CPU than psycopg's own
connections did (README, Performance). Everything else (migrations, the bot, operator
commands, the rare webhook that finds no job) keeps the session on psycopg.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

import asyncpg
from sqlalchemy.dialects.postgresql import asyncpg as sa_asyncpg
from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.compiler import SQLCompiler

from service.store.dialect import RETRYABLE_SQLSTATES, Dialect, dialect_for
from service.store.engine import DatabaseUnavailable, pause_before_retry

T = TypeVar("T")

# SQLAlchemy's asyncpg dialect writes the statements as asyncpg takes them: positional
# parameters, each cast to its column's type, JSON serialised by the bind processors.
_ASYNCPG = sa_asyncpg.dialect()  # type: ignore[no-untyped-call]


@functools.cache
def compiled_for(statement: Any, compiler: SADialect) -> SQLCompiler:
    """`statement` as `compiler`'s driver takes it, compiled once."""
    compiled = statement.compile(dialect=compiler)
    assert isinstance(compiled, SQLCompiler)
    return compiled


_REQUIRED = object()


@functools.cache
def _positions(compiled: SQLCompiler) -> tuple[tuple[str, Callable[[Any], Any] | None, Any], ...]:
    """Each parameter in order: its name, its bind processor, and its value when the statement
    fixes it (a literal) rather than the caller."""
    processors = cast(Mapping[str, Callable[[Any], Any]], compiled._bind_processors)
    positions = []
    for name in compiled.positiontup or ():
        bind = compiled.binds[name]
        assert not bind.expanding, "the hot path's statements have no IN lists"
        fixed = _REQUIRED if bind.required else bind.effective_value
        positions.append((name, processors.get(name), fixed))
    return tuple(positions)


def bound(compiled: SQLCompiler, params: Mapping[str, Any]) -> list[Any]:
    """The statement's parameters in order, as the driver takes them (JSON serialised, UTC
    checked). What SQLAlchemy's construct_params does for these statements, worked out once
    per statement instead of once per call."""
    values = []
    for name, process, fixed in _positions(compiled):
        value = params[name] if fixed is _REQUIRED else params.get(name, fixed)
        values.append(process(value) if process is not None else value)
    return values


class DirectConnection(abc.ABC):
    """A connection of the hot path; its statements' columns need no conversion on the way
    out (text, numbers)."""

    dialect: Dialect

    @abc.abstractmethod
    async def first(self, statement: Any, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """Run `statement` and read its first row, if any."""

    @abc.abstractmethod
    async def rows(self, statement: Any, params: Mapping[str, Any]) -> int:
        """Run `statement` and count the rows it answers (a write's RETURNING)."""

    async def one(self, statement: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        row = await self.first(statement, params)
        assert row is not None, "the statement answers one row"
        return row


class DirectPool(abc.ABC):
    """Where the hot path gets its connections; `run` gives its work one."""

    dialect: Dialect

    @abc.abstractmethod
    async def run(
        self, work: Callable[[DirectConnection], Awaitable[T]], *, attempts: int = 8
    ) -> T:
        """`work`'s result; DatabaseUnavailable when the database is down, IntegrityError
        (SQLAlchemy's, as the session raises it) when the work breaks a rule of the data."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class AsyncpgConnection(DirectConnection):
    """An asyncpg connection outside any transaction: every statement commits before it
    answers (one exchange each)."""

    def __init__(self, connection: asyncpg.Connection, dialect: Dialect) -> None:
        self._connection = connection
        self.dialect = dialect

    async def first(self, statement: Any, params: Mapping[str, Any]) -> dict[str, Any] | None:
        compiled = compiled_for(statement, _ASYNCPG)
        row = await self._connection.fetchrow(compiled.string, *bound(compiled, params))
        return dict(row.items()) if row is not None else None

    async def rows(self, statement: Any, params: Mapping[str, Any]) -> int:
        compiled = compiled_for(statement, _ASYNCPG)
        return len(await self._connection.fetch(compiled.string, *bound(compiled, params)))


class AsyncpgPool(DirectPool):
    """Up to `size` asyncpg connections, opened on demand like the engine's pool: an outage
    fails the next checkout at once (a 503), and the first checkout after it reconnects."""

    def __init__(self, database_url: str, dialect: Dialect, size: int) -> None:
        self.dialect = dialect
        self._dsn = dialect.libpq_conninfo(database_url)
        self._idle: list[asyncpg.Connection] = []
        self._slots = asyncio.Semaphore(size)

    async def _connect(self) -> asyncpg.Connection:
        # The engine's own settings (dialect.py): a quick failure and a bound on every statement.
        try:
            connection = await asyncpg.connect(
                self._dsn, timeout=3, server_settings={"statement_timeout": "10000"}
            )
        except asyncpg.PostgresError as exc:
            # Refused at the door (no such database, starting up, too many clients, a wrong
            # password): whatever the SQLSTATE, the database is not there for this event.
            raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc
        # The bind processors have serialised JSON already: pass the text through.
        for json_type in ("json", "jsonb"):
            await connection.set_type_codec(
                json_type, encoder=str, decoder=str, schema="pg_catalog", format="text"
            )
        return connection

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[DirectConnection]:
        try:
            # The engine waits as long for one of its connections (pool_timeout).
            await asyncio.wait_for(self._slots.acquire(), 10)
        except TimeoutError as exc:
            raise DatabaseUnavailable("no database connection free within 10 s") from exc
        connection: asyncpg.Connection | None = None
        clean = False
        try:
            connection = self._idle.pop() if self._idle else await self._connect()
            yield AsyncpgConnection(connection, self.dialect)
            clean = True
        finally:
            if connection is not None:
                self._put_back(connection, clean)
            self._slots.release()

    def _put_back(self, connection: asyncpg.Connection, clean: bool) -> None:
        if connection.is_closed():
            # The server went away: the idle ones are as dead; the next checkout reconnects.
            for stale in self._idle:
                stale.terminate()
            self._idle.clear()
        elif clean and not connection.is_in_transaction():
            self._idle.append(connection)
            return
        # Interrupted (a cancelled statement, an error): never reused half-way through.
        connection.terminate()

    async def run(
        self, work: Callable[[DirectConnection], Awaitable[T]], *, attempts: int = 8
    ) -> T:
        """`work` on a connection, again on a deadlock or serialization failure (as
        store.engine.run_transaction); DatabaseUnavailable when the database is down."""
        for attempt in range(1, attempts + 1):
            try:
                async with self.connection() as connection:
                    return await work(connection)
            except asyncpg.IntegrityConstraintViolationError as exc:
                # As the session reports it: the event breaks a rule of the stored data.
                raise IntegrityError(None, None, exc) from exc
            except asyncpg.PostgresError as exc:
                retryable = exc.sqlstate in RETRYABLE_SQLSTATES
                if retryable and attempt < attempts:
                    await pause_before_retry(attempt)
                    continue
                if retryable or _is_outage(exc):
                    raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc
                raise
            except (
                asyncpg.InterfaceError,
                asyncpg.exceptions.InternalClientError,
                OSError,
                TimeoutError,
            ) as exc:
                # Refused, reset, closed under us (asyncpg may find that out as a protocol
                # state it cannot leave), or no answer to the connect in time.
                raise DatabaseUnavailable(str(exc) or type(exc).__name__) from exc
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for connection in self._idle:
            await connection.close()
        self._idle.clear()


# SQLSTATE classes that mean the server, not this statement, is the trouble: connection
# exceptions (08), operator intervention (57: shutting down, starting up, statement timeout),
# insufficient resources (53: a full disk, too many connections), system errors (58).
_OUTAGE_CLASSES = frozenset({"08", "53", "57", "58"})


def _is_outage(exc: asyncpg.PostgresError) -> bool:
    return (exc.sqlstate or "")[:2] in _OUTAGE_CLASSES


def open_direct(database_url: str, size: int = 10) -> DirectPool | None:
    """The hot path's pool, where the database's dialect has a direct driver; else None."""
    from service.store.direct_sqlite import SqlitePool  # it builds on this module

    dialect = dialect_for(database_url)
    if dialect.direct_driver == "asyncpg":
        return AsyncpgPool(database_url, dialect, size)
    path = dialect.file_path(database_url)
    if dialect.direct_driver == "sqlite3" and path is not None:
        # One connection: SQLite takes one writer at a time anyway.
        return SqlitePool(path, dialect)
    return None
