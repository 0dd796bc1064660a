"""Which process sends: a PostgreSQL advisory lock (and LISTEN), or a file lock beside SQLite;
and `run_elected`, every worker's loop of trying to lead and, while leading, draining.

`leadership()` yields an awaitable that completes when leadership is lost, or None when another
process leads. The lock dies with its holder, however it dies: PostgreSQL releases an advisory
lock with its session, the kernel releases a flock with its process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO

import psycopg
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.outbox.dispatcher import Dispatcher
from service.outbox.messages import OUTBOX_CHANNEL
from service.outbox.sender import Sender
from service.outbox.telegram import sender_for
from service.settings import Settings
from service.store.dialect import dialect_for
from service.store.direct import open_direct

# The dispatcher's logger, as the events below were logged before they moved here.
log = structlog.get_logger("service.dispatcher")
_NOT_CONFIGURED = "TELEGRAM_TOKEN is empty: notifications stay pending"

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


async def run_elected(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    wakeup: asyncio.Event,
    make_sender: Callable[[], Sender] | None = None,
) -> None:
    """Try to lead; when leading, dispatch until leadership is lost or the task is cancelled."""
    announced = False
    while True:
        try:
            async with leadership(settings, wakeup) as lost:
                if lost is not None:
                    log.info("dispatcher_leader", worker=os.getpid())
                    if not settings.telegram_configured and make_sender is None:
                        if not announced:
                            log.warning("telegram_not_configured", detail=_NOT_CONFIGURED)
                            announced = True
                        await lost
                    else:
                        await _lead(settings, sessions, wakeup, lost, make_sender)
        except (OSError, psycopg.Error) as exc:
            log.warning("dispatcher_election_failed", error=str(exc).strip().split("\n")[0])
        except Exception:
            # A bug must not silently end notifications for the life of the worker.
            log.exception("dispatcher_failed")
        await asyncio.sleep(settings.outbox_election_retry_seconds)


async def _lead(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    wakeup: asyncio.Event,
    lost: Awaitable[None],
    make_sender: Callable[[], Sender] | None,
) -> None:
    sender = make_sender() if make_sender else sender_for(settings)
    try:
        await _start(sender)
        await _drain_while_leading(settings, sessions, sender, wakeup, lost)
    finally:
        # Also when cancelled while Telegram is still down: its HTTP connections are closed.
        with contextlib.suppress(Exception):
            await sender.stop()


async def _start(sender: Sender) -> None:
    delay = 1.0
    while True:
        try:
            await sender.start()
            return
        except Exception as exc:
            # Telegram (or the configured Bot API server) is down: keep the rows, try later.
            log.warning("telegram_start_failed", error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(60.0, delay * 2)


async def _drain_while_leading(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    sender: Sender,
    wakeup: asyncio.Event,
    lost: Awaitable[None],
) -> None:
    # Its own few connections of the hot path's kind, for recording each send.
    direct = open_direct(settings.database_url, size=2)
    dispatcher = Dispatcher(settings, sessions, sender, wakeup, direct)
    drain = asyncio.create_task(dispatcher.run())
    leadership_lost = asyncio.ensure_future(lost)
    try:
        await asyncio.wait({drain, leadership_lost}, return_when=asyncio.FIRST_COMPLETED)
        if leadership_lost.done():
            log.warning("dispatcher_leadership_lost")
    finally:
        drain.cancel()
        (outcome,) = await asyncio.gather(drain, return_exceptions=True)
        if isinstance(outcome, Exception):
            log.error("dispatcher_crashed", error=repr(outcome))
        if direct is not None:
            # Bounded: a server that stopped answering must not hold up the next election.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(direct.close(), 5)
