"""Which process sends: a PostgreSQL advisory lock (and LISTEN), or a file lock beside SQLite.

`leadership()` yields an awaitable that completes when leadership is lost, or None when another
process leads. The lock dies with its holder, however it dies: PostgreSQL releases an advisory
lock with its session, the kernel releases a flock with its process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import IO

import psycopg

from service.outbox.messages import OUTBOX_CHANNEL
from service.settings import Settings
from service.store.dialect import dialect_for

# Any constant both sides agree on; "aibots" in ASCII, so it reads in pg_locks.
LEADER_LOCK_KEY = 0x616962_6F7473


@contextlib.asynccontextmanager
async def _advisory_lock(
    conninfo: str, wakeup: asyncio.Event
) -> AsyncIterator[Awaitable[None] | None]:
    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True, connect_timeout=3)
    try:
        row = await (
            await conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,))
        ).fetchone()
        if not row or not row[0]:
            yield None
            return
        await conn.execute(f"LISTEN {OUTBOX_CHANNEL}")

        async def listen() -> None:
            # Ends (with an error) when the connection, and with it the lock, is gone.
            async for _ in conn.notifies():
                wakeup.set()

        listener = asyncio.create_task(listen())
        try:
            yield listener
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                await listener
    finally:
        with contextlib.suppress(psycopg.Error):
            await conn.close()


@contextlib.asynccontextmanager
async def _file_lock(database: Path | None) -> AsyncIterator[Awaitable[None] | None]:
    # An in-memory database lives in one process: that process leads.
    lock_path = Path(f"{database}.dispatcher.lock") if database else None
    handle: IO[bytes] | None = None
    if lock_path is not None:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = lock_path.open("ab")
        try:
            # Released by the kernel when this process dies, however it dies.
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            yield None
            return
    try:
        # A file lock cannot be taken away: leadership ends only with this context.
        yield asyncio.get_running_loop().create_future()
    finally:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def leadership(
    settings: Settings, wakeup: asyncio.Event
) -> contextlib.AbstractAsyncContextManager[Awaitable[None] | None]:
    """Try to lead once; on PostgreSQL the leader's connection also LISTENs and sets `wakeup`."""
    dialect = dialect_for(settings.database_url)
    if dialect.wakes_on_commit:
        # A database that can wake listeners holds the lock on the connection that listens.
        return _advisory_lock(dialect.libpq_conninfo(settings.database_url), wakeup)
    return _file_lock(dialect.file_path(settings.database_url))
