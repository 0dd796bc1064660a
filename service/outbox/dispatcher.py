"""The loop that drains the outbox to Telegram, run by exactly one elected process at a time.

Every gunicorn worker starts this loop; the first to take the database's leader lock
(leadership.py) sends, the others wait to take over when it dies. One sender is what makes
Telegram's limits (30 messages/s per bot, 1/s per chat) hold across workers and hosts without a
shared counter (pacer.py); claims still use leases and SKIP LOCKED (queue.py), so even two
senders during a hand-over never send the same row.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import metrics
from service.outbox import queue
from service.outbox.leadership import LEADER_LOCK_KEY, leadership
from service.outbox.messages import telegram_messages
from service.outbox.pacer import Pacer
from service.outbox.sender import Sender, SendResult, not_supported
from service.outbox.states import SendOutcome
from service.outbox.telegram import sender_for
from service.settings import Settings
from service.store.dialect import dialect_for
from service.store.engine import DatabaseUnavailable, run_transaction
from service.store.models import utcnow

# Re-exported for tests/support/stack.py, which finds the leader through pg_locks.
__all__ = ["LEADER_LOCK_KEY", "Dispatcher", "poll_seconds", "run_elected"]

log = structlog.get_logger("service.dispatcher")
T = TypeVar("T")
_NOT_CONFIGURED = "TELEGRAM_TOKEN is empty: notifications stay pending"


def poll_seconds(settings: Settings) -> float:
    """OUTBOX_POLL_SECONDS, or the database's own interval when it is not set."""
    if settings.outbox_poll_seconds is not None:
        return settings.outbox_poll_seconds
    return dialect_for(settings.database_url).outbox_poll_seconds


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
        self.lease = dt.timedelta(seconds=settings.outbox_lease_seconds)
        self.max_in_flight = settings.outbox_max_in_flight
        self.claim_batch = max(1, self.max_in_flight // 2)
        self.in_flight: set[asyncio.Task[None]] = set()
        # Set by a send that failed for Telegram's reasons (5xx, network); the next success
        # ends the trouble and brings forward everything that was backing off.
        self.troubled = False

    async def run(self) -> None:
        """Drain until cancelled; database trouble only slows the loop down."""
        poll = poll_seconds(self.settings)
        try:
            while True:
                free = self.max_in_flight - len(self.in_flight)
                claimed: list[queue.Claimed] = []
                wait = poll
                # Busy (over half the slots taken, waiting on the pacer): claim once half are
                # free, not after every send, since a claim costs about as much as a send.
                if free > 0 and (free >= self.claim_batch or not self.in_flight):
                    try:
                        claimed = await run_transaction(self.sessions, self._claimer(free))
                        if not claimed:
                            due = await run_transaction(self.sessions, queue.next_due_in)
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
                    if len(self.in_flight) < self.max_in_flight:
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
            _, late = await asyncio.wait(tasks, timeout=self.lease.total_seconds() * 0.8)
        except asyncio.CancelledError:
            late = tasks
            raise
        finally:
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    def _claimer(self, limit: int) -> Callable[[AsyncSession], Awaitable[list[queue.Claimed]]]:
        return lambda session: queue.claim(session, self.worker, limit, self.lease)

    async def _idle(self, seconds: float) -> None:
        """Sleep until a commit wakes it (if a send could start), a send ends, or `seconds`."""
        waiters: list[asyncio.Task[Any]] = []
        # Too few free slots to claim (see run): under load each webhook's commit woke the loop
        # only to find that, several hundred times a second.
        if self.max_in_flight - len(self.in_flight) >= self.claim_batch or not self.in_flight:
            waiters.append(asyncio.create_task(self.wakeup.wait()))
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

    async def _send(self, item: queue.Claimed) -> SendResult:
        """One paced send: waits for its slots and for any 429 pause, then asks the sender."""
        slots = telegram_messages(item.message)
        await asyncio.sleep(self.pacer.reserve(item.chat_id, slots))
        # A deadline, not an event: another 429 may extend the pause while this one sleeps.
        while (paused := self.pacer.paused_for()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(paused)

        async def checkpoint(partial: SendResult) -> None:
            # Briefly: the person waits for the follow-up, and the final record repeats it.
            await self._write(
                item, lambda s: queue.checkpoint(s, self.worker, item, partial, self.lease), 5
            )

        result = await self.sender.send(item.message, checkpoint)
        if result.outcome is SendOutcome.RATE_LIMITED:
            self.pacer.pause(result.retry_after)
        metrics.TELEGRAM_SENDS.labels(result.outcome.value).inc()
        return result

    async def _write(
        self, item: queue.Claimed, work: Callable[[AsyncSession], Awaitable[T]], tries: int = 30
    ) -> T | None:
        """What a send did must not be lost to a short database hiccup; None if it was."""
        for attempt in range(tries):
            try:
                return await run_transaction(self.sessions, work)
            except DatabaseUnavailable as exc:
                log.warning("outbox_record_retry", notification_id=item.id, error=str(exc))
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
        # The lease will expire and the row be sent again: the one duplicate we accept.
        log.error("outbox_record_lost", notification_id=item.id)
        return None

    async def _deliver(self, item: queue.Claimed) -> None:
        if item.message.message_type in self.sender.message_types:
            result = await self._send(item)
        else:
            # Nothing goes to Telegram, so neither a pacing slot nor a send is counted.
            result = not_supported(item.message)
        state = await self._write(item, lambda s: queue.record(s, self.worker, item, result))
        if state is None:
            return
        if result.outcome is SendOutcome.SENT:
            metrics.NOTIFY_LATENCY.observe((utcnow() - item.created_at).total_seconds())
            if self.troubled:
                self.troubled = False
                await self._expedite()
        elif result.outcome is SendOutcome.RETRY:
            self.troubled = True
        log_method = log.info if result.outcome is SendOutcome.SENT else log.warning
        log_method(
            "notification_send",
            notification_id=item.id,
            chat_id=item.chat_id,
            verdict=result.outcome.value,
            state=state.value,
            attempt=item.attempts,
            reclaimed=item.reclaimed,
            error=result.error,
        )

    async def _expedite(self) -> None:
        """Telegram answers again: what waits out a back-off is sent now, at the paced rate."""
        try:
            count = await run_transaction(self.sessions, queue.expedite)
        except DatabaseUnavailable as exc:
            log.warning("outbox_expedite_failed", error=str(exc))
            return
        if count:
            log.info("outbox_expedited", notifications=count)
            self.wakeup.set()


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
    dispatcher = Dispatcher(settings, sessions, sender, wakeup)
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
