"""The loop that drains the outbox to Telegram, run by exactly one elected process at a time.

Every gunicorn worker starts this loop; the first to take the database's leader lock
(leadership.py) sends, the others wait to take over when it dies. One sender is what makes
Telegram's limits (30 messages/s per bot, 1/s per chat) hold across workers and hosts without a
shared counter (pacer.py); claims still use leases and SKIP LOCKED (queue.py), so even two
senders during a hand-over never send the same row.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import metrics
from service.outbox import queue
from service.outbox.messages import telegram_messages
from service.outbox.pacer import Pacer
from service.outbox.sender import Sender, SendResult, not_supported
from service.outbox.states import NotificationState, SendOutcome
from service.settings import Settings
from service.store.dialect import dialect_for
from service.store.direct import DirectConnection, DirectPool
from service.store.engine import DatabaseUnavailable, run_transaction
from service.store.models import utcnow

log = structlog.get_logger("service.dispatcher")
T = TypeVar("T")


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
        direct: DirectPool | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        # Where sends are recorded, when the database has a driver of its own (the hot path's).
        self.direct = direct
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
            def work(session: AsyncSession) -> Awaitable[None]:
                return queue.checkpoint(session, self.worker, item, partial, self.lease)

            await self._write(item, lambda: run_transaction(self.sessions, work), 5)

        result = await self.sender.send(item.message, checkpoint)
        if result.outcome is SendOutcome.RATE_LIMITED:
            self.pacer.pause(result.retry_after)
        metrics.TELEGRAM_SENDS.labels(result.outcome.value).inc()
        return result

    async def _write(
        self, item: queue.Claimed, write: Callable[[], Awaitable[T]], tries: int = 30
    ) -> T | None:
        """What a send did must not be lost to a short database hiccup; None if it was."""
        for attempt in range(tries):
            try:
                return await write()
            except DatabaseUnavailable as exc:
                log.warning("outbox_record_retry", notification_id=item.id, error=str(exc))
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
        # The lease will expire and the row be sent again: the one duplicate we accept.
        log.error("outbox_record_lost", notification_id=item.id)
        return None

    async def _record(self, item: queue.Claimed, result: SendResult) -> NotificationState:
        def work(target: AsyncSession | DirectConnection) -> Awaitable[NotificationState]:
            return queue.record(target, self.worker, item, result)

        if self.direct is not None:
            return await self.direct.run(work)
        return await run_transaction(self.sessions, work)

    async def _deliver(self, item: queue.Claimed) -> None:
        if item.message.message_type in self.sender.message_types:
            result = await self._send(item)
        else:
            # Nothing goes to Telegram, so neither a pacing slot nor a send is counted.
            result = not_supported(item.message)
        state = await self._write(item, lambda: self._record(item, result))
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
