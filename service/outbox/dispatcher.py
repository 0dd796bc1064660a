"""The loop that drains the outbox to Telegram, run by exactly one elected process at a time.

Every gunicorn worker starts this loop; the first to take the database's leader lock (a
PostgreSQL advisory lock, or a file lock beside SQLite) sends, the others wait to take over
when it dies. One sender is what makes Telegram's limits (30 messages/s per bot, 1/s per chat)
hold across workers and hosts without a shared counter; claims still use leases and
SKIP LOCKED, so even two senders during a hand-over never send the same row.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, Any, Protocol

import psycopg
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import metrics
from service.outbox import queue as outbox
from service.outbox.messages import OUTBOX_CHANNEL
from service.outbox.telegram import SendResult, TelegramSender, Verdict, bot_for
from service.settings import Settings
from service.store.engine import DatabaseUnavailable, run_transaction, sqlite_path, sync_url
from service.store.models import utcnow
from service.web.runtime import Runtime

log = structlog.get_logger("service.dispatcher")

# Any constant both sides agree on; "aibots" in ASCII, so it reads in pg_locks.
LEADER_LOCK_KEY = 0x616962_6F7473
ELECTION_RETRY_SECONDS = 2.0
MAX_IN_FLIGHT = 16


def lease_seconds() -> float:
    # Long enough for a send that waits its turn behind the per-chat pacing and then times out.
    return float(os.environ.get("OUTBOX_LEASE_SECONDS", "120"))


def poll_seconds(settings: Settings) -> float:
    # SQLite cannot wake a process from another one: poll often (a cheap indexed query).
    # PostgreSQL wakes the leader with NOTIFY; polling is only the fallback.
    default = "0.2" if settings.is_sqlite else "1.0"
    return float(os.environ.get("OUTBOX_POLL_SECONDS", default))


class Sender(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def send(
        self, chat_id: int, text: str, markup: dict[str, object] | None
    ) -> SendResult: ...


class Pacer:
    """Hands out send times: at most `rate` per second overall and one per `interval` per chat."""

    def __init__(
        self, rate: float, chat_interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._gap = 1.0 / rate
        self._chat_interval = chat_interval
        self._clock = clock
        self._next_any = 0.0
        self._next_for_chat: dict[int, float] = {}
        self._paused_until = 0.0

    def reserve(self, chat_id: int) -> float:
        """Reserve the earliest allowed slot for this chat; returns seconds to wait for it."""
        now = self._clock()
        slot = max(now, self._next_any, self._next_for_chat.get(chat_id, 0.0))
        self._next_any = slot + self._gap
        self._next_for_chat[chat_id] = slot + self._chat_interval
        if len(self._next_for_chat) > 10_000:
            self._next_for_chat = {c: t for c, t in self._next_for_chat.items() if t > now}
        return slot - now

    def pause(self, seconds: float) -> None:
        """Telegram said 429: nobody sends until it allows again."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        self._next_any = max(self._next_any, self._paused_until)

    def paused_for(self) -> float:
        """Seconds left of a 429 pause; sends that reserved their slot before it must wait too."""
        return max(0.0, self._paused_until - self._clock())


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        sender: Sender,
        wakeup: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.sender = sender
        self.wakeup = wakeup
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.pacer = Pacer(settings.telegram_rate_per_second, settings.telegram_chat_interval)
        self.in_flight: set[asyncio.Task[None]] = set()
        # Set by a send that failed for Telegram's reasons (5xx, network); the next success
        # ends the trouble and brings forward everything that was backing off.
        self.troubled = False

    async def run(self) -> None:
        """Drain until cancelled; database trouble only slows the loop down."""
        lease = dt.timedelta(seconds=lease_seconds())
        poll = poll_seconds(self.settings)
        try:
            while True:
                free = MAX_IN_FLIGHT - len(self.in_flight)
                claimed: list[outbox.Claimed] = []
                wait = poll
                if free > 0:
                    try:
                        claimed = await run_transaction(self.sessions, self._claimer(free, lease))
                        if not claimed:
                            due = await run_transaction(self.sessions, outbox.next_due_in)
                            wait = poll if due is None else min(poll, due)
                    except DatabaseUnavailable as exc:
                        log.warning("outbox_database_unavailable", error=str(exc))
                        wait = 1.0
                for item in claimed:
                    task = asyncio.create_task(self._deliver(item))
                    self.in_flight.add(task)
                    task.add_done_callback(self.in_flight.discard)
                if claimed and len(claimed) == free:
                    # A full batch: there may be more due right now.
                    await asyncio.sleep(0)
                    if len(self.in_flight) < MAX_IN_FLIGHT:
                        continue
                await self._idle(wait)
        finally:
            await self._finish_in_flight()

    async def _finish_in_flight(self) -> None:
        """Let claimed sends finish and record themselves before this sender stops.

        A send Telegram accepted but we did not record is sent again once its lease expires, so
        cancelling sends in flight (when leadership is lost with the database, say) would turn
        them into duplicates. They get most of their lease; only a second cancellation (the
        process shutting down) or the lease running out cuts them short.
        """
        if not self.in_flight:
            return
        tasks = set(self.in_flight)
        try:
            _, late = await asyncio.wait(tasks, timeout=lease_seconds() * 0.8)
        except asyncio.CancelledError:
            late = tasks
            raise
        finally:
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    def _claimer(
        self, limit: int, lease: dt.timedelta
    ) -> Callable[[AsyncSession], Awaitable[list[outbox.Claimed]]]:
        return lambda session: outbox.claim(session, self.worker, limit, lease)

    async def _idle(self, seconds: float) -> None:
        """Sleep until woken by a commit, a finished send, or the poll interval."""
        waiters: list[asyncio.Task[Any]] = [asyncio.create_task(self.wakeup.wait())]
        if self.in_flight:
            waiters.append(
                asyncio.create_task(
                    asyncio.wait(set(self.in_flight), return_when=asyncio.FIRST_COMPLETED)
                )
            )
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self.wakeup.clear()

    async def _deliver(self, item: outbox.Claimed) -> None:
        await asyncio.sleep(self.pacer.reserve(item.chat_id))
        # A deadline, not an event: another 429 may extend the pause while this one sleeps.
        while (paused := self.pacer.paused_for()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(paused)
        result = await self.sender.send(item.chat_id, item.text, item.reply_markup)
        if result.verdict is Verdict.RATE_LIMITED:
            self.pacer.pause(result.retry_after)
        metrics.TELEGRAM_SENDS.labels(result.verdict.value).inc()
        # The send happened; its record must not be lost to a short database hiccup.
        for attempt in range(30):
            try:
                state = await run_transaction(
                    self.sessions, lambda s: outbox.record(s, self.worker, item, result)
                )
                break
            except DatabaseUnavailable as exc:
                log.warning("outbox_record_retry", notification_id=item.id, error=str(exc))
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
        else:
            # The lease will expire and the row be sent again: the one duplicate we accept.
            log.error("outbox_record_lost", notification_id=item.id)
            return
        if result.verdict is Verdict.SENT:
            metrics.NOTIFY_LATENCY.observe((utcnow() - item.created_at).total_seconds())
            if self.troubled:
                self.troubled = False
                await self._expedite()
        elif result.verdict is Verdict.RETRY:
            self.troubled = True
        log_method = log.info if result.verdict is Verdict.SENT else log.warning
        log_method(
            "notification_send",
            notification_id=item.id,
            chat_id=item.chat_id,
            verdict=result.verdict.value,
            state=state,
            attempt=item.attempts,
            reclaimed=item.reclaimed,
            error=result.error,
        )

    async def _expedite(self) -> None:
        """Telegram answers again: what waits out a back-off is sent now, at the paced rate."""
        try:
            count = await run_transaction(self.sessions, outbox.expedite)
        except DatabaseUnavailable as exc:
            log.warning("outbox_expedite_failed", error=str(exc))
            return
        if count:
            log.info("outbox_expedited", notifications=count)
            self.wakeup.set()


# --- leadership -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _postgres_leadership(
    settings: Settings, wakeup: asyncio.Event
) -> AsyncIterator[Awaitable[None] | None]:
    """Yield a future that completes when leadership is lost, or None if another process leads."""
    conninfo = sync_url(settings.database_url).set(drivername="postgresql")
    conn = await psycopg.AsyncConnection.connect(
        conninfo.render_as_string(hide_password=False), autocommit=True, connect_timeout=3
    )
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
async def _file_leadership(settings: Settings) -> AsyncIterator[Awaitable[None] | None]:
    path = sqlite_path(settings.database_url)
    lock_path = Path(f"{path}.dispatcher.lock") if path else None
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
        yield asyncio.get_running_loop().create_future()
    finally:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def _leadership(
    settings: Settings, wakeup: asyncio.Event
) -> contextlib.AbstractAsyncContextManager[Awaitable[None] | None]:
    if settings.is_sqlite:
        return _file_leadership(settings)
    return _postgres_leadership(settings, wakeup)


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
            async with _leadership(settings, wakeup) as lost:
                if lost is not None:
                    log.info("dispatcher_leader", worker=os.getpid())
                    if not settings.telegram_configured and make_sender is None:
                        if not announced:
                            log.warning(
                                "telegram_not_configured",
                                detail="TELEGRAM_TOKEN is empty: notifications stay pending",
                            )
                            announced = True
                        await lost
                    else:
                        await _lead(settings, sessions, wakeup, lost, make_sender)
        except (OSError, psycopg.Error) as exc:
            log.warning("dispatcher_election_failed", error=str(exc).strip().split("\n")[0])
        except Exception:
            # A bug must not silently end notifications for the life of the worker.
            log.exception("dispatcher_failed")
        await asyncio.sleep(ELECTION_RETRY_SECONDS)


async def _lead(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    wakeup: asyncio.Event,
    lost: Awaitable[None],
    make_sender: Callable[[], Sender] | None,
) -> None:
    sender = (
        make_sender()
        if make_sender
        else TelegramSender(bot_for(settings.telegram_token, settings.telegram_api_url))
    )
    delay = 1.0
    while True:
        try:
            await sender.start()
            break
        except Exception as exc:
            # Telegram (or the configured Bot API server) is down: keep the rows, try later.
            log.warning("telegram_start_failed", error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(60.0, delay * 2)
    dispatcher = Dispatcher(settings, sessions, sender, wakeup)
    drain = asyncio.create_task(dispatcher.run())
    leadership = asyncio.ensure_future(lost)
    try:
        await asyncio.wait({drain, leadership}, return_when=asyncio.FIRST_COMPLETED)
        if leadership.done():
            log.warning("dispatcher_leadership_lost")
    finally:
        drain.cancel()
        (outcome,) = await asyncio.gather(drain, return_exceptions=True)
        if isinstance(outcome, Exception):
            log.error("dispatcher_crashed", error=repr(outcome))
        with contextlib.suppress(Exception):
            await sender.stop()


async def run_in_service(runtime: Runtime) -> None:
    """The dispatcher as a background task of a webhook worker (see the module docstring)."""
    await run_elected(runtime.settings, runtime.sessions, runtime.outbox_wakeup)
